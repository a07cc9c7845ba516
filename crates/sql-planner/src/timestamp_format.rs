//! `TIMESTAMP_FORMAT`: ksqlDB takes Java `DateTimeFormatter` patterns
//! (`yyyy-MM-dd'T'HH:mm:ss.SSSX`); the executor parses with chrono. This translates one to
//! the other once, when the stream is declared, and refuses letters it does not know.

use crate::error::{PlanError, Result};

/// A `TIMESTAMP_FORMAT` pattern, translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimestampFormat {
    /// The pattern as the user wrote it (Java `DateTimeFormatter` letters).
    pub pattern: String,
    /// The same as a chrono `strftime` format.
    pub strftime: String,
    /// Whether the pattern has a zone offset; without one, times are UTC.
    pub has_zone: bool,
    /// Whether the pattern has a time of day; without one, times are midnight.
    pub has_time: bool,
}

impl TimestampFormat {
    /// Translate a Java pattern.
    pub fn parse(pattern: &str) -> Result<Self> {
        let chars: Vec<char> = pattern.chars().collect();
        let mut out = String::new();
        let (mut has_zone, mut has_time) = (false, false);
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c == '\'' {
                // Quoted literal; '' is a quote.
                let mut j = i + 1;
                if chars.get(j) == Some(&'\'') {
                    out.push('\'');
                    i += 2;
                    continue;
                }
                while j < chars.len() {
                    if chars[j] == '\'' {
                        if chars.get(j + 1) != Some(&'\'') {
                            break;
                        }
                        j += 1;
                    }
                    push_literal(&mut out, chars[j]);
                    j += 1;
                }
                if j == chars.len() {
                    return Err(bad(pattern, "a quote is not closed"));
                }
                i = j + 1;
                continue;
            }
            if !c.is_ascii_alphabetic() {
                push_literal(&mut out, c);
                i += 1;
                continue;
            }
            let mut n = 1;
            while chars.get(i + n) == Some(&c) {
                n += 1;
            }
            let spec = match (c, n) {
                ('y' | 'u', 2) => "%y",
                ('y' | 'u', _) => "%Y",
                ('M', 1 | 2) => "%m",
                ('M', 3) => "%b",
                ('M', _) => "%B",
                ('d', 1 | 2) => "%d",
                ('D', _) => "%j",
                ('E', 1..=3) => "%a",
                ('E', _) => "%A",
                ('a', _) => "%p",
                ('H', 1 | 2) => "%H",
                ('h', 1 | 2) => "%I",
                ('m', 1 | 2) => "%M",
                ('s', 1 | 2) => "%S",
                ('S', 3) => "%3f",
                ('S', 6) => "%6f",
                ('S', 9) => "%9f",
                ('X' | 'x', _) => "%:z",
                ('Z', _) => "%z",
                _ => {
                    return Err(bad(
                        pattern,
                        &format!("the letter {c} repeated {n} times is not supported"),
                    ))
                }
            };
            has_zone |= matches!(c, 'X' | 'x' | 'Z');
            has_time |= matches!(c, 'H' | 'h' | 'm' | 's');
            out.push_str(spec);
            i += n;
        }
        Ok(Self {
            pattern: pattern.to_string(),
            strftime: out,
            has_zone,
            has_time,
        })
    }
}

fn push_literal(out: &mut String, c: char) {
    if c == '%' {
        out.push_str("%%");
    } else {
        out.push(c);
    }
}

fn bad(pattern: &str, why: &str) -> PlanError {
    PlanError::invalid(format!(
        "TIMESTAMP_FORMAT '{pattern}' is not a pattern Sluice can read: {why}; use Java \
         DateTimeFormatter letters such as 'yyyy-MM-dd''T''HH:mm:ss.SSSX'"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_patterns_become_strftime() {
        let f = TimestampFormat::parse("yyyy-MM-dd'T'HH:mm:ss.SSSX").expect("valid");
        assert_eq!(f.strftime, "%Y-%m-%dT%H:%M:%S.%3f%:z");
        assert!(f.has_zone && f.has_time);
        let f = TimestampFormat::parse("dd/MM/yyyy HH:mm").expect("valid");
        assert_eq!(f.strftime, "%d/%m/%Y %H:%M");
        assert!(!f.has_zone);
        let f = TimestampFormat::parse("yyyy-MM-dd").expect("valid");
        assert!(!f.has_time);
        assert_eq!(
            TimestampFormat::parse("'at' HH 'o''clock' 100%")
                .expect("valid")
                .strftime,
            "at %H o'clock 100%%"
        );
    }

    #[test]
    fn unknown_letters_and_open_quotes_are_refused() {
        let e = TimestampFormat::parse("yyyy-QQ").expect_err("Q is a quarter");
        assert!(e.to_string().contains("the letter Q"), "{e}");
        assert!(TimestampFormat::parse("yyyy 'T").is_err());
    }
}
