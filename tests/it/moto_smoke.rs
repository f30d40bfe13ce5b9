//! Smoke tests of the STS test rig: moto behind the counting proxy, the Rust SDK talking to it,
//! and the AWS CLI authenticating with the Secret's files (the real layout, from
//! `secret::encode`). Assertions print key names, ARNs and counts, never credential values.

use std::collections::BTreeMap;

use aws_sdk_sts::error::DisplayErrorContext;
use jiff::Timestamp;
use kube_aws_iam_controller::domain::secret::{self, Credentials, KEY_CREDENTIALS, KEY_JSON};

use crate::support::argv;
use crate::support::moto::{self, Moto, ProfileFile, ScratchDir};

const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/test-role";
const SESSION: &str = "ns.name";
/// What moto's GetCallerIdentity answers for credentials of the assumed role.
const ASSUMED: &str = "assumed-role/test-role/ns.name";

async fn assume_role(endpoint: &str) -> Credentials {
    let out = moto::sts_client(endpoint)
        .assume_role()
        .role_arn(ROLE_ARN)
        .role_session_name(SESSION)
        .duration_seconds(900)
        .send()
        .await
        .unwrap_or_else(|e| panic!("AssumeRole against moto: {}", DisplayErrorContext(e)));
    moto::credentials_from_sts(
        out.credentials()
            .expect("AssumeRole returned no credentials"),
    )
}

