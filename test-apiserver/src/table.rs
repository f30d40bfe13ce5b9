//! Server-side printing: the `meta.k8s.io/v1` Tables `kubectl get` asks for.
//!
//! kubectl sends `Accept: application/json;as=Table;v=v1;g=meta.k8s.io,…,application/json` and
//! prints whatever columns the server answers with, so the columns a user sees are the
//! server's: for a custom resource, the `additionalPrinterColumns` of its
//! CustomResourceDefinition (a `Name` column first; an `Age` column when it declares none), for
//! Secrets and Namespaces the real server's built-in printers, for anything else the generic
//! `Name`, `Created At`. Cells are rendered as the real server renders them: a `date` cell is
//! the time elapsed since the value (`5m`, `<invalid>` for a time in the future, `<unknown>` for
//! an empty one), a `string` cell is the value as Go's JSONPath prints it, a missing value is
//! `null` (kubectl shows `<none>`).

use http::HeaderValue;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{Map, Value, json};

/// What a Table request asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TableRequest {
    /// `meta.k8s.io/v1` or `meta.k8s.io/v1beta1` (the same structure).
    pub api_version: &'static str,
    pub include: IncludeObject,
    /// `noHeaders=true`: rows only (kubectl asks so for the pages after the first).
    pub no_headers: bool,
}

/// `includeObject`: what each row carries besides its cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IncludeObject {
    None,
    /// A `PartialObjectMetadata` (the default): kubectl reads labels and names from it.
    Metadata,
    Object,
}

/// The Table the `Accept` header asks for, if it prefers one: media ranges are read in order,
/// and the first that this server can answer decides (a Table, or plain JSON).
pub(crate) fn requested(
    accept: Option<&HeaderValue>,
    query: &[(String, String)],
) -> Result<Option<TableRequest>, String> {
    let Some(accept) = accept.and_then(|a| a.to_str().ok()) else {
        return Ok(None);
    };
    let mut api_version = None;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        if !matches!(media, "application/json" | "application/*" | "*/*") {
            continue;
        }
        let params: Vec<(&str, &str)> = parts.filter_map(|p| p.split_once('=')).collect();
        let param = |key: &str| params.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        match (param("as"), param("g"), param("v")) {
            (None, _, _) => break,
            (Some("Table"), Some("meta.k8s.io"), Some("v1")) => {
                api_version = Some("meta.k8s.io/v1");
                break;
            }
            (Some("Table"), Some("meta.k8s.io"), Some("v1beta1")) => {
                api_version = Some("meta.k8s.io/v1beta1");
                break;
            }
            // Another representation (e.g. PartialObjectMetadataList): not served here.
            _ => {}
        }
    }
    let Some(api_version) = api_version else {
        return Ok(None);
    };
    let param = |key: &str| {
        query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let include = match param("includeObject").unwrap_or("") {
        "" | "Metadata" => IncludeObject::Metadata,
        "None" => IncludeObject::None,
        "Object" => IncludeObject::Object,
        other => {
            return Err(format!(
                "includeObject: Unsupported value: {other:?}: supported values: \"Metadata\", \"None\", \"Object\""
            ));
        }
    };
    Ok(Some(TableRequest {
        api_version,
        include,
        no_headers: param("noHeaders") == Some("true"),
    }))
}

/// How the rows of one resource are printed.
#[derive(Clone, Debug)]
pub(crate) enum Printer {
    /// A custom resource: `Name`, then the CRD's columns.
    Custom(Vec<CustomColumn>),
    /// The built-in Secret printer: Name, Type, Data, Age.
    Secret,
    /// The built-in Namespace printer: Name, Status, Age.
    Namespace,
    /// The generic printer of resources without their own: Name, Created At.
    Default,
}

/// One `additionalPrinterColumns` entry, its JSONPath parsed.
#[derive(Clone, Debug)]
pub(crate) struct CustomColumn {
    definition: Value,
    type_: String,
    path: JsonPath,
}

