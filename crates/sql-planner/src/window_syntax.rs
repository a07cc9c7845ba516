//! The window syntax of Sluice's dialect, both spellings: ksqlDB's
//! `WINDOW TUMBLING|HOPPING|SESSION (…)` clause, read from tokens because sqlparser does not
//! know it, and the function spelling `TUMBLE(ts, …)` / `HOP(ts, slide, size)` /
//! `SESSION(ts, gap)` found in a parsed GROUP BY. Both produce a [`WindowSpec`].

use datafusion::sql::sqlparser::ast::{
    DateTimeField, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Value,
};
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};

use crate::dialect::{column_name, is_word, position};
use crate::error::{PlanError, Result};
use crate::window::{unit_ms, WindowKind, WindowSpec};

/// The longest window size, advance, gap, grace or retention: 100 years, so that window
/// arithmetic on any event time stays far from `i64` overflow.
const MAX_DURATION_MS: i64 = 100 * 366 * 86_400_000;

/// Parse `TUMBLING (SIZE n unit, …)` starting at `tokens[k]`; returns the spec and the
/// index just past the closing parenthesis.
pub(crate) fn parse_window_clause(
    tokens: &[TokenWithSpan],
    k: usize,
) -> Result<(WindowSpec, usize)> {
    let mut c = Cursor { tokens, i: k + 1 };
    let kind_token = &tokens[k];
    c.expect(&Token::LParen, "(")?;
    let kind = if is_word(kind_token, "SESSION") {
        WindowKind::Session {
            gap_ms: c.duration(false)?,
        }
    } else {
        c.expect_word("SIZE")?;
        let size_ms = c.duration(false)?;
        if is_word(kind_token, "HOPPING") {
            c.expect(&Token::Comma, ",")?;
            c.expect_word("ADVANCE")?;
            c.expect_word("BY")?;
            let advance_ms = c.duration(false)?;
            if advance_ms > size_ms {
                return Err(PlanError::syntax(
                    "ADVANCE BY must not be larger than the window SIZE",
                    position(kind_token),
                ));
            }
            WindowKind::Hopping {
                size_ms,
                advance_ms,
            }
        } else {
            WindowKind::Tumbling { size_ms }
        }
    };
    let mut spec = WindowSpec {
        kind,
        grace_ms: None,
        retention_ms: None,
    };
    while c.eat(&Token::Comma) {
        if c.eat_word("GRACE") {
            c.expect_word("PERIOD")?;
            spec.grace_ms = Some(c.duration(true)?);
        } else if c.eat_word("RETENTION") {
            spec.retention_ms = Some(c.duration(true)?);
        } else {
            return Err(c.error("expected GRACE PERIOD or RETENTION"));
        }
    }
    c.expect(&Token::RParen, ")")?;
    Ok((spec, c.i))
}

/// A small cursor over tokens for the WINDOW clause, which sqlparser does not know.
struct Cursor<'a> {
    tokens: &'a [TokenWithSpan],
    i: usize,
}

impl Cursor<'_> {
    fn error(&self, message: &str) -> PlanError {
        let found = self
            .tokens
            .get(self.i)
            .map_or("end of input".to_string(), |t| t.token.to_string());
        PlanError::syntax(
            format!("{message}, found {found}"),
            self.tokens
                .get(self.i)
                .or(self.tokens.last())
                .and_then(position),
        )
    }

    fn eat(&mut self, token: &Token) -> bool {
        if self.tokens.get(self.i).is_some_and(|t| &t.token == token) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn eat_word(&mut self, word: &str) -> bool {
        if self.tokens.get(self.i).is_some_and(|t| is_word(t, word)) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: &Token, shown: &str) -> Result<()> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(self.error(&format!("expected {shown}")))
        }
    }

    fn expect_word(&mut self, word: &str) -> Result<()> {
        if self.eat_word(word) {
            Ok(())
        } else {
            Err(self.error(&format!("expected {word}")))
        }
    }

    /// `n UNIT`, e.g. `5 MINUTES`, in milliseconds; zero only when `allow_zero`.
    fn duration(&mut self, allow_zero: bool) -> Result<i64> {
        let n: i64 = match self.tokens.get(self.i).map(|t| &t.token) {
            Some(Token::Number(n, _)) => n
                .parse()
                .map_err(|_| self.error("expected a whole number"))?,
            _ => return Err(self.error("expected a number")),
        };
        self.i += 1;
        let unit = match self.tokens.get(self.i).map(|t| &t.token) {
            Some(Token::Word(w)) => unit_ms(&w.value),
            _ => None,
        }
        .ok_or_else(|| {
            self.error("expected a time unit (MILLISECONDS, SECONDS, MINUTES, HOURS or DAYS)")
        })?;
        self.i += 1;
        if n < 0 || (n == 0 && !allow_zero) {
            return Err(PlanError::syntax(
                "a window size must be positive",
                position(&self.tokens[self.i - 2]),
            ));
        }
        n.checked_mul(unit)
            .filter(|ms| *ms <= MAX_DURATION_MS)
            .ok_or_else(|| {
                PlanError::syntax(
                    "a window duration must be at most 100 years",
                    position(&self.tokens[self.i - 2]),
                )
            })
    }
}

