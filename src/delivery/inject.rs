//! `inject`: the offline shell around [`super::mutate`] (multi-document YAML in and out), for
//! GitOps pipelines: `kustomize build | kube-aws-iam-controller inject - | kubectl apply -f -`.
//!
//! Documents that do not change are printed exactly as they were read (comments, quoting and
//! key order included); only a document holding a mutated pod template is re-serialised. One
//! document that cannot be read or injected fails the whole run with nothing on stdout: a
//! pipeline must not apply half a bundle.

use std::fmt;
use std::io::Read as _;
use std::path::PathBuf;

use serde_json::{Map, Value};

use super::ROLE_LABEL;
use super::mutate::{self, MutateError, MutateOptions};
use crate::CommandOutput;
use crate::{Error, Result};

/// Largest document accepted: the API server refuses requests above 3 MiB, so a larger
/// document is not a Kubernetes object (and not worth parsing).
pub const MAX_DOCUMENT_BYTES: usize = 3 * 1024 * 1024;

/// What `inject` reads and how it mutates.
#[derive(Clone, Debug)]
pub struct InjectConfig {
    /// Files or directories; empty or `-` reads standard input.
    pub paths: Vec<PathBuf>,
    /// Label every workload's pod template with this AWSIAMRole first.
    pub role: Option<String>,
    pub mutation: MutateOptions,
}

/// Where a document came from, for messages: `deploy.yaml, document 2 (line 14)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    pub source: String,
    /// 1-based among the non-empty documents of the source.
    pub document: usize,
    /// 1-based line of the document's first line (its `---` marker, if any).
    pub line: usize,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, document {} (line {})",
            self.source, self.document, self.line
        )
    }
}

/// Why a document cannot be injected. Messages never quote the document's values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    #[error("{0}: not UTF-8 text")]
    NotText(String),
    #[error(
        "{place}: {size} bytes, more than the {MAX_DOCUMENT_BYTES} bytes a Kubernetes object can have"
    )]
    TooLarge { place: Place, size: usize },
    #[error("{place}: could not be read as YAML{at}")]
    Yaml { place: Place, at: String },
    #[error("{place}{object}: {at}{error}")]
    Mutate {
        place: Place,
        /// ` (Deployment shop/web)` or empty.
        object: String,
        /// Where the pod template is in the document (`spec.template.`), as every
        /// [`MutateError`] names a field relative to the template.
        at: String,
        error: Box<MutateError>,
    },
}

/// What [`inject_text`] did to one source (or, inside it, to one document).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Injected {
    pub text: String,
    /// Pod templates mutated.
    pub mutated: usize,
    /// Warnings (a template kept its own role label despite `--role`).
    pub notes: Vec<String>,
}

pub fn run(args: &InjectConfig) -> Result<CommandOutput> {
    let mut sources: Vec<(String, Vec<u8>)> = Vec::new();
    let stdin = [PathBuf::from("-")];
    let paths = if args.paths.is_empty() {
        &stdin[..]
    } else {
        &args.paths
    };
    for path in paths {
        if path.as_os_str() == "-" {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .map_err(|source| Error::Io {
                    path: "(stdin)".into(),
                    source,
                })?;
            sources.push(("(stdin)".into(), bytes));
        } else {
            for file in crate::domain::input::input_files(path)? {
                let bytes = std::fs::read(&file).map_err(|source| Error::Io {
                    path: file.display().to_string(),
                    source,
                })?;
                sources.push((file.display().to_string(), bytes));
            }
        }
    }
    inject_sources(&sources, &args.mutation, args.role.as_deref())
}

/// Injects every source and joins the results into one YAML stream (a `---` between sources).
/// Any broken document fails the whole run: the error lists every broken document, and
/// nothing is printed.
pub fn inject_sources(
    sources: &[(String, Vec<u8>)],
    options: &MutateOptions,
    role: Option<&str>,
) -> Result<CommandOutput> {
    if let Some(role) = role
        && !mutate::is_object_name(role)
    {
        return Err(Error::Config(format!(
            "--role: {role:?} is not a valid AWSIAMRole name (lower-case letters, digits, '-' and \
             '.', starting and ending with a letter or digit)"
        )));
    }
    let mut out = String::new();
    let mut notes = Vec::new();
    let mut errors = Vec::new();
    for (name, bytes) in sources {
        let Ok(text) = std::str::from_utf8(bytes) else {
            errors.push(InjectError::NotText(name.clone()));
            continue;
        };
        match inject_text(name, text, options, role) {
            Ok(injected) => {
                join(&mut out, &injected.text);
                notes.extend(injected.notes);
            }
            Err(e) => errors.extend(e),
        }
    }
    if !errors.is_empty() {
        let count = errors.len();
        let list: Vec<String> = errors.iter().map(|e| format!("\n  {e}")).collect();
        return Err(Error::Inject(format!(
            "{count} document{} cannot be injected, so nothing was printed:{}",
            if count == 1 { "" } else { "s" },
            list.concat()
        )));
    }
    Ok(CommandOutput {
        stdout: out,
        notes,
        exit_code: 0,
    })
}

