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
    shorten(&drop_quoted(message))
}

/// `message` with every quoted part (`"…"` or `` `…` ``) replaced by an ellipsis, the quotes
/// kept: decoders quote the offending value, which may be a secret.
pub fn drop_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
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
    if let Some(q) = quote {
        // An unterminated quote still hides everything after it.
        out.push('…');
        out.push(q);
    }
    out
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

/// An error message about a write that carried credentials, safe to log and show: servers and
/// admission webhooks may quote the request body, so every `known` value (in any form the
/// caller passes) and every long run of base64 characters (encoded Secret data, keys, tokens)
/// is replaced by `<redacted>`, and the result is bounded.
pub fn redact_echo(message: &str, known: &[String]) -> String {
    const MIN_RUN: usize = 32;
    let mut text = message.to_string();
    let mut known: Vec<&str> = known
        .iter()
        .map(String::as_str)
        .filter(|v| v.len() >= 4)
        .collect();
    // Longest first, so a value containing another is replaced whole.
    known.sort_by_key(|v| std::cmp::Reverse(v.len()));
    for value in known {
        text = text.replace(value, "<redacted>");
    }
    let is_b64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=');
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    for c in text.chars().chain(std::iter::once('\0')) {
        if is_b64(c) {
            run.push(c);
            continue;
        }
        if run.len() >= MIN_RUN {
            out.push_str("<redacted>");
        } else {
            out.push_str(&run);
        }
        run.clear();
        if c != '\0' {
            out.push(c);
        }
    }
    const MAX: usize = 300;
    if out.chars().count() > MAX {
        let cut: String = out.chars().take(MAX).collect();
        format!("{cut}… (cut)")
    } else {
        out
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
    fn redact_echo_removes_known_values_and_long_base64() {
        let echoed = format!(
            "admission webhook denied the request: {{\"data\":{{\"credentials\":\"{}\"}}, \"token\":\"tok-123456\"}}",
            "QUJD".repeat(20)
        );
        let out = redact_echo(&echoed, &["tok-123456".into()]);
        assert!(
            !out.contains("QUJD") && !out.contains("tok-123456"),
            "{out}"
        );
        assert!(
            out.starts_with("admission webhook denied the request"),
            "{out}"
        );
        let long = redact_echo(&"word ".repeat(200), &[]);
        assert!(long.chars().count() < 320, "{long}");
        // Names, UIDs and ARNs stay readable.
        let plain =
            "422 Invalid (Secret team-a/app-1 uid 0000-1111 arn:aws:iam::123456789012:role/app)";
        assert_eq!(redact_echo(plain, &[]), plain);
    }

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
