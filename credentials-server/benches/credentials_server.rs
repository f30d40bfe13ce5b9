//! What the credentials endpoint sidecar costs a pod, measured on the compiled release binary
//! (as the image ships it) against a kubelet-style Secret volume:
//!
//! - resident memory, every page counted (VmRSS and its peak VmHWM from /proc, split into
//!   anonymous and file-backed pages; PSS from smaps_rollup for reference): after start-up,
//!   after 2,000 sequential requests, and at the peak of 16 concurrent keep-alive clients;
//! - answer latency at the client over loopback (p50/p99/max): 1,000 requests on one
//!   keep-alive connection, 1,000 on fresh connections, 16 clients at once, and the first
//!   answer after each of 20 volume swaps (re-read and re-render);
//! - CPU while idle: utime+stime ticks over 10 s with one idle keep-alive connection open.
//!
//! Run: `cargo bench --bench credentials_server` (builds only this crate). To compare with
//! the controller's `credentials-server` subcommand (what pods injected by earlier versions
//! run), name the controller binary: `BENCH_COMPARE=target/release/kube-aws-iam-controller
//! cargo bench --bench credentials_server` (several, separated by `:`). Budget per pod:
//! resident ≤ 4 MiB, p99 < 1 ms, no CPU while idle; figures over it are flagged, and
//! `BENCH_ENFORCE=1` makes them fail the run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use kube_aws_iam_credentials_server::time::Timestamp;

const REQUESTS: usize = 1_000;
const CLIENTS: usize = 16;
const REQUESTS_PER_CLIENT: usize = 500;
const SWAPS: usize = 20;
const TOKEN: &str = "3f2c1f9e-6a0b-4c47-9d2e-bench0000001";
const IDLE: Duration = Duration::from_secs(10);
const RSS_BUDGET_KIB: u64 = 4 * 1024;
const P99_BUDGET: Duration = Duration::from_millis(1);

fn main() {
    let mut subjects = vec![Subject {
        name: "credentials-server (binary)".into(),
        program: PathBuf::from(env!("CARGO_BIN_EXE_credentials-server")),
        prefix: vec![],
    }];
    if let Some(others) = std::env::var_os("BENCH_COMPARE") {
        for program in std::env::split_paths(&others) {
            subjects.push(Subject {
                name: format!("{} credentials-server", program.display()),
                program,
                prefix: vec!["credentials-server".into()],
            });
        }
    }
    let mut over = Vec::new();
    let mut table = Vec::new();
    for subject in &subjects {
        let figures = measure(subject);
        if figures.peak_kib > RSS_BUDGET_KIB {
            over.push(format!(
                "{}: peak RSS {} KiB > {RSS_BUDGET_KIB} KiB",
                subject.name, figures.peak_kib
            ));
        }
        for (what, p99) in [
            ("keep-alive", figures.keep_alive_p99),
            ("fresh", figures.fresh_p99),
            ("concurrent", figures.concurrent_p99),
        ] {
            if p99 >= P99_BUDGET {
                over.push(format!(
                    "{}: {what} p99 {p99:?} >= {P99_BUDGET:?}",
                    subject.name
                ));
            }
        }
        if figures.idle_ticks != 0 {
            over.push(format!(
                "{}: {} CPU ticks while idle",
                subject.name, figures.idle_ticks
            ));
        }
        table.push((subject.name.clone(), figures));
    }
    if table.len() > 1 {
        println!("\ncomparison");
        println!(
            "{:<60} {:>9} {:>9} {:>9} {:>10} {:>10} {:>6}",
            "", "size KiB", "RSS KiB", "peak KiB", "p99 ka µs", "p99 16 µs", "idle"
        );
        for (name, f) in &table {
            println!(
                "{name:<60} {:>9} {:>9} {:>9} {:>10.1} {:>10.1} {:>6}",
                f.size_kib,
                f.rss_after_start_kib,
                f.peak_kib,
                micros(f.keep_alive_p99),
                micros(f.concurrent_p99),
                f.idle_ticks
            );
        }
    }
    let budget = "budget (resident <= 4 MiB, p99 < 1 ms, no idle CPU)";
    if over.is_empty() {
        println!("\n{budget}: met");
    } else {
        println!("\n{budget}: OVER: {}", over.join("; "));
        if std::env::var_os("BENCH_ENFORCE").is_some() {
            std::process::exit(1);
        }
    }
}

struct Subject {
    name: String,
    program: PathBuf,
    /// Arguments before the flags (the subcommand's name for the controller).
    prefix: Vec<String>,
}

struct Figures {
    size_kib: u64,
    rss_after_start_kib: u64,
    peak_kib: u64,
    keep_alive_p99: Duration,
    fresh_p99: Duration,
    concurrent_p99: Duration,
    idle_ticks: u64,
}

