//! What the watched state of `run` keeps per AWSIAMRole, counted byte for byte: the lean forms
//! of a served role and of its Secret, as the store keeps them. A deterministic guard of the
//! memory budget (2 KiB per role at 10,000 roles, measured with `cargo bench --bench watch`):
//! a model change that makes every role heavier (a B-tree map, a second copy of a string) fails
//! here, long before the bench is run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use kube_aws_iam_controller::controller::plan::ready_status;
use kube_aws_iam_controller::domain::crd::{AWSIAMRole, AWSIAMRoleSpec};
use kube_aws_iam_controller::domain::model::{ObservedRole, ObservedSecret};
use kube_aws_iam_controller::domain::secret::{self, Credentials};

/// The system allocator, counting what each thread holds (a test measures its own thread
/// only, so tests running beside it do not disturb the figures).
struct Counting;

thread_local! {
    /// Live bytes and blocks allocated by this thread.
    static LIVE: Cell<(isize, isize)> = const { Cell::new((0, 0)) };
}

fn note(bytes: isize, blocks: isize) {
    // Unavailable only while the thread is torn down, when nothing is measured.
    let _ = LIVE.try_with(|live| {
        let (b, n) = live.get();
        live.set((b + bytes, n + blocks));
    });
}

// SAFETY: every call goes to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize, 1);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize, 1);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as isize), -1);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size as isize - layout.size() as isize, 0);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// What `make` returns keeps on the heap: (bytes, blocks). Everything `make` allocates and
/// frees again (the decoding on the way) is not counted.
fn kept<T>(make: impl FnOnce() -> T) -> (T, usize, usize) {
    let (b0, n0) = LIVE.with(Cell::get);
    let value = make();
    let (b1, n1) = LIVE.with(Cell::get);
    (value, (b1 - b0) as usize, (n1 - n0) as usize)
}

/// A role as a real cluster serves it: an API-server UID, a resourceVersion, labels, and the
/// Ready status the controller wrote; and its managed Secret.
fn served(labels: usize) -> (serde_json::Value, serde_json::Value) {
    let now: Timestamp = "2026-12-04T12:00:00Z".parse().unwrap();
    let mut role = AWSIAMRole::new(
        "payments-api",
        AWSIAMRoleSpec {
            role_reference: "payments-api-prod".into(),
            role_session_duration: None,
        },
    );
    role.metadata.namespace = Some("team-payments".into());
    role.metadata.uid = Some("5f0c8e52-1d3b-4c9a-9e7f-2b6d4a8c1e90".into());
    role.metadata.resource_version = Some("48213377".into());
    role.metadata.generation = Some(1);
    role.metadata.labels = Some(
        (0..labels)
            .map(|i| {
                (
                    format!("app.kubernetes.io/part-{i}"),
                    format!("payments-{i}"),
                )
            })
            .collect(),
    );
    let observed = ObservedRole::from_value(&serde_json::to_value(&role).unwrap(), "").unwrap();
    let arn = "arn:aws:iam::123456789012:role/payments-api-prod";
    let creds = Credentials {
        access_key_id: "ASIAEXAMPLEEXAMPLE12".into(),
        secret_access_key: "x".repeat(40),
        session_token: "y".repeat(900),
        expiration: now + SignedDuration::from_hours(1),
    };
    let mut secret = secret::build(&observed, arn, &creds, now);
    secret.metadata.uid = Some("0a7d3c61-8b2e-4f5a-b1c9-7e6d5f4a3b21".into());
    secret.metadata.resource_version = Some("48213378".into());
    role.status = Some(ready_status(&observed, arn, creds.expiration, None, now));
    (
        serde_json::to_value(&role).unwrap(),
        serde_json::to_value(&secret).unwrap(),
    )
}

fn lean_role(value: &serde_json::Value) -> (Arc<ObservedRole>, usize, usize) {
    kept(|| Arc::new(ObservedRole::from_value(value, "").unwrap()))
}

fn lean_secret(value: &serde_json::Value) -> (Arc<ObservedSecret>, usize, usize) {
    kept(|| Arc::new(secret::lean(ObservedSecret::from_value(value, "").unwrap())))
}

#[test]
fn a_served_role_and_its_secret_are_kept_in_well_under_2_kib() {
    let (role, secret) = served(1);
    let (role, role_bytes, role_blocks) = lean_role(&role);
    let (secret, secret_bytes, secret_blocks) = lean_secret(&secret);
    println!(
        "kept: AWSIAMRole {role_bytes} B in {role_blocks} blocks, Secret {secret_bytes} B in {secret_blocks} blocks"
    );
    assert!(secret.checked.is_some() && role.status.is_some());
    // Bytes as requested; the allocator adds 8–24 bytes per block, the hash table 9 bytes per
    // object. Measured when this was written: 766 B in 16 blocks and 565 B in 9 blocks.
    assert!(
        role_bytes <= 800 && role_blocks <= 16,
        "an AWSIAMRole now keeps {role_bytes} B in {role_blocks} blocks"
    );
    assert!(
        secret_bytes <= 600 && secret_blocks <= 9,
        "a Secret now keeps {secret_bytes} B in {secret_blocks} blocks"
    );
}

#[test]
fn labels_cost_what_they_hold() {
    let (_, none, none_blocks) = lean_role(&served(0).0);
    let (_, four, four_blocks) = lean_role(&served(4).0);
    // Four labels of 24 and 10 characters: 4 × (32 B of pointers + 34 B of text), nothing like
    // a B-tree node (544 B for any number of entries up to eleven).
    let added = four - none;
    assert!(added <= 4 * (32 + 34), "four labels add {added} B");
    assert_eq!(
        four_blocks - none_blocks,
        1 + 4 * 2,
        "one slice and two strings per label"
    );
}

#[test]
fn a_credential_is_never_kept() {
    let (_, secret) = served(1);
    let (secret, _, _) = lean_secret(&secret);
    let shown = format!("{secret:?}");
    assert!(secret.data.is_empty());
    for value in ["ASIAEXAMPLEEXAMPLE12", "xxxxxxxx", "yyyyyyyy"] {
        assert!(!shown.contains(value), "{value} kept in {shown}");
    }
}
