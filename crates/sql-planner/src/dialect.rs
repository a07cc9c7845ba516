//! Sluice's SQL dialect: ksqlDB statements around standard SELECTs.
//!
//! The text is tokenized once with sqlparser. Sluice's extensions inside a SELECT
//! (`WINDOW TUMBLING (…)`, `EMIT CHANGES|FINAL`) are taken out of the token list, and the
//! statement heads (`CREATE STREAM … WITH (…) AS`, `SHOW`, `TERMINATE`, …) are read with
//! sqlparser's own parser, which then parses the SELECT. Tokens keep their positions, so
//! every syntax error points into the text the user wrote.

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::sql::sqlparser::ast::{
    Expr, GroupByExpr, Ident, SelectItem, SetExpr, SqlOption, Value,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use crate::catalog::SourceKind;
use crate::error::{PlanError, Position, Result};
use crate::statement::{ColumnSpec, ContinuousQuery, Emit, ParsedStatement, Properties, Statement};
use crate::window::{WindowSpec, WINDOWEND, WINDOWSTART, WINDOW_COLUMNS, WINDOW_END, WINDOW_START};
use crate::window_syntax::{parse_window_clause, window_function};

/// Parse `sql` (one or more statements separated by `;`).
pub fn parse_statements(sql: &str) -> Result<Vec<ParsedStatement>> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| {
            PlanError::syntax(
                e.message.to_lowercase(),
                Some(Position {
                    line: e.location.line,
                    column: e.location.column,
                }),
            )
        })?;
    let tokens: Vec<TokenWithSpan> = tokens
        .into_iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .collect();
    let offsets = LineOffsets::new(sql);
    let mut out = Vec::new();
    for stmt in split_statements(tokens) {
        let (Some(first), Some(last)) = (stmt.first(), stmt.last()) else {
            continue;
        };
        let start = offsets.byte(first.span.start.line, first.span.start.column);
        let end = offsets.byte(last.span.end.line, last.span.end.column);
        let text = format!("{};", sql[start..end].trim());
        let statement = parse_statement(stmt)?;
        out.push(ParsedStatement { text, statement });
    }
    if out.is_empty() {
        return Err(PlanError::syntax("no statement was given", None));
    }
    Ok(out)
}

/// Byte offsets of line starts, to turn (line, column) positions into slices.
struct LineOffsets<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineOffsets<'a> {
    fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { text, starts }
    }

    fn byte(&self, line: u64, column: u64) -> usize {
        let Some(&start) = self.starts.get((line.max(1) - 1) as usize) else {
            return self.text.len();
        };
        self.text[start..]
            .char_indices()
            .nth((column.max(1) - 1) as usize)
            .map_or(self.text.len(), |(i, _)| start + i)
    }
}

fn split_statements(tokens: Vec<TokenWithSpan>) -> Vec<Vec<TokenWithSpan>> {
    let mut out = vec![];
    let mut current = vec![];
    for t in tokens {
        match t.token {
            Token::SemiColon => out.push(std::mem::take(&mut current)),
            Token::EOF => {}
            _ => current.push(t),
        }
    }
    out.push(current);
    out.retain(|s| !s.is_empty());
    out
}

pub(crate) fn position(t: &TokenWithSpan) -> Option<Position> {
    (t.span.start.line > 0).then_some(Position {
        line: t.span.start.line,
        column: t.span.start.column,
    })
}

