//! What an operator sees with the real kubectl: `kubectl get awsiamroles` prints the columns of
//! the generated CRD (installed from `deploy/crd.yaml` with `kubectl create`) with the values the
//! compiled controller wrote, and `kubectl describe awsiamrole` lists the controller's Events.
//! The loopback API server prints Tables from the stored CRD as a real server does and serves
//! the core/v1 Events kubectl reads.

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, PostParams};
use kube_aws_iam_controller::domain::crd::AWSIAMRole;

use crate::support::apiserver::ApiServer;
use crate::support::harness::{BASE, Env, all_events, condition, role, text};
use crate::support::repo_root;

const NS: &str = "team-a";

/// `kubectl ARGS…` with the environment's kubeconfig, on the blocking pool so the server keeps
/// serving. Returns stdout; panics unless kubectl succeeded.
async fn kubectl(env: &Env, args: &[&str]) -> String {
    let mut command = std::process::Command::new("kubectl");
    command
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .arg("--cache-dir")
        .arg(env.dir.path().join("kubectl-cache"))
        .env_remove("KUBECONFIG")
        .args(args);
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("kubectl task")
        .unwrap_or_else(|e| {
            panic!("running kubectl (it must be on the PATH; `make test` lists the tools): {e}")
        });
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        text(&out.stderr)
    );
    stdout
}

/// The cells of one line of kubectl's tabular output: columns are at least three spaces apart,
/// and no value here holds two spaces in a row.
fn cells(line: &str) -> Vec<&str> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

/// The cells of `row` cut where the header's columns start (kubectl aligns them), so blank
/// cells are kept.
fn by_column<'a>(header: &str, row: &'a str) -> Vec<&'a str> {
    let mut starts = Vec::new();
    let mut from = 0;
    for name in cells(header) {
        let at = from + header[from..].find(name).expect("a header cell");
        starts.push(at);
        from = at + name.len();
    }
    starts
        .iter()
        .enumerate()
        .map(|(i, &start)| {
            let end = starts
                .get(i + 1)
                .copied()
                .unwrap_or(row.len())
                .min(row.len());
            row.get(start.min(end)..end).unwrap_or("").trim()
        })
        .collect()
}

/// An age as kubectl prints it for something created within the test: seconds or minutes.
fn is_recent_age(age: &str) -> bool {
    let digits = age.trim_end_matches(['s', 'm']);
    !digits.is_empty() && digits.len() < age.len() && digits.chars().all(|c| c.is_ascii_digit())
}

/// The Event the controller published about `name` (the only one of that reason).
fn event_about<'a>(events: &'a [Event], name: &str, reason: &str) -> &'a Event {
    events
        .iter()
        .find(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                && e.reason.as_deref() == Some(reason)
        })
        .unwrap_or_else(|| panic!("no {reason} Event about {name}"))
}

