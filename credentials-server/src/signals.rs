//! SIGTERM and SIGINT end the server at once with exit code 0.
//!
//! This needs a handler because the sidecar is PID 1 of its container: the kernel drops
//! signals to PID 1 that it has no handler for, so without one kubelet would wait out the
//! pod's whole grace period before killing it. Nothing needs finishing on the way out (answers
//! are written whole or not at all, no state is kept), so the handler calls `_exit`, which is
//! async-signal-safe. std links the C library already; declaring the two functions here
//! spares a dependency.

#![allow(unsafe_code)]

use std::ffi::c_int;

const SIGINT: c_int = 2;
const SIGTERM: c_int = 15;

unsafe extern "C" {
    fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
    fn _exit(status: c_int) -> !;
}

extern "C" fn exit_now(_: c_int) {
    // SAFETY: `_exit` is async-signal-safe and takes no pointers.
    unsafe { _exit(0) }
}

/// Installs the handler for both signals (process-wide; call from the server only).
pub fn exit_on_termination() {
    for signum in [SIGINT, SIGTERM] {
        // SAFETY: the handler only calls `_exit`; `signal` returns the old disposition, which
        // is not needed (SIG_ERR only for an invalid signal number, which these are not).
        unsafe {
            signal(signum, exit_now);
        }
    }
}
