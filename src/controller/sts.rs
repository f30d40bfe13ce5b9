//! Credentials from STS: the [`CredentialSource`] the executor calls, its aws-sdk-sts
//! implementation with a rate limit, and the controller's own AWS set-up (region, base role
//! ARN discovery, `--assume-role`).

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;

use aws_config::BehaviorVersion;
use aws_sdk_sts::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_sts::operation::assume_role::AssumeRoleOutput;
use aws_sdk_sts::types::Tag;
use futures::future::BoxFuture;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use jiff::Timestamp;

use crate::controller::plan::CredentialRequest;
use crate::domain::arn::{self, BaseArn};
use crate::domain::crd::DEFAULT_SESSION_DURATION;
use crate::domain::secret::Credentials;
use crate::{Error, Result};

/// How an STS call failed, for metrics, status messages and retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StsErrorKind {
    /// Rate exceeded (after the SDK's own retries).
    Throttled,
    /// The controller may not assume the role (trust policy, permissions, SCP).
    Denied,
    /// `DurationSeconds` above the one hour role chaining allows (retried once at 3600 s).
    DurationTooLong,
    /// `DurationSeconds` above the IAM role's own `MaxSessionDuration`: only the role's owner
    /// or the spec can fix that, so it is not retried.
    AboveMaxSessionDuration,
    /// STS answered 200 with credentials that cannot be used (empty fields, no or a past
    /// expiry); writing them would replace working credentials with broken ones.
    UnusableReply,
    /// No answer from STS: unreachable, timed out, or the request was never sent (the
    /// controller's own credentials are missing or expired). Nothing was spent at STS and the
    /// cause is not the AWSIAMRole's, so the role is tried again on the next pass.
    Unreachable,
    /// Anything else STS answered.
    Other,
}

impl StsErrorKind {
    pub fn metric_label(self) -> &'static str {
        match self {
            StsErrorKind::Throttled => "throttled",
            StsErrorKind::Denied => "denied",
            StsErrorKind::DurationTooLong
            | StsErrorKind::AboveMaxSessionDuration
            | StsErrorKind::UnusableReply
            | StsErrorKind::Unreachable
            | StsErrorKind::Other => "error",
        }
    }
}

/// A failed AssumeRole. The message comes from STS or the SDK and holds no credential material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StsError {
    pub kind: StsErrorKind,
    pub message: String,
}

impl fmt::Display for StsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StsError {}

/// Where the executor gets credentials from. Implementations must be cheap to share.
pub trait CredentialSource: Send + Sync {
    /// Assumes `request.role_arn`. Implementations apply their own rate limit.
    fn assume<'a>(
        &'a self,
        request: &'a CredentialRequest,
    ) -> BoxFuture<'a, Result<Credentials, StsError>>;
}

/// `CredentialSource` on aws-sdk-sts, rate limited by a token bucket shared by all calls.
pub struct StsCredentialSource {
    client: aws_sdk_sts::Client,
    limiter: Arc<DefaultDirectRateLimiter>,
}

/// Calls per second, possibly fewer than one (`0.5` = one call every two seconds).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CallRate(f64);

impl CallRate {
    /// Slower than this, a pass of a few roles would take hours.
    pub const MIN: f64 = 0.01;
    /// Faster than any STS account quota.
    pub const MAX: f64 = 100_000.0;

    pub fn per_second(&self) -> f64 {
        self.0
    }

    /// Time between two calls at this rate.
    pub fn period(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(1.0 / self.0)
    }
}

impl From<NonZeroU32> for CallRate {
    fn from(rate: NonZeroU32) -> Self {
        CallRate(f64::from(rate.get()))
    }
}

impl std::str::FromStr for CallRate {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let rate: f64 = s
            .trim()
            .parse()
            .map_err(|_| "not a number of calls per second (e.g. 10 or 0.5)".to_string())?;
        if !rate.is_finite() || !(Self::MIN..=Self::MAX).contains(&rate) {
            return Err(format!(
                "must be between {} and {} calls per second",
                Self::MIN,
                Self::MAX
            ));
        }
        Ok(CallRate(rate))
    }
}

