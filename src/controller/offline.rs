//! Observed state from YAML files, for `plan --from`: what `kubectl get -o yaml` prints or
//! what a user writes by hand (multi-document files, `kind: List`, a directory of files).
//!
//! Documents are read one by one: a malformed document is reported with its file and index
//! and the others are still planned.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;
use std::path::Path;

use kube::Resource as _;
use serde_json::Value;

use crate::domain::crd::AWSIAMRole;

use crate::domain::model::{Observed, ObservedRole, ObservedSecret};
use crate::domain::text::shorten;
use crate::{Error, Result};

/// Namespace of objects that do not name one, as `kubectl apply` would use.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Something about the input that did not stop the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub file: String,
    /// 1-based document index in the file; `None` for the file as a whole.
    pub document: Option<usize>,
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.document {
            Some(d) => write!(f, "{}: document {d}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// What `load` read: the state to plan from and the notes to show the user.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub observed: Observed,
    pub notes: Vec<Note>,
}

/// Reads a YAML file, or every `*.yaml`/`*.yml` file of a directory (sorted, not recursive).
/// Fails only when nothing at all could be read.
pub fn load(path: &Path) -> Result<Loaded> {
    let files = crate::domain::input::input_files(path)?;
    let mut collector = Collector::default();
    let mut readable = 0;
    for file in &files {
        let name = file.display().to_string();
        match std::fs::read(file) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => {
                    readable += 1;
                    collector.add_text(&name, &text);
                }
                Err(_) => collector.note(&name, None, "not UTF-8 text; skipped".into()),
            },
            Err(e) => collector.note(&name, None, format!("cannot read: {e}")),
        }
    }
    if readable == 0 {
        let detail = collector
            .notes
            .iter()
            .map(Note::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        return Err(Error::NoInput(format!(
            "{}: no file could be read ({detail})",
            path.display()
        )));
    }
    Ok(collector.finish())
}

/// Plans from YAML text directly (tests and tools); `source` names it in notes.
pub fn load_str(source: &str, text: &str) -> Loaded {
    let mut collector = Collector::default();
    collector.add_text(source, text);
    collector.finish()
}

/// Splits a YAML stream at `---` document markers. Markers can only start a line, and any
/// content of a block scalar is indented, so a line-based split is exact; it lets one broken
/// document be reported without losing the rest.
fn documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        let is_marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if is_marker {
            docs.push(String::new());
            if let Some(rest) = line.strip_prefix("---") {
                let rest = rest.trim();
                if !rest.is_empty() {
                    let doc = docs.last_mut().expect("pushed above");
                    doc.push_str(rest);
                    doc.push('\n');
                }
            }
        } else if line == "..." {
            docs.push(String::new());
        } else {
            let doc = docs.last_mut().expect("docs is never empty");
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs
}

/// Whether a document has nothing but comments and blank lines.
fn is_blank(doc: &str) -> bool {
    doc.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#')
    })
}

/// Keeps the first object of a name; says what was skipped (a duplicate or an undecodable
/// object), if anything.
fn insert_first<T>(
    map: &mut BTreeMap<(String, String), T>,
    decoded: Result<((String, String), T), String>,
    kind: &str,
) -> Option<String> {
    match decoded {
        Err(e) => Some(format!("{kind} skipped: {e}")),
        Ok((key, object)) => match map.entry(key) {
            Entry::Vacant(slot) => {
                slot.insert(object);
                None
            }
            Entry::Occupied(slot) => {
                let (ns, name) = slot.key();
                Some(format!(
                    "duplicate {kind} {ns}/{name}; the first one is used"
                ))
            }
        },
    }
}

/// Any version of the controller's group: old manifests name older versions.
fn is_awsiamrole(kind: &str, api_version: &str) -> bool {
    kind == AWSIAMRole::kind(&())
        && api_version.split_once('/').map(|(group, _)| group) == Some(&AWSIAMRole::group(&()))
}

#[derive(Default)]
struct Collector {
    roles: BTreeMap<(String, String), ObservedRole>,
    secrets: BTreeMap<(String, String), ObservedSecret>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    notes: Vec<Note>,
}

impl Collector {
    fn note(&mut self, file: &str, document: Option<usize>, message: String) {
        self.notes.push(Note {
            file: file.to_string(),
            document,
            message,
        });
    }

