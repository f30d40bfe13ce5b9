//! Events stay within the 253 characters a real API server allows for their names, for every
//! valid AWSIAMRole name (up to 253 characters itself), and still point at the full object.
//! The real binary serves roles with 236-, 237- and 253-character names from the loopback API
//! server and moto; every Event it creates is checked.

use jiff::Timestamp;
use kube_aws_iam_controller::controller::apply::event_name;

#[cfg(feature = "full-tier")]
mod e2e;

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