fn assume_role_blocking(endpoint: &str) -> Credentials {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(assume_role(endpoint))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_sdk_assume_role_is_counted_at_the_proxy() {
    let moto = Moto::start();
    let creds = assume_role(&moto.endpoint()).await;
    assert!(!creds.access_key_id.is_empty(), "empty AccessKeyId");
    assert!(!creds.secret_access_key.is_empty(), "empty SecretAccessKey");
    assert!(!creds.session_token.is_empty(), "empty SessionToken");
    let lifetime = creds.expiration.as_second() - Timestamp::now().as_second();
    assert!(
        (800..=960).contains(&lifetime),
        "a 900 s session expires in {lifetime} s"
    );
    assert_eq!(moto.calls("AssumeRole"), 1, "calls: {:?}", moto.counts());
    assert_eq!(moto.total_calls(), 1, "calls: {:?}", moto.counts());

    let identity = moto::sts_client(&moto.endpoint())
        .get_caller_identity()
        .send()
        .await
        .unwrap_or_else(|e| panic!("GetCallerIdentity: {}", DisplayErrorContext(e)));
    assert!(identity.arn().is_some(), "GetCallerIdentity without Arn");
    assert_eq!(
        moto.calls("GetCallerIdentity"),
        1,
        "calls: {:?}",
        moto.counts()
    );
    assert_eq!(moto.calls("AssumeRole"), 1, "calls: {:?}", moto.counts());
    assert_eq!(moto.total_calls(), 2, "calls: {:?}", moto.counts());

    moto.reset_counts();
    assert_eq!(moto.total_calls(), 0);
    assert_eq!(moto.calls("AssumeRole"), 0);
}

#[test]
fn moto_secret_files_authenticate_the_aws_cli() {
    let moto = Moto::start();
    let creds = assume_role_blocking(&moto.endpoint());
    let data = secret::encode(&creds, ROLE_ARN, 1);
    moto.reset_counts();

    let dir = ScratchDir::new("moto-cli-files");
    let arn = moto::caller_identity_with_credentials_file(&moto.endpoint(), &data, dir.path())
        .unwrap_or_else(|e| panic!("`credentials` file: {e}"));
    assert!(
        arn.contains(ASSUMED),
        "`credentials` file authenticated as {arn}"
    );

    for via in [ProfileFile::SharedCredentials, ProfileFile::Config] {
        let dir = ScratchDir::new("moto-cli-process");
        let arn =
            moto::caller_identity_with_credential_process(&moto.endpoint(), &data, dir.path(), via)
                .unwrap_or_else(|e| panic!("credential_process via {via:?}: {e}"));
        assert!(
            arn.contains(ASSUMED),
            "credential_process via {via:?} authenticated as {arn}"
        );
    }
    // The CLI reached moto through the proxy, once per route.
    assert_eq!(
        moto.calls("GetCallerIdentity"),
        3,
        "calls: {:?}",
        moto.counts()
    );
    assert_eq!(moto.calls("AssumeRole"), 0, "calls: {:?}", moto.counts());
}

#[test]
fn moto_garbled_or_foreign_secret_files_do_not_authenticate() {
    let moto = Moto::start();
    let creds = assume_role_blocking(&moto.endpoint());
    let data = secret::encode(&creds, ROLE_ARN, 1);
    let with = |key: &str, value: Vec<u8>| -> BTreeMap<String, Vec<u8>> {
        let mut data = data.clone();
        data.insert(key.to_string(), value);
        data
    };

    // Not an INI file at all.
    let garbled = with(
        KEY_CREDENTIALS,
        b"this is not = an INI file\n\x00\x01".to_vec(),
    );
    let dir = ScratchDir::new("moto-cli-garbled");
    let result =
        moto::caller_identity_with_credentials_file(&moto.endpoint(), &garbled, dir.path());
    assert!(
        result.is_err(),
        "a garbled `credentials` file authenticated as {result:?}"
    );

    // The profile cut off after the access key id: partial credentials.
    let ini = String::from_utf8(data[KEY_CREDENTIALS].clone()).expect("INI is UTF-8");
    let cut: String = ini.lines().take(2).map(|l| format!("{l}\n")).collect();
    let truncated = with(KEY_CREDENTIALS, cut.into_bytes());
    let dir = ScratchDir::new("moto-cli-truncated");
    let result =
        moto::caller_identity_with_credentials_file(&moto.endpoint(), &truncated, dir.path());
    assert!(
        result.is_err(),
        "a truncated `credentials` file authenticated as {result:?}"
    );

    // credential_process printing a broken document.
    let json = data[KEY_JSON].clone();
    let broken = with(KEY_JSON, json[..json.len() / 2].to_vec());
    let dir = ScratchDir::new("moto-cli-broken-json");
    let result = moto::caller_identity_with_credential_process(
        &moto.endpoint(),
        &broken,
        dir.path(),
        ProfileFile::SharedCredentials,
    );
    assert!(
        result.is_err(),
        "a broken credentials.json authenticated as {result:?}"
    );

    // Well-formed credentials moto never issued: the CLI succeeds (moto checks no signature)
    // but not as the assumed role, so the positive test's ARN check has teeth.
    let foreign = Credentials {
        access_key_id: "ASIAFOREIGNKEY000000".into(),
        secret_access_key: "foreign-secret".into(),
        session_token: "foreign-token".into(),
        expiration: creds.expiration,
    };
    let foreign = secret::encode(&foreign, ROLE_ARN, 1);
    let dir = ScratchDir::new("moto-cli-foreign");
    let arn = moto::caller_identity_with_credentials_file(&moto.endpoint(), &foreign, dir.path())
        .unwrap_or_else(|e| panic!("foreign credentials: {e}"));
    assert!(
        !arn.contains(ASSUMED),
        "foreign credentials authenticated as {arn}"
    );
}

#[test]
fn moto_aws_env_serves_the_cli_and_only_proxied_calls_count() {
    let moto = Moto::start();
    let out = moto::aws_cli(
        &argv(&format!(
            "sts assume-role --role-arn {ROLE_ARN} --role-session-name {SESSION} \
             --duration-seconds 900 --output json"
        )),
        &moto::aws_env(&moto.endpoint()),
    );
    // stdout holds credentials: only the status and stderr are shown.
    assert!(
        out.status.success(),
        "aws sts assume-role: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(moto.calls("AssumeRole"), 1, "calls: {:?}", moto.counts());

    // Straight to moto, around the proxy: answered, not counted.
    let out = moto::aws_cli(
        &["sts", "get-caller-identity", "--output", "json"],
        &moto::aws_env(&moto.moto_endpoint()),
    );
    assert!(
        out.status.success(),
        "aws sts get-caller-identity: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(moto.total_calls(), 1, "calls: {:?}", moto.counts());
}
