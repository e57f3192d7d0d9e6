//! A bounded parser for LVM2's configuration syntax, in which the volume
//! group metadata is written:
//!
//! ```text
//! vg {                        # a section
//!     seqno = 3               # an integer
//!     id = "abc-def"          # a string ("\" escapes the next character)
//!     status = ["READ", 1]    # a list of integers and strings
//!     extent_size = 8192
//!     physical_volumes { pv0 { ... } }
//! }
//! ```
//!
//! The parser borrows from the text (no copy of names or strings) and has
//! hard bounds: sections nest at most [`MAX_DEPTH`] deep and the whole text
//! holds at most [`MAX_ITEMS`] entries and list elements, so any input
//! costs time and memory linear in its length, with a small constant.

/// How deep sections may nest (LVM2 metadata needs 4).
pub const MAX_DEPTH: usize = 16;

/// How many entries and list elements the whole text may hold.
pub const MAX_ITEMS: usize = 1 << 20;

/// A value on the right of `=`, or a section.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value<'a> {
    /// An integer.
    Int(i64),
    /// A number with a fraction, as written.
    Float(&'a [u8]),
    /// A string between double quotes, escapes not yet removed.
    Str(&'a [u8]),
    /// `[ ... ]` of integers, numbers and strings.
    List(Vec<Value<'a>>),
    /// `{ ... }`.
    Section(Vec<Entry<'a>>),
}

/// `key = value` or `key { ... }`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry<'a> {
    /// The name on the left.
    pub key: &'a [u8],
    /// What it holds.
    pub value: Value<'a>,
}

/// Why the text does not parse, and on which line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ParseError {
    /// The line (from 1).
    pub line: usize,
    /// What is wrong there.
    pub what: &'static str,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.what)
    }
}

/// Parses a whole text into its top-level entries.
pub(crate) fn parse(text: &[u8]) -> Result<Vec<Entry<'_>>, ParseError> {
    let mut p = Parser {
        s: text,
        pos: 0,
        items: 0,
    };
    let entries = p.entries(0)?;
    p.skip_blank();
    if p.pos < p.s.len() {
        return Err(p.error("a closing brace without a section"));
    }
    Ok(entries)
}

/// Character classes, one table lookup per byte (the tokenizer's loops
/// stay cheap, also under a fuzzer's comparison tracing).
const NAME: u8 = 1;
const BLANK: u8 = 2;
const DIGIT: u8 = 4;

const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'.' | b'-') {
            t[c] |= NAME;
        }
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            t[c] |= BLANK;
        }
        if b.is_ascii_digit() {
            t[c] |= DIGIT;
        }
        c += 1;
    }
    t
};

fn is(c: u8, class: u8) -> bool {
    CLASS[c as usize] & class != 0
}

