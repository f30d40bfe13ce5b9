//! A YAML stream as `plan --from` reads it → `kube_aws_iam_controller::fuzzing::objects`.
#![no_main]

use kube_aws_iam_controller::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(failure) = fuzzing::objects(data) {
        panic!("objects: {failure}");
    }
});
