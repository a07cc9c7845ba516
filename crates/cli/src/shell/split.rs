//! Cutting typed or piped text into statements: a statement ends at a `;` outside quotes
//! and comments, so one may span lines and several may share one.

/// Collects input and hands out each complete statement.
#[derive(Debug, Default)]
pub struct Splitter {
    buffer: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Code,
    /// Inside '…' ('' is a quote).
    Single,
    /// Inside "…" or `…`.
    Quoted(char),
    LineComment,
    BlockComment,
}

impl Splitter {
    /// Add `text` (a line, a file) and return the statements it completed, each with its
    /// `;`, trimmed. Comments and blank space between statements are dropped.
    pub fn push(&mut self, text: &str) -> Vec<String> {
        self.buffer.push_str(text);
        let mut out = vec![];
        while let Some(end) = statement_end(&self.buffer) {
            let statement: String = self.buffer.drain(..end).collect();
            let statement = strip_leading_comments(&statement).trim().to_string();
            if statement != ";" {
                out.push(statement);
            }
        }
        if strip_leading_comments(&self.buffer).trim().is_empty() && !self.in_comment() {
            self.buffer.clear();
        }
        out
    }

    /// Whether a statement has begun and not ended (the prompt shows it).
    pub fn is_pending(&self) -> bool {
        !strip_leading_comments(&self.buffer).trim().is_empty() || self.in_comment()
    }

    /// What is left without a final `;` (the end of a file), trimmed; empty if nothing.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buffer);
        let rest = strip_leading_comments(&rest).trim().to_string();
        (!rest.is_empty()).then_some(rest)
    }

    /// Forget a half-typed statement (Ctrl-C at the prompt).
    pub fn clear(&mut self) {
        self.buffer.clear();
    }

    fn in_comment(&self) -> bool {
        scan(&self.buffer).1 == State::BlockComment
    }
}

/// The byte offset just after the first statement-ending `;` of `text`.
fn statement_end(text: &str) -> Option<usize> {
    scan(text).0
}

/// Scan `text`: the end of its first statement, if any, and the state at the end of the
/// text otherwise.
fn scan(text: &str) -> (Option<usize>, State) {
    let mut state = State::Code;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        state = match (state, c) {
            (State::Code, ';') => return (Some(i + 1), State::Code),
            (State::Code, '\'') => State::Single,
            (State::Code, '"' | '`') => State::Quoted(c),
            (State::Code, '-') if chars.peek().is_some_and(|(_, n)| *n == '-') => {
                chars.next();
                State::LineComment
            }
            (State::Code, '/') if chars.peek().is_some_and(|(_, n)| *n == '*') => {
                chars.next();
                State::BlockComment
            }
            (State::Single, '\'') => {
                if chars.peek().is_some_and(|(_, n)| *n == '\'') {
                    chars.next();
                    State::Single
                } else {
                    State::Code
                }
            }
            (State::Quoted(q), c) if c == q => State::Code,
            (State::LineComment, '\n') => State::Code,
            (State::BlockComment, '*') if chars.peek().is_some_and(|(_, n)| *n == '/') => {
                chars.next();
                State::Code
            }
            (s, _) => s,
        };
    }
    (None, state)
}

/// `text` without the comments and blank space in front of its first statement.
fn strip_leading_comments(text: &str) -> &str {
    let mut rest = text;
    loop {
        let trimmed = rest.trim_start();
        if let Some(after) = trimmed.strip_prefix("--") {
            rest = after.find('\n').map_or("", |n| &after[n + 1..]);
        } else if let Some(after) = trimmed.strip_prefix("/*") {
            match after.find("*/") {
                Some(n) => rest = &after[n + 2..],
                None => return trimmed,
            }
        } else {
            return trimmed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_end_at_semicolons_outside_quotes_and_comments() {
        let mut s = Splitter::default();
        assert!(s.push("SELECT 'a;b', \"c;d\" -- not; here\n").is_empty());
        assert!(s.is_pending());
        assert_eq!(
            s.push("FROM t; SHOW STREAMS;\n"),
            vec![
                "SELECT 'a;b', \"c;d\" -- not; here\nFROM t;".to_string(),
                "SHOW STREAMS;".to_string()
            ]
        );
        assert!(!s.is_pending());
    }

    #[test]
    fn doubled_quotes_and_block_comments() {
        let mut s = Splitter::default();
        assert_eq!(
            s.push("/* a; comment */ SELECT 'it''s; fine' FROM t;"),
            vec!["SELECT 'it''s; fine' FROM t;".to_string()]
        );
        assert!(s.push("/* open").is_empty());
        assert!(s.is_pending(), "inside a block comment");
        assert!(s.push(" ; still */").is_empty());
        assert!(!s.is_pending());
    }

    #[test]
    fn a_file_may_end_without_a_semicolon() {
        let mut s = Splitter::default();
        assert!(s.push("SHOW TABLES").is_empty());
        assert_eq!(s.finish(), Some("SHOW TABLES".to_string()));
        assert_eq!(s.finish(), None);
        assert!(s.push("-- only a comment\n").is_empty());
        assert_eq!(s.finish(), None);
    }
}