impl fmt::Display for CallRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A token bucket of `rate` calls per second and `burst` calls at once. The burst is set
/// explicitly: governor's default (burst = rate) would let twice the rate start in the first
/// second.
pub fn rate_limiter(rate: NonZeroU32, burst: NonZeroU32) -> DefaultDirectRateLimiter {
    limiter(rate.into(), burst)
}

/// As [`rate_limiter`], for any [`CallRate`]: one call every `period`, `burst` at once.
pub fn limiter(rate: CallRate, burst: NonZeroU32) -> DefaultDirectRateLimiter {
    // The period is at least 10 µs (MAX), never zero, so the quota always exists.
    let quota = Quota::with_period(rate.period())
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
        .allow_burst(burst);
    RateLimiter::direct(quota)
}

impl StsCredentialSource {
    pub fn new(client: aws_sdk_sts::Client, limiter: DefaultDirectRateLimiter) -> Self {
        StsCredentialSource {
            client,
            limiter: Arc::new(limiter),
        }
    }

    async fn call(
        &self,
        request: &CredentialRequest,
        duration: i64,
    ) -> Result<Credentials, StsError> {
        self.limiter.until_ready().await;
        let extras = &request.extras;
        let tags = extras
            .tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StsError {
                kind: StsErrorKind::Other,
                message: format!("session tag: {e}"),
            })?;
        let out = self
            .client
            .assume_role()
            .role_arn(request.role_arn.to_string())
            .role_session_name(&request.session_name)
            .duration_seconds(duration as i32)
            .set_tags((!tags.is_empty()).then_some(tags))
            .set_source_identity(extras.source_identity.clone())
            .set_external_id(extras.external_id.clone())
            .send()
            .await
            .map_err(|e| rejected(&e))?;
        read_reply(&out)
    }
}

/// An AssumeRole that failed, as the controller reacts to it and reports it.
fn rejected<E, R>(e: &aws_sdk_sts::error::SdkError<E, R>) -> StsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug,
{
    use aws_sdk_sts::error::SdkError;
    let code = e.code().unwrap_or_default();
    // What STS says may quote the signed request (session token included), so its long base64
    // runs are redacted. A summary is this controller's own words about a transport or
    // credentials failure: it names files, whose paths must survive.
    let message = match e.message() {
        Some(message) => crate::domain::text::redact_echo(message, &[]),
        None => summary(e),
    };
    let unanswered = matches!(
        e,
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ConstructionFailure(_)
    );
    StsError {
        kind: if unanswered {
            StsErrorKind::Unreachable
        } else {
            classify(code, &message)
        },
        message: short(&if code.is_empty() {
            message
        } else {
            format!("{code}: {message}")
        }),
    }
}

/// The credentials of an AssumeRole reply, if they can be written over those in place.
fn read_reply(out: &AssumeRoleOutput) -> Result<Credentials, StsError> {
    let unusable = |message: String| StsError {
        kind: StsErrorKind::UnusableReply,
        message,
    };
    let creds = out
        .credentials()
        .ok_or_else(|| unusable("STS returned no credentials".into()))?;
    // The SDK turns a missing Expiration into the epoch, so zero means "none".
    let expiration = match creds.expiration().secs() {
        0 => None,
        secs => Timestamp::from_second(secs).ok(),
    };
    let credentials = Credentials {
        access_key_id: creds.access_key_id().to_string(),
        secret_access_key: creds.secret_access_key().to_string(),
        session_token: creds.session_token().to_string(),
        expiration: expiration.unwrap_or(Timestamp::UNIX_EPOCH),
    };
    check_reply(&credentials, expiration.is_some(), Timestamp::now())
        .map_err(|e| unusable(e.to_string()))?;
    Ok(credentials)
}

/// Credentials must last at least this long (seconds) to be written: shorter ones would be
/// useless to pods (SDKs want minutes of validity) and replaced at once.
pub const MIN_VALIDITY: i64 = crate::controller::plan::refresh::MIN_USE;

