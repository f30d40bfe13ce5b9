//! The one integration-test binary: one link step for every test.

mod apiserver_smoke;
mod cli;
mod crd;
mod credentials_server;
mod delivery_inject;
mod delivery_webhook;
mod dry_run;
mod e2e;
mod event_names;
mod executor;
mod fixtures;
mod fuzz;
mod hostile;
mod invariants;
mod leader;
mod leaks;
mod moto_smoke;
mod redaction;
mod sdk_matrix;
mod seed;
mod ship;
mod sts_replies;
mod support;
mod write_refused;