/// Appends one source's stream to the output, separated from what came before by `---`.
fn join(out: &mut String, text: &str) {
    if text.is_empty() {
        return;
    }
    if !out.is_empty() {
        if !out.ends_with('\n') {
            out.push('\n');
        }
        if !starts_with_marker(text) {
            out.push_str("---\n");
        }
    }
    out.push_str(text);
}

fn starts_with_marker(text: &str) -> bool {
    text.split_inclusive('\n')
        .next()
        .is_some_and(|l| is_marker(l.trim_end_matches(['\n', '\r'])))
}

/// Injects one YAML stream. Unchanged documents are copied byte for byte.
pub fn inject_text(
    source: &str,
    text: &str,
    options: &MutateOptions,
    role: Option<&str>,
) -> Result<Injected, Vec<InjectError>> {
    let mut injected = Injected::default();
    let mut errors = Vec::new();
    let mut number = 0;
    for segment in segments(text) {
        if is_blank(&segment.body) {
            injected.text.push_str(&segment.raw);
            continue;
        }
        number += 1;
        let place = Place {
            source: source.to_string(),
            document: number,
            line: segment.line,
        };
        match inject_document(&place, &segment, options, role) {
            Ok(None) => injected.text.push_str(&segment.raw),
            Ok(Some(doc)) => {
                injected.text.push_str(&doc.text);
                injected.mutated += doc.mutated;
                injected.notes.extend(doc.notes);
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(injected)
    } else {
        Err(errors)
    }
}

/// One document of a stream: its exact text, and the YAML to parse.
#[derive(Debug, Default)]
struct Segment {
    /// Exactly as read: the `---` line (if any), the content, a trailing `...` line (if any).
    raw: String,
    /// The `---` line as read (with its line ending), if the document has one.
    marker: Option<String>,
    /// The content to parse (what follows `---` on its line, then the following lines).
    body: String,
    line: usize,
    /// Line of the body's first line in the stream.
    body_line: usize,
}

/// A `---` document marker (possibly followed by content on the same line).
fn is_marker(line: &str) -> bool {
    line == "---" || line.starts_with("--- ") || line.starts_with("---\t")
}

/// Splits a stream at `---` and `...` lines. Markers only ever start a line, and any line of a
/// block scalar is indented, so a line-based split is exact; it lets each document be kept or
/// reported on its own.
fn segments(text: &str) -> Vec<Segment> {
    let mut out = vec![Segment {
        line: 1,
        ..Segment::default()
    }];
    let mut ended = false;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let bare = if i == 0 {
            bare.trim_start_matches('\u{feff}')
        } else {
            bare
        };
        if is_marker(bare) || ended {
            out.push(Segment {
                line: i + 1,
                ..Segment::default()
            });
            ended = false;
        }
        let current = out.last_mut().expect("never empty");
        current.raw.push_str(line);
        if is_marker(bare) && current.marker.is_none() && current.body.is_empty() {
            current.marker = Some(line.to_string());
            let rest = bare[3..].trim();
            if !rest.is_empty() {
                current.body_line = i + 1;
                current.body.push_str(rest);
                current.body.push('\n');
            }
        } else if bare == "..." {
            ended = true;
        } else {
            if current.body.is_empty() {
                current.body_line = i + 1;
            }
            current.body.push_str(bare);
            current.body.push('\n');
        }
    }
    out
}

/// Whether a document has nothing but comments and blank lines.
fn is_blank(body: &str) -> bool {
    body.lines().all(is_comment_or_blank)
}

fn is_comment_or_blank(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// Read YAML as Kubernetes' own readers (YAML 1.1) do: `0440` is octal, `yes` is a boolean.
/// A re-serialised document then means to kubectl what the original meant.
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! { legacy_octal_numbers: true }
}

/// `None` when the document stays as it is.
fn inject_document(
    place: &Place,
    segment: &Segment,
    options: &MutateOptions,
    role: Option<&str>,
) -> Result<Option<Injected>, InjectError> {
    if segment.body.len() > MAX_DOCUMENT_BYTES {
        return Err(InjectError::TooLarge {
            place: place.clone(),
            size: segment.body.len(),
        });
    }
    let mut value: Value = serde_saphyr::from_str_with_options(&segment.body, yaml_options())
        .map_err(|e| {
            // The parser's message may quote the input (which may hold secrets): say only where.
            let at = e
                .location()
                .map(|l| {
                    let line = usize::try_from(l.line()).unwrap_or(usize::MAX);
                    format!(
                        " at line {}, column {}",
                        (segment.body_line + line).saturating_sub(1),
                        l.column()
                    )
                })
                .unwrap_or_default();
            InjectError::Yaml {
                place: place.clone(),
                at,
            }
        })?;
    let mut rewritten = Injected::default();
    let changed = inject_object(place, &mut value, options, role, None, &mut rewritten)?;
    if !changed {
        return Ok(None);
    }
    // The same text parsed once more, for its key order (serde_json's maps are sorted).
    let order: Option<Order> =
        serde_saphyr::from_str_with_options(&segment.body, yaml_options()).ok();
    let printable = Printable {
        value: &value,
        order: order.as_ref(),
    };
    let yaml = serde_saphyr::to_string(&printable).map_err(|e| InjectError::Mutate {
        place: place.clone(),
        object: String::new(),
        at: String::new(),
        error: Box::new(MutateError::Malformed {
            field: "(document)".into(),
            message: format!("cannot be written as YAML: {e}"),
        }),
    })?;
    // Whatever followed `---` on its line is part of the body, printed below.
    if segment.marker.is_some() {
        rewritten.text.push_str("---\n");
    }
    // Comment lines heading the document stay (the re-serialised rest loses its comments).
    for line in segment.body.lines().take_while(|l| is_comment_or_blank(l)) {
        rewritten.text.push_str(line);
        rewritten.text.push('\n');
    }
    rewritten.text.push_str(&yaml);
    if !rewritten.text.ends_with('\n') {
        rewritten.text.push('\n');
    }
    Ok(Some(rewritten))
}

/// Where a workload kind keeps its pod template (`None`: the object itself is the pod).
fn template_pointer(api_version: &str, kind: &str) -> Option<Option<&'static str>> {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    match (group, kind) {
        ("", "Pod") => Some(None),
        ("apps" | "extensions", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") => {
            Some(Some("/spec/template"))
        }
        ("batch", "Job") => Some(Some("/spec/template")),
        ("batch", "CronJob") => Some(Some("/spec/jobTemplate/spec/template")),
        _ => None,
    }
}

