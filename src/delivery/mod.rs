//! Delivery of credentials to pods: one label opts a pod in, and one pure mutation
//! ([`mutate`]) adds what its containers need. Three thin shells apply that mutation or serve
//! its result:
//!
//! - [`inject`]: offline, YAML in → YAML out (GitOps pipelines);
//! - [`webhook`]: a mutating admission webhook answering with a JSON patch computed from the
//!   same mutation, so the two can never disagree;
//! - [`credentials_server`]: the sidecar of the `endpoint` delivery, serving the mounted
//!   Secret's `credentials.json` as a container-credentials endpoint on 127.0.0.1.

pub mod credentials_server;
pub mod inject;
pub mod mutate;
pub mod webhook;

/// Pod (or pod template) label naming the AWSIAMRole, in the pod's namespace, whose Secret the
/// pod uses. The only thing a user has to write.
pub const ROLE_LABEL: &str = "kube-aws-iam-controller/role";
/// Optional annotation: comma-separated container names to give credentials (default: all,
/// init containers included).
pub const CONTAINERS_ANNOTATION: &str = "kube-aws-iam-controller/containers";
/// Optional annotation: `process` or `endpoint` (default: `--default-delivery`).
pub const DELIVERY_ANNOTATION: &str = "kube-aws-iam-controller/delivery";
/// Where the AWSIAMRole's Secret is mounted (the original controller's path).
pub const MOUNT_PATH: &str = "/meta/aws-iam";
/// Port of the credentials endpoint sidecar on the pod's loopback interface.
pub const DEFAULT_SIDECAR_PORT: u16 = 9911;
/// Path the sidecar serves the container-credentials document on.
pub const CREDENTIALS_PATH: &str = "/credentials";
/// Path the sidecar answers 200 on once it has usable credentials (its startup probe).
pub const READY_PATH: &str = "/ready";
/// The environment variable carrying the sidecar's authorization token. Every SDK reads it;
/// older Go SDKs read nothing else (not the `_FILE` variant).
pub const TOKEN_ENV: &str = "AWS_CONTAINER_AUTHORIZATION_TOKEN";

/// How a pod's containers get their credentials.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// `AWS_SHARED_CREDENTIALS_FILE` pointing at `credentials.process` (`credential_process =
    /// cat …`): needs `cat` (and for some SDKs `sh`) in the image.
    #[default]
    Process,
    /// A credentials endpoint sidecar on 127.0.0.1: works in any image, refreshes for every SDK.
    Endpoint,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Process => "process",
            Delivery::Endpoint => "endpoint",
        }
    }
}