/// The index of the first byte of `s` that is one of `stops` (or the
/// length of `s`), looking at 8 bytes per step: a word's bytes equal to
/// `b` are the zero bytes of `word ^ b * 0x01..01`, and the lowest byte
/// the zero-byte test flags is always a true one.
fn find_any(s: &[u8], stops: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut at = 0;
    for chunk in s.chunks_exact(8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let mut hits = 0;
        for &b in stops {
            let x = w ^ (ONES * u64::from(b));
            hits |= x.wrapping_sub(ONES) & !x & HIGH;
        }
        if hits != 0 {
            return at + (hits.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    at + s[at..]
        .iter()
        .position(|c| stops.contains(c))
        .unwrap_or(s.len() - at)
}

/// Whether `c` may appear in a key (LVM2's name characters).
fn is_name(c: u8) -> bool {
    is(c, NAME)
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    items: usize,
}

impl<'a> Parser<'a> {
    /// An error at the current position (its line counted only now).
    fn error(&self, what: &'static str) -> ParseError {
        let before = &self.s[..self.pos.min(self.s.len())];
        ParseError {
            line: 1 + before.iter().filter(|&&c| c == b'\n').count(),
            what,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn count(&mut self) -> Result<(), ParseError> {
        self.items += 1;
        if self.items > MAX_ITEMS {
            return Err(self.error("too many entries (more than diskmount reads)"));
        }
        Ok(())
    }

    /// Advances over the bytes of `class`.
    fn skip(&mut self, class: u8) {
        let rest = &self.s[self.pos..];
        self.pos += rest
            .iter()
            .position(|&c| !is(c, class))
            .unwrap_or(rest.len());
    }

    /// Skips white space and `#` comments.
    fn skip_blank(&mut self) {
        loop {
            self.skip(BLANK);
            if self.peek() != Some(b'#') {
                break;
            }
            self.pos += find_any(&self.s[self.pos..], b"\n");
        }
    }

    /// Entries up to a `}` (left for the caller) or the end of the text.
    fn entries(&mut self, depth: usize) -> Result<Vec<Entry<'a>>, ParseError> {
        let mut out = Vec::new();
        loop {
            self.skip_blank();
            match self.peek() {
                None | Some(b'}') => return Ok(out),
                Some(c) if is_name(c) => {}
                Some(_) => return Err(self.error("expected a name")),
            }
            let start = self.pos;
            self.skip(NAME);
            let key = &self.s[start..self.pos];
            self.count()?;
            self.skip_blank();
            let value = match self.peek() {
                Some(b'{') => {
                    if depth + 1 >= MAX_DEPTH {
                        return Err(self.error("sections nest too deep"));
                    }
                    self.pos += 1;
                    let inner = self.entries(depth + 1)?;
                    if self.peek() != Some(b'}') {
                        return Err(self.error("a section is not closed"));
                    }
                    self.pos += 1;
                    Value::Section(inner)
                }
                Some(b'=') => {
                    self.pos += 1;
                    self.skip_blank();
                    if self.peek() == Some(b'[') {
                        self.pos += 1;
                        self.list()?
                    } else {
                        self.scalar()?
                    }
                }
                _ => return Err(self.error("expected `=` or `{` after a name")),
            };
            if out.is_empty() {
                // Most sections of LVM2 metadata hold 5 to 15 entries.
                out.reserve(8);
            }
            out.push(Entry { key, value });
        }
    }

    /// The rest of a list after its `[`.
    fn list(&mut self) -> Result<Value<'a>, ParseError> {
        let mut items = Vec::new();
        loop {
            self.skip_blank();
            if self.peek() == Some(b']') {
                self.pos += 1;
                return Ok(Value::List(items));
            }
            self.count()?;
            items.push(self.scalar()?);
            self.skip_blank();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {}
                None => return Err(self.error("a list is not closed")),
                _ => return Err(self.error("expected `,` or `]` in a list")),
            }
        }
    }

    /// A string or a number.
    fn scalar(&mut self) -> Result<Value<'a>, ParseError> {
        match self.peek() {
            Some(b'"') => {
                self.pos += 1;
                let start = self.pos;
                loop {
                    self.pos += find_any(&self.s[self.pos.min(self.s.len())..], b"\"\\");
                    match self.peek() {
                        None => return Err(self.error("a string is not closed")),
                        Some(b'"') => break,
                        _ => self.pos += 2,
                    }
                }
                if self.pos > self.s.len() {
                    return Err(self.error("a string is not closed"));
                }
                let s = &self.s[start..self.pos];
                self.pos += 1;
                Ok(Value::Str(s))
            }
            Some(c) if c == b'-' || c.is_ascii_digit() => {
                let start = self.pos;
                self.pos += 1;
                self.skip(DIGIT);
                let mut float = false;
                if self.peek() == Some(b'.') {
                    float = true;
                    self.pos += 1;
                    self.skip(DIGIT);
                }
                let raw = &self.s[start..self.pos];
                if raw == b"-" || raw.starts_with(b"-.") {
                    return Err(self.error("a number without digits"));
                }
                if float {
                    return Ok(Value::Float(raw));
                }
                let mut v: i64 = 0;
                let (neg, digits) = match raw.split_first() {
                    Some((b'-', d)) => (true, d),
                    _ => (false, raw),
                };
                for &d in digits {
                    v = v
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(i64::from(d - b'0')))
                        .ok_or_else(|| self.error("a number too large"))?;
                }
                Ok(Value::Int(if neg { -v } else { v }))
            }
            _ => Err(self.error("expected a string, a number or a list")),
        }
    }
}