/// Mutates the object (or the items of a list) in place; whether anything changed. `typed` is
/// the `(apiVersion, kind)` of the items of a typed list such as `DeploymentList`, whose
/// items the API server sends without their own.
fn inject_object(
    place: &Place,
    value: &mut Value,
    options: &MutateOptions,
    role: Option<&str>,
    typed: Option<(&str, &str)>,
    out: &mut Injected,
) -> Result<bool, InjectError> {
    let Value::Object(map) = value else {
        return Ok(false);
    };
    let text = |key: &str| map.get(key).and_then(Value::as_str);
    let kind = text("kind")
        .or(typed.map(|t| t.1))
        .unwrap_or_default()
        .to_string();
    let api_version = text("apiVersion")
        .or(typed.map(|t| t.0))
        .unwrap_or_default()
        .to_string();
    let fail = |object: &str, at: &str, error: MutateError| InjectError::Mutate {
        place: place.clone(),
        object: object.to_string(),
        at: at.to_string(),
        error: Box::new(error),
    };
    // `kind: List` (kubectl's) and typed lists such as `DeploymentList`.
    if kind.ends_with("List") {
        return match map.get_mut("items") {
            None | Some(Value::Null) => Ok(false),
            // Some custom kind that merely ends in "List": not ours to judge.
            Some(items) if !items.is_array() && kind != "List" => Ok(false),
            Some(Value::Array(items)) => {
                let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
                let typed = item_kind.map(|k| (api_version.as_str(), k));
                inject_items(place, items, options, role, typed, out)
            }
            Some(_) => Err(fail(
                &describe(&kind, map),
                "",
                mutate::malformed("items", "not a list"),
            )),
        };
    }
    let Some(pointer) = template_pointer(&api_version, &kind) else {
        return Ok(false);
    };
    let object = describe(&kind, map);
    // Field names in errors are relative to the document, e.g. `spec.template.spec.volumes`.
    let prefix = pointer.map_or(String::new(), |p| {
        p.trim_start_matches('/').replace('/', ".") + "."
    });
    let fail_at = |error: MutateError| fail(&object, &prefix, error);
    let template = match pointer {
        None => Some(&mut *value),
        Some(p) => value.pointer_mut(p),
    };
    let template = match template {
        Some(t @ Value::Object(_)) => t,
        _ if role.is_none() => return Ok(false),
        _ => {
            let field = prefix.trim_end_matches('.');
            let error = mutate::malformed(field, "missing or not a mapping");
            return Err(fail(&object, "", error));
        }
    };
    let mut labelled = false;
    if let Some(role) = role {
        match label(template, role).map_err(fail_at)? {
            Labelled::Added => labelled = true,
            Labelled::Already => {}
            Labelled::Kept(kept) => out.notes.push(format!(
                "{place}{object}: keeps its own role label {:?} (--role {role} not applied)",
                kept.chars().take(64).collect::<String>()
            )),
        }
    }
    match mutate::mutated(template, options).map_err(fail_at)? {
        Some(mutated) => {
            *template = mutated;
            out.mutated += 1;
            Ok(true)
        }
        None => Ok(labelled),
    }
}