fn measure(subject: &Subject) -> Figures {
    let volume = Volume::new();
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let child = Command::new(&subject.program)
        .args(&subject.prefix)
        .args(["--listen", &addr.to_string()])
        .arg("--credentials-file")
        .arg(volume.dir.join("credentials.json"))
        .env_clear()
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", subject.program.display()));
    let server = Server(child);
    let pid = server.0.id();
    wait_ready(addr);
    let started = Memory::of(pid);

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
    let sequential = Memory::of(pid);

    // After a swap the first answer includes the re-read; later ones do not.
    let mut after_swap = Vec::with_capacity(SWAPS);
    for i in 0..SWAPS {
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

    // Load: clients at once, each on its own keep-alive connection.
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut stream = connect(addr);
                barrier.wait();
                let mut samples = Vec::with_capacity(REQUESTS_PER_CLIENT);
                for _ in 0..REQUESTS_PER_CLIENT {
                    let start = Instant::now();
                    let (status, body) = exchange(&mut stream, "/credentials", true);
                    samples.push(start.elapsed());
                    check(status, &body);
                }
                (samples, stream)
            })
        })
        .collect();
    // Sample while the clients run (the peak is VmHWM anyway; this shows the threads).
    let mut threads_under_load = 0;
    while clients.iter().any(|c| !c.is_finished()) {
        threads_under_load = threads_under_load.max(Memory::of(pid).threads);
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut concurrent = Vec::with_capacity(CLIENTS * REQUESTS_PER_CLIENT);
    let mut open = Vec::new();
    for client in clients {
        let (samples, stream) = client.join().expect("a client thread");
        concurrent.extend(samples);
        open.push(stream);
    }
    let loaded = Memory::of(pid);
    drop(open);

    // Idle: one keep-alive connection stays open (as an SDK's pool would keep it).
    let before = cpu_ticks(pid);
    std::thread::sleep(IDLE);
    let idle_ticks = cpu_ticks(pid) - before;
    let idle = Memory::of(pid);
    drop(stream);

    let size_kib = std::fs::metadata(&subject.program)
        .map(|m| m.len() / 1024)
        .unwrap_or_default();
    println!("\n{} ({size_kib} KiB on disk)", subject.name);
    let keep_alive_p99 = summary("keep-alive connection", &mut keep_alive);
    let fresh_p99 = summary("fresh connection per request", &mut fresh);
    let concurrent_p99 = summary(
        &format!("{CLIENTS} keep-alive clients at once"),
        &mut concurrent,
    );
    summary("first request after a volume swap", &mut after_swap);
    println!("memory (KiB)            RSS = anon + file    PSS   threads");
    for (when, m) in [
        ("after start-up", &started),
        ("after 2,000 requests", &sequential),
        ("after 16 clients", &loaded),
        ("idle, 10 s later", &idle),
    ] {
        println!(
            "  {when:<22} {:>5} = {:>4} + {:>4}  {:>5}   {:>3}",
            m.rss, m.anon, m.file, m.pss, m.threads
        );
    }
    println!(
        "  peak RSS (VmHWM) {} KiB; most threads seen under load: {threads_under_load}",
        idle.peak
    );
    println!(
        "idle CPU: {idle_ticks} ticks (utime+stime) in {} s with a keep-alive connection open",
        IDLE.as_secs()
    );
    Figures {
        size_kib,
        rss_after_start_kib: started.rss,
        peak_kib: idle.peak,
        keep_alive_p99,
        fresh_p99,
        concurrent_p99,
        idle_ticks,
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
    assert_eq!(status, 200, "unexpected answer: {} bytes", body.len());
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
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "credentials-server-bench-{}-{}",
            std::process::id(),
            free_port()
        ));
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
        let now = Timestamp::now();
        let expiration = Timestamp {
            seconds: now.seconds + 3600,
            nanos: 0,
        };
        let document = format!(
            r#"{{"Version":1,"AccessKeyId":"AKIDBENCH{n:04}","SecretAccessKey":"bench-secret-{n}","SessionToken":"bench-token-{n}","Expiration":"{}"}}"#,
            expiration.to_rfc3339()
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

/// Memory figures of a process, in KiB (threads: a count).
struct Memory {
    rss: u64,
    peak: u64,
    anon: u64,
    file: u64,
    pss: u64,
    threads: u64,
}

impl Memory {
    fn of(pid: u32) -> Memory {
        let status = read_proc(pid, "status");
        let field = |text: &str, name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("{name} in /proc/{pid}"))
        };
        let rollup = read_proc(pid, "smaps_rollup");
        Memory {
            rss: field(&status, "VmRSS"),
            peak: field(&status, "VmHWM"),
            anon: field(&status, "RssAnon"),
            // File-backed and shared memory pages: both are in VmRSS.
            file: field(&status, "RssFile") + field(&status, "RssShmem"),
            pss: field(&rollup, "Pss"),
            threads: field(&status, "Threads"),
        }
    }
}

fn read_proc(pid: u32, file: &str) -> String {
    let path = Path::new("/proc").join(pid.to_string()).join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// utime + stime of the process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = read_proc(pid, "stat");
    // Fields after the command name (which may hold spaces) start at field 3.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| -> u64 { fields[i - 3].parse().expect("a number in /proc stat") };
    field(14) + field(15)
}
