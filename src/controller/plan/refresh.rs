//! When credentials are refreshed (the refresh policy of `docs/design.md`).
//!
//! `margin = min(max(refresh_limit, L/2) + jitter, L − 3 min)`, where `L` is the lifetime of
//! the current credentials and `jitter` a fraction of up to `L/10` derived from the
//! AWSIAMRole's UID. Credentials are refreshed once no more than `margin` remains.
//!
//! Why: boto3 starts re-reading 15 minutes before expiry and fails from 10 minutes before, so a
//! fixed 15-minute margin leaves kubelet no time to deliver the new Secret; half the lifetime
//! does. The jitter spreads roles created together; the cap keeps every credential in use for
//! at least three minutes, which bounds STS calls per role even for 900 s sessions, and still
//! replaces a 900 s session with 12 minutes left: two minutes for kubelet to deliver it before
//! boto3 gives up at ten.

use sha2::{Digest, Sha256};

/// Every credential stays in use at least this long (seconds).
pub const MIN_USE: i64 = 180;

/// Deterministic value in `[0, 1)` (as a fraction of 2^64) from a stable key, normally the
/// AWSIAMRole UID.
pub fn jitter_fraction(key: &str) -> u64 {
    let digest = Sha256::digest(key.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

/// Refresh margin in seconds for credentials of `lifetime` seconds.
pub fn margin(lifetime: i64, refresh_limit: i64, jitter_key: &str) -> i64 {
    let lifetime = lifetime.max(0);
    let jitter_span = (lifetime / 10) as u128;
    let jitter = ((jitter_fraction(jitter_key) as u128 * jitter_span) >> 64) as i64;
    let wanted = refresh_limit.max(lifetime / 2) + jitter;
    wanted.min(lifetime - MIN_USE).max(0)
}

/// The first wait after a failed attempt (seconds): one default pass interval.
pub const FIRST_RETRY: i64 = 30;
/// The longest wait between attempts (seconds). Short enough that even a 900 s session's
/// refresh margin sees several attempts, long enough that a role that keeps failing costs a
/// few STS calls an hour, not one a pass.
pub const MAX_RETRY: i64 = 300;

/// How long to wait after the `attempts`-th failure in a row before calling STS again for the
/// role: 30 s, 1 min, 2 min, 4 min, then 5 min.
pub fn retry_delay(attempts: u32) -> i64 {
    let doublings = attempts.saturating_sub(1).min(16);
    (FIRST_RETRY << doublings).min(MAX_RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_five_minutes() {
        let delays: Vec<i64> = (0..=7).map(retry_delay).collect();
        assert_eq!(delays, [30, 30, 60, 120, 240, 300, 300, 300]);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY);
    }

    #[test]
    fn margins_for_the_session_lengths() {
        // 1 h: half the lifetime plus up to 6 min of jitter.
        for key in ["a", "b", "c", "d"] {
            let m = margin(3600, 900, key);
            assert!((1800..2160).contains(&m), "{m}");
        }
        // 900 s: capped so each credential is used for 3 minutes.
        assert_eq!(margin(900, 900, "a"), 720);
        // 12 h: between 6 h and 7.2 h.
        let m = margin(43200, 900, "a");
        assert!((21600..25920).contains(&m));
        // A large refresh limit is still capped.
        assert_eq!(margin(3600, 7200, "a"), 3420);
        // Degenerate lifetimes never give a negative margin.
        assert_eq!(margin(100, 900, "a"), 0);
        assert_eq!(margin(180, 900, "a"), 0);
    }

    #[test]
    fn jitter_spreads_keys() {
        let margins: std::collections::BTreeSet<i64> = (0..200)
            .map(|i| margin(3600, 900, &format!("uid-{i}")))
            .collect();
        assert!(
            margins.len() > 150,
            "only {} distinct margins",
            margins.len()
        );
        assert_eq!(margin(3600, 900, "same"), margin(3600, 900, "same"));
    }
}