/// Mutates the items of a list in place; whether any changed. An error names the item.
fn inject_items(
    place: &Place,
    items: &mut [Value],
    options: &MutateOptions,
    role: Option<&str>,
    typed: Option<(&str, &str)>,
    out: &mut Injected,
) -> Result<bool, InjectError> {
    let mut changed = false;
    for (i, item) in items.iter_mut().enumerate() {
        changed |= inject_object(place, item, options, role, typed, out).map_err(|mut e| {
            if let InjectError::Mutate { object, .. } = &mut e {
                *object = format!(" items[{i}]{object}");
            }
            e
        })?;
    }
    Ok(changed)
}

enum Labelled {
    Added,
    Already,
    /// The template names another role: the user's label wins.
    Kept(String),
}

/// Sets the role label on a pod template unless it has one.
fn label(template: &mut Value, role: &str) -> Result<Labelled, MutateError> {
    let bad = |field: &str| mutate::malformed(field, "not a mapping");
    let t = template.as_object_mut().ok_or_else(|| bad("(template)"))?;
    let meta = mapping_at(t, "metadata").ok_or_else(|| bad("metadata"))?;
    let labels = mapping_at(meta, "labels").ok_or_else(|| bad("metadata.labels"))?;
    match labels.get(ROLE_LABEL) {
        Some(Value::String(existing)) if existing == role => Ok(Labelled::Already),
        Some(Value::String(existing)) => Ok(Labelled::Kept(existing.clone())),
        // Not a string: the mutation reports it.
        Some(_) => Ok(Labelled::Already),
        None => {
            labels.insert(ROLE_LABEL.into(), Value::String(role.into()));
            Ok(Labelled::Added)
        }
    }
}

/// The mapping under `key`, made an empty one where it is absent or null.
fn mapping_at<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
) -> Option<&'a mut Map<String, Value>> {
    let value = map.entry(key).or_insert(Value::Null);
    if value.is_null() {
        *value = Value::Object(Map::new());
    }
    value.as_object_mut()
}

/// ` (Deployment shop/web)`, naming the object only where its name is a plausible one.
fn describe(kind: &str, map: &Map<String, Value>) -> String {
    let meta = map.get("metadata");
    let field = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .filter(|n| mutate::is_object_name(n))
    };
    let kind = if kind.len() <= 63 && kind.chars().all(|c| c.is_ascii_alphanumeric()) {
        kind
    } else {
        "object"
    };
    match (field("namespace"), field("name")) {
        (Some(ns), Some(name)) => format!(" ({kind} {ns}/{name})"),
        (None, Some(name)) => format!(" ({kind} {name})"),
        _ => format!(" ({kind})"),
    }
}

/// The shape of a parsed document without its values: the order of every mapping's keys, and
/// each list entry's `name`, so that a re-serialised document keeps its author's order.
#[derive(Debug, Default)]
struct Order {
    keys: Vec<(String, Order)>,
    items: Vec<Order>,
    scalar: Option<String>,
}

impl Order {
    fn get(&self, key: &str) -> Option<&Order> {
        self.keys.iter().find(|(k, _)| k == key).map(|(_, o)| o)
    }

    fn name(&self) -> Option<&str> {
        self.get("name")?.scalar.as_deref()
    }
}