pub(crate) fn is_word(t: &TokenWithSpan, word: &str) -> bool {
    matches!(&t.token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
}

/// Convert a sqlparser error, whose text ends with "at Line: l, Column: c", into ours.
fn parser_error(e: ParserError) -> PlanError {
    let text = match e {
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => m,
        ParserError::RecursionLimitExceeded => "the statement nests too deeply".to_string(),
    };
    let (message, position) = match text.rfind(" at Line: ") {
        Some(i) => {
            let tail = &text[i + " at Line: ".len()..];
            let mut parts = tail.split(", Column: ");
            let line = parts.next().and_then(|l| l.trim().parse().ok());
            let column = parts.next().and_then(|c| c.trim().parse().ok());
            let position = line
                .zip(column)
                .map(|(line, column)| Position { line, column });
            (text[..i].to_string(), position)
        }
        None => (text, None),
    };
    let message = message
        .replace("Expected: ", "expected ")
        .replace(", found: ", ", found ");
    PlanError::syntax(message, position)
}

/// Take Sluice's extensions out of a SELECT's tokens: the WINDOW clause and EMIT.
struct Extensions {
    window: Option<WindowSpec>,
    emit: Option<Emit>,
}

fn take_extensions(tokens: &mut Vec<TokenWithSpan>) -> Result<Extensions> {
    let mut ext = Extensions {
        window: None,
        emit: None,
    };
    let mut depth = 0i32;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i].token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ => {}
        }
        if depth == 0 && is_word(&tokens[i], "EMIT") {
            let emit = match tokens.get(i + 1) {
                Some(t) if is_word(t, "CHANGES") => Emit::Changes,
                Some(t) if is_word(t, "FINAL") => Emit::Final,
                other => {
                    return Err(PlanError::syntax(
                        "expected CHANGES or FINAL after EMIT",
                        other.and_then(position).or_else(|| position(&tokens[i])),
                    ))
                }
            };
            ext.emit = Some(emit);
            tokens.drain(i..i + 2);
            continue;
        }
        if depth == 0 && is_word(&tokens[i], "WINDOW") {
            // `WINDOW [name] TUMBLING|HOPPING|SESSION ( … )`
            let mut k = i + 1;
            if tokens.get(k).is_some_and(|t| {
                matches!(t.token, Token::Word(_))
                    && !["TUMBLING", "HOPPING", "SESSION"]
                        .iter()
                        .any(|w| is_word(t, w))
            }) && tokens.get(k + 1).is_some_and(|t| {
                ["TUMBLING", "HOPPING", "SESSION"]
                    .iter()
                    .any(|w| is_word(t, w))
            }) {
                k += 1;
            }
            if tokens.get(k).is_some_and(|t| {
                ["TUMBLING", "HOPPING", "SESSION"]
                    .iter()
                    .any(|w| is_word(t, w))
            }) {
                let (spec, end) = parse_window_clause(tokens, k)?;
                if ext.window.is_some() {
                    return Err(PlanError::syntax(
                        "a query may have only one WINDOW clause",
                        position(&tokens[i]),
                    ));
                }
                ext.window = Some(spec);
                tokens.drain(i..end);
                continue;
            }
        }
        i += 1;
    }
    Ok(ext)
}

fn object_name(ident: Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value,
        None => ident.value.to_ascii_uppercase(),
    }
}

pub(crate) fn column_name(ident: Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value,
        None => ident.value.to_ascii_lowercase(),
    }
}

