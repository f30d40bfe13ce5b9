//! The flags, in groups by concern, composed per subcommand: the original controller's flags
//! (same names, same meaning, for `run`, `once` and the bare binary) plus this project's.
//! Every flag also reads `KUBE_AWS_IAM_CONTROLLER_<FLAG>`.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::controller::plan::render::OutputFormat;
use crate::controller::sts::CallRate;
use crate::delivery::Delivery;
use crate::serve::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "kube-aws-iam-controller",
    version,
    about = "Hands AWS IAM role credentials to pods through Secrets, one AWSIAMRole at a time.",
    long_about = "Hands AWS IAM role credentials to pods through Secrets, one AWSIAMRole at a time.\n\nWithout a subcommand it behaves as `run` (with `run`'s flags), so the original controller's manifests keep working.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `run`'s flags, for the bare binary (the original controller had no subcommands).
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Reconcile in a loop, a pass every --interval, until SIGTERM/SIGINT (the default).
    Run(Box<RunArgs>),
    /// Run one pass, then exit (CronJob mode).
    Once(Box<OnceArgs>),
    /// Compute and print the plan; change nothing (= once --dry-run).
    Plan(Box<PlanArgs>),
    /// Print the AWSIAMRole CustomResourceDefinition YAML.
    Crd,
    /// Create the controller's own AWSIAMRole and its Secret with the operator's AWS
    /// credentials, so the controller can run on them (seed credentials, outside AWS).
    Bootstrap(Box<BootstrapArgs>),
    /// Add credentials delivery to labelled pod templates in YAML manifests (offline).
    Inject(InjectArgs),
    /// Serve the pod mutation as a mutating admission webhook over TLS.
    Webhook(WebhookArgs),
    /// Serve a mounted credentials.json as a container-credentials endpoint (pod sidecar).
    CredentialsServer(CredentialsServerArgs),
}

/// Logging, for the subcommands that log (not the offline ones, nor the sidecar).
#[derive(Debug, Args)]
pub struct LoggingArgs {
    /// Debug logging.
    #[arg(long, env = "KUBE_AWS_IAM_CONTROLLER_DEBUG")]
    pub debug: bool,
    /// Log format (RUST_LOG filters; --debug sets the default level to debug).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "KUBE_AWS_IAM_CONTROLLER_LOG_FORMAT")]
    pub log_format: LogFormat,
}

/// `run`: a pass's flags and the loop's.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub pass: PassArgs,
    /// Longest time between passes of `run` (at least 1s); with --watch a pass also starts
    /// when a watched object changes and when something falls due.
    #[arg(long, default_value = "10s", value_parser = interval, env = "KUBE_AWS_IAM_CONTROLLER_INTERVAL")]
    pub interval: Duration,
    /// `run` keeps its state with watches and passes on change, when due and every
    /// --interval, reading no list; `--watch=false` lists everything every --interval instead.
    /// `once`, `plan` and dry runs always list.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL", env = "KUBE_AWS_IAM_CONTROLLER_WATCH")]
    pub watch: bool,
    /// Address of /healthz, /readyz and /metrics in `run` (`:8080` = all interfaces).
    #[arg(
        long,
        default_value = ":8080",
        env = "KUBE_AWS_IAM_CONTROLLER_HEALTH_ADDR"
    )]
    pub health_addr: String,
    #[command(flatten)]
    pub logging: LoggingArgs,
}

/// `once`: one pass.
#[derive(Debug, Args)]
pub struct OnceArgs {
    #[command(flatten)]
    pub pass: PassArgs,
    #[command(flatten)]
    pub logging: LoggingArgs,
}

/// What a pass against the cluster reads: `run` and `once`.
#[derive(Debug, Args)]
pub struct PassArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub planner: PlannerArgs,
    #[command(flatten)]
    pub sts: StsArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Assume no role and write nothing; print the plan of each pass (only the read-only
    /// GetCallerIdentity is called, to discover the base role ARN when it is not given).
    #[arg(long, env = "KUBE_AWS_IAM_CONTROLLER_DRY_RUN")]
    pub dry_run: bool,
    /// Actions (STS call and writes) in flight at once.
    #[arg(long, default_value = "8", env = "KUBE_AWS_IAM_CONTROLLER_CONCURRENCY")]
    pub concurrency: NonZeroUsize,
    #[command(flatten)]
    pub lease: LeaseArgs,
    /// The controller's own AWSIAMRole (NAMESPACE/NAME), refreshed before every other role
    /// in a pass (default with seed credentials: kube-system/kube-aws-iam-controller-iam-role).
    #[arg(
        long,
        value_name = "NAMESPACE/NAME",
        env = "KUBE_AWS_IAM_CONTROLLER_SELF_ROLE"
    )]
    pub self_role: Option<String>,
}

