//! The pure pod mutation: pod template + options → mutated pod template. No I/O.

use super::Delivery;

/// What the mutation needs beyond the pod itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MutateOptions {
    pub default_delivery: Delivery,
    pub sidecar_image: String,
    pub sidecar_port: u16,
    /// Region settings to add where absent.
    pub region: Option<String>,
}

/// Why a labelled pod cannot be mutated. Every message names the field at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MutateError {}

/// The JSON patch turning `object` — a Pod, or a pod template, as JSON with `metadata` and
/// `spec` — into its mutated form. `None` when the object is not opted in or already mutated.
pub fn patch(
    _object: &serde_json::Value,
    _options: &MutateOptions,
) -> Result<Option<json_patch::Patch>, MutateError> {
    Ok(None)
}
