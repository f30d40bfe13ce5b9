//! A role reference, bytes as they are → `kube_aws_iam_controller::fuzzing::references`.
#![no_main]

use kube_aws_iam_controller::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(failure) = fuzzing::references(data) {
        panic!("references: {failure}");
    }
});