/// `plan`: a dry run, offline (`--from`) or against the cluster.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Plan offline from a YAML file or a directory of YAML files (AWSIAMRoles, Secrets,
    /// Namespaces; multi-document and `kind: List` accepted) instead of a cluster.
    #[arg(long, value_name = "PATH", env = "KUBE_AWS_IAM_CONTROLLER_FROM")]
    pub from: Option<PathBuf>,
    /// The time to plan for (RFC 3339), for reproducible output; default: now.
    #[arg(long, value_name = "RFC3339", env = "KUBE_AWS_IAM_CONTROLLER_NOW")]
    pub now: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub planner: PlannerArgs,
    #[command(flatten)]
    pub sts: StsArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub logging: LoggingArgs,
}

/// Which cluster, and which part of it.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Kubernetes API server URL, overriding kubeconfig / in-cluster configuration.
    #[arg(long, value_name = "URL", env = "KUBE_AWS_IAM_CONTROLLER_APISERVER")]
    pub apiserver: Option<String>,
    /// Only serve AWSIAMRoles of this namespace (default: all namespaces).
    #[arg(
        long,
        value_name = "NAMESPACE",
        value_parser = namespace,
        env = "KUBE_AWS_IAM_CONTROLLER_NAMESPACE"
    )]
    pub namespace: Option<String>,
}

/// What the planner decides by.
#[derive(Debug, Args)]
pub struct PlannerArgs {
    /// Smallest refresh margin: credentials are refreshed once no more than
    /// max(refresh-limit, lifetime/2) + jitter remains (capped at lifetime - 3m); at least 1m.
    #[arg(long, default_value = "15m", value_parser = refresh_limit, env = "KUBE_AWS_IAM_CONTROLLER_REFRESH_LIMIT")]
    pub refresh_limit: Duration,
    /// Prefix for bare role names, e.g. arn:aws:iam::123456789012:role/ (default: discovered
    /// with STS GetCallerIdentity, in dry runs too; required by `plan --from` when a role uses
    /// a bare name).
    #[arg(
        long,
        value_name = "ARN",
        env = "KUBE_AWS_IAM_CONTROLLER_BASE_ROLE_ARN"
    )]
    pub base_role_arn: Option<String>,
    /// Only allow roles a namespace lists in its iam.amazonaws.com/allowed-roles annotation.
    #[arg(long, env = "KUBE_AWS_IAM_CONTROLLER_NAMESPACE_RESTRICTIONS")]
    pub namespace_restrictions: bool,
    /// Allow only roles matching one of these globs, in every namespace (repeat the flag for
    /// several; a bare pattern gets the base role ARN; the environment variable holds one).
    #[arg(
        long = "allowed-role-pattern",
        value_name = "GLOB",
        env = "KUBE_AWS_IAM_CONTROLLER_ALLOWED_ROLE_PATTERN",
        value_delimiter = ','
    )]
    pub allowed_role_patterns: Vec<String>,
    /// Tag each session with kubernetes-namespace, kubernetes-awsiamrole (and kubernetes-cluster
    /// with --cluster-name); trust policies must allow sts:TagSession.
    #[arg(long, env = "KUBE_AWS_IAM_CONTROLLER_SESSION_TAGS")]
    pub session_tags: bool,
    /// Set the session's SourceIdentity to its session name (<namespace>.<name>); trust policies
    /// must allow sts:SetSourceIdentity.
    #[arg(long, env = "KUBE_AWS_IAM_CONTROLLER_SOURCE_IDENTITY")]
    pub source_identity: bool,
    /// Send an external ID built from {namespace}, {name} and {cluster}, e.g.
    /// "{cluster}/{namespace}", so a role's trust policy can pin who may obtain it.
    #[arg(
        long,
        value_name = "FORMAT",
        env = "KUBE_AWS_IAM_CONTROLLER_EXTERNAL_ID_FORMAT"
    )]
    pub external_id_format: Option<String>,
    /// This cluster's name, for the kubernetes-cluster tag and {cluster}.
    #[arg(long, env = "KUBE_AWS_IAM_CONTROLLER_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
}

