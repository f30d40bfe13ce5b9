//! A Pod or pod template as JSON → `kube_aws_iam_controller::fuzzing::pod_mutation`.
#![no_main]

use kube_aws_iam_controller::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(failure) = fuzzing::pod_mutation(data) {
        panic!("pod_mutation: {failure}");
    }
});