/// Why an AssumeRole reply cannot be written over the credentials in place. The message names
/// what is wrong and never a value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnusableReply {
    #[error("STS returned credentials with an empty {}", .0.join(", "))]
    Empty(Vec<&'static str>),
    #[error("STS returned credentials without an Expiration")]
    NoExpiration,
    #[error(
        "STS returned credentials that expired at {} (this controller's clock says {}: check it)",
        crate::domain::secret::format_time(*.expired),
        crate::domain::secret::format_time(*.now)
    )]
    Expired { expired: Timestamp, now: Timestamp },
    #[error(
        "STS returned credentials valid for only {left}s (until {}), fewer than the {MIN_VALIDITY}s a credential must last",
        crate::domain::secret::format_time(*.until)
    )]
    TooShort { left: i64, until: Timestamp },
}

/// Whether an AssumeRole reply can be written over the credentials in place.
pub fn check_reply(
    credentials: &Credentials,
    has_expiration: bool,
    now: Timestamp,
) -> std::result::Result<(), UnusableReply> {
    let empty = [
        ("AccessKeyId", &credentials.access_key_id),
        ("SecretAccessKey", &credentials.secret_access_key),
        ("SessionToken", &credentials.session_token),
    ]
    .into_iter()
    .filter(|(_, value)| value.trim().is_empty())
    .map(|(field, _)| field)
    .collect::<Vec<_>>();
    if !empty.is_empty() {
        return Err(UnusableReply::Empty(empty));
    }
    if !has_expiration {
        return Err(UnusableReply::NoExpiration);
    }
    let left = credentials.expiration.as_second() - now.as_second();
    if left <= 0 {
        return Err(UnusableReply::Expired {
            expired: credentials.expiration,
            now,
        });
    }
    if left < MIN_VALIDITY {
        return Err(UnusableReply::TooShort {
            left,
            until: credentials.expiration,
        });
    }
    Ok(())
}

/// An STS failure as statuses, Events and logs show it: its first line (STS puts canonical
/// requests, which carry the session token, on the following ones), at most 200 characters.
fn short(message: &str) -> String {
    let first = message.lines().next().unwrap_or_default().trim();
    if first.chars().count() > 200 {
        let cut: String = first.chars().take(200).collect();
        format!("{cut}…")
    } else {
        first.to_string()
    }
}

/// A failure without an STS error message in a few words, instead of the SDK's full error chain
/// (hundreds of characters of internal types).
fn summary<E, R>(e: &aws_sdk_sts::error::SdkError<E, R>) -> String
where
    E: std::error::Error + 'static,
    R: fmt::Debug,
{
    use aws_sdk_sts::error::SdkError;
    let innermost = || {
        let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
        let mut last = None;
        while let Some(s) = source {
            last = Some(s.to_string());
            source = s.source();
        }
        last.map(|s| format!(": {s}")).unwrap_or_default()
    };
    match e {
        SdkError::DispatchFailure(d) if d.is_timeout() => "STS did not answer in time".into(),
        SdkError::DispatchFailure(_) => format!("could not reach STS{}", innermost()),
        SdkError::TimeoutError(_) => "STS did not answer in time".into(),
        SdkError::ResponseError(_) => "STS sent a reply that could not be read".into(),
        SdkError::ConstructionFailure(_) => {
            format!("could not build the AssumeRole request{}", innermost())
        }
        _ => DisplayErrorContext(e).to_string(),
    }
}

/// Sorts an STS error code (and message) into the kinds the controller reacts to.
pub fn classify(code: &str, message: &str) -> StsErrorKind {
    match code {
        "Throttling"
        | "ThrottlingException"
        | "RequestLimitExceeded"
        | "TooManyRequestsException" => StsErrorKind::Throttled,
        "AccessDenied" | "AccessDeniedException" => StsErrorKind::Denied,
        "ValidationError" if message.contains("MaxSessionDuration") => {
            StsErrorKind::AboveMaxSessionDuration
        }
        "ValidationError" if message.contains("DurationSeconds") => StsErrorKind::DurationTooLong,
        _ => StsErrorKind::Other,
    }
}

