//! The real binary serves roles with long names from the loopback API server and moto (full
//! tier); every Event it creates is checked.

use crate::support::apiserver::ApiServer;
use crate::support::harness::{BASE, Env, all_events, role};

use super::{is_dns_subdomain, name_of};

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
