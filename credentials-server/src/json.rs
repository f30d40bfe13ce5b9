//! Just enough JSON for a credential_process document in and a few flat objects out. A
//! general-purpose parser (serde_json) would cost this binary more than everything else in it;
//! the input is small (the file is capped) and written by the controller.
//!
//! The reader accepts exactly RFC 8259 JSON (UTF-8, no trailing commas or comments, no lone
//! surrogates, nesting at most [`MAX_DEPTH`] deep). Errors carry no part of the input: the
//! caller's message names the file and the field, never the content.

/// A parsed JSON value. Numbers keep their literal text: the only one read is `"Version"`,
/// which must be the integer 1.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(String),
    String(String),
    Array(Vec<Value>),
    /// Members in document order; [`Value::get`] finds the last of equal keys.
    Object(Vec<(String, Value)>),
}

/// Deeper nesting is refused rather than recursed into (the recursion is on the stack of a
/// small thread).
pub const MAX_DEPTH: usize = 128;

/// The input is not JSON. Deliberately without detail: a position or a quoted token could
/// leak a credential into a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid;

impl Value {
    /// The member `name` of an object (the last one, if repeated), `None` for anything else.
    pub fn get(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Object(members) => members
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// Parses a whole document (surrounding whitespace allowed, nothing else).
pub fn parse(input: &[u8]) -> Result<Value, Invalid> {
    let mut reader = Reader { input, at: 0 };
    reader.skip_whitespace();
    let value = reader.value(0)?;
    reader.skip_whitespace();
    if reader.at == input.len() {
        Ok(value)
    } else {
        Err(Invalid)
    }
}

struct Reader<'a> {
    input: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.at).copied()
    }

    fn next(&mut self) -> Result<u8, Invalid> {
        let byte = self.peek().ok_or(Invalid)?;
        self.at += 1;
        Ok(byte)
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn literal(&mut self, word: &[u8], value: Value) -> Result<Value, Invalid> {
        if self.input[self.at..].starts_with(word) {
            self.at += word.len();
            Ok(value)
        } else {
            Err(Invalid)
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, Invalid> {
        match self.peek().ok_or(Invalid)? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => self.string().map(Value::String),
            b't' => self.literal(b"true", Value::Bool(true)),
            b'f' => self.literal(b"false", Value::Bool(false)),
            b'n' => self.literal(b"null", Value::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(Invalid),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, Invalid> {
        if depth > MAX_DEPTH {
            return Err(Invalid);
        }
        self.at += 1; // '{'
        let mut members = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Value::Object(members));
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return Err(Invalid);
            }
            let key = self.string()?;
            self.skip_whitespace();
            if self.next()? != b':' {
                return Err(Invalid);
            }
            self.skip_whitespace();
            let value = self.value(depth)?;
            members.push((key, value));
            self.skip_whitespace();
            match self.next()? {
                b',' => continue,
                b'}' => return Ok(Value::Object(members)),
                _ => return Err(Invalid),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, Invalid> {
        if depth > MAX_DEPTH {
            return Err(Invalid);
        }
        self.at += 1; // '['
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_whitespace();
            items.push(self.value(depth)?);
            self.skip_whitespace();
            match self.next()? {
                b',' => continue,
                b']' => return Ok(Value::Array(items)),
                _ => return Err(Invalid),
            }
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<Value, Invalid> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return Err(Invalid),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.one_or_more_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.one_or_more_digits()?;
        }
        // Only ASCII was consumed.
        let text = String::from_utf8_lossy(&self.input[start..self.at]).into_owned();
        Ok(Value::Number(text))
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
    }

    fn one_or_more_digits(&mut self) -> Result<(), Invalid> {
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return Err(Invalid);
        }
        self.digits();
        Ok(())
    }

    fn string(&mut self) -> Result<String, Invalid> {
        self.at += 1; // '"'
        let mut out = Vec::new();
        loop {
            match self.next()? {
                b'"' => return String::from_utf8(out).map_err(|_| Invalid),
                b'\\' => {
                    let ch = match self.next()? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.escaped_char()?,
                        _ => return Err(Invalid),
                    };
                    let mut utf8 = [0; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut utf8).as_bytes());
                }
                0x00..=0x1f => return Err(Invalid),
                byte => out.push(byte),
            }
        }
    }

    /// After `\u`: four hex digits, or a surrogate pair written as two escapes.
    fn escaped_char(&mut self) -> Result<char, Invalid> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if self.next()? != b'\\' || self.next()? != b'u' {
                    return Err(Invalid);
                }
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(Invalid);
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(Invalid),
            other => other,
        };
        char::from_u32(code).ok_or(Invalid)
    }

    fn hex4(&mut self) -> Result<u32, Invalid> {
        let mut code = 0;
        for _ in 0..4 {
            let digit = char::from(self.next()?).to_digit(16).ok_or(Invalid)?;
            code = code * 16 + digit;
        }
        Ok(code)
    }
}