    fn add_text(&mut self, file: &str, text: &str) {
        let mut index = 0;
        for doc in documents(text) {
            if is_blank(&doc) {
                continue;
            }
            index += 1;
            match serde_saphyr::from_str::<Value>(&doc) {
                Ok(Value::Null) => {}
                Ok(value) => self.add_object(file, index, &value),
                Err(e) => {
                    // The parser's message may quote the input, which may hold credentials:
                    // report only where the error is.
                    let at = e
                        .location()
                        .map(|l| {
                            format!(
                                " at line {}, column {} of the document",
                                l.line(),
                                l.column()
                            )
                        })
                        .unwrap_or_default();
                    self.note(
                        file,
                        Some(index),
                        format!("could not be read as YAML{at}; skipped"),
                    );
                }
            }
        }
    }

    fn add_object(&mut self, file: &str, index: usize, v: &Value) {
        let kind = v.get("kind").and_then(Value::as_str).unwrap_or_default();
        let api_version = v
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let note = match (kind, api_version) {
            _ if kind.ends_with("List") => return self.add_list(file, index, kind, v),
            _ if is_awsiamrole(kind, api_version) => {
                let role = ObservedRole::from_value(v, DEFAULT_NAMESPACE)
                    .map(|r| ((r.namespace.clone(), r.name.clone()), r));
                insert_first(&mut self.roles, role, "AWSIAMRole")
            }
            ("Secret", "v1") => {
                let secret = ObservedSecret::from_value(v, DEFAULT_NAMESPACE)
                    .map(|s| ((s.namespace.clone(), s.name.clone()), s));
                insert_first(&mut self.secrets, secret, "Secret")
            }
            ("Namespace", "v1") => self.add_namespace(v),
            ("", _) => Some("no kind; skipped".into()),
            _ => Some(format!(
                "{} ({}) is not used by the controller; ignored",
                shorten(kind),
                shorten(api_version)
            )),
        };
        if let Some(message) = note {
            self.note(file, Some(index), message);
        }
    }

    /// `kind: List` (or any `…List`): its items, each as a document of its own.
    fn add_list(&mut self, file: &str, index: usize, kind: &str, v: &Value) {
        match v.get("items") {
            Some(Value::Array(items)) => {
                for item in items {
                    self.add_object(file, index, item);
                }
            }
            _ => self.note(
                file,
                Some(index),
                format!("{} without items; skipped", shorten(kind)),
            ),
        }
    }

    /// A Namespace's annotations, for namespace restrictions; the first of a name is kept.
    fn add_namespace(&mut self, v: &Value) -> Option<String> {
        let Some(name) = v.pointer("/metadata/name").and_then(Value::as_str) else {
            return Some("Namespace skipped: metadata.name is missing".into());
        };
        let annotations = match v.pointer("/metadata/annotations").cloned() {
            None => BTreeMap::new(),
            Some(a) => match serde_json::from_value(a) {
                Ok(a) => a,
                Err(_) => {
                    return Some(
                        "Namespace skipped: metadata.annotations must map strings to strings"
                            .into(),
                    );
                }
            },
        };
        if self.namespaces.contains_key(name) {
            return Some(format!(
                "duplicate Namespace {}; the first one is used",
                shorten(name)
            ));
        }
        self.namespaces.insert(name.to_string(), annotations);
        None
    }

    fn finish(self) -> Loaded {
        Loaded {
            observed: Observed::new(
                self.roles.into_values().collect(),
                self.secrets.into_values().collect(),
                self.namespaces,
            ),
            notes: self.notes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_and_reports_broken_ones() {
        let text = "apiVersion: zalando.org/v1\nkind: AWSIAMRole\nmetadata: {name: a, namespace: ns}\nspec: {roleReference: app}\n---\nkind: [broken\n--- \napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n";
        let loaded = load_str("in.yaml", text);
        assert_eq!(loaded.observed.roles.len(), 1);
        assert_eq!(loaded.notes.len(), 2, "{:?}", loaded.notes);
        assert_eq!(loaded.notes[0].document, Some(2));
        assert!(loaded.notes[1].message.contains("ConfigMap"));
    }

    #[test]
    fn lists_are_flattened() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: zalando.org/v1\n  kind: AWSIAMRole\n  metadata: {name: a}\n  spec: {roleReference: app}\n";
        let loaded = load_str("in.yaml", text);
        assert_eq!(loaded.observed.roles[0].namespace, "default");
    }
}
