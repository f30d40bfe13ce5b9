//! The sidecar binary: everything is in the library (see `lib.rs`).

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(kube_aws_iam_credentials_server::main(
        std::env::args_os().skip(1),
        |name| std::env::var_os(name),
    ))
}