/// A string's bytes with its `\` escapes removed.
pub(crate) fn unescape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut it = raw.iter();
    while let Some(&c) = it.next() {
        if c == b'\\' {
            if let Some(&n) = it.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Lookups in a section's entries (the first entry of a name counts).
pub(crate) trait Lookup<'a> {
    /// The value of `key`.
    fn value(&self, key: &str) -> Option<&Value<'a>>;
}

impl<'a> Lookup<'a> for [Entry<'a>] {
    fn value(&self, key: &str) -> Option<&Value<'a>> {
        self.iter()
            .find(|e| e.key == key.as_bytes())
            .map(|e| &e.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sections_strings_numbers_and_lists() {
        let t = b"# head\nvg {\n id = \"a\\\"b\" # c\n n = -12\n f = 1.5\n l = [\"x\", 3, ]\n e = []\n s { }\n}\ntop = 1\n";
        let e = parse(t).unwrap();
        assert_eq!(e.len(), 2);
        let Value::Section(vg) = &e[0].value else {
            panic!()
        };
        assert_eq!(e[0].key, b"vg");
        assert_eq!(vg.value("id"), Some(&Value::Str(b"a\\\"b")));
        assert_eq!(unescape(b"a\\\"b"), b"a\"b");
        assert_eq!(vg.value("n"), Some(&Value::Int(-12)));
        assert_eq!(vg.value("f"), Some(&Value::Float(b"1.5")));
        assert_eq!(
            vg.value("l"),
            Some(&Value::List(vec![Value::Str(b"x"), Value::Int(3)]))
        );
        assert_eq!(vg.value("e"), Some(&Value::List(vec![])));
        assert_eq!(vg.value("s"), Some(&Value::Section(vec![])));
        assert_eq!(e.value("top"), Some(&Value::Int(1)));
    }

    #[test]
    fn bad_syntax_names_the_line() {
        for (text, line, what) in [
            (&b"a {\n b = 1\n"[..], 3, "a section is not closed"),
            (b"a = \"open\n", 2, "a string is not closed"),
            (b"a = [1 2]", 1, "expected `,` or `]` in a list"),
            (b"a = [[1]]", 1, "expected a string, a number or a list"),
            (b"a = 99999999999999999999", 1, "a number too large"),
            (b"a = -", 1, "a number without digits"),
            (b"}\n", 1, "a closing brace without a section"),
            (b"a\n\n=", 3, "expected a string, a number or a list"),
            (b"a b", 1, "expected `=` or `{` after a name"),
            (b"= 1", 1, "expected a name"),
            (b"a = \"x\\", 1, "a string is not closed"),
        ] {
            assert_eq!(
                parse(text),
                Err(ParseError { line, what }),
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn find_any_finds_the_first_stop_in_every_position() {
        for len in 0..40 {
            for at in 0..=len {
                let mut s = vec![b'a'; len];
                if at < len {
                    s[at] = b'"';
                    // Stops after the first one, and bytes that borrow
                    // in the zero-byte test, change nothing.
                    for (i, b) in s.iter_mut().enumerate().skip(at + 1) {
                        *b = [b'\n', 0x21, 0x01, 0x80, b'"'][i % 5];
                    }
                }
                assert_eq!(find_any(&s, b"\"\\\n"), at, "{s:?}");
            }
        }
        assert_eq!(find_any(b"ab\\cd", b"\"\\\n"), 2);
    }

    #[test]
    fn hostile_nesting_and_counts_are_bounded() {
        let deep = "a {".repeat(100_000);
        assert_eq!(
            parse(deep.as_bytes()).unwrap_err().what,
            "sections nest too deep"
        );
        let ok = format!(
            "{}{}",
            "a {".repeat(MAX_DEPTH - 1),
            "}".repeat(MAX_DEPTH - 1)
        );
        parse(ok.as_bytes()).unwrap();
        let many = format!("l = [{}]", "1,".repeat(MAX_ITEMS + 1));
        assert_eq!(
            parse(many.as_bytes()).unwrap_err().what,
            "too many entries (more than diskmount reads)"
        );
    }
}