/// `TUMBLE(ts, size)`, `HOP(ts, slide, size)` or `SESSION(ts, gap)`, if `e` is one.
pub(crate) fn window_function(e: &Expr) -> Result<Option<(WindowSpec, Option<String>)>> {
    let Expr::Function(f) = e else {
        return Ok(None);
    };
    let name = f.name.to_string().to_ascii_lowercase();
    if !["tumble", "hop", "session"].contains(&name.as_str()) {
        return Ok(None);
    }
    let FunctionArguments::List(list) = &f.args else {
        return Err(PlanError::syntax(format!("{name} needs arguments"), None));
    };
    let args: Vec<&Expr> = list
        .args
        .iter()
        .filter_map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
            _ => None,
        })
        .collect();
    let expected = if name == "hop" { 3 } else { 2 };
    if args.len() != expected {
        let usage = match name.as_str() {
            "tumble" => "TUMBLE(time_column, INTERVAL 'n' UNIT)",
            "hop" => "HOP(time_column, INTERVAL 'slide' UNIT, INTERVAL 'size' UNIT)",
            _ => "SESSION(time_column, INTERVAL 'gap' UNIT)",
        };
        return Err(PlanError::syntax(
            format!("{name} takes {expected} arguments: {usage}"),
            None,
        ));
    }
    let time_column = match args[0] {
        Expr::Identifier(i) => Some(column_name(i.clone())),
        Expr::CompoundIdentifier(parts) => parts.last().cloned().map(column_name),
        other => {
            return Err(PlanError::syntax(
                format!("the first argument of {name} must be a time column, found {other}"),
                None,
            ))
        }
    };
    let kind = match name.as_str() {
        "tumble" => WindowKind::Tumbling {
            size_ms: interval_ms(args[1])?,
        },
        "hop" => {
            let advance_ms = interval_ms(args[1])?;
            let size_ms = interval_ms(args[2])?;
            if advance_ms > size_ms {
                return Err(PlanError::syntax(
                    "the slide of HOP must not be larger than its size",
                    None,
                ));
            }
            WindowKind::Hopping {
                size_ms,
                advance_ms,
            }
        }
        _ => WindowKind::Session {
            gap_ms: interval_ms(args[1])?,
        },
    };
    Ok(Some((
        WindowSpec {
            kind,
            grace_ms: None,
            retention_ms: None,
        },
        time_column,
    )))
}

/// `INTERVAL '5' MINUTE` or `INTERVAL '5 minutes'` in milliseconds.
fn interval_ms(e: &Expr) -> Result<i64> {
    let bad = || {
        PlanError::syntax(
            format!("expected an interval such as INTERVAL '5' MINUTE, found {e}"),
            None,
        )
    };
    let Expr::Interval(iv) = e else {
        return Err(bad());
    };
    let Expr::Value(v) = iv.value.as_ref() else {
        return Err(bad());
    };
    let text = match &v.value {
        Value::SingleQuotedString(s) | Value::Number(s, _) => s.clone(),
        _ => return Err(bad()),
    };
    let mut parts = text.split_whitespace();
    let n: i64 = parts.next().and_then(|n| n.parse().ok()).ok_or_else(bad)?;
    let unit = match (&iv.leading_field, parts.next()) {
        (Some(field), None) => match field {
            DateTimeField::Millisecond | DateTimeField::Milliseconds => 1,
            DateTimeField::Second | DateTimeField::Seconds => 1000,
            DateTimeField::Minute | DateTimeField::Minutes => 60_000,
            DateTimeField::Hour | DateTimeField::Hours => 3_600_000,
            DateTimeField::Day | DateTimeField::Days => 86_400_000,
            _ => return Err(bad()),
        },
        (None, Some(unit)) => unit_ms(unit).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    if n <= 0 {
        return Err(PlanError::syntax(
            "a window duration must be positive",
            None,
        ));
    }
    n.checked_mul(unit)
        .filter(|ms| *ms <= MAX_DURATION_MS)
        .ok_or_else(|| PlanError::syntax("a window duration must be at most 100 years", None))
}