fn parse_statement(mut tokens: Vec<TokenWithSpan>) -> Result<Statement> {
    let first = tokens[0].clone();
    let ext = take_extensions(&mut tokens)?;
    let mut p = Parser::new(&GenericDialect {}).with_tokens_with_locations(tokens);
    let word = match &first.token {
        Token::Word(w) => w.value.to_ascii_uppercase(),
        _ => String::new(),
    };
    let statement = match word.as_str() {
        "CREATE" => {
            p.next_token();
            let _or_replace = p.parse_keywords(&[Keyword::OR, Keyword::REPLACE]);
            let kind = source_kind(&mut p)?;
            let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
            let name = object_name(p.parse_identifier().map_err(parser_error)?);
            if p.peek_token().token == Token::LParen {
                let columns = parse_columns(&mut p)?;
                let properties = parse_properties(&mut p)?;
                Statement::CreateSource {
                    kind,
                    name,
                    if_not_exists,
                    columns,
                    properties,
                }
            } else {
                let properties = parse_properties(&mut p)?;
                p.expect_keyword_is(Keyword::AS).map_err(parser_error)?;
                let query = parse_continuous_query(&mut p, &ext)?;
                Statement::CreateAsSelect {
                    kind,
                    name,
                    if_not_exists,
                    properties,
                    query,
                }
            }
        }
        "INSERT" => {
            p.next_token();
            p.expect_keyword_is(Keyword::INTO).map_err(parser_error)?;
            let target = object_name(p.parse_identifier().map_err(parser_error)?);
            let _ = parse_properties(&mut p)?;
            let query = parse_continuous_query(&mut p, &ext)?;
            Statement::InsertInto { target, query }
        }
        "SELECT" | "WITH" => Statement::Select(parse_continuous_query(&mut p, &ext)?),
        "EXPLAIN" => {
            p.next_token();
            Statement::Explain(parse_continuous_query(&mut p, &ext)?)
        }
        "SHOW" | "LIST" => {
            p.next_token();
            let what = p.next_token();
            let statement = if is_word(&what, "STREAMS") {
                Statement::ShowStreams
            } else if is_word(&what, "TABLES") {
                Statement::ShowTables
            } else if is_word(&what, "QUERIES") {
                Statement::ShowQueries
            } else {
                return Err(PlanError::syntax(
                    format!("expected STREAMS, TABLES or QUERIES, found {}", what.token),
                    position(&what),
                ));
            };
            let _extended = p.parse_keyword(Keyword::EXTENDED);
            statement
        }
        "PRINT" => {
            p.next_token();
            let t = p.next_token();
            let topic = match &t.token {
                Token::Word(w) => w.value.clone(),
                Token::SingleQuotedString(s) => s.clone(),
                other => {
                    return Err(PlanError::syntax(
                        format!("expected a topic name after PRINT, found {other}"),
                        position(&t),
                    ))
                }
            };
            let mut from_beginning = false;
            if is_word(&p.peek_token(), "FROM") {
                p.next_token();
                let b = p.next_token();
                if !is_word(&b, "BEGINNING") {
                    return Err(PlanError::syntax(
                        format!("expected BEGINNING after FROM, found {}", b.token),
                        position(&b),
                    ));
                }
                from_beginning = true;
            }
            let mut limit = None;
            loop {
                let kw = p.peek_token();
                if is_word(&kw, "INTERVAL") || is_word(&kw, "LIMIT") {
                    p.next_token();
                    let n = p.next_token();
                    let value = match &n.token {
                        Token::Number(v, _) => v.parse::<u64>().ok(),
                        _ => None,
                    }
                    .ok_or_else(|| {
                        PlanError::syntax(
                            format!(
                                "expected a whole number after {}, found {}",
                                kw.token, n.token
                            ),
                            position(&n),
                        )
                    })?;
                    if is_word(&kw, "LIMIT") {
                        limit = Some(value);
                    }
                } else {
                    break;
                }
            }
            Statement::Print {
                topic,
                from_beginning,
                limit,
            }
        }
        "DESCRIBE" => {
            p.next_token();
            // Both `DESCRIBE EXTENDED name` and `DESCRIBE name EXTENDED` (ksqlDB's older and
            // newer forms); `DESCRIBE extended` alone names a source called EXTENDED.
            let leading = is_word(&p.peek_token(), "EXTENDED")
                && matches!(p.peek_nth_token(1).token, Token::Word(_));
            if leading {
                p.next_token();
            }
            let name = object_name(p.parse_identifier().map_err(parser_error)?);
            let extended = p.parse_keyword(Keyword::EXTENDED) || leading;
            Statement::Describe { name, extended }
        }
        "TERMINATE" => {
            p.next_token();
            if p.parse_keyword(Keyword::ALL) {
                Statement::Terminate(None)
            } else {
                let id = p.parse_identifier().map_err(parser_error)?;
                Statement::Terminate(Some(id.value.to_ascii_uppercase()))
            }
        }
        "DROP" => {
            p.next_token();
            let kind = source_kind(&mut p)?;
            let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            let name = object_name(p.parse_identifier().map_err(parser_error)?);
            let delete_topic = {
                let t = p.peek_token();
                if is_word(&t, "DELETE") {
                    p.next_token();
                    let t = p.next_token();
                    if !is_word(&t, "TOPIC") {
                        return Err(PlanError::syntax(
                            format!("expected TOPIC after DELETE, found {}", t.token),
                            position(&t),
                        ));
                    }
                    true
                } else {
                    false
                }
            };
            Statement::Drop {
                kind,
                name,
                if_exists,
                delete_topic,
            }
        }
        _ => {
            return Err(PlanError::syntax(
                format!(
                    "unknown statement starting with {}; expected CREATE, INSERT, SELECT, \
                     EXPLAIN, SHOW, LIST, DESCRIBE, TERMINATE or DROP",
                    first.token
                ),
                position(&first),
            ))
        }
    };
    let rest = p.peek_token();
    if rest.token != Token::EOF {
        return Err(PlanError::syntax(
            format!("unexpected {} after the end of the statement", rest.token),
            position(&rest),
        ));
    }
    if ext.window.is_some() || ext.emit.is_some() {
        let allowed = matches!(
            statement,
            Statement::CreateAsSelect { .. }
                | Statement::InsertInto { .. }
                | Statement::Select(_)
                | Statement::Explain(_)
        );
        if !allowed {
            return Err(PlanError::syntax(
                "WINDOW and EMIT belong to SELECT statements",
                position(&first),
            ));
        }
    }
    Ok(statement)
}