impl Printer {
    /// The printer of a custom resource's `version`, from its CustomResourceDefinition (JSON,
    /// as stored). A version without columns gets `Age`, as the real server serves it.
    pub(crate) fn for_crd(crd: &Value, version: &str) -> Result<Printer, String> {
        let versions = crd["spec"]["versions"].as_array();
        let Some(served) = versions.and_then(|vs| vs.iter().find(|v| v["name"] == version)) else {
            return Err(format!(
                "the CustomResourceDefinition has no version {version:?}"
            ));
        };
        let mut declared = served["additionalPrinterColumns"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if declared.is_empty() {
            declared.push(json!({
                "name": "Age",
                "type": "date",
                "jsonPath": ".metadata.creationTimestamp",
                "description": CREATION_TIMESTAMP,
            }));
        }
        let mut columns = Vec::new();
        for column in declared {
            let json_path = column["jsonPath"].as_str().unwrap_or("");
            let path = JsonPath::parse(json_path)
                .map_err(|e| format!("unrecognized column definition {json_path:?}: {e}"))?;
            let description = match column["description"].as_str() {
                Some(d) if !d.is_empty() => d.to_string(),
                _ => format!("Custom resource definition column (in JSONPath format): {json_path}"),
            };
            let type_ = column["type"].as_str().unwrap_or("").to_string();
            columns.push(CustomColumn {
                definition: json!({
                    "name": column["name"].as_str().unwrap_or(""),
                    "type": type_,
                    "format": column["format"].as_str().unwrap_or(""),
                    "description": description,
                    "priority": column["priority"].as_i64().unwrap_or(0),
                }),
                type_,
                path,
            });
        }
        Ok(Printer::Custom(columns))
    }

    /// The built-in printer of a core or other non-custom resource.
    pub(crate) fn builtin(group: &str, resource: &str) -> Printer {
        match (group, resource) {
            ("", "secrets") => Printer::Secret,
            ("", "namespaces") => Printer::Namespace,
            _ => Printer::Default,
        }
    }

    fn columns(&self) -> Vec<Value> {
        let column = |name: &str, type_: &str, format: &str, description: &str| {
            json!({"name": name, "type": type_, "format": format, "description": description,
                   "priority": 0})
        };
        let name = column("Name", "string", "name", NAME);
        let age = column("Age", "string", "", CREATION_TIMESTAMP);
        match self {
            Printer::Custom(custom) => std::iter::once(name)
                .chain(custom.iter().map(|c| c.definition.clone()))
                .collect(),
            Printer::Secret => vec![
                name,
                column("Type", "string", "", "The type of secret"),
                column(
                    "Data",
                    "integer",
                    "",
                    "The number of data items in the secret",
                ),
                age,
            ],
            Printer::Namespace => vec![
                name,
                column("Status", "string", "", "The status of the namespace"),
                age,
            ],
            Printer::Default => vec![name, column("Created At", "date", "", CREATION_TIMESTAMP)],
        }
    }

    fn cells(&self, obj: &Value, now: Timestamp) -> Vec<Value> {
        let meta = &obj["metadata"];
        let name = json!(meta["name"].as_str().unwrap_or(""));
        let created = meta["creationTimestamp"].as_str().unwrap_or("");
        match self {
            Printer::Custom(custom) => std::iter::once(name)
                .chain(custom.iter().map(|c| c.cell(obj, now)))
                .collect(),
            Printer::Secret => {
                let data = obj["data"].as_object().map_or(0, Map::len);
                vec![
                    name,
                    json!(obj["type"].as_str().unwrap_or("")),
                    json!(data),
                    json!(age_of(created, now)),
                ]
            }
            Printer::Namespace => vec![
                name,
                json!(obj["status"]["phase"].as_str().unwrap_or("")),
                json!(age_of(created, now)),
            ],
            Printer::Default => {
                // The generic printer sends the timestamp itself (UTC, RFC 3339).
                let at = created
                    .parse::<Timestamp>()
                    .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                    .unwrap_or_else(|_| "0001-01-01T00:00:00Z".into());
                vec![name, json!(at)]
            }
        }
    }

    /// A Table of `items` (a list's, or one object's), with `metadata` (the list's
    /// resourceVersion, continue and remainingItemCount).
    pub(crate) fn table(
        &self,
        request: TableRequest,
        items: &[Value],
        metadata: Value,
        now: Timestamp,
    ) -> Value {
        let rows: Vec<Value> = items
            .iter()
            .map(|obj| {
                let mut row = json!({"cells": self.cells(obj, now)});
                match request.include {
                    IncludeObject::None => {}
                    IncludeObject::Metadata => {
                        row["object"] = json!({
                            "kind": "PartialObjectMetadata",
                            "apiVersion": "meta.k8s.io/v1",
                            "metadata": obj["metadata"],
                        });
                    }
                    IncludeObject::Object => row["object"] = obj.clone(),
                }
                row
            })
            .collect();
        let mut table = json!({
            "kind": "Table",
            "apiVersion": request.api_version,
            "metadata": metadata,
            "rows": rows,
        });
        if !request.no_headers {
            table["columnDefinitions"] = json!(self.columns());
        }
        table
    }
}

impl CustomColumn {
    /// The cell as the API server's custom-resource table convertor renders it: the first
    /// value the path finds; `string` columns print it (a null as `<no value>`), other types
    /// keep a value of their type, anything else is `null`.
    fn cell(&self, obj: &Value, now: Timestamp) -> Value {
        let Some(value) = self.path.first(obj) else {
            return Value::Null;
        };
        match (self.type_.as_str(), value) {
            ("string", v) => json!(go_print(v)),
            (_, Value::Null) => Value::Null,
            ("integer", Value::Number(n)) => match n.as_i64() {
                Some(i) => json!(i),
                // Go converts a float64 to int64 by truncation.
                None => n.as_f64().map_or(Value::Null, |f| json!(f.trunc() as i64)),
            },
            ("number", Value::Number(n)) => n.as_f64().map_or(Value::Null, |f| json!(f)),
            ("boolean", Value::Bool(b)) => json!(b),
            ("date", Value::String(s)) => json!(age_of(s, now)),
            _ => Value::Null,
        }
    }
}

const NAME: &str = "Name must be unique within a namespace. Is required when creating resources, \
                    although some resources may allow a client to request the generation of an \
                    appropriate name automatically.";
const CREATION_TIMESTAMP: &str = "CreationTimestamp is a timestamp representing the server time \
                                  when this object was created.";

/// A `date` cell: how long ago `timestamp` (RFC 3339) was; `<unknown>` when empty, `<invalid>`
/// when it does not parse.
fn age_of(timestamp: &str, now: Timestamp) -> String {
    if timestamp.is_empty() || timestamp == "null" {
        return "<unknown>".into();
    }
    match timestamp.parse::<Timestamp>() {
        Ok(t) => human_duration(now.duration_since(t)),
        Err(_) => "<invalid>".into(),
    }
}

/// A duration the way Kubernetes prints ages: two significant units at most, fewer as it
/// grows (`90s`, `5m30s`, `47m`, `3h20m`, `20h`, `3d4h`, `45d`, `2y30d`); more than a second
/// in the future is `<invalid>` (clocks may differ by a second).
pub(crate) fn human_duration(d: SignedDuration) -> String {
    let seconds = d.as_secs();
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{days}d"),
            h => format!("{days}d{h}h"),
        };
    }
    if days < 365 * 2 {
        return format!("{days}d");
    }
    if days < 365 * 8 {
        return match days % 365 {
            0 => format!("{}y", days / 365),
            d => format!("{}y{d}d", days / 365),
        };
    }
    format!("{}y", days / 365)
}

