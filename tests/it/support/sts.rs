//! The in-process pass's STS side: scripted aws-smithy-mocks replies, a credential source over
//! them, and the stored roles and due Secrets those tests start from.

use std::sync::Arc;

use aws_sdk_sts::operation::assume_role::AssumeRoleOutput;
use aws_sdk_sts::primitives::DateTime;
use aws_sdk_sts::types::Credentials as StsCredentials;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube_aws_iam_controller::controller::pass::{Controller, ControllerConfig};
use kube_aws_iam_controller::controller::sts::{StsCredentialSource, rate_limiter};
use kube_aws_iam_controller::domain::crd::AWSIAMRole;
use kube_aws_iam_controller::domain::model::ObservedRole;
use kube_aws_iam_controller::domain::secret::{self, Credentials};

use super::harness::BASE;

/// An `aws_sdk_sts::Client` for the STS at `endpoint` (moto, or nothing when the test never lets
/// it call), configured explicitly (no environment, no files): region us-east-1, static test
/// credentials.
pub fn sts_client(endpoint: &str) -> aws_sdk_sts::Client {
    use aws_sdk_sts::config::{BehaviorVersion, Credentials, Region, SharedCredentialsProvider};
    let config = aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "moto-test",
        )))
        .endpoint_url(endpoint)
        .build();
    aws_sdk_sts::Client::new(&config)
}

/// An STS error reply, as STS's query protocol writes one.
pub fn error(status: u16, code: &str, message: &str) -> HttpResponse {
    let body = format!(
        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>r</RequestId></ErrorResponse>"
    );
    HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::from(body))
}

/// An AssumeRole answer with these credentials, expiring `expires_in` seconds from now.
pub fn issued(key: &str, secret: &str, token: &str, expires_in: i64) -> AssumeRoleOutput {
    let expiration = DateTime::from_secs(Timestamp::now().as_second() + expires_in);
    AssumeRoleOutput::builder()
        .credentials(
            StsCredentials::builder()
                .access_key_id(key)
                .secret_access_key(secret)
                .session_token(token)
                .expiration(expiration)
                .build()
                .unwrap(),
        )
        .build()
}

/// A credential source over `client`, limited to `rate` calls a second with bursts of `burst`.
pub fn source(client: aws_sdk_sts::Client, rate: u32, burst: u32) -> StsCredentialSource {
    let limit = rate_limiter(rate.try_into().unwrap(), burst.try_into().unwrap());
    StsCredentialSource::new(client, limit)
}

/// A controller planning with [`BASE`] over `client` and `source`.
pub fn controller(client: Client, source: StsCredentialSource) -> Controller {
    let mut config = ControllerConfig::default();
    config.plan.base_role_arn = Some(BASE.parse().unwrap());
    Controller::new(client, config, Arc::new(source))
}

/// An AWSIAMRole as the API would hold it (the in-process fake assigns no UID itself).
pub fn stored_role(ns: &str, name: &str, reference: &str) -> AWSIAMRole {
    let mut r = super::harness::role(ns, name, reference);
    r.metadata.uid = Some(format!("uid-{name}"));
    r.metadata.generation = Some(1);
    r
}

/// A managed Secret for `role` whose one-hour credentials (access key `key`, the rest marked
/// with `marker`) expire in ten minutes: due for refresh.
pub fn due_secret(role: &AWSIAMRole, key: &str, marker: &str) -> Secret {
    let observed = ObservedRole::from_value(&serde_json::to_value(role).unwrap(), "").unwrap();
    let now = Timestamp::now();
    let creds = Credentials {
        access_key_id: key.into(),
        secret_access_key: format!("{marker}-old"),
        session_token: format!("{marker}-old-token"),
        expiration: now + SignedDuration::from_mins(10),
    };
    let arn = format!("{BASE}{}", role.spec.role_reference);
    secret::build(&observed, &arn, &creds, now - SignedDuration::from_mins(50))
}