fn source_kind(p: &mut Parser) -> Result<SourceKind> {
    if p.parse_keyword(Keyword::STREAM) {
        Ok(SourceKind::Stream)
    } else if p.parse_keyword(Keyword::TABLE) {
        Ok(SourceKind::Table)
    } else {
        let t = p.peek_token();
        Err(PlanError::syntax(
            format!("expected STREAM or TABLE, found {}", t.token),
            position(&t),
        ))
    }
}

fn parse_columns(p: &mut Parser) -> Result<Vec<ColumnSpec>> {
    p.expect_token(&Token::LParen).map_err(parser_error)?;
    let mut columns = vec![];
    loop {
        let ident = p.parse_identifier().map_err(parser_error)?;
        let type_token = p.peek_token();
        let sql_type = p.parse_data_type().map_err(parser_error)?;
        let data_type = arrow_type(&sql_type.to_string()).ok_or_else(|| {
            PlanError::syntax(
                format!(
                    "unsupported column type {sql_type}; use BOOLEAN, INT, BIGINT, DOUBLE, \
                     DECIMAL(p, s), VARCHAR, STRING, BYTES, DATE or TIMESTAMP"
                ),
                position(&type_token),
            )
        })?;
        let key =
            p.parse_keywords(&[Keyword::PRIMARY, Keyword::KEY]) || p.parse_keyword(Keyword::KEY);
        columns.push(ColumnSpec {
            name: column_name(ident),
            data_type,
            key,
        });
        if !p.consume_token(&Token::Comma) {
            break;
        }
    }
    p.expect_token(&Token::RParen).map_err(parser_error)?;
    Ok(columns)
}

/// Map a SQL type, as sqlparser prints it, to Arrow.
fn arrow_type(sql: &str) -> Option<DataType> {
    let upper = sql.to_ascii_uppercase();
    let base = upper.split('(').next().unwrap_or("").trim();
    Some(match base {
        "BOOLEAN" | "BOOL" => DataType::Boolean,
        "INT" | "INTEGER" => DataType::Int32,
        "BIGINT" => DataType::Int64,
        "DOUBLE" | "DOUBLE PRECISION" | "FLOAT" | "REAL" => DataType::Float64,
        "VARCHAR" | "STRING" | "TEXT" | "CHAR VARYING" => DataType::Utf8,
        "BYTES" | "BYTEA" | "VARBINARY" => DataType::Binary,
        "DATE" => DataType::Date32,
        "TIMESTAMP" => DataType::Timestamp(TimeUnit::Millisecond, None),
        "DECIMAL" | "NUMERIC" => {
            let args = upper.split_once('(')?.1.trim_end_matches(')');
            let mut it = args.split(',').map(|s| s.trim().parse::<i16>());
            let p = it.next()?.ok()?;
            let s = it.next().map_or(Some(0), |s| s.ok())?;
            DataType::Decimal128(u8::try_from(p).ok()?, i8::try_from(s).ok()?)
        }
        _ => return None,
    })
}