/// A JSON value as Go's `fmt.Print` prints what JSONPath found: strings bare, null as
/// `<no value>`, lists as `[a b]`, objects as `map[k:v]` with sorted keys.
fn go_print(value: &Value) -> String {
    match value {
        Value::Null => "<no value>".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(go_print_nested).collect();
            format!("[{}]", items.join(" "))
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let pairs: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{k}:{}", go_print_nested(&map[k])))
                .collect();
            format!("map[{}]", pairs.join(" "))
        }
    }
}

/// Inside a list or map Go prints a nil interface as `<nil>`.
fn go_print_nested(value: &Value) -> String {
    match value {
        Value::Null => "<nil>".into(),
        other => go_print(other),
    }
}

// ---------------------------------------------------------------------------------------------
// JSONPath
// ---------------------------------------------------------------------------------------------

/// The JSONPath forms printer columns use: `.field`, `['field']`, `[n]` (negative from the
/// end), `[*]`, and filters `[?(@.a.b == "x")]`, `!=`, `<`, `<=`, `>`, `>=` on strings or
/// numbers, or `[?(@.a)]` for presence. Optionally wrapped in `{…}`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct JsonPath {
    steps: Vec<Step>,
}

#[derive(Clone, Debug, PartialEq)]
enum Step {
    Field(String),
    Index(i64),
    All,
    Filter {
        path: Vec<Step>,
        test: Option<(Op, Value)>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl JsonPath {
    pub(crate) fn parse(text: &str) -> Result<JsonPath, String> {
        let text = text.trim();
        let text = match text.strip_prefix('{') {
            Some(inner) => inner
                .strip_suffix('}')
                .ok_or("unclosed action: a '{' without '}'")?,
            None => text,
        };
        let mut parser = Parser {
            chars: text.chars().collect(),
            at: 0,
        };
        let steps = parser.steps(false)?;
        if parser.at < parser.chars.len() {
            return Err(format!("unexpected {:?}", parser.rest()));
        }
        Ok(JsonPath { steps })
    }

    /// The first value the path finds in `root`.
    pub(crate) fn first<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        evaluate(&self.steps, root).into_iter().next()
    }
}

fn evaluate<'a>(steps: &[Step], root: &'a Value) -> Vec<&'a Value> {
    let mut current = vec![root];
    for step in steps {
        let mut next = Vec::new();
        for value in current {
            match (step, value) {
                (Step::Field(name), Value::Object(map)) => next.extend(map.get(name)),
                (Step::Index(i), Value::Array(items)) => {
                    let len = items.len() as i64;
                    let i = if *i < 0 { len + i } else { *i };
                    if (0..len).contains(&i) {
                        next.push(&items[i as usize]);
                    }
                }
                (Step::All, Value::Array(items)) => next.extend(items.iter()),
                (Step::All, Value::Object(map)) => {
                    let mut keys: Vec<&String> = map.keys().collect();
                    keys.sort();
                    next.extend(keys.into_iter().map(|k| &map[k]));
                }
                (Step::Filter { path, test }, Value::Array(items)) => {
                    next.extend(items.iter().filter(|item| {
                        let found = evaluate(path, item);
                        match (test, found.as_slice()) {
                            (None, found) => !found.is_empty(),
                            (Some((op, literal)), [one]) => compare(*op, one, literal),
                            _ => false,
                        }
                    }));
                }
                _ => {}
            }
        }
        current = next;
    }
    current
}

