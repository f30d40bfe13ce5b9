//! Cost of a live pass (the performance targets of `docs/design.md`). Run with
//! `cargo bench --bench pass`; it prints figures and checks no timing, but exits 1 when a
//! steady-state pass writes or calls STS (a correctness bug).
//!
//! - steady state: `PASS_BENCH_ROLES` (default 10,000) AWSIAMRoles, each with a valid managed
//!   Secret and a matching status; best of 3 of (a) the paged lists alone, (a') `observe()`,
//!   (b) a full `Controller::pass()` whose executor has an aws-smithy-mocks STS client. The
//!   same is done at half the size so that time and memory growth can be judged.
//! - cold pass: `PASS_BENCH_COLD_ROLES` (300) new roles, `--sts-rate` `PASS_BENCH_STS_RATE`
//!   (100/s), burst 1, concurrency 8, STS answering instantly: against the floor N / r.
//! - planner scaling is `cargo bench --bench plan`.
//!
//! The API is kube-fake-client behind the tests' loopback HTTP server
//! (`test-apiserver/`), not the in-process fake: the fake cuts a list at `limit`
//! and never returns a `continue` token, so an in-process pass over more than 500 roles would
//! observe 500 random roles and 500 random Secrets. The server pages like a real API server, but
//! every list makes the fake clone and serialise every stored object of that kind (Secrets are
//! filtered by label only afterwards), then the server sorts, pages and serialises again, and
//! everything goes through loopback HTTP and JSON. Absolute times are therefore the fake's;
//! the ratio pass / list is what the targets are about. Each phase runs in a child process so that its
//! peak RSS (`VmHWM`) is its own; the peak includes the fake's store and the server.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use aws_sdk_sts::operation::assume_role::AssumeRoleOutput;
use aws_sdk_sts::primitives::DateTime;
use aws_sdk_sts::types::Credentials as StsCredentials;
use aws_smithy_mocks::{MockResponse, Rule, RuleMode, mock, mock_client};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::{Api, Client};
use kube_aws_iam_controller::controller::observe::{self, ObserveOptions, PAGE_SIZE};
use kube_aws_iam_controller::controller::pass::{Controller, ControllerConfig};
use kube_aws_iam_controller::controller::plan::ActionKind;
use kube_aws_iam_controller::controller::sts::{StsCredentialSource, rate_limiter};
use kube_aws_iam_controller::domain::crd::AWSIAMRole;
use serde::de::DeserializeOwned;

use test_apiserver::ApiServer;

mod common;
use common::{BASE, env_num, mib, new_role, proc_status, served};

fn main() {
    match std::env::var("PASS_BENCH_PHASE").as_deref() {
        Ok("cold") => child(cold(env_num("PASS_BENCH_N", 300))),
        Ok("steady") => child(steady(env_num("PASS_BENCH_N", 10_000))),
        _ => {}
    }
    let start = Instant::now();
    let roles = env_num("PASS_BENCH_ROLES", 10_000);
    let cold_roles = env_num("PASS_BENCH_COLD_ROLES", 300);
    println!(
        "pass bench: {} tokio worker threads (PASS_BENCH_THREADS); API: kube-fake-client behind \
         the loopback test server; STS: aws-smithy-mocks",
        threads()
    );
    let mut failed = false;
    for (phase, n) in [
        ("cold", cold_roles),
        ("steady", roles / 2),
        ("steady", roles),
    ] {
        let status = Command::new(std::env::current_exe().expect("own executable"))
            .env("PASS_BENCH_PHASE", phase)
            .env("PASS_BENCH_N", n.to_string())
            .status()
            .expect("run a phase");
        failed |= !status.success();
    }
    println!("\nbench took {:.1}s", start.elapsed().as_secs_f64());
    if failed {
        eprintln!("a phase failed (see above)");
        std::process::exit(1);
    }
}

fn threads() -> usize {
    env_num("PASS_BENCH_THREADS", 2)
}

/// Runs a phase on its own runtime and exits with its result.
fn child(phase: impl Future<Output = Result<(), String>>) -> ! {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads())
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(phase) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            println!("  FAILED: {e}");
            std::process::exit(1)
        }
    }
}