impl CredentialSource for StsCredentialSource {
    fn assume<'a>(
        &'a self,
        request: &'a CredentialRequest,
    ) -> BoxFuture<'a, Result<Credentials, StsError>> {
        Box::pin(async move {
            match self.call(request, request.duration).await {
                // Role chaining caps sessions at one hour: retry once at 3600 s. The status
                // later reports the shorter lifetime from the expiration.
                Err(e)
                    if e.kind == StsErrorKind::DurationTooLong
                        && request.duration > DEFAULT_SESSION_DURATION =>
                {
                    self.call(request, DEFAULT_SESSION_DURATION).await
                }
                result => result,
            }
        })
    }
}

/// The controller's own AWS configuration.
#[derive(Clone, Debug, Default)]
pub struct AwsOptions {
    pub region: Option<String>,
    pub base_role_arn: Option<BaseArn>,
    /// `--assume-role`: a role name or ARN to assume first.
    pub assume_role: Option<String>,
    pub rate: Option<CallRate>,
    pub burst: Option<NonZeroU32>,
    /// Seed credentials (see [`crate::controller::seed`]) instead of the SDK's default chain.
    pub seed: Option<Arc<crate::controller::seed::SeedCredentials>>,
}

/// Builds the STS client from the standard AWS chain (honouring `AWS_ENDPOINT_URL_STS`),
/// checks there is a region, discovers the base role ARN with `GetCallerIdentity` unless given,
/// and wraps the client in the `--assume-role` provider (which refreshes itself) when asked.
pub async fn connect(options: &AwsOptions) -> Result<(StsCredentialSource, BaseArn)> {
    let config = sdk_config(options).await?;
    let client = aws_sdk_sts::Client::new(&config);
    let base = match &options.base_role_arn {
        Some(base) => base.clone(),
        None => discover_base(&client).await?,
    };
    let client = match &options.assume_role {
        None => client,
        Some(role) => {
            let arn = arn::resolve(role, Some(&base))
                .map_err(|e| Error::Config(format!("--assume-role {e}")))?;
            let provider = aws_config::sts::AssumeRoleProvider::builder(arn.to_string())
                .session_name("kube-aws-iam-controller")
                .configure(&config)
                .build()
                .await;
            let chained = config
                .into_builder()
                // The assumed role's session is cached (and refreshed before it expires);
                // only the seed underneath it is read on every use.
                .identity_cache(aws_config::identity::IdentityCache::lazy().build())
                .credentials_provider(aws_sdk_sts::config::SharedCredentialsProvider::new(
                    provider,
                ))
                .build();
            aws_sdk_sts::Client::new(&chained)
        }
    };
    let limiter = limiter(
        options.rate.unwrap_or(CallRate(10.0)),
        options.burst.unwrap_or(NonZeroU32::MIN),
    );
    Ok((StsCredentialSource::new(client, limiter), base))
}

/// The SDK configuration of the controller's own credentials (seed file or default chain),
/// refusing to go on without a region.
async fn sdk_config(options: &AwsOptions) -> Result<aws_config::SdkConfig> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = &options.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(seed) = &options.seed {
        // No SDK cache in front of the file: the provider checks it on every use, which is
        // what makes a kubelet swap take effect at once and an expired session unusable.
        loader = loader
            .credentials_provider(aws_sdk_sts::config::SharedCredentialsProvider::new(
                crate::controller::seed::SharedSeed(seed.clone()),
            ))
            .identity_cache(aws_config::identity::IdentityCache::no_cache());
    }
    let config = loader.load().await;
    if config.region().is_none() {
        return Err(Error::Config(
            "no AWS region: pass --region or set AWS_REGION (STS is called at a regional endpoint)"
                .into(),
        ));
    }
    Ok(config)
}

/// The base role ARN a real pass would use: the given one, or the one `GetCallerIdentity`
/// reports for the controller's own credentials. Read-only, so dry runs may call it and
/// plan bare role names exactly as the following pass resolves them.
pub async fn discover(options: &AwsOptions) -> Result<BaseArn> {
    if let Some(base) = &options.base_role_arn {
        return Ok(base.clone());
    }
    let config = sdk_config(options).await?;
    discover_base(&aws_sdk_sts::Client::new(&config)).await
}

