//! Handing memory the process freed back to the system.
//!
//! glibc's allocator returns freed memory to the system only from the top of its heap. A list
//! page or a pass over thousands of roles frees many small blocks that lie between the
//! long-lived objects of the watched state, and their pages stay resident until something
//! asks for them back: at 10,000 roles over a quarter of what `run` kept resident between
//! passes was such free memory. [`release_free`] asks for it back after each pass and after each
//! completed list, when a burst of short-lived allocations has just ended.

/// Asks the allocator to give the pages it holds free back to the system. Returns whether it
/// gave any back. With glibc this is `malloc_trim(0)`, which locks each arena in turn while it
/// walks the free blocks (a few milliseconds at 10,000 roles); elsewhere (musl, macOS) it does
/// nothing and returns `false`, as those allocators return freed memory themselves.
pub fn release_free() -> bool {
    let started = std::time::Instant::now();
    let released = trim();
    tracing::debug!(
        released,
        seconds = started.elapsed().as_secs_f64(),
        "asked the allocator to give freed pages back"
    );
    released
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() -> bool {
    // SAFETY: `malloc_trim` takes no pointer and touches only the allocator's own free lists,
    // under the allocator's own locks; no Rust object is read or moved.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Freeing a large heap of small blocks below a live one leaves pages only a trim gives
    /// back.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_small_blocks_go_back_to_the_system() {
        let rss = || {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
            line.split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        release_free();
        // 64 MiB in 1 KiB blocks, then one block that stays, so the heap's top is in use.
        let blocks: Vec<Vec<u8>> = (0..65_536).map(|i| vec![i as u8; 1024]).collect();
        let keep = vec![1u8; 1024];
        let before_free = rss();
        drop(blocks);
        let before_trim = rss();
        assert!(release_free(), "malloc_trim gave nothing back");
        let after_trim = rss();
        assert_eq!(keep[0], 1);
        assert!(
            before_trim + 1024 > before_free,
            "the freed blocks were returned without a trim: {before_free} → {before_trim} KiB"
        );
        assert!(
            after_trim + 32 * 1024 < before_trim,
            "a trim returned less than half of 64 MiB freed: {before_trim} → {after_trim} KiB"
        );
    }
}