/// How STS is reached and how fast it is called.
#[derive(Debug, Args)]
pub struct StsArgs {
    /// AWS region for STS (default: the standard AWS chain, e.g. AWS_REGION).
    #[arg(long, env = "KUBE_AWS_IAM_CONTROLLER_REGION")]
    pub region: Option<String>,
    /// Assume this role (name or ARN) first and assume application roles with it.
    #[arg(
        long,
        value_name = "NAME|ARN",
        env = "KUBE_AWS_IAM_CONTROLLER_ASSUME_ROLE"
    )]
    pub assume_role: Option<String>,
    /// STS AssumeRole calls per second, at most; fractions allowed (0.5 = one every 2s).
    #[arg(
        long,
        default_value = "10",
        value_parser = sts_rate,
        env = "KUBE_AWS_IAM_CONTROLLER_STS_RATE"
    )]
    pub sts_rate: CallRate,
    /// STS calls that may start at once before the rate applies.
    #[arg(long, default_value = "1", env = "KUBE_AWS_IAM_CONTROLLER_STS_BURST")]
    pub sts_burst: NonZeroU32,
}

/// How plans are printed (dry runs and `plan`).
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Plan output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text, env = "KUBE_AWS_IAM_CONTROLLER_OUTPUT")]
    pub output: OutputFormat,
    /// Also list up-to-date roles in text and diff output.
    #[arg(long, env = "KUBE_AWS_IAM_CONTROLLER_VERBOSE")]
    pub verbose: bool,
}

/// Leader election.
#[derive(Debug, Args)]
pub struct LeaseArgs {
    /// Take the leader Lease before passing (`run` and `once`), so replicas and a CronJob
    /// never pass at the same time; `--leader-elect=false` turns it off.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL", env = "KUBE_AWS_IAM_CONTROLLER_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = crate::controller::lease::DEFAULT_LEASE_NAME, env = "KUBE_AWS_IAM_CONTROLLER_LEASE_NAME")]
    pub lease_name: String,
    /// Namespace of the leader Lease (default: POD_NAMESPACE, else kube-system).
    #[arg(
        long,
        value_name = "NAMESPACE",
        env = "KUBE_AWS_IAM_CONTROLLER_LEASE_NAMESPACE"
    )]
    pub lease_namespace: Option<String>,
    /// How long a Lease holder that stopped renewing keeps it.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration, env = "KUBE_AWS_IAM_CONTROLLER_LEASE_DURATION")]
    pub lease_duration: Duration,
    /// A leader that could not renew for this long stops acting (before the Lease expires).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, env = "KUBE_AWS_IAM_CONTROLLER_LEASE_RENEW_DEADLINE")]
    pub lease_renew_deadline: Duration,
    /// Time between attempts to take or renew the Lease.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration, env = "KUBE_AWS_IAM_CONTROLLER_LEASE_RETRY_PERIOD")]
    pub lease_retry_period: Duration,
    /// How long `once` waits for a Lease another controller holds before exiting with 2.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, env = "KUBE_AWS_IAM_CONTROLLER_LEASE_WAIT")]
    pub lease_wait: Duration,
}

/// The renderer knows nothing of clap; its formats are named here.
impl clap::ValueEnum for OutputFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &[OutputFormat::Text, OutputFormat::Diff, OutputFormat::Json]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            OutputFormat::Text => "text",
            OutputFormat::Diff => "diff",
            OutputFormat::Json => "json",
        }))
    }
}

/// Below a second, passes follow each other as fast as the API server answers, and /healthz
/// (which expects a pass within a few intervals) cannot be met.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// A smaller margin would replace credentials so late that pods fail before kubelet delivers.
const MIN_REFRESH_LIMIT: Duration = Duration::from_secs(60);

fn at_least(value: &str, min: Duration) -> Result<Duration, String> {
    let d = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    if d < min {
        return Err(format!(
            "must be at least {}",
            humantime::format_duration(min)
        ));
    }
    Ok(d)
}

fn interval(value: &str) -> Result<Duration, String> {
    at_least(value, MIN_INTERVAL)
}

fn refresh_limit(value: &str) -> Result<Duration, String> {
    at_least(value, MIN_REFRESH_LIMIT)
}

/// A Namespace name is an RFC 1123 label; empty means all namespaces, as in the original.
fn namespace(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Ok(String::new());
    }
    let valid = value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if valid {
        Ok(value.to_string())
    } else {
        Err("not a namespace name: at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit".into())
    }
}

