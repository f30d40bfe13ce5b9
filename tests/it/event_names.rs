//! Events stay within the 253 characters a real API server allows for their names, for every
//! valid AWSIAMRole name (up to 253 characters itself), and still point at the full object.
//! The real binary serves roles with 236-, 237- and 253-character names from the loopback API
//! server and moto; every Event it creates is checked.

use jiff::Timestamp;
use kube_aws_iam_controller::apply::event_name;

use crate::support::apiserver::ApiServer;
use crate::support::harness::{BASE, Env, all_events, role};

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A valid object name of exactly `len` characters, with dots and dashes in it.
fn name_of(len: usize) -> String {
    let mut name: String = "team-app.worker-".chars().cycle().take(len - 1).collect();
    name.push('x');
    name
}

#[test]
fn event_names_fit_for_every_name_length() {
    let now = Timestamp::now();
    for len in 1..=253 {
        let name = name_of(len);
        assert!(is_dns_subdomain(&name), "{name}");
        let event = event_name(&name, now);
        assert!(is_dns_subdomain(&event), "{len}: {event}");
    }
    // Names that share a long prefix still get distinct Event names.
    let a = format!("{}a", "x".repeat(252));
    let b = format!("{}b", "x".repeat(252));
    assert_ne!(event_name(&a, now), event_name(&b, now));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_for_long_role_names_are_valid_and_point_at_the_role() {
    let names: Vec<String> = [236, 237, 253].into_iter().map(name_of).collect();
    let mut builder = ApiServer::builder();
    for name in &names {
        builder = builder.object(role("team-a", name, "app"));
    }
    let env = Env::start("event-names", builder).await;
    env.run_ok(&["once", "--base-role-arn", BASE]).await;

    let events = all_events(&env.client()).await;
    for e in &events {
        let name = e.metadata.name.clone().unwrap_or_default();
        assert!(is_dns_subdomain(&name), "{} characters: {name}", name.len());
    }
    for name in &names {
        assert!(
            events.iter().any(|e| {
                e.reason.as_deref() == Some("CreateCredentials")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str())
                    && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("AWSIAMRole")
            }),
            "no CreateCredentials Event regarding the {}-character role",
            name.len()
        );
    }
}
