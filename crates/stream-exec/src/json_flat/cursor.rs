//! A byte cursor over one JSON value that accepts only what arrow-json's tape decoder
//! accepts in the same way, and refuses (`None`) everything else.
//!
//! The value has already been checked to be UTF-8 as a whole: every string in it is then
//! valid UTF-8 too (its ends are ASCII quotes, so they are char boundaries), which is
//! what arrow-json checks on its string data. Slices are taken with `str::get`, which
//! only checks the boundaries, so nothing is validated twice and nothing is `unsafe`.
//!
//! The grammar is strict JSON (commas between members, a colon after each key), a
//! subset of what the tape decoder takes (it skips any run of commas, for one). Tokens
//! end where the tape decoder ends them: a number is the longest run of
//! `0-9 + - . e E` from a leading `-` or digit, exactly the text arrow-json hands to
//! `lexical_core`.

use memchr::memchr2;

/// How deep [`Cursor::skip_value`] follows nested values of unknown fields. Deeper ones
/// are refused (the batch goes to arrow-json) rather than tracked on the heap.
const MAX_SKIP_DEPTH: u32 = 128;

/// Bytes of a string scanned by a plain loop before memchr is called.
const SHORT_STRING: usize = 16;

/// A position in one JSON value.
pub(super) struct Cursor<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `text`.
    pub(super) fn new(text: &'a str) -> Self {
        Self {
            text,
            bytes: text.as_bytes(),
            pos: 0,
        }
    }

    /// The next byte, not consumed.
    #[inline]
    pub(super) fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// True when the whole value has been read.
    pub(super) fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    /// Skips JSON whitespace: the four bytes arrow-json's tape decoder skips (not the
    /// form feed or vertical tab that `u8::is_ascii_whitespace` would take).
    #[inline]
    pub(super) fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    /// Consumes `b` if it is the next byte.
    #[inline]
    pub(super) fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Consumes `word` (`true`, `false`, `null`) if the input continues with it.
    pub(super) fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.bytes.get(self.pos..)?.starts_with(word) {
            self.pos += word.len();
            Some(())
        } else {
            None
        }
    }

    /// A number's text, the next byte being `-` or a digit (checked here). Its value is
    /// left to the caller, which parses it as arrow-json does for the column's type.
    pub(super) fn number(&mut self) -> Option<&'a [u8]> {
        let start = self.pos;
        if !matches!(self.peek()?, b'-' | b'0'..=b'9') {
            return None;
        }
        self.pos += 1;
        while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = self.peek() {
            self.pos += 1;
        }
        self.bytes.get(start..self.pos)
    }

    /// A string whose opening quote has been consumed, unescaped. Strings without
    /// escapes are borrowed from the value; others are written into `scratch`.
    pub(super) fn string<'s>(&mut self, scratch: &'s mut String) -> Option<&'s str>
    where
        'a: 's,
    {
        let start = self.pos;
        let end = self.string_stop(start)?;
        self.pos = end + 1;
        if self.bytes[end] == b'"' {
            return self.text.get(start..end);
        }
        scratch.clear();
        scratch.push_str(self.text.get(start..end)?);
        self.escaped_rest(scratch)?;
        Some(scratch.as_str())
    }

    /// The position of the first `"` or `\\` from `start`. Most strings in events are
    /// short (keys, ids, codes), where a plain loop beats memchr's call and setup, so
    /// memchr only takes over after the first few bytes.
    #[inline]
    fn string_stop(&self, start: usize) -> Option<usize> {
        let rest = self.bytes.get(start..)?;
        let head = rest.len().min(SHORT_STRING);
        if let Some(i) = rest[..head].iter().position(|&b| b == b'"' || b == b'\\') {
            return Some(start + i);
        }
        let tail = rest.get(head..)?;
        memchr2(b'"', b'\\', tail).map(|i| start + head + i)
    }

    /// Consumes `name` and its closing quote if the key at the cursor (its opening
    /// quote consumed) is exactly `name`, written without escapes. For names that hold
    /// no `"` or `\\`, which the caller checks; then it is the same as reading the key.
    #[inline]
    pub(super) fn eat_plain_key(&mut self, name: &[u8]) -> bool {
        let end = self.pos + name.len();
        if self.bytes.get(end) == Some(&b'"') && self.bytes.get(self.pos..end) == Some(name) {
            self.pos = end + 1;
            true
        } else {
            false
        }
    }

    /// The rest of a string after its first backslash (consumed): escapes and the
    /// plain runs between them go to `out` until the closing quote.
    fn escaped_rest(&mut self, out: &mut String) -> Option<()> {
        loop {
            self.escape(out)?;
            let start = self.pos;
            let end = self.string_stop(start)?;
            out.push_str(self.text.get(start..end)?);
            self.pos = end + 1;
            if self.bytes[end] == b'"' {
                return Some(());
            }
        }
    }

    /// One escape after its backslash, with the replacements arrow-json's tape decoder
    /// makes; any other escape is refused, as arrow-json refuses it.
    fn escape(&mut self, out: &mut String) -> Option<()> {
        let c = match self.next_byte()? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => self.unicode_escape()?,
            _ => return None,
        };
        out.push(c);
        Some(())
    }

    /// `XXXX` after `\u`: a char, or the high half of a surrogate pair that must be
    /// followed by `\uXXXX` with the low half (as arrow-json requires: a lone or
    /// reversed surrogate is an error there).
    fn unicode_escape(&mut self) -> Option<char> {
        let high = self.hex4()?;
        if let Some(c) = char::from_u32(u32::from(high)) {
            return Some(c);
        }
        if !(self.eat(b'\\') && self.eat(b'u')) {
            return None;
        }
        let low = self.hex4()?;
        if !(0xD800..=0xDBFF).contains(&high) || !(0xDC00..=0xDFFF).contains(&low) {
            return None;
        }
        let n = ((u32::from(high) - 0xD800) << 10) | (u32::from(low) - 0xDC00 + 0x1_0000);
        char::from_u32(n)
    }

    /// Four hex digits (either case, as `char::to_digit(16)` takes them).
    fn hex4(&mut self) -> Option<u16> {
        let mut v: u16 = 0;
        for _ in 0..4 {
            let d = char::from(self.next_byte()?).to_digit(16)?;
            v = (v << 4) | d as u16;
        }
        Some(v)
    }

    fn next_byte(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    /// Skips one value of a field not in the schema, nested or not, without building
    /// anything. It still has to be JSON that arrow-json accepts, or the batch would
    /// differ (arrow-json fails on it), so strings, escapes and literals are checked.
    /// Containers are tracked in a bit stack (1 = object), so no allocation is needed.
    pub(super) fn skip_value(&mut self, scratch: &mut String) -> Option<()> {
        let mut stack: u128 = 0;
        let mut depth: u32 = 0;
        loop {
            // A value is expected here.
            self.skip_ws();
            let opened = match self.peek()? {
                b'{' | b'[' if depth == MAX_SKIP_DEPTH => return None,
                b'{' => {
                    self.pos += 1;
                    self.open(scratch, b'}')?
                }
                b'[' => {
                    self.pos += 1;
                    self.open(scratch, b']')?
                }
                _ => {
                    self.skip_scalar(scratch)?;
                    None
                }
            };
            if let Some(is_object) = opened {
                stack = (stack << 1) | u128::from(is_object);
                depth += 1;
                continue;
            }
            // After a value: close what ends here, until another value is expected.
            loop {
                if depth == 0 {
                    return Some(());
                }
                let in_object = stack & 1 == 1;
                self.skip_ws();
                match self.next_byte()? {
                    b',' => {
                        if in_object {
                            self.member_key(scratch)?;
                        }
                        break;
                    }
                    b'}' if in_object => {}
                    b']' if !in_object => {}
                    _ => return None,
                }
                stack >>= 1;
                depth -= 1;
            }
        }
    }

    /// After `{` or `[` (consumed): `None` inside when it closes at once (`close`);
    /// otherwise whether it is an object, its first key read when it is one.
    fn open(&mut self, scratch: &mut String, close: u8) -> Option<Option<bool>> {
        self.skip_ws();
        if self.eat(close) {
            return Some(None);
        }
        let is_object = close == b'}';
        if is_object {
            self.member_key(scratch)?;
        }
        Some(Some(is_object))
    }

    /// `"key" :` inside a skipped object.
    fn member_key(&mut self, scratch: &mut String) -> Option<()> {
        self.skip_ws();
        if !self.eat(b'"') {
            return None;
        }
        self.string(scratch)?;
        self.skip_ws();
        self.eat(b':').then_some(())
    }

    /// A string, number or literal, skipped.
    fn skip_scalar(&mut self, scratch: &mut String) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.pos += 1;
                self.string(scratch).map(|_| ())
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number().map(|_| ()),
        }
    }
}
