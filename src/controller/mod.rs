//! The controller: observe the cluster (lists, or the [`store`] kept by watches), [`plan`]
//! with a pure function, [`apply`] the plan with the executor. [`pass`] drives passes (`once`,
//! `run`), [`commands`] are the subcommands as library functions, and the rest serves them:
//! STS ([`sts`]), the leader Lease ([`lease`]), seed credentials ([`seed`]), `bootstrap`,
//! metrics and the health server.

pub mod apply;
pub mod bootstrap;
pub mod commands;
pub mod health;
pub mod lease;
pub mod metrics;
pub mod observe;
pub mod offline;
pub mod pass;
pub mod plan;
pub mod seed;
pub mod store;
pub mod sts;