impl<'de> serde::Deserialize<'de> for Order {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(OrderVisitor)
    }
}

struct OrderVisitor;

/// Visitor methods for the scalars other than strings: they carry no order (and no name).
macro_rules! scalars_have_no_order {
    ($($visit:ident($ty:ty),)*) => {$(
        fn $visit<E: serde::de::Error>(self, _: $ty) -> std::result::Result<Order, E> {
            Ok(Order::default())
        }
    )*};
}

impl<'de> serde::de::Visitor<'de> for OrderVisitor {
    type Value = Order;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Order, A::Error> {
        let mut order = Order::default();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value::<Order>()?;
            order.keys.push((key, value));
        }
        Ok(order)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Order, A::Error> {
        let mut order = Order::default();
        while let Some(item) = seq.next_element::<Order>()? {
            order.items.push(item);
        }
        Ok(order)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Order, E> {
        Ok(Order {
            scalar: Some(v.to_string()),
            ..Order::default()
        })
    }

    scalars_have_no_order! {
        visit_bool(bool),
        visit_i64(i64),
        visit_u64(u64),
        visit_i128(i128),
        visit_u128(u128),
        visit_f64(f64),
        visit_bytes(&[u8]),
    }

    fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<Order, E> {
        Ok(Order::default())
    }

    fn visit_none<E: serde::de::Error>(self) -> std::result::Result<Order, E> {
        Ok(Order::default())
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<Order, D::Error> {
        <Order as serde::Deserialize>::deserialize(d)
    }
}

/// A mutated document as it is printed: keys in the author's order (added keys after them,
/// `name` first in added objects), and strings that a YAML 1.1 reader (kubectl's) could take
/// for something else double-quoted.
struct Printable<'a> {
    value: &'a Value,
    order: Option<&'a Order>,
}

impl serde::Serialize for Printable<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap as _, SerializeSeq as _};
        match self.value {
            Value::Object(map) => {
                let mut keys: Vec<&str> = Vec::with_capacity(map.len());
                if let Some(order) = self.order {
                    keys.extend(
                        order
                            .keys
                            .iter()
                            .map(|(k, _)| k.as_str())
                            .filter(|k| map.contains_key(*k)),
                    );
                    // `--role` may add a pod template's metadata: it goes before its spec.
                    if order.get("metadata").is_none()
                        && map.contains_key("metadata")
                        && let Some(spec) = keys.iter().position(|k| *k == "spec")
                    {
                        keys.insert(spec, "metadata");
                    }
                } else if map.contains_key("name") {
                    keys.push("name");
                }
                // Added keys in a fixed order, whatever the map's own iteration order.
                let mut added: Vec<&str> = map
                    .keys()
                    .map(String::as_str)
                    .filter(|k| !keys.contains(k))
                    .collect();
                added.sort_unstable();
                keys.extend(added);
                let mut m = s.serialize_map(Some(keys.len()))?;
                for key in keys {
                    let order = self.order.and_then(|o| o.get(key));
                    m.serialize_entry(
                        &PrintableStr(key),
                        &Printable {
                            value: &map[key],
                            order,
                        },
                    )?;
                }
                m.end()
            }
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for (i, item) in items.iter().enumerate() {
                    let order = self.order.and_then(|o| match item.get("name") {
                        Some(Value::String(name)) => {
                            o.items.iter().find(|x| x.name() == Some(name.as_str()))
                        }
                        _ => o.items.get(i),
                    });
                    seq.serialize_element(&Printable { value: item, order })?;
                }
                seq.end()
            }
            Value::String(text) => PrintableStr(text).serialize(s),
            other => other.serialize(s),
        }
    }
}

struct PrintableStr<'a>(&'a str);

impl serde::Serialize for PrintableStr<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if yaml11_ambiguous(self.0) {
            serde_saphyr::DoubleQuoted(self.0).serialize(s)
        } else {
            s.serialize_str(self.0)
        }
    }
}

/// Strings a YAML 1.1 reader may resolve to a number, a time or a sexagesimal value when they
/// are plain (`12:30`, `2026-01-02`, `1_000`, `0o17`): anything starting like a number and
/// holding no space. Quoting one more string than needed costs nothing.
fn yaml11_ambiguous(s: &str) -> bool {
    let b = s.as_bytes();
    let starts_numeric = match b {
        [d, ..] if d.is_ascii_digit() => true,
        [b'+' | b'-' | b'.', d, ..] => d.is_ascii_digit() || *d == b'.',
        _ => false,
    };
    starts_numeric && !s.contains(char::is_whitespace)
}