/// Steady state: every role served, every status current. A pass must write nothing.
async fn steady(n: usize) -> Result<(), String> {
    println!("\nsteady state: {n} AWSIAMRoles + {n} managed Secrets (best of 3)");
    let seed = Instant::now();
    let now = Timestamp::now();
    let (roles, secrets) = served(n, now);
    let server = ApiServer::builder()
        .objects(roles)
        .objects(secrets)
        .start()
        .await;
    let client = controller_client(&server);
    println!(
        "  seeded in {:.1}s; RSS {:.0} MiB",
        seed.elapsed().as_secs_f64(),
        mib(proc_status("VmRSS"))
    );
    let baseline = proc_status("VmRSS");
    let reset = reset_peak();

    // (a) the two paged lists observation makes, decoded as typed objects, nothing else.
    let roles_api: Api<AWSIAMRole> = Api::all(client.clone());
    let secrets_api: Api<Secret> = Api::all(client.clone());
    let selector = observe::managed_selector();
    let mut pages = (0, 0);
    let list = best_of_3(async || {
        let (r, rp) = list_paged(&roles_api, None).await?;
        let (s, sp) = list_paged(&secrets_api, Some(&selector)).await?;
        if (r, s) != (n, n) {
            return Err(format!(
                "listed {r} roles and {s} Secrets, expected {n} each"
            ));
        }
        pages = (rp, sp);
        Ok(())
    })
    .await?;
    let lists_peak = proc_status("VmHWM");
    // (a') observation as the pass does it (lists, per-object decoding, conflict GETs).
    let observe = best_of_3(async || {
        let o = observe::observe(&client, &ObserveOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        if (o.roles.len(), o.secrets.len()) != (n, n) {
            return Err(format!(
                "observed {} roles and {} Secrets, expected {n} each",
                o.roles.len(),
                o.secrets.len()
            ));
        }
        Ok(())
    })
    .await?;
    // (b) full passes.
    let (sts, rule) = sts_mock(100);
    let ctl = controller(&client, sts);
    let mut problems = Vec::new();
    let mut last = None;
    let pass = best_of_3(async || {
        server.clear_requests();
        let calls = rule.num_calls();
        let report = ctl.pass().await.map_err(|e| e.to_string())?.report;
        let sts_calls = rule.num_calls() - calls;
        let skips = report
            .actions
            .iter()
            .filter(|a| a.kind == ActionKind::Skip)
            .count();
        if report.writes != 0 || sts_calls != 0 || skips != n {
            problems.push(format!(
                "a steady-state pass made {} writes and {sts_calls} STS calls, {skips} of {n} \
                 actions were skips: {report}",
                report.writes
            ));
        }
        last = Some((report.writes, sts_calls, skips, tally(&server)));
        Ok(())
    })
    .await?;
    let peak = proc_status("VmHWM");

    let (writes, sts_calls, skips, requests) = last.expect("a pass ran");
    println!(
        "  (a) lists only            {:>8.1} ms  ({} + {} pages of {PAGE_SIZE}, Api::list)",
        list * 1e3,
        pages.0,
        pages.1
    );
    println!(
        "  (a') observe()            {:>8.1} ms  ({:.2} x lists)",
        observe * 1e3,
        observe / list
    );
    println!(
        "  (b) Controller::pass()    {:>8.1} ms  ({:.2} x lists; target <= 1.5 x)",
        pass * 1e3,
        pass / list
    );
    println!(
        "  last pass: {writes} writes, {sts_calls} STS calls, {skips} skips; requests: {requests}"
    );
    if reset {
        // The lists alone hold one page at a time in the client: their peak is the fake's and
        // the server's (a full copy of each collection per list); observe and pass add the
        // controller's observed state and plan on top.
        let above = |hwm: u64| hwm.saturating_sub(baseline);
        println!(
            "  memory: seeded {:.0} MiB; peak above that: lists alone +{:.0} MiB, with observe \
             and passes +{:.0} MiB ({:.1} KiB per role); VmHWM {:.0} MiB",
            mib(baseline),
            mib(above(lists_peak)),
            mib(above(peak)),
            above(peak) as f64 / 1024.0 / n as f64,
            mib(peak)
        );
    } else {
        println!(
            "  memory: VmHWM {:.0} MiB (could not reset the peak after seeding)",
            mib(peak)
        );
    }
    match problems.first() {
        None => Ok(()),
        Some(p) => Err(p.clone()),
    }
}

/// Cold pass: `n` new roles, rate limited STS, burst 1, concurrency 8.
async fn cold(n: usize) -> Result<(), String> {
    let rate = env_num("PASS_BENCH_STS_RATE", 100).clamp(1, u32::MAX as usize) as u32;
    println!("cold pass: {n} new AWSIAMRoles, --sts-rate {rate} --sts-burst 1 --concurrency 8");
    let server = ApiServer::builder()
        .objects((0..n).map(new_role))
        .start()
        .await;
    let client = controller_client(&server);
    let (sts, rule) = sts_mock(rate);
    let ctl = controller(&client, sts);
    let start = Instant::now();
    let report = ctl.pass().await.map_err(|e| e.to_string())?.report;
    let took = start.elapsed().as_secs_f64();
    let floor = n as f64 / f64::from(rate);
    println!(
        "  pass {took:>6.2} s   floor N/r {floor:.2} s, target 1.1 x N/r {:.2} s: {:.3} x N/r",
        1.1 * floor,
        took / floor
    );
    println!(
        "  {} STS calls, {} writes, {} failed; requests: {}",
        rule.num_calls(),
        report.writes,
        report.failed(),
        tally(&server)
    );
    // The pass that follows is a steady state: nothing to write, nothing to assume.
    server.clear_requests();
    let calls = rule.num_calls();
    let start = Instant::now();
    let second = ctl.pass().await.map_err(|e| e.to_string())?.report;
    let sts_calls = rule.num_calls() - calls;
    println!(
        "  next pass {:.1} ms: {} writes, {sts_calls} STS calls; requests: {}",
        start.elapsed().as_secs_f64() * 1e3,
        second.writes,
        tally(&server)
    );
    println!("  memory: VmHWM {:.0} MiB", mib(proc_status("VmHWM")));
    if report.failed() > 0 || rule.num_calls() < n {
        return Err(format!("the cold pass did not serve every role: {report}"));
    }
    if second.writes != 0 || sts_calls != 0 {
        return Err(format!(
            "the pass after the cold pass was not a no-op: {second}"
        ));
    }
    Ok(())
}

/// A client like the controller's: its requests are recorded by the server.
fn controller_client(server: &ApiServer) -> Client {
    let url = server.url().parse().expect("loopback URL");
    Client::try_from(kube::Config::new(url)).expect("kube client")
}

fn controller(client: &Client, sts: StsCredentialSource) -> Controller {
    let mut config = ControllerConfig::default();
    config.plan.base_role_arn = Some(BASE.parse().expect("base ARN"));
    Controller::new(client.clone(), config, Arc::new(sts))
}

/// STS answering every AssumeRole at once; the rule counts the calls.
fn sts_mock(rate: u32) -> (StsCredentialSource, Rule) {
    let rule = mock!(aws_sdk_sts::Client::assume_role).then_compute_response(|req| {
        let duration = i64::from(req.duration_seconds().unwrap_or(3600));
        let creds = StsCredentials::builder()
            .access_key_id("ASIABENCH")
            .secret_access_key("bench-secret")
            .session_token("bench-token")
            .expiration(DateTime::from_secs(Timestamp::now().as_second() + duration))
            .build()
            .expect("credentials");
        MockResponse::Output(AssumeRoleOutput::builder().credentials(creds).build())
    });
    let client = mock_client!(aws_sdk_sts, RuleMode::MatchAny, [&rule]);
    let limiter = rate_limiter(rate.try_into().unwrap(), 1.try_into().unwrap());
    (StsCredentialSource::new(client, limiter), rule)
}

/// Pages through a list the way observation does; returns (items, pages).
async fn list_paged<K>(api: &Api<K>, selector: Option<&str>) -> Result<(usize, usize), String>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut params = ListParams::default().limit(PAGE_SIZE);
    if let Some(selector) = selector {
        params = params.labels(selector);
    }
    let (mut items, mut pages) = (0, 0);
    loop {
        let list = api.list(&params).await.map_err(|e| e.to_string())?;
        items += list.items.len();
        pages += 1;
        match list.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok((items, pages)),
        }
    }
}

async fn best_of_3(mut f: impl AsyncFnMut() -> Result<(), String>) -> Result<f64, String> {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        f().await?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// What the recorded requests were, e.g. `list awsiamroles 20, list secrets 20`.
fn tally(server: &ApiServer) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in server.requests() {
        let what = match &r.subresource {
            Some(sub) => format!("{} {}/{sub}", r.verb, r.resource),
            None => format!("{} {}", r.verb, r.resource),
        };
        *counts.entry(what).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// Resets `VmHWM` to the current RSS (Linux ≥ 4.0), so the next reading is the peak from now.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