fn parse_properties(p: &mut Parser) -> Result<Properties> {
    let options = p.parse_options(Keyword::WITH).map_err(parser_error)?;
    let mut out = Properties::new();
    for option in options {
        let SqlOption::KeyValue { key, value } = option else {
            return Err(PlanError::syntax("expected NAME = value in WITH (…)", None));
        };
        let value = match value {
            Expr::Value(v) => match v.value {
                Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s,
                Value::Number(n, _) => n,
                Value::Boolean(b) => b.to_string(),
                other => other.to_string(),
            },
            Expr::Identifier(i) => i.value,
            other => other.to_string(),
        };
        out.insert(key.value.to_ascii_uppercase(), value);
    }
    Ok(out)
}

fn parse_continuous_query(p: &mut Parser, ext: &Extensions) -> Result<ContinuousQuery> {
    let start = p.peek_token();
    let mut query = p.parse_query().map_err(parser_error)?;
    let mut window = ext.window;
    let mut window_time_column = None;
    let has_group_by;
    {
        let SetExpr::Select(select) = query.body.as_mut() else {
            return Err(PlanError::unsupported(
                "only a plain SELECT can run on a stream; UNION, INTERSECT, EXCEPT and VALUES \
                 are not supported",
            )
            .at(position(&start)));
        };
        has_group_by = match &mut select.group_by {
            GroupByExpr::Expressions(exprs, _) => {
                let mut found = None;
                for (i, e) in exprs.iter().enumerate() {
                    if let Some(spec) = window_function(e)? {
                        if found.is_some() || window.is_some() {
                            return Err(PlanError::syntax(
                                "a query may group by only one window",
                                position(&start),
                            ));
                        }
                        found = Some((i, spec));
                    }
                }
                if let Some((i, (spec, time_column))) = found {
                    exprs.remove(i);
                    window = Some(spec);
                    window_time_column = time_column;
                }
                let grouped = !exprs.is_empty();
                if window.is_some() && grouped {
                    exprs.extend(
                        WINDOW_COLUMNS
                            .iter()
                            .map(|c| Expr::Identifier(Ident::new(*c))),
                    );
                }
                grouped
            }
            GroupByExpr::All(_) => true,
        };
        if window.is_some() && has_group_by {
            add_window_bounds(&mut select.projection);
        }
    }
    if window.is_some() && !has_group_by {
        return Err(PlanError::syntax(
            "WINDOW clause requires a GROUP BY clause",
            position(&start),
        ));
    }
    Ok(ContinuousQuery {
        query,
        window,
        window_time_column,
        emit: ext.emit,
        position: position(&start),
    })
}

