//! Text helpers shared by every module that shows untrusted input or error messages.

use serde_json::Value;

/// A short, printable rendering of untrusted input for error messages: quoted, control
/// characters escaped and long values cut, so a 1 MB reference cannot flood a status or a log.
pub fn excerpt(s: &str) -> String {
    format!("\"{}\"", shorten(s))
}

/// As [`excerpt`], unquoted: for values shown in plan renderings.
pub fn shorten(s: &str) -> String {
    const MAX: usize = 80;
    let escaped: String = s.chars().take(MAX).flat_map(char::escape_debug).collect();
    let total = s.chars().count();
    if total > MAX {
        format!("{escaped}… ({total} characters)")
    } else {
        escaped
    }
}

/// A decoder's message with the input values it quotes removed and its length bounded: the
/// values are untrusted (and could be anything pasted into the wrong field).
pub fn without_values(message: &str) -> String {
    let mut out = String::new();
    let mut quote: Option<char> = None;
    for c in message.chars() {
        match quote {
            Some(q) if c == q => {
                out.push('…');
                out.push(c);
                quote = None;
            }
            Some(_) => {}
            None if c == '"' || c == '`' => {
                out.push(c);
                quote = Some(c);
            }
            None => out.push(c),
        }
    }
    shorten(&out)
}

/// JSON type name for error messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A short, credential-free description of a kube error (API status message or transport).
pub fn kube_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {} ({})", s.code, s.reason, s.message),
        other => other.to_string(),
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_cuts_and_escapes() {
        let e = excerpt(&"x".repeat(1_000_000));
        assert!(
            e.len() < 200 && e.ends_with("… (1000000 characters)\""),
            "{e}"
        );
        assert_eq!(excerpt("a\nb"), "\"a\\nb\"");
    }
}