/// A filter comparison; values of different types never match.
fn compare(op: Op, left: &Value, right: &Value) -> bool {
    use std::cmp::Ordering;
    let ordering = match (left, right) {
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        (Value::Number(a), Value::Number(b)) => a
            .as_f64()
            .zip(b.as_f64())
            .and_then(|(a, b)| a.partial_cmp(&b)),
        (Value::Bool(a), Value::Bool(b)) if matches!(op, Op::Eq | Op::Ne) => Some(a.cmp(b)),
        _ => None,
    };
    let Some(ordering) = ordering else {
        return false;
    };
    match op {
        Op::Eq => ordering == Ordering::Equal,
        Op::Ne => ordering != Ordering::Equal,
        Op::Lt => ordering == Ordering::Less,
        Op::Le => ordering != Ordering::Greater,
        Op::Gt => ordering == Ordering::Greater,
        Op::Ge => ordering != Ordering::Less,
    }
}

struct Parser {
    chars: Vec<char>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn rest(&self) -> String {
        self.chars[self.at..].iter().collect()
    }

    fn eat(&mut self, s: &str) -> bool {
        let n = s.chars().count();
        if self.chars[self.at..].iter().take(n).copied().eq(s.chars()) {
            self.at += n;
            true
        } else {
            false
        }
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.at += 1;
        }
    }

    /// Steps until the end, or (inside a filter) until a space, operator or `)`.
    fn steps(&mut self, in_filter: bool) -> Result<Vec<Step>, String> {
        let mut steps = Vec::new();
        while let Some(c) = self.peek() {
            match c {
                '.' => {
                    self.at += 1;
                    if self.peek() == Some('.') {
                        return Err("recursive descent (..) is not supported".into());
                    }
                    let start = self.at;
                    while self
                        .peek()
                        .is_some_and(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '/'))
                    {
                        self.at += 1;
                    }
                    if self.at == start {
                        // A bare `.` (the current object) adds nothing.
                        continue;
                    }
                    steps.push(Step::Field(self.chars[start..self.at].iter().collect()));
                }
                '[' => {
                    self.at += 1;
                    steps.push(self.bracket()?);
                }
                _ if in_filter => break,
                _ => return Err(format!("unexpected {:?}", self.rest())),
            }
        }
        Ok(steps)
    }

    fn bracket(&mut self) -> Result<Step, String> {
        let step = if self.eat("?(") {
            self.skip_spaces();
            if !self.eat("@") {
                return Err("a filter must start with @".into());
            }
            let path = self.steps(true)?;
            self.skip_spaces();
            let op = [
                ("==", Op::Eq),
                ("!=", Op::Ne),
                ("<=", Op::Le),
                (">=", Op::Ge),
                ("<", Op::Lt),
                (">", Op::Gt),
            ]
            .into_iter()
            .find(|(text, _)| self.eat(text))
            .map(|(_, op)| op);
            let test = match op {
                Some(op) => {
                    self.skip_spaces();
                    let literal = self.literal()?;
                    self.skip_spaces();
                    Some((op, literal))
                }
                None => None,
            };
            if !self.eat(")") {
                return Err(format!("unclosed filter at {:?}", self.rest()));
            }
            Step::Filter { path, test }
        } else if self.eat("*") {
            Step::All
        } else if matches!(self.peek(), Some('\'' | '"')) {
            match self.literal()? {
                Value::String(s) => Step::Field(s),
                _ => unreachable!("a quoted literal is a string"),
            }
        } else {
            let start = self.at;
            while self.peek().is_some_and(|c| c.is_ascii_digit() || c == '-') {
                self.at += 1;
            }
            let text: String = self.chars[start..self.at].iter().collect();
            Step::Index(
                text.parse()
                    .map_err(|_| format!("unsupported subscript {:?}", self.rest()))?,
            )
        };
        if !self.eat("]") {
            return Err(format!("unclosed '[' at {:?}", self.rest()));
        }
        Ok(step)
    }

    /// A quoted string, a number, `true` or `false`.
    fn literal(&mut self) -> Result<Value, String> {
        match self.peek() {
            Some(quote @ ('\'' | '"')) => {
                self.at += 1;
                let mut text = String::new();
                loop {
                    match self.peek() {
                        None => return Err("unterminated string".into()),
                        Some(c) if c == quote => {
                            self.at += 1;
                            return Ok(Value::String(text));
                        }
                        Some('\\') => {
                            self.at += 1;
                            text.extend(self.peek());
                            self.at += 1;
                        }
                        Some(c) => {
                            text.push(c);
                            self.at += 1;
                        }
                    }
                }
            }
            _ if self.eat("true") => Ok(Value::Bool(true)),
            _ if self.eat("false") => Ok(Value::Bool(false)),
            _ => {
                let start = self.at;
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E'))
                {
                    self.at += 1;
                }
                let text: String = self.chars[start..self.at].iter().collect();
                serde_json::from_str::<serde_json::Number>(&text)
                    .map(Value::Number)
                    .map_err(|_| format!("unsupported literal at {:?}", self.rest()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt as _;
    use kube_aws_iam_controller::domain::crd::AWSIAMRole;

    const KUBECTL_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,\
                                  application/json;as=Table;v=v1beta1;g=meta.k8s.io,\
                                  application/json";

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn role(name: &str, status: Value) -> Value {
        json!({
            "apiVersion": "zalando.org/v1",
            "kind": "AWSIAMRole",
            "metadata": {"name": name, "namespace": "team-a", "uid": "u-1",
                         "creationTimestamp": "2026-01-01T10:00:00Z", "labels": {"app": "x"}},
            "spec": {"roleReference": "app"},
            "status": status,
        })
    }

    fn request() -> TableRequest {
        TableRequest {
            api_version: "meta.k8s.io/v1",
            include: IncludeObject::Metadata,
            no_headers: false,
        }
    }

    fn project_printer() -> Printer {
        let crd = serde_json::to_value(AWSIAMRole::crd()).unwrap();
        Printer::for_crd(&crd, "v1").unwrap()
    }

    #[test]
    fn accept_headers_choose_the_table_or_plain_json() {
        let header = |s: &str| HeaderValue::from_str(s).unwrap();
        let table = requested(Some(&header(KUBECTL_ACCEPT)), &[])
            .unwrap()
            .unwrap();
        assert_eq!(table, request());
        let v1beta1 = "application/json;as=Table;v=v1beta1;g=meta.k8s.io, application/json";
        let table = requested(Some(&header(v1beta1)), &[]).unwrap().unwrap();
        assert_eq!(table.api_version, "meta.k8s.io/v1beta1");
        // Plain JSON first, or no Accept at all: no Table.
        let json_first = "application/json, application/json;as=Table;v=v1;g=meta.k8s.io";
        assert_eq!(requested(Some(&header(json_first)), &[]).unwrap(), None);
        assert_eq!(requested(None, &[]).unwrap(), None);
        // An unknown representation is passed over.
        let partial = "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,\
                       application/json;as=Table;v=v1;g=meta.k8s.io";
        assert!(requested(Some(&header(partial)), &[]).unwrap().is_some());
        let query = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        let object = requested(
            Some(&header(KUBECTL_ACCEPT)),
            &query("includeObject", "Object"),
        );
        assert_eq!(object.unwrap().unwrap().include, IncludeObject::Object);
        let no_headers = requested(Some(&header(KUBECTL_ACCEPT)), &query("noHeaders", "true"));
        assert!(no_headers.unwrap().unwrap().no_headers);
        let bad = requested(
            Some(&header(KUBECTL_ACCEPT)),
            &query("includeObject", "All"),
        );
        assert!(bad.unwrap_err().contains("includeObject"));
    }

    #[test]
    fn json_paths_of_printer_columns() {
        let obj = json!({
            "status": {
                "conditions": [
                    {"type": "Synced", "status": "True", "reason": "A"},
                    {"type": "Ready", "status": "False", "reason": "InvalidSpec"},
                    {"type": "Ready", "status": "True", "reason": "Second"},
                ],
                "count": 3,
                "odd.key": "dotted",
            },
            "items": [1, 2, 3],
        });
        let first = |path: &str| JsonPath::parse(path).unwrap().first(&obj).cloned();
        let ready = r#".status.conditions[?(@.type=="Ready")].status"#;
        assert_eq!(first(ready), Some(json!("False")), "the first match counts");
        assert_eq!(
            first(r#"{.status.conditions[?(@.type == 'Ready')].reason}"#),
            Some(json!("InvalidSpec"))
        );
        assert_eq!(
            first(r#".status.conditions[?(@.type!="Synced")].reason"#),
            Some(json!("InvalidSpec"))
        );
        assert_eq!(
            first(r#".status.conditions[?(@.type=="Gone")].status"#),
            None
        );
        assert_eq!(
            first(".status.conditions[?(@.reason)].type"),
            Some(json!("Synced"))
        );
        assert_eq!(
            first(".status.conditions[1].reason"),
            Some(json!("InvalidSpec"))
        );
        assert_eq!(
            first(".status.conditions[-1].reason"),
            Some(json!("Second"))
        );
        assert_eq!(first(".status.conditions[*].type"), Some(json!("Synced")));
        assert_eq!(first(".items[?(@ > 1)]"), Some(json!(2)));
        assert_eq!(first(".status['odd.key']"), Some(json!("dotted")));
        assert_eq!(first(".status.count"), Some(json!(3)));
        assert_eq!(first(".status.missing"), None);
        assert_eq!(first(".status.count.deeper"), None);
        for bad in [".a[", ".a[?(@.b==)]", ".a..b", "a", ".a[1:2]", "{.a"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn ages_print_as_kubernetes_prints_them() {
        let d = |s: i64| human_duration(SignedDuration::from_secs(s));
        assert_eq!(d(-5), "<invalid>");
        assert_eq!(d(-1), "0s");
        assert_eq!(d(0), "0s");
        assert_eq!(d(119), "119s");
        assert_eq!(d(120), "2m");
        assert_eq!(d(330), "5m30s");
        assert_eq!(d(47 * 60 + 5), "47m");
        assert_eq!(d(3 * 3600 + 20 * 60), "3h20m");
        assert_eq!(d(5 * 3600), "5h");
        assert_eq!(d(20 * 3600), "20h");
        assert_eq!(d(3 * 86400 + 4 * 3600), "3d4h");
        assert_eq!(d(45 * 86400), "45d");
        assert_eq!(d(800 * 86400), "2y70d");
        assert_eq!(d(3000 * 86400), "8y");
        let now = at("2026-01-01T10:05:00Z");
        assert_eq!(age_of("2026-01-01T10:00:00Z", now), "5m");
        assert_eq!(age_of("2026-01-01T11:00:00Z", now), "<invalid>");
        assert_eq!(age_of("", now), "<unknown>");
        assert_eq!(age_of("yesterday", now), "<invalid>");
    }

    #[test]
    fn custom_resources_print_the_crd_columns() {
        let printer = project_printer();
        let ready = role(
            "served",
            json!({
                "roleARN": "arn:aws:iam::123456789012:role/app",
                "expiration": "2026-01-01T11:00:00Z",
                "conditions": [{"type": "Ready", "status": "True", "reason": "CredentialsReady",
                                "message": "", "lastTransitionTime": "2026-01-01T10:00:01Z"}],
            }),
        );
        let blocked = role(
            "blocked",
            json!({"conditions": [{"type": "Ready", "status": "False", "reason": "InvalidSpec",
                                   "message": "", "lastTransitionTime": "2026-01-01T10:00:01Z"}]}),
        );
        let fresh = role("fresh", Value::Null);
        let now = at("2026-01-01T10:02:30Z");
        let metadata = json!({"resourceVersion": "42", "continue": "next"});
        let table = printer.table(request(), &[ready, blocked, fresh], metadata.clone(), now);
        assert_eq!(table["kind"], "Table");
        assert_eq!(table["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(table["metadata"], metadata);
        let names: Vec<&str> = table["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["Name", "Ready", "Reason", "Role ARN", "Expires", "Age"]
        );
        let first = &table["columnDefinitions"][0];
        assert_eq!(
            (&first["type"], &first["format"]),
            (&json!("string"), &json!("name"))
        );
        assert_eq!(table["columnDefinitions"][5]["type"], "date");
        // A column without a description gets the server's.
        assert_eq!(
            table["columnDefinitions"][5]["description"],
            "Custom resource definition column (in JSONPath format): .metadata.creationTimestamp"
        );
        let cells: Vec<&Value> = table["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| &r["cells"])
            .collect();
        assert_eq!(
            cells[0],
            &json!([
                "served",
                "True",
                "CredentialsReady",
                "arn:aws:iam::123456789012:role/app",
                "2026-01-01T11:00:00Z",
                "2m30s"
            ])
        );
        assert_eq!(
            cells[1],
            &json!(["blocked", "False", "InvalidSpec", null, null, "2m30s"])
        );
        assert_eq!(cells[2], &json!(["fresh", null, null, null, null, "2m30s"]));
        // Rows carry the object's metadata by default.
        let object = &table["rows"][0]["object"];
        assert_eq!(object["kind"], "PartialObjectMetadata");
        assert_eq!(object["metadata"]["labels"]["app"], "x");
        assert!(object.get("spec").is_none());
    }

    #[test]
    fn cells_keep_their_column_type() {
        let crd = json!({"spec": {"versions": [{"name": "v1", "additionalPrinterColumns": [
            {"name": "S", "type": "string", "jsonPath": ".v"},
            {"name": "I", "type": "integer", "jsonPath": ".v"},
            {"name": "N", "type": "number", "jsonPath": ".v"},
            {"name": "B", "type": "boolean", "jsonPath": ".v"},
            {"name": "D", "type": "date", "jsonPath": ".v"},
        ]}]}});
        let printer = Printer::for_crd(&crd, "v1").unwrap();
        let now = at("2026-01-01T10:00:00Z");
        let cells = |v: Value| {
            let obj = json!({"metadata": {"name": "x"}, "v": v});
            printer.table(request(), &[obj], json!({}), now)["rows"][0]["cells"].clone()
        };
        assert_eq!(cells(json!(3)), json!(["x", "3", 3, 3.0, null, null]));
        assert_eq!(cells(json!(2.7)), json!(["x", "2.7", 2, 2.7, null, null]));
        assert_eq!(
            cells(json!(true)),
            json!(["x", "true", null, null, true, null])
        );
        assert_eq!(
            cells(json!("2026-01-01T09:00:00Z")),
            json!(["x", "2026-01-01T09:00:00Z", null, null, null, "60m"])
        );
        assert_eq!(
            cells(Value::Null),
            json!(["x", "<no value>", null, null, null, null])
        );
        assert_eq!(
            cells(json!({"b": [1, null], "a": "s"})),
            json!(["x", "map[a:s b:[1 <nil>]]", null, null, null, null])
        );
    }

    #[test]
    fn crd_versions_without_columns_print_age_and_bad_paths_are_refused() {
        let crd = json!({"spec": {"versions": [{"name": "v1"}]}});
        let printer = Printer::for_crd(&crd, "v1").unwrap();
        let obj = json!({"metadata": {"name": "x", "creationTimestamp": "2026-01-01T09:00:00Z"}});
        let table = printer.table(request(), &[obj], json!({}), at("2026-01-01T10:00:00Z"));
        assert_eq!(table["columnDefinitions"][1]["name"], "Age");
        assert_eq!(table["rows"][0]["cells"], json!(["x", "60m"]));
        assert!(Printer::for_crd(&crd, "v2").is_err());
        let bad = json!({"spec": {"versions": [{"name": "v1", "additionalPrinterColumns": [
            {"name": "S", "type": "string", "jsonPath": ".a[?(@.b"}]}]}});
        assert!(
            Printer::for_crd(&bad, "v1")
                .unwrap_err()
                .contains("unrecognized column")
        );
    }

    #[test]
    fn builtin_printers() {
        let now = at("2026-01-01T10:00:00Z");
        let secret = json!({"metadata": {"name": "s", "creationTimestamp": "2026-01-01T09:59:00Z"},
                            "type": "Opaque", "data": {"a": "", "b": ""}});
        let table = Printer::builtin("", "secrets").table(
            request(),
            std::slice::from_ref(&secret),
            json!({}),
            now,
        );
        assert_eq!(table["rows"][0]["cells"], json!(["s", "Opaque", 2, "60s"]));
        let ns = json!({"metadata": {"name": "team-a", "creationTimestamp": "2026-01-01T09:00:00Z"},
                        "status": {"phase": "Active"}});
        let table = Printer::builtin("", "namespaces").table(request(), &[ns], json!({}), now);
        assert_eq!(
            table["rows"][0]["cells"],
            json!(["team-a", "Active", "60m"])
        );
        // Anything else: the generic printer sends the creation time itself.
        let event =
            json!({"metadata": {"name": "e", "creationTimestamp": "2026-01-01T09:00:00.5Z"}});
        let table =
            Printer::builtin("events.k8s.io", "events").table(request(), &[event], json!({}), now);
        assert_eq!(table["columnDefinitions"][1]["name"], "Created At");
        assert_eq!(
            table["rows"][0]["cells"],
            json!(["e", "2026-01-01T09:00:00Z"])
        );
        // Rows without headers or objects, as asked.
        let bare = TableRequest {
            include: IncludeObject::None,
            no_headers: true,
            ..request()
        };
        let table = Printer::builtin("", "secrets").table(
            bare,
            std::slice::from_ref(&secret),
            json!({}),
            now,
        );
        assert!(table.get("columnDefinitions").is_none());
        assert!(table["rows"][0].get("object").is_none());
        let whole = TableRequest {
            include: IncludeObject::Object,
            ..request()
        };
        let table = Printer::builtin("", "secrets").table(
            whole,
            std::slice::from_ref(&secret),
            json!({}),
            now,
        );
        assert_eq!(table["rows"][0]["object"], secret);
    }
}