/// A windowed result always carries its window, as ksqlDB's windowed tables do: when the
/// SELECT list names no start (or end) bound, `windowstart` (or `windowend`) is added, so
/// each window is its own row of the table and its own Kafka key.
fn add_window_bounds(projection: &mut Vec<SelectItem>) {
    let names = |item: &SelectItem| -> Option<String> {
        let expr = match item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
            _ => return None,
        };
        match expr {
            Expr::Identifier(i) => Some(i.value.to_ascii_lowercase()),
            Expr::CompoundIdentifier(parts) => parts.last().map(|i| i.value.to_ascii_lowercase()),
            _ => None,
        }
    };
    let selected: Vec<String> = projection.iter().filter_map(names).collect();
    for (bound, spellings) in [
        (WINDOWSTART, [WINDOWSTART, WINDOW_START]),
        (WINDOWEND, [WINDOWEND, WINDOW_END]),
    ] {
        if !selected.iter().any(|s| spellings.contains(&s.as_str())) {
            projection.push(SelectItem::UnnamedExpr(Expr::Identifier(Ident::new(bound))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::WindowKind;

    fn one(sql: &str) -> Statement {
        let mut v = parse_statements(sql).expect("parses");
        assert_eq!(v.len(), 1);
        v.remove(0).statement
    }

    #[test]
    fn create_stream_reads_columns_and_properties() {
        let s = one(
            "CREATE STREAM tx (card_id VARCHAR, amount DOUBLE, ts BIGINT) \
             WITH (KAFKA_TOPIC='tx', VALUE_FORMAT='JSON', PARTITIONS=2, TIMESTAMP='ts');",
        );
        let Statement::CreateSource {
            name,
            columns,
            properties,
            ..
        } = s
        else {
            panic!("not a CREATE STREAM: {s:?}")
        };
        assert_eq!(name, "TX");
        assert_eq!(columns.len(), 3);
        assert_eq!(columns[1].data_type, DataType::Float64);
        assert_eq!(properties["KAFKA_TOPIC"], "tx");
        assert_eq!(properties["PARTITIONS"], "2");
        assert_eq!(properties["TIMESTAMP"], "ts");
    }

    #[test]
    fn ksql_window_clause_and_emit_are_taken_out() {
        let s = one("CREATE TABLE t AS SELECT k, COUNT(*) FROM s \
             WINDOW TUMBLING (SIZE 5 MINUTES, GRACE PERIOD 1 MINUTE) GROUP BY k EMIT CHANGES");
        let Statement::CreateAsSelect { query, .. } = s else {
            panic!()
        };
        let w = query.window.expect("window");
        assert_eq!(w.kind, WindowKind::Tumbling { size_ms: 300_000 });
        assert_eq!(w.grace_ms, Some(60_000));
        assert_eq!(query.emit, Some(Emit::Changes));
        assert!(query.query.to_string().contains("windowstart"));
    }

    #[test]
    fn function_window_spelling_becomes_the_same_spec() {
        let s = one("CREATE TABLE t AS SELECT k, window_start, COUNT(*) FROM s \
             GROUP BY k, TUMBLE(ts, INTERVAL '5' MINUTE) EMIT CHANGES");
        let Statement::CreateAsSelect { query, .. } = s else {
            panic!()
        };
        assert_eq!(
            query.window.map(|w| w.kind),
            Some(WindowKind::Tumbling { size_ms: 300_000 })
        );
        assert_eq!(query.window_time_column.as_deref(), Some("ts"));
        assert!(!query.query.to_string().to_lowercase().contains("tumble"));
    }

    #[test]
    fn syntax_error_names_line_and_column() {
        let err = parse_statements("SHOW STREAMS;\nCREATE STREAM s (a INT WITH (x=1);")
            .expect_err("bad sql");
        let p = err.position.expect("position");
        assert_eq!(p.line, 2);
        assert!(err.message.contains("expected"), "{err}");
    }

    #[test]
    fn print_takes_a_topic_as_written_and_its_options() {
        let v =
            parse_statements("PRINT my_Topic FROM BEGINNING INTERVAL 2 LIMIT 3;").expect("parses");
        assert!(
            matches!(&v[0].statement, Statement::Print { topic, from_beginning: true, limit: Some(3) } if topic == "my_Topic"),
            "{:?}",
            v[0].statement
        );
        let v = parse_statements("PRINT 'a.b-c';").expect("parses");
        assert!(
            matches!(&v[0].statement, Statement::Print { topic, from_beginning: false, limit: None } if topic == "a.b-c"),
            "{:?}",
            v[0].statement
        );
        assert!(parse_statements("PRINT t FROM START;").is_err());
    }

    #[test]
    fn describe_extended_before_or_after_the_name() {
        for sql in ["DESCRIBE EXTENDED pay;", "DESCRIBE pay EXTENDED;"] {
            let v = parse_statements(sql).expect("parses");
            assert!(
                matches!(&v[0].statement, Statement::Describe { name, extended: true } if name == "PAY"),
                "{sql}: {:?}",
                v[0].statement
            );
        }
        let v = parse_statements("DESCRIBE extended;").expect("parses");
        assert!(
            matches!(&v[0].statement, Statement::Describe { name, extended: false } if name == "EXTENDED"),
            "{:?}",
            v[0].statement
        );
    }

    #[test]
    fn statements_keep_their_own_text() {
        let v = parse_statements("SHOW STREAMS ;  TERMINATE ALL;").expect("parses");
        assert_eq!(v[0].text, "SHOW STREAMS;");
        assert_eq!(v[1].text, "TERMINATE ALL;");
    }

    #[test]
    fn unknown_statement_is_refused_with_position() {
        let err = parse_statements("  FROB x;").expect_err("bad");
        assert_eq!(err.position.map(|p| p.column), Some(3));
    }
}
