//! The event-driven `run` against `--watch=false`, with the release binary, the loopback API
//! server (list + watch) and moto STS from `.venv` (`make venv`). Run with
//! `cargo bench --bench watch`; it prints figures and checks no timing.
//!
//! For each size in `WATCH_BENCH_SIZES` (default `2000,10000`) AWSIAMRoles, all served (a
//! managed Secret and a current status each), and each mode:
//! - **idle API cost**: requests and response bytes the API server sends the controller per
//!   minute with nothing changing (measured over `WATCH_BENCH_IDLE_SECS`, default 30 s, at the
//!   default `--interval 10s`), with leader election on as deployed, so the Lease's traffic is
//!   included; the test server sends a watch bookmark every second (a real one, about every
//!   minute);
//! - **resident memory**: `VmRSS` after the first pass and the idle window, and per role above
//!   an empty process (the same binary, watching an empty cluster), with the peak (`VmHWM`);
//! - **reaction**: an AWSIAMRole created at a random moment until its Secret exists, p50/p99
//!   over `WATCH_BENCH_CREATES` (default 100) creates with `--watch`, `WATCH_BENCH_LIST_CREATES`
//!   (default 10) with `--watch=false`.
//!
//! Then, at the first size: a leader take-over (two replicas; the leader gets SIGTERM or
//! SIGKILL: time until the standby, whose state is warm, has passed as leader) and a cold pass
//! of `WATCH_BENCH_COLD` (default 300) new roles at `--sts-rate 100` against its floor N / r.
//!
//! `WATCH_BENCH_LOG` sets the controllers' `RUST_LOG` (default `warn`); allocator variables
//! (`MALLOC_*`, `LD_PRELOAD`) pass through to them.
//!
//! Absolute times include the fake API behind the test server (every list clones and
//! serialises the whole kind) and moto (about 6 ms per AssumeRole).

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::{env_num, mib, new_role, proc_status_of, served};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use kube_aws_iam_controller::domain::crd::AWSIAMRole;
use test_apiserver::ApiServer;

/// Counts live heap bytes and blocks, so the lean state's share is measured exactly (before
/// the allocator's own overhead, which `VmRSS` includes).
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    pub static BYTES: AtomicUsize = AtomicUsize::new(0);
    pub static BLOCKS: AtomicUsize = AtomicUsize::new(0);

    pub struct Counting;

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            BYTES.fetch_add(layout.size(), Relaxed);
            BLOCKS.fetch_add(1, Relaxed);
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            BYTES.fetch_sub(layout.size(), Relaxed);
            BLOCKS.fetch_sub(1, Relaxed);
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            BYTES.fetch_add(new_size, Relaxed);
            BYTES.fetch_sub(layout.size(), Relaxed);
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(bench()) {
        println!("FAILED: {e}");
        std::process::exit(1);
    }
}

