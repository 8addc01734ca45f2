//! The fast path of event decoding: one pass over a record's JSON that
//! checks that it is valid and finds the raw text of the event's fields,
//! building nothing. serde_json's derived decoder took a sixth of the stream
//! thread's time; this takes a fraction of that.
//!
//! It answers only when it is sure. Anything unusual (an escaped key, a
//! field given twice, nesting deeper than [`MAX_DEPTH`], any invalid JSON)
//! gets `None`, and the caller asks serde_json instead, whose answer (and
//! whose error message) is then the one that counts.

/// The raw JSON text of each field of an event that is present and not
/// `null` (a `null` field is absent, as serde_json reads an `Option`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fields<'a> {
    pub workflow_id: Option<&'a str>,
    pub workflow_type: Option<&'a str>,
    pub step: Option<&'a str>,
    pub status: Option<&'a str>,
    pub event_id: Option<&'a str>,
    pub occurred_at: Option<&'a str>,
    pub payload: Option<&'a str>,
}

/// The deepest nesting of arrays and objects inside a field's value that
/// the fast path follows.
const MAX_DEPTH: usize = 64;

/// The fields of a JSON object, or `None` when the fast path cannot be sure.
pub fn fields(value: &[u8]) -> Option<Fields<'_>> {
    let text = std::str::from_utf8(value).ok()?;
    let mut s = Scanner { b: text.as_bytes(), i: 0 };
    let mut f = Fields::default();
    let mut seen = 0u8;
    s.ws();
    s.eat(b'{')?;
    s.ws();
    if s.peek()? == b'}' {
        s.i += 1;
    } else {
        loop {
            s.ws();
            let key = s.plain_key()?;
            s.ws();
            s.eat(b':')?;
            s.ws();
            let start = s.i;
            s.value()?;
            let (bit, slot) = match key {
                b"workflow_id" => (1, &mut f.workflow_id),
                b"workflow_type" => (2, &mut f.workflow_type),
                b"step" => (4, &mut f.step),
                b"status" => (8, &mut f.status),
                b"event_id" => (16, &mut f.event_id),
                b"occurred_at" => (32, &mut f.occurred_at),
                b"payload" => (64, &mut f.payload),
                _ => (0, &mut None),
            };
            if seen & bit != 0 {
                return None; // given twice: serde_json says so
            }
            seen |= bit;
            // `null` is absent, as serde_json reads an `Option`.
            *slot = Some(&text[start..s.i]).filter(|raw| *raw != "null");
            s.ws();
            match s.next()? {
                b',' => {}
                b'}' => break,
                _ => return None,
            }
        }
    }
    s.ws();
    (s.i == s.b.len()).then_some(f)
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    /// JSON's whitespace (form feed is not).
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.i += 1;
        }
    }

    /// A key without escapes: its bytes between the quotes.
    fn plain_key(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            match self.next()? {
                b'"' => return Some(&self.b[start..self.i - 1]),
                b'\\' => return None,
                c if c < 0x20 => return None,
                _ => {}
            }
        }
    }

    /// A string, escapes checked (the text is already known to be UTF-8).
    fn string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            match self.next()? {
                b'"' => return Some(()),
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        for _ in 0..4 {
                            if !self.next()?.is_ascii_hexdigit() {
                                return None;
                            }
                        }
                    }
                    _ => return None,
                },
                c if c < 0x20 => return None,
                _ => {}
            }
        }
    }

    fn digits(&mut self) -> Option<()> {
        if !self.peek()?.is_ascii_digit() {
            return None;
        }
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        Some(())
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        if self.peek()? == b'0' {
            self.i += 1;
            if self.peek().is_some_and(|c| c.is_ascii_digit()) {
                return None; // a leading zero
            }
        } else {
            self.digits()?;
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.digits()?;
        }
        Some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// One JSON value of any kind, nested ones included, without recursion.
    fn value(&mut self) -> Option<()> {
        // The closing bracket of each array or object the value is inside.
        let mut open = [0u8; MAX_DEPTH];
        let mut depth = 0;
        loop {
            self.ws();
            let mut closed = true;
            match self.peek()? {
                c @ (b'{' | b'[') => {
                    if depth == MAX_DEPTH {
                        return None;
                    }
                    self.i += 1;
                    open[depth] = if c == b'{' { b'}' } else { b']' };
                    depth += 1;
                    self.ws();
                    if self.peek()? == open[depth - 1] {
                        self.i += 1;
                        depth -= 1;
                    } else {
                        if c == b'{' {
                            self.member_key()?;
                        }
                        closed = false;
                    }
                }
                b'"' => self.string()?,
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return None,
            }
            if !closed {
                continue; // the first member or element follows
            }
            // After a value: close what it ends, or go on to the next member or element.
            loop {
                if depth == 0 {
                    return Some(());
                }
                self.ws();
                match self.next()? {
                    b',' => {
                        if open[depth - 1] == b'}' {
                            self.ws();
                            self.member_key()?;
                        }
                        break;
                    }
                    c if c == open[depth - 1] => depth -= 1,
                    _ => return None,
                }
            }
        }
    }

    /// A nested object's key and its colon.
    fn member_key(&mut self) -> Option<()> {
        self.string()?;
        self.ws();
        self.eat(b':')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_read_field_by_field_as_raw_text() {
        let v = br#" { "workflow_id" : "w-1", "step":"payment","x":[1,{"a":[]},-0.5e+3,true,null],
            "payload": {"amount": 42, "tags": ["a\"b", "\u00e9"]}, "status":null } "#;
        let f = fields(v).unwrap();
        assert_eq!(f.workflow_id, Some(r#""w-1""#));
        assert_eq!(f.step, Some(r#""payment""#));
        assert_eq!(f.status, None, "null is absent");
        assert_eq!(f.payload, Some(r#"{"amount": 42, "tags": ["a\"b", "\u00e9"]}"#));
        assert_eq!((f.workflow_type, f.event_id, f.occurred_at), (None, None, None));
        assert_eq!(fields(b"{}"), Some(Fields::default()));
    }

    #[test]
    fn whatever_is_unusual_or_invalid_is_left_to_serde_json() {
        let unsure: &[&[u8]] = &[
            br#"{"step":"a","step":"b"}"#,
            br#"{"st\u0065p":"a"}"#,
            br#"{"a":01}"#,
            br#"{"a":1.}"#,
            br#"{"a":-}"#,
            br#"{"a":1e}"#,
            br#"{"a":tru}"#,
            br#"{"a":"\x"}"#,
            br#"{"a":"\u12"}"#,
            b"{\"a\":\"\x01\"}",
            b"{\"a\":\"\xff\"}",
            br#"{"a":[1,]}"#,
            br#"{"a":{"b"}}"#,
            br#"{"a":{"b":1,}}"#,
            br#"{"a":[}"#,
            br#"{"a":1,}"#,
            br#"{"a":1} x"#,
            br#"{"a":1"#,
            b"\x0c{}",
            br#"[1]"#,
        ];
        for v in unsure {
            assert_eq!(fields(v), None, "{}", String::from_utf8_lossy(v));
        }
        let deep = format!(r#"{{"a":{}1{}}}"#, "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(fields(deep.as_bytes()), None);
        let deepest = format!(r#"{{"a":{}1{}}}"#, "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(fields(deepest.as_bytes()).is_some());
    }
}