fn sts_rate(value: &str) -> Result<CallRate, String> {
    value.parse()
}

impl ClusterArgs {
    /// `--namespace`, where an empty value means all namespaces (as in the original).
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref().filter(|ns| !ns.is_empty())
    }
}

/// `bootstrap`: the controller's own AWSIAMRole and its first Secret.
#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// The controller's own IAM role (a full role ARN). --namespace names the AWSIAMRole's
    /// namespace (default: kube-system).
    #[arg(long, value_name = "ARN", env = "KUBE_AWS_IAM_CONTROLLER_ROLE_ARN")]
    pub role_arn: String,
    /// Name of the AWSIAMRole and its Secret.
    #[arg(long, default_value = crate::controller::bootstrap::DEFAULT_NAME, env = "KUBE_AWS_IAM_CONTROLLER_NAME")]
    pub name: String,
    /// roleSessionDuration of a newly created AWSIAMRole, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = crate::domain::crd::DEFAULT_SESSION_DURATION, env = "KUBE_AWS_IAM_CONTROLLER_SESSION_DURATION")]
    pub session_duration: i64,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub planner: PlannerArgs,
    #[command(flatten)]
    pub sts: StsArgs,
    #[command(flatten)]
    pub logging: LoggingArgs,
}

/// `inject`: YAML in, YAML out.
#[derive(Clone, Debug, Args)]
pub struct InjectArgs {
    /// YAML files, or directories of *.yaml/*.yml files (sorted, not recursive), to read; `-`
    /// (the default) reads standard input.
    #[arg(value_name = "PATH|-")]
    pub paths: Vec<PathBuf>,
    /// Label the pod template of every workload (Pod, Deployment, StatefulSet, DaemonSet,
    /// ReplicaSet, Job, CronJob) with this AWSIAMRole, then inject it. A template already
    /// labelled keeps its own role.
    #[arg(long, value_name = "NAME", env = "KUBE_AWS_IAM_CONTROLLER_ROLE")]
    pub role: Option<String>,
    #[command(flatten)]
    pub mutation: MutationFlags,
}

/// `webhook`: the pod mutation over TLS.
#[derive(Debug, Args)]
pub struct WebhookArgs {
    /// Address of the TLS listener serving /mutate, /healthz, /readyz and /metrics (`:8443` =
    /// all interfaces).
    #[arg(
        long,
        value_name = "ADDR",
        default_value = ":8443",
        env = "KUBE_AWS_IAM_CONTROLLER_WEBHOOK_ADDR"
    )]
    pub webhook_addr: String,
    /// PEM certificate chain to serve (server certificate first); re-read when the file changes.
    #[arg(
        long,
        value_name = "PATH",
        env = "KUBE_AWS_IAM_CONTROLLER_TLS_CERT_FILE"
    )]
    pub tls_cert_file: PathBuf,
    /// PEM private key of the certificate; re-read when the file changes.
    #[arg(
        long,
        value_name = "PATH",
        env = "KUBE_AWS_IAM_CONTROLLER_TLS_KEY_FILE"
    )]
    pub tls_key_file: PathBuf,
    #[command(flatten)]
    pub mutation: MutationFlags,
    #[command(flatten)]
    pub logging: LoggingArgs,
}

/// The flags `inject` and `webhook` share: how a pod is mutated.
#[derive(Clone, Debug, Args)]
pub struct MutationFlags {
    /// Delivery for pods without the kube-aws-iam-controller/delivery annotation.
    #[arg(long, value_enum, default_value_t = Delivery::Process, env = "KUBE_AWS_IAM_CONTROLLER_DEFAULT_DELIVERY")]
    pub default_delivery: Delivery,
    /// Image of the credentials endpoint sidecar: this controller's own image.
    #[arg(
        long,
        value_name = "IMAGE",
        default_value = concat!("registry.example.com/kube-aws-iam-controller:", env!("CARGO_PKG_VERSION")),
        env = "KUBE_AWS_IAM_CONTROLLER_SIDECAR_IMAGE"
    )]
    pub sidecar_image: String,
    /// Loopback port of the credentials endpoint sidecar (must not clash with the pod's own).
    #[arg(long, value_name = "PORT", default_value_t = crate::delivery::DEFAULT_SIDECAR_PORT, env = "KUBE_AWS_IAM_CONTROLLER_SIDECAR_PORT")]
    pub sidecar_port: u16,
    /// Set AWS_REGION, AWS_DEFAULT_REGION and AWS_STS_REGIONAL_ENDPOINTS=regional in the chosen
    /// containers where they are not set.
    #[arg(
        long,
        value_name = "REGION",
        env = "KUBE_AWS_IAM_CONTROLLER_POD_REGION"
    )]
    pub pod_region: Option<String>,
}