/// Appends `text` as a JSON string literal (quotes included).
pub fn push_string(out: &mut String, text: &str) {
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A flat object of string members, in the given order.
pub fn object(members: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(
        32 + members
            .iter()
            .map(|(k, v)| k.len() + v.len() + 6)
            .sum::<usize>(),
    );
    out.push('{');
    for (i, (name, value)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_string(&mut out, name);
        out.push(':');
        push_string(&mut out, value);
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Value {
        parse(text.as_bytes()).unwrap_or_else(|_| panic!("{text:?} was refused"))
    }

    #[test]
    fn reads_every_kind_of_value() {
        let value = ok(
            r#" {"a": [1, -2.5e+3, 0, true, false, null, {}, []], "b": "x\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00", "c": {"d": "e"}} "#,
        );
        assert_eq!(
            value.get("a"),
            Some(&Value::Array(vec![
                Value::Number("1".into()),
                Value::Number("-2.5e+3".into()),
                Value::Number("0".into()),
                Value::Bool(true),
                Value::Bool(false),
                Value::Null,
                Value::Object(vec![]),
                Value::Array(vec![]),
            ]))
        );
        assert_eq!(
            value.get("b").and_then(Value::as_str),
            Some("x\"\\/\u{8}\u{c}\n\r\té😀")
        );
        assert_eq!(
            value
                .get("c")
                .and_then(|c| c.get("d"))
                .and_then(Value::as_str),
            Some("e")
        );
        assert_eq!(value.get("missing"), None);
        assert_eq!(ok("[]").get("a"), None);
        assert_eq!(ok(r#""é""#).as_str(), Some("é"));
    }

    #[test]
    fn the_last_of_repeated_keys_wins() {
        assert_eq!(
            ok(r#"{"k":"1","k":"2"}"#).get("k").and_then(Value::as_str),
            Some("2")
        );
    }

    #[test]
    fn refuses_what_is_not_json() {
        for bad in [
            "",
            " ",
            "{",
            "}",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "[1,]",
            "[1 2]",
            "{a:1}",
            "01",
            "-",
            "1.",
            ".5",
            "1e",
            "+1",
            "tru",
            "nul",
            "\"open",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"\\ud800\\u0041\"",
            "\"tab\there\"",
            "{} {}",
            "{}x",
            "'a'",
            "NaN",
            "[1]]",
            "{\"a\":1 \"b\":2}",
        ] {
            assert_eq!(parse(bad.as_bytes()), Err(Invalid), "{bad:?} was accepted");
        }
        // Not UTF-8 inside a string.
        assert_eq!(parse(b"\"\xff\""), Err(Invalid));
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(parse(deep(MAX_DEPTH).as_bytes()).is_ok());
        assert_eq!(parse(deep(MAX_DEPTH + 1).as_bytes()), Err(Invalid));
        assert_eq!(parse(deep(100_000).as_bytes()), Err(Invalid));
    }

    #[test]
    fn written_strings_read_back() {
        for text in [
            "",
            "plain",
            "quote\" backslash\\ slash/",
            "ctl\u{1}\u{1f}\n\r\t",
            "é😀",
        ] {
            let object = object(&[("k", text), ("other", "v")]);
            let read = ok(&object);
            assert_eq!(
                read.get("k").and_then(Value::as_str),
                Some(text),
                "{object}"
            );
            assert_eq!(read.get("other").and_then(Value::as_str), Some("v"));
        }
        assert_eq!(
            object(&[("Code", "X"), ("Message", "m")]),
            r#"{"Code":"X","Message":"m"}"#
        );
        assert_eq!(object(&[]), "{}");
    }
}
