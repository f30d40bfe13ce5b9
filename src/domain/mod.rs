//! The vocabulary every layer shares, depending on nothing else of the crate: the AWSIAMRole
//! type ([`crd`]), the observed state ([`model`]), role references and session names ([`arn`]),
//! namespace role policy ([`policy`]), input files ([`input`]), session options ([`session`]), the Secret codec
//! ([`secret`]) and text helpers for untrusted input ([`text`]).

pub mod arn;
pub mod crd;
pub mod input;
pub mod model;
pub mod policy;
pub mod secret;
pub mod session;
pub mod text;