/// `credentials-server`: the sidecar (for pods injected by earlier versions).
#[derive(Debug, Args)]
pub struct CredentialsServerArgs {
    /// Loopback address to serve on (127.0.0.0/8 or ::1; anything else is refused).
    #[arg(
        long,
        value_name = "ADDR",
        default_value_t = SocketAddr::from(([127, 0, 0, 1], crate::delivery::DEFAULT_SIDECAR_PORT)),
        env = "KUBE_AWS_IAM_CONTROLLER_LISTEN"
    )]
    pub listen: SocketAddr,
    /// The mounted Secret's credentials.json (credential_process document); re-read whenever
    /// it changes.
    #[arg(
        long,
        value_name = "PATH",
        default_value = crate::delivery::credentials_server::DEFAULT_CREDENTIALS_FILE,
        env = "KUBE_AWS_IAM_CONTROLLER_CREDENTIALS_FILE"
    )]
    pub credentials_file: PathBuf,
    /// Ask the server running at --listen for /ready and exit 0 if it is ready, 1 if not (the
    /// sidecar's startup probe; needs no token).
    #[arg(long)]
    pub probe: bool,
}

/// The mutation knows nothing of clap; its delivery modes are named here.
impl clap::ValueEnum for Delivery {
    fn value_variants<'a>() -> &'a [Self] {
        &[Delivery::Process, Delivery::Endpoint]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let help = match self {
            Delivery::Process => {
                "`AWS_SHARED_CREDENTIALS_FILE` pointing at `credentials.process` (`credential_process = cat …`): needs `cat` (and for some SDKs `sh`) in the image"
            }
            Delivery::Endpoint => {
                "A credentials endpoint sidecar on 127.0.0.1: works in any image, refreshes for every SDK"
            }
        };
        Some(clap::builder::PossibleValue::new(self.as_str()).help(help))
    }
}

/// Logging knows nothing of clap either.
impl clap::ValueEnum for LogFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &[LogFormat::Text, LogFormat::Json]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_subcommand_takes_its_own_flags() {
        let cli = Cli::try_parse_from([
            "x",
            "once",
            "--dry-run",
            "--output",
            "json",
            "--log-format",
            "json",
        ])
        .unwrap();
        let Some(Command::Once(once)) = cli.command else {
            panic!("not once: {:?}", cli.command)
        };
        assert_eq!(once.pass.output.output, OutputFormat::Json);
        assert_eq!(once.logging.log_format, LogFormat::Json);
        assert!(once.pass.dry_run);
        // Flags of other subcommands are usage errors, not silently ignored.
        for args in [
            &["x", "inject", "--sts-rate", "5", "-"][..],
            &["x", "once", "--interval", "3s"],
            &["x", "plan", "--lease-name", "x"],
            &["x", "credentials-server", "--debug"],
            &[
                "x",
                "webhook",
                "--tls-cert-file",
                "c",
                "--tls-key-file",
                "k",
                "--namespace",
                "a",
            ],
            &["x", "--interval", "3s", "once"],
        ] {
            let err = Cli::try_parse_from(args).expect_err(&format!("{args:?} parsed"));
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn the_bare_binary_takes_runs_flags() {
        let cli =
            Cli::try_parse_from(["x", "--interval", "3s", "--debug", "--watch=false"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.run.interval, Duration::from_secs(3));
        assert!(cli.run.logging.debug);
        assert!(!cli.run.watch);
    }

    #[test]
    fn the_subcommand_reads_the_same_variables_as_the_binary() {
        use clap::CommandFactory as _;
        let command = Cli::command();
        let subcommand = command
            .find_subcommand("credentials-server")
            .expect("the credentials-server subcommand");
        let env = |id: &str| {
            subcommand
                .get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_env())
                .and_then(|e| e.to_str())
                .map(str::to_string)
        };
        assert_eq!(
            env("listen").as_deref(),
            Some(kube_aws_iam_credentials_server::LISTEN_ENV)
        );
        assert_eq!(
            env("credentials_file").as_deref(),
            Some(kube_aws_iam_credentials_server::CREDENTIALS_FILE_ENV)
        );
    }
}
