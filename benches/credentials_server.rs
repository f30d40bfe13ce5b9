//! What the credentials endpoint sidecar costs a pod: the compiled binary (release profile,
//! as shipped) serving 1,000 requests over one keep-alive connection and 1,000 over fresh
//! connections, its answer latency (p50/p99/max, measured at the client over loopback), its
//! peak resident memory (VmHWM) and the CPU it uses while nobody asks (utime+stime ticks over
//! a few idle seconds, with an idle keep-alive connection open).
//!
//! Run: `cargo bench --bench credentials_server`. Budget per pod: peak RSS ≤ 8 MiB, p99 < 1 ms,
//! no CPU while idle. Figures over budget are flagged; set `BENCH_ENFORCE=1` to make them fail.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REQUESTS: usize = 1_000;
const TOKEN: &str = "3f2c1f9e-6a0b-4c47-9d2e-bench0000001";
const IDLE: Duration = Duration::from_secs(3);
const RSS_BUDGET_KIB: u64 = 8 * 1024;
const P99_BUDGET: Duration = Duration::from_millis(1);

fn main() {
    let volume = Volume::new();
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let bin = env!("CARGO_BIN_EXE_kube-aws-iam-controller");
    let child = Command::new(bin)
        .args(["credentials-server", "--listen", &addr.to_string()])
        .arg("--credentials-file")
        .arg(volume.dir.join("credentials.json"))
        .env_clear()
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
    let server = Server(child);
    let pid = server.0.id();
    wait_ready(addr);
    let started = status_kib(pid, "VmRSS");

    let mut keep_alive = Vec::with_capacity(REQUESTS);
    let mut stream = connect(addr);
    for _ in 0..REQUESTS {
        let start = Instant::now();
        let (status, body) = exchange(&mut stream, "/credentials", true);
        keep_alive.push(start.elapsed());
        check(status, &body);
    }
    let mut fresh = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let start = Instant::now();
        let mut stream = connect(addr);
        let (status, body) = exchange(&mut stream, "/credentials", false);
        fresh.push(start.elapsed());
        check(status, &body);
    }
    // After a swap the first answer includes the re-read; later ones do not.
    let mut after_swap = Vec::with_capacity(20);
    for i in 0..20 {
        volume.swap(i + 2);
        let start = Instant::now();
        let (status, body) = exchange(&mut stream, "/credentials", true);
        after_swap.push(start.elapsed());
        check(status, &body);
        assert!(
            body.contains(&format!("AKIDBENCH{:04}", i + 2)),
            "the swapped credentials were not served"
        );
    }

    let peak = status_kib(pid, "VmHWM");
    let rss = status_kib(pid, "VmRSS");
    let anon = status_kib(pid, "RssAnon");
    let file = status_kib(pid, "RssFile");
    let threads = status_kib(pid, "Threads");

    // Idle: one keep-alive connection stays open (as an SDK's pool would keep it).
    let before = cpu_ticks(pid);
    std::thread::sleep(IDLE);
    let idle_ticks = cpu_ticks(pid) - before;
    drop(stream);

    println!("credentials-server benchmark ({REQUESTS} requests each, release binary)");
    let keep_alive = summary("keep-alive connection", &mut keep_alive);
    let fresh = summary("fresh connection per request", &mut fresh);
    summary("first request after a volume swap", &mut after_swap);
    println!(
        "memory: peak RSS (VmHWM) {peak} KiB; now {rss} KiB = {anon} KiB anonymous + {file} KiB \
         file-backed; RSS after start-up {started} KiB; threads {threads}"
    );
    println!(
        "idle CPU: {idle_ticks} ticks (utime+stime) in {} s with a keep-alive connection open",
        IDLE.as_secs()
    );

    let mut over = Vec::new();
    if peak > RSS_BUDGET_KIB {
        over.push(format!("peak RSS {peak} KiB > {RSS_BUDGET_KIB} KiB"));
    }
    for (name, p99) in [("keep-alive", keep_alive), ("fresh", fresh)] {
        if p99 >= P99_BUDGET {
            over.push(format!("{name} p99 {p99:?} >= {P99_BUDGET:?}"));
        }
    }
    if idle_ticks != 0 {
        over.push(format!("{idle_ticks} CPU ticks while idle"));
    }
    if over.is_empty() {
        println!("budget (RSS <= 8 MiB, p99 < 1 ms, no idle CPU): met");
    } else {
        println!(
            "budget (RSS <= 8 MiB, p99 < 1 ms, no idle CPU): OVER: {}",
            over.join("; ")
        );
        if std::env::var_os("BENCH_ENFORCE").is_some() {
            std::process::exit(1);
        }
    }
}

/// Prints p50/p99/max and returns p99.
fn summary(name: &str, samples: &mut [Duration]) -> Duration {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    let (p50, p99) = (at(0.50), at(0.99));
    println!(
        "{name:<36} p50 {:>7.1} µs   p99 {:>7.1} µs   max {:>7.1} µs",
        micros(p50),
        micros(p99),
        micros(samples[samples.len() - 1])
    );
    p99
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn check(status: u16, body: &str) {
    assert_eq!(status, 200, "unexpected answer: {}", body.len());
    assert!(
        body.contains("\"AccessKeyId\""),
        "not a credentials document"
    );
}

/// The server process, killed and reaped on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A kubelet-style Secret volume: `..<n>/credentials.json`, `..data -> ..<n>`,
/// `credentials.json -> ..data/credentials.json`; swapped by renaming a new `..data` link.
struct Volume {
    dir: PathBuf,
}

impl Volume {
    fn new() -> Volume {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("credentials-server-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the volume directory");
        let volume = Volume { dir };
        volume.swap(1);
        symlink(
            "..data/credentials.json",
            volume.dir.join("credentials.json"),
        )
        .expect("linking credentials.json");
        volume
    }

    fn swap(&self, n: usize) {
        let payload = format!("..{n:04}");
        std::fs::create_dir(self.dir.join(&payload)).expect("creating a payload directory");
        let expiration = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
        let document = format!(
            r#"{{"Version":1,"AccessKeyId":"AKIDBENCH{n:04}","SecretAccessKey":"bench-secret-{n}","SessionToken":"bench-token-{n}","Expiration":"{}"}}"#,
            kube_aws_iam_controller::secret::format_time(expiration)
        );
        std::fs::write(self.dir.join(&payload).join("credentials.json"), document)
            .expect("writing credentials.json");
        let tmp = self.dir.join("..data_tmp");
        symlink(&payload, &tmp).expect("linking ..data_tmp");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swapping ..data");
        if n > 1 {
            let _ = std::fs::remove_dir_all(self.dir.join(format!("..{:04}", n - 1)));
        }
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connecting to the server");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    stream
}

fn wait_ready(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(mut stream) = TcpStream::connect(addr)
            && exchange(&mut stream, "/ready", false).0 == 200
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the server did not become ready at {addr}");
}

/// One HTTP/1.1 GET with the token; returns status and body.
fn exchange(stream: &mut TcpStream, path: &str, keep_alive: bool) -> (u16, String) {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {TOKEN}\r\nConnection: {connection}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).expect("sending");
    let mut reader = BufReader::new(&*stream);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .expect("reading the status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("an HTTP status line");
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).expect("reading a header");
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().expect("a content length");
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("reading the body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// utime + stime of the process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // Fields after the command name (which may hold spaces) start at field 3.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| -> u64 { fields[i - 3].parse().expect("a number in /proc stat") };
    field(14) + field(15)
}
