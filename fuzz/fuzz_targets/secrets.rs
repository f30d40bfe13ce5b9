//! A Secret's data map (JSON, or NUL-separated key=value records) → `kube_aws_iam_controller::fuzzing::secrets`.
#![no_main]

use kube_aws_iam_controller::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(failure) = fuzzing::secrets(data) {
        panic!("secrets: {failure}");
    }
});