/// `arn:<partition>:iam::<account>:role/` of the controller's own account.
async fn discover_base(client: &aws_sdk_sts::Client) -> Result<BaseArn> {
    let identity = client.get_caller_identity().send().await.map_err(|e| {
        Error::Aws(format!(
            "GetCallerIdentity failed, so the controller's AWS credentials are unusable: {}",
            DisplayErrorContext(&e)
        ))
    })?;
    let account = identity.account().unwrap_or_default();
    let partition = identity
        .arn()
        .and_then(|a| a.split(':').nth(1))
        .unwrap_or("aws");
    BaseArn::for_account(partition, account).map_err(|e| {
        Error::Aws(format!(
            "GetCallerIdentity returned an unusable identity: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractional_rates_space_calls_out() {
        let rate: CallRate = "0.5".parse().unwrap();
        assert_eq!(rate.period(), std::time::Duration::from_secs(2));
        let bucket = limiter(rate, NonZeroU32::MIN);
        assert!(bucket.check().is_ok());
        let wait = bucket
            .check()
            .expect_err("the second call waits")
            .wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
        assert!(wait > std::time::Duration::from_millis(1900), "{wait:?}");
        for bad in ["0", "-1", "nan", "inf", "x", "0.001", "1e9"] {
            assert!(bad.parse::<CallRate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn classifies_sts_errors() {
        assert_eq!(
            classify("Throttling", "Rate exceeded"),
            StsErrorKind::Throttled
        );
        assert_eq!(
            classify("AccessDenied", "not authorized"),
            StsErrorKind::Denied
        );
        assert_eq!(
            classify(
                "ValidationError",
                "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining."
            ),
            StsErrorKind::DurationTooLong
        );
        assert_eq!(
            classify(
                "ValidationError",
                "The requested DurationSeconds exceeds the MaxSessionDuration set for this role."
            ),
            StsErrorKind::AboveMaxSessionDuration
        );
        assert_eq!(
            classify("ValidationError", "bad session name"),
            StsErrorKind::Other
        );
        assert_eq!(StsErrorKind::DurationTooLong.metric_label(), "error");
        assert_eq!(StsErrorKind::Throttled.metric_label(), "throttled");
        assert_eq!(StsErrorKind::Denied.metric_label(), "denied");
    }

    /// A credentials provider that always fails with `message`.
    #[derive(Debug)]
    struct Failing(String);

    impl aws_credential_types::provider::ProvideCredentials for Failing {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            aws_credential_types::provider::future::ProvideCredentials::ready(Err(
                aws_credential_types::provider::error::CredentialsError::provider_error(
                    self.0.clone(),
                ),
            ))
        }
    }

    #[tokio::test]
    async fn a_credentials_failure_keeps_the_file_it_names() {
        // A scratch directory whose path is one long run of letters, digits and slashes, as CI
        // machines' temporary directories can be: it looks like base64 but is no secret.
        let path = format!("/tmp/{}/run-volume-1-1/credentials", "ab12".repeat(10));
        let sts = aws_sdk_sts::Client::from_conf(
            aws_sdk_sts::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(aws_sdk_sts::config::Region::new("eu-central-1"))
                .endpoint_url("http://127.0.0.1:9")
                .credentials_provider(Failing(format!("the credentials in {path} expired")))
                .retry_config(aws_sdk_sts::config::retry::RetryConfig::disabled())
                .build(),
        );
        let source =
            StsCredentialSource::new(sts, limiter("100".parse().unwrap(), NonZeroU32::MIN));
        let request = CredentialRequest {
            role_arn: "arn:aws:iam::123456789012:role/app".parse().unwrap(),
            duration: 3600,
            session_name: "app".into(),
            extras: Default::default(),
        };
        let err = source.assume(&request).await.unwrap_err();
        assert_eq!(err.kind, StsErrorKind::Unreachable);
        assert!(err.message.contains(&path), "{}", err.message);
        assert!(
            err.message.starts_with("could not reach STS"),
            "{}",
            err.message
        );
    }
}