/// The rows under `Events:` in `kubectl describe` output, as (type, reason, age, from, message).
fn described_events(described: &str) -> Vec<(String, String, String, String, String)> {
    let Some((_, section)) = described.split_once("\nEvents:") else {
        panic!("no Events section in:\n{described}");
    };
    let mut lines = section.lines().skip(1);
    let header = lines.next().map(cells);
    assert_eq!(
        header,
        Some(vec!["Type", "Reason", "Age", "From", "Message"]),
        "Events header in:\n{described}"
    );
    lines
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with("----"))
        .map(|l| {
            let c = cells(l);
            assert!(c.len() >= 5, "event row {l:?} in:\n{described}");
            let message = c[4..].join("  ");
            (
                c[0].to_string(),
                c[1].to_string(),
                c[2].to_string(),
                c[3].to_string(),
                message,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_and_describe_show_what_the_controller_wrote() {
    let env = Env::start("printer-columns", ApiServer::builder()).await;
    let client = env.client();

    // The generated CRD, installed as a user would (without kubectl's client-side schema
    // validation: the loopback server publishes no OpenAPI documents).
    let crd = repo_root().join("deploy/crd.yaml");
    let crd = crd.display().to_string();
    let created = kubectl(&env, &["create", "--validate=false", "-f", &crd]).await;
    assert_eq!(
        created,
        "customresourcedefinition.apiextensions.k8s.io/awsiamroles.zalando.org created\n"
    );

    // One role the controller serves, one it cannot (a session shorter than STS allows).
    let roles = Api::<AWSIAMRole>::namespaced(client.clone(), NS);
    let mut invalid = role(NS, "invalid", "app-invalid");
    invalid.spec.role_session_duration = Some(60);
    for r in [role(NS, "served", "app-served"), invalid] {
        roles.create(&PostParams::default(), &r).await.unwrap();
    }
    env.run_ok(&["once"]).await;
    assert_eq!(condition(&client, NS, "served").await.0, "True");
    let (_, reason, message) = condition(&client, NS, "invalid").await;
    assert_eq!(reason, "InvalidSpec");
    assert!(message.contains("roleSessionDuration"), "{message}");

    let served = roles.get("served").await.unwrap();
    let status = served.status.as_ref().expect("served has a status");
    let expiration = status.expiration.as_deref().expect("an expiration");

    let listed = kubectl(&env, &["get", "awsiamroles", "-n", NS]).await;
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two rows:\n{listed}");
    assert_eq!(
        cells(lines[0]),
        ["NAME", "READY", "REASON", "ROLE ARN", "EXPIRES", "AGE"],
        "header of:\n{listed}"
    );
    // Rows in name order: invalid, served. What a role's status lacks is a blank cell (the
    // server sends null; kubectl prints nothing).
    let invalid_row = by_column(lines[0], lines[1]);
    assert_eq!(
        invalid_row[..5],
        ["invalid", "False", "InvalidSpec", "", ""],
        "{listed}"
    );
    assert!(is_recent_age(invalid_row[5]), "AGE of:\n{listed}");
    let served_row = by_column(lines[0], lines[2]);
    let arn = format!("{BASE}app-served");
    assert_eq!(
        served_row[..5],
        [
            "served",
            "True",
            "CredentialsReady",
            arn.as_str(),
            expiration
        ],
        "{listed}"
    );
    assert!(is_recent_age(served_row[5]), "AGE of:\n{listed}");

    // The columns are the server's, from the stored CRD: the same header across namespaces,
    // with kubectl's NAMESPACE in front.
    let all = kubectl(&env, &["get", "awsiamroles", "-A"]).await;
    assert_eq!(
        cells(all.lines().next().unwrap_or("")),
        [
            "NAMESPACE",
            "NAME",
            "READY",
            "REASON",
            "ROLE ARN",
            "EXPIRES",
            "AGE"
        ],
        "{all}"
    );

    // describe lists the Events the controller published about each role.
    let events = all_events(&client).await;
    for (name, reason) in [("invalid", "InvalidSpec"), ("served", "CreateCredentials")] {
        let published = event_about(&events, name, reason);
        let described = kubectl(&env, &["describe", "awsiamrole", name, "-n", NS]).await;
        let rows = described_events(&described);
        let row = rows
            .iter()
            .find(|r| r.1 == reason)
            .unwrap_or_else(|| panic!("no {reason} row in:\n{described}"));
        assert_eq!(
            (row.0.as_str(), row.3.as_str(), row.4.as_str()),
            (
                published.type_.as_deref().unwrap_or(""),
                published.reporting_controller.as_deref().unwrap_or(""),
                published.note.as_deref().unwrap_or("").trim(),
            ),
            "{described}"
        );
        assert!(is_recent_age(&row.2), "event age in:\n{described}");
        // kubectl read them from core/v1, selected by the role's name, kind and uid.
        let uid = roles
            .get(name)
            .await
            .unwrap()
            .metadata
            .uid
            .unwrap_or_default();
        let read = env.api.requests().into_iter().any(|r| {
            let selector = r.param("fieldSelector").unwrap_or_default();
            r.verb == "list"
                && (r.group.as_str(), r.resource.as_str()) == ("", "events")
                && [
                    format!("involvedObject.name={name}"),
                    "involvedObject.kind=AWSIAMRole".to_string(),
                    format!("involvedObject.uid={uid}"),
                ]
                .iter()
                .all(|term| selector.split(',').any(|t| t == term))
        });
        assert!(
            read,
            "no core/v1 Event list selecting {name}: {:?}",
            env.api.requests()
        );
        // Only Events about this role.
        assert!(
            rows.iter().all(|r| events.iter().any(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                    && e.reason.as_deref() == Some(r.1.as_str())
            })),
            "{described}"
        );
    }
}
