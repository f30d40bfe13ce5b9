//! The one integration-test binary (one link step for every test; see DESIGN.md).

mod cli;
mod crd;
mod executor;
mod fixtures;
mod invariants;
mod support;