async fn bench() -> Result<(), String> {
    let sizes: Vec<usize> = std::env::var("WATCH_BENCH_SIZES")
        .unwrap_or_else(|_| "2000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let idle = Duration::from_secs(env_num("WATCH_BENCH_IDLE_SECS", 30) as u64);
    lean_share(sizes.iter().copied().max().unwrap_or(10_000));
    let moto = Moto::start()?;
    println!(
        "watch bench: release binary, loopback API server (kube-fake-client), moto STS; idle window {}s",
        idle.as_secs()
    );

    let empty = ApiServer::start().await;
    let controller = Controller::start(&empty, &moto, &["--watch=true"], "empty")?;
    controller.wait_ready(Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let empty_rss = controller.rss();
    println!(
        "empty process (--watch, no AWSIAMRole): RSS {:.1} MiB",
        mib(empty_rss)
    );
    drop(controller);

    for &n in &sizes {
        println!("\n{n} AWSIAMRoles, all served");
        let (roles, secrets) = served(n, Timestamp::now());
        let server = ApiServer::builder()
            .objects(roles)
            .objects(secrets)
            .start()
            .await;
        for watch in [true, false] {
            let mode = if watch { "--watch" } else { "--watch=false" };
            let flag = format!("--watch={watch}");
            // As deployed: with leader election, so the Lease's traffic is counted too.
            let lease = if watch { "idle-watch" } else { "idle-list" };
            let flags = [flag.as_str(), "--leader-elect=true", "--lease-name", lease];
            let controller = Controller::start(&server, &moto, &flags, mode)?;
            controller.wait_ready(Duration::from_secs(300)).await?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            server.clear_requests();
            let bytes_before = server.bytes_sent();
            tokio::time::sleep(idle).await;
            let bytes = server.bytes_sent() - bytes_before;
            let requests = server.requests();
            let per_minute = 60.0 / idle.as_secs_f64();
            let rss = controller.rss();
            println!(
                "  {mode:<14} idle: {:>7.0} requests/min, {:>10.3} MB/min ({}); RSS {:.1} MiB, {:.2} KiB per role above empty (peak {:.1} MiB)",
                requests.len() as f64 * per_minute,
                bytes as f64 * per_minute / 1e6,
                tally(&requests),
                mib(rss),
                rss.saturating_sub(empty_rss) as f64 / 1024.0 / n as f64,
                mib(controller.peak()),
            );
            let creates = if watch {
                env_num("WATCH_BENCH_CREATES", 100)
            } else {
                env_num("WATCH_BENCH_LIST_CREATES", 10)
            };
            let mut reactions = reaction(&server, creates, &format!("{n}-{watch}")).await?;
            reactions.sort_by(f64::total_cmp);
            if !reactions.is_empty() {
                println!(
                    "  {mode:<14} reaction (create → Secret) over {} creates: p50 {:.3}s, p99 {:.3}s, max {:.3}s",
                    reactions.len(),
                    percentile(&reactions, 0.50),
                    percentile(&reactions, 0.99),
                    reactions[reactions.len() - 1],
                );
            }
        }
        if n == sizes[0] && env_num("WATCH_BENCH_TAKEOVER", 1) > 0 {
            takeover(&server, &moto).await?;
        }
    }
    if env_num("WATCH_BENCH_COLD", 300) > 0 {
        cold(&moto).await?;
    }
    Ok(())
}

/// What the watched state itself holds per role: `n` served roles and their Secrets decoded and
/// kept in lean form, as the store keeps them (each in a hash table found by the key the object
/// carries), measured in this process (fresh heap, so little fragmentation): the floor of what
/// `run` can reach.
fn lean_share(n: usize) {
    use kube_aws_iam_controller::domain::model::{ObservedRole, ObservedSecret};
    use std::hash::BuildHasher as _;
    use std::sync::Arc;
    let (roles, secrets) = served(n, Timestamp::now());
    let live = || {
        (
            counting::BYTES.load(Relaxed),
            counting::BLOCKS.load(Relaxed),
        )
    };
    let roles: Vec<serde_json::Value> = roles
        .iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .collect();
    let secrets: Vec<serde_json::Value> = secrets
        .iter()
        .map(|s| serde_json::to_value(s).unwrap())
        .collect();
    let before = common::proc_status("VmRSS");
    let keys = std::hash::RandomState::new();
    let mut kept_roles = hashbrown::HashTable::new();
    let mut kept_secrets = hashbrown::HashTable::new();
    let start = live();
    for v in &roles {
        let r = Arc::new(ObservedRole::from_value(v, "").expect("role"));
        let key = |r: &Arc<ObservedRole>| keys.hash_one((r.namespace.as_str(), r.name.as_str()));
        kept_roles.insert_unique(key(&r), r, key);
    }
    let after_roles = live();
    for v in &secrets {
        let s = kube_aws_iam_controller::domain::secret::lean(
            ObservedSecret::from_value(v, "").expect("secret"),
        );
        let s = Arc::new(s);
        let key = |s: &Arc<ObservedSecret>| keys.hash_one((s.namespace.as_str(), s.name.as_str()));
        kept_secrets.insert_unique(key(&s), s, key);
    }
    let after_secrets = live();
    let after = common::proc_status("VmRSS");
    let share = |(b0, a0): (usize, usize), (b1, a1): (usize, usize)| {
        format!(
            "{:.0} B in {:.1} allocations",
            b1.saturating_sub(b0) as f64 / n as f64,
            a1.saturating_sub(a0) as f64 / n as f64
        )
    };
    println!(
        "lean state per role, as requested from the allocator (table slot included): AWSIAMRole {}, Secret {}",
        share(start, after_roles),
        share(after_roles, after_secrets),
    );
    println!(
        "lean state in process: {n} roles and Secrets hold {:.1} MiB, {:.2} KiB per role",
        mib(after.saturating_sub(before)),
        after.saturating_sub(before) as f64 / 1024.0 / n as f64
    );
    drop((kept_roles, kept_secrets));
}

/// `creates` new AWSIAMRoles, each at a random moment after the last one was served; the
/// seconds from each create until its Secret exists.
async fn reaction(server: &ApiServer, creates: usize, tag: &str) -> Result<Vec<f64>, String> {
    let client = server.client();
    let mut times = Vec::with_capacity(creates);
    for i in 0..creates {
        // A random pause (0–400 ms), so creates fall anywhere within the loop's timers.
        let pause = Timestamp::now().subsec_nanosecond() as u64 % 400;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let mut role = new_role(1_000_000 + i);
        role.metadata.name = Some(format!("react-{tag}-{i}"));
        role.metadata.uid = None;
        let ns = role.metadata.namespace.clone().unwrap_or_default();
        let roles: Api<AWSIAMRole> = Api::namespaced(client.clone(), &ns);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let name = role.metadata.name.clone().unwrap_or_default();
        let start = Instant::now();
        roles
            .create(&PostParams::default(), &role)
            .await
            .map_err(|e| format!("create {name}: {e}"))?;
        loop {
            if secrets.get_opt(&name).await.ok().flatten().is_some() {
                break;
            }
            if start.elapsed() > Duration::from_secs(60) {
                return Err(format!("{name} was not served within 60 s"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(times)
}

/// Two replicas with leader election: the leader is stopped (SIGTERM, then in a second round
/// SIGKILL) and the standby, which watched all along, takes over.
async fn takeover(server: &ApiServer, moto: &Moto) -> Result<(), String> {
    for signal in ["TERM", "KILL"] {
        let flags = ["--leader-elect=true", "--lease-name", signal];
        let leader = Controller::start(server, moto, &flags, "leader")?;
        leader.wait_ready(Duration::from_secs(300)).await?;
        let standby = Controller::start(server, moto, &flags, "standby")?;
        standby.wait_ready(Duration::from_secs(300)).await?;
        // The standby has listed too (its state is warm) before the leader goes.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let stopped = Instant::now();
        leader.signal(signal);
        let deadline = Duration::from_secs(60);
        loop {
            let metrics = standby.metrics().await.unwrap_or_default();
            let leading = sample(&metrics, "kube_aws_iam_controller_leader") == Some(1.0);
            let passed = sample(
                &metrics,
                "kube_aws_iam_controller_passes_total{result=\"ok\"}",
            )
            .unwrap_or(0.0);
            if leading && passed >= 1.0 {
                break;
            }
            if stopped.elapsed() > deadline {
                return Err(format!("the standby did not take over within {deadline:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "  take-over after SIG{signal} of the leader: the warm standby passed as leader after {:.2}s",
            stopped.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// A cold pass: `WATCH_BENCH_COLD` new roles at `--sts-rate 100`, against the floor N / r.
async fn cold(moto: &Moto) -> Result<(), String> {
    let n = env_num("WATCH_BENCH_COLD", 300);
    let rate = 100.0;
    let roles: Vec<AWSIAMRole> = (0..n).map(new_role).collect();
    let server = ApiServer::builder().objects(roles).start().await;
    let controller = Controller::start(
        &server,
        moto,
        &["--sts-rate", "100", "--sts-burst", "1"],
        "cold",
    )?;
    controller.wait_ready(Duration::from_secs(300)).await?;
    let metrics = controller.metrics().await.unwrap_or_default();
    let took = sample(
        &metrics,
        "kube_aws_iam_controller_pass_duration_seconds_sum",
    )
    .unwrap_or(f64::NAN);
    let served = Api::<Secret>::all(server.client())
        .list(&Default::default())
        .await
        .map(|l| l.items.len())
        .unwrap_or(0);
    let floor = n as f64 / rate;
    println!(
        "\ncold pass (--watch): {n} new roles at --sts-rate 100: {took:.2}s for the first pass(es), {served} served; floor N/r {floor:.2}s, ratio {:.3}",
        took / floor
    );
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// The first sample of `metric` (name with labels) in a Prometheus text exposition.
fn sample(metrics: &str, metric: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(metric)?.trim().parse().ok())
}

/// Requests by verb and resource, e.g. `watch secrets 1, update leases 30`.
fn tally(requests: &[test_apiserver::RecordedRequest]) -> String {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for r in requests {
        *counts
            .entry(format!("{} {}", r.verb, r.resource))
            .or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    if parts.is_empty() {
        "no request".into()
    } else {
        parts.join(", ")
    }
}

/// The release binary, running `run` against `server` and `moto`; killed on drop.
struct Controller {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Controller {
    fn start(server: &ApiServer, moto: &Moto, flags: &[&str], label: &str) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("watch-bench-{label}-"))
            .tempdir()
            .map_err(|e| e.to_string())?;
        let kubeconfig = server.write_kubeconfig(dir.path());
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut args = vec!["run", "--interval", "10s", "--health-addr", &addr];
        if !flags.iter().any(|f| f.starts_with("--leader-elect")) {
            args.push("--leader-elect=false");
        }
        args.extend_from_slice(flags);
        // Allocator tuning from the bench's environment reaches the controller.
        let allocator =
            std::env::vars().filter(|(k, _)| k.starts_with("MALLOC_") || k == "LD_PRELOAD");
        let child = Command::new(env!("CARGO_BIN_EXE_kube-aws-iam-controller"))
            .args(&args)
            .env_clear()
            .envs(allocator)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KUBECONFIG", kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("WATCH_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("AWS_ENDPOINT_URL_STS", &moto.endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", dir.path().join("none"))
            .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("start the controller: {e}"))?;
        Ok(Controller {
            child,
            port,
            _dir: dir,
        })
    }

    async fn wait_ready(&self, within: Duration) -> Result<(), String> {
        let start = Instant::now();
        while start.elapsed() < within {
            if http_get(self.port, "/readyz").is_some_and(|(code, _)| code == 200) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("the controller was not ready within {within:?}"))
    }

    async fn metrics(&self) -> Option<String> {
        http_get(self.port, "/metrics").map(|(_, body)| body)
    }

    fn rss(&self) -> u64 {
        proc_status_of(&self.child.id().to_string(), "VmRSS")
    }

    fn peak(&self) -> u64 {
        proc_status_of(&self.child.id().to_string(), "VmHWM")
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking HTTP/1.1 GET on loopback: (status, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())?;
    Some((code, body))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// moto's STS on a free loopback port, from the repository's `.venv`; killed on drop.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    fn start() -> Result<Moto, String> {
        let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
        if !bin.is_file() {
            return Err(format!(
                "{} is missing: run `make venv` first",
                bin.display()
            ));
        }
        let mut child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .env("PYTHONUNBUFFERED", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start moto: {e}"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Some(port) = line
                        .split("http://127.0.0.1:")
                        .nth(1)
                        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                        .and_then(|p| p.parse::<u16>().ok())
                    {
                        let _ = tx.send(port);
                    }
                }
            });
        }
        let port = rx
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| "moto did not say where it listens within 60 s".to_string())?;
        Ok(Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        })
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
