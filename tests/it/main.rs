//! The one integration-test binary: one link step for every test.
//!
//! Two tiers. The fast tier (`cargo test`) needs nothing but Rust: pure cores, fixture
//! snapshots, invariants, in-process executor tests, the compiled binary against the loopback
//! API server, the fuzz corpus. The full tier (`--features full-tier`, which `make test` turns
//! on) adds what needs moto and the AWS CLI (`.venv`), Node, Go, kubectl, openssl or `unshare`.
//! A module that mixes keeps its Rust-only tests here and declares its full-tier part itself
//! (e.g. `hostile::e2e`).

// Support helpers serve both tiers; some are used by full-tier tests only.
#[cfg_attr(not(feature = "full-tier"), allow(dead_code))]
mod support;

// ---------------------------------------------------------------------------------------------
// Fast tier: Rust only.
// ---------------------------------------------------------------------------------------------

mod apiserver_smoke;
mod cli;
mod crd;
mod credentials_server;
mod delivery_inject;
mod delivery_webhook;
mod event_names;
mod executor;
mod fixtures;
mod fuzz;
mod hostile;
mod invariants;
mod layers;
mod leaks;
mod lean_memory;
mod role_states;
mod seed;
mod ship;
mod sts_replies;
mod watch;
mod write_retries;

// ---------------------------------------------------------------------------------------------
// Full tier: needs moto and the AWS CLI, Node, Go, kubectl or `unshare` (`make test`).
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "full-tier")]
mod dry_run;
#[cfg(feature = "full-tier")]
mod e2e;
#[cfg(feature = "full-tier")]
mod leader;
#[cfg(feature = "full-tier")]
mod metrics_doc;
#[cfg(feature = "full-tier")]
mod monitoring;
#[cfg(feature = "full-tier")]
mod moto_smoke;
#[cfg(feature = "full-tier")]
mod printer_columns;
#[cfg(feature = "full-tier")]
mod redaction;
#[cfg(feature = "full-tier")]
mod sdk_matrix;
#[cfg(feature = "full-tier")]
mod sick_apiserver;
#[cfg(feature = "full-tier")]
mod write_refused;
