//! How the shell shows things: result rows as tables that fit the terminal (long values
//! cut with `…`), the server's entities (SHOW, DESCRIBE, EXPLAIN, statuses), and errors
//! with a caret under the position they name.

use serde_json::Value;

/// The narrowest a column is squeezed to when the table is too wide.
const MIN_COLUMN: usize = 6;

/// A JSON value as a table cell: strings bare, null as `null`, the rest as compact JSON.
pub fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

fn width_of(s: &str) -> usize {
    s.chars().count()
}

/// `s` cut to `width` characters, the last one `…` when something was cut; one line.
fn fit(s: &str, width: usize) -> String {
    let s = s.replace(['\n', '\r'], " ");
    if width_of(&s) <= width {
        return s;
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Column widths for `columns` and `rows` within `max_width` characters of table.
pub fn widths(columns: &[String], rows: &[Vec<String>], max_width: usize) -> Vec<usize> {
    let mut w: Vec<usize> = columns.iter().map(|c| width_of(c)).collect();
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            if let Some(w) = w.get_mut(i) {
                *w = (*w).max(width_of(c));
            }
        }
    }
    // Borders: "| " + " | " between + " |".
    let frame = 3 * w.len() + 1;
    while w.iter().sum::<usize>() + frame > max_width {
        let Some((i, widest)) = w.iter().copied().enumerate().max_by_key(|(_, w)| *w) else {
            break;
        };
        if widest <= MIN_COLUMN {
            break;
        }
        w[i] = widest - 1;
    }
    w
}

/// The border line of a table with `widths`.
pub fn border(widths: &[usize]) -> String {
    let mut s = String::from("+");
    for w in widths {
        s.push_str(&"-".repeat(w + 2));
        s.push('+');
    }
    s
}

/// One table line of `cells` in `widths`.
pub fn line(cells: &[String], widths: &[usize]) -> String {
    let mut s = String::from("|");
    for (i, w) in widths.iter().enumerate() {
        let c = fit(cells.get(i).map_or("", String::as_str), *w);
        s.push(' ');
        s.push_str(&c);
        s.push_str(&" ".repeat(w - width_of(&c) + 1));
        s.push('|');
    }
    s
}

/// A whole table.
pub fn table(columns: &[String], rows: &[Vec<String>], max_width: usize) -> String {
    let w = widths(columns, rows, max_width);
    let mut out = vec![border(&w), line(columns, &w), border(&w)];
    for row in rows {
        out.push(line(row, &w));
    }
    out.push(border(&w));
    out.join("\n")
}

/// An entity of a `/ksql` answer, as text for a person.
pub fn entity(e: &Value, max_width: usize) -> String {
    let strings =
        |v: &Value, keys: &[&str]| -> Vec<String> { keys.iter().map(|k| cell(&v[*k])).collect() };
    let list = |items: &Value, columns: &[&str], keys: &[&str]| -> String {
        let rows: Vec<Vec<String>> = items
            .as_array()
            .map(|a| a.iter().map(|v| strings(v, keys)).collect())
            .unwrap_or_default();
        let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        table(&columns, &rows, max_width)
    };
    match e["@type"].as_str() {
        Some("currentStatus") => cell(&e["commandStatus"]["message"]),
        Some("streams") => list(
            &e["streams"],
            &[
                "Stream Name",
                "Kafka Topic",
                "Key Format",
                "Value Format",
                "Windowed",
            ],
            &["name", "topic", "keyFormat", "valueFormat", "isWindowed"],
        ),
        Some("tables") => list(
            &e["tables"],
            &[
                "Table Name",
                "Kafka Topic",
                "Key Format",
                "Value Format",
                "Windowed",
            ],
            &["name", "topic", "keyFormat", "valueFormat", "isWindowed"],
        ),
        Some("queries") => {
            let items: Vec<Value> = e["queries"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|mut q| {
                    q["sink"] = q["sinks"][0].clone();
                    q
                })
                .collect();
            list(
                &Value::from(items),
                &["Query ID", "Status", "Sink", "Query String"],
                &["id", "state", "sink", "queryString"],
            )
        }
        Some("sourceDescription") => describe(&e["sourceDescription"], max_width),
        Some("queryDescription") => {
            let d = &e["queryDescription"];
            format!(
                "{}\n\n{}",
                {
                    let fields: Vec<Value> = d["fields"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(
                            |f| serde_json::json!({"name": f["name"], "type": f["schema"]["type"]}),
                        )
                        .collect();
                    list(&Value::from(fields), &["Field", "Type"], &["name", "type"])
                },
                cell(&d["executionPlan"])
            )
        }
        Some("properties") => list(&e["properties"], &["Property", "Value"], &["name", "value"]),
        _ => serde_json::to_string_pretty(e).unwrap_or_default(),
    }
}

fn describe(d: &Value, max_width: usize) -> String {
    let fields: Vec<Vec<String>> = d["fields"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| {
                    let key = if f["type"] == "KEY" { " (key)" } else { "" };
                    vec![
                        cell(&f["name"]),
                        format!("{}{key}", cell(&f["schema"]["type"])),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = vec![
        format!("Name                 : {}", cell(&d["name"])),
        format!("Type                 : {}", cell(&d["type"])),
        format!("Kafka topic          : {}", cell(&d["topic"])),
        format!("Key format           : {}", cell(&d["keyFormat"])),
        format!("Value format         : {}", cell(&d["valueFormat"])),
    ];
    if let Some(w) = d["windowType"].as_str() {
        out.push(format!("Window               : {w}"));
    }
    if !cell(&d["timestamp"]).is_empty() {
        out.push(format!("Timestamp column     : {}", cell(&d["timestamp"])));
    }
    out.push(String::new());
    out.push(table(
        &["Field".to_string(), "Type".to_string()],
        &fields,
        max_width,
    ));
    if d["extended"] == true {
        for (title, key) in [
            ("Queries that write", "writeQueries"),
            ("Queries that read", "readQueries"),
        ] {
            let Some(queries) = d[key].as_array().filter(|q| !q.is_empty()) else {
                continue;
            };
            out.push(format!("\n{title}:"));
            for q in queries {
                let s = &q["statistics"];
                out.push(format!("  {} ({})", cell(&q["id"]), cell(&q["state"])));
                out.push(format!(
                    "    records in: {}  out: {}  malformed: {}  late: {}  state groups: {}",
                    cell(&s["records_in"]),
                    cell(&s["records_out"]),
                    cell(&s["malformed_records"]),
                    cell(&s["late_records"]),
                    cell(&s["state_groups"]),
                ));
                if !s["kafka_error"].is_null() {
                    out.push(format!("    Kafka: {}", cell(&s["kafka_error"])));
                }
                for r in s["recent_errors"].as_array().into_iter().flatten() {
                    out.push(format!(
                        "    {} {}/{}@{}: {}",
                        cell(&r["reason"]),
                        cell(&r["topic"]),
                        cell(&r["partition"]),
                        cell(&r["offset"]),
                        cell(&r["message"])
                    ));
                }
            }
        }
    } else {
        out.push(String::from(
            "\nFor query counters and recent errors: DESCRIBE EXTENDED <name>;",
        ));
    }
    out.join("\n")
}

/// The line and column an error message names (`… at line 2, column 14`).
fn position(message: &str) -> Option<(usize, usize)> {
    let at = message.rfind("line ")?;
    let rest = &message[at + 5..];
    let (line, rest) = rest.split_once(", column ")?;
    let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((line.trim().parse().ok()?, column.parse().ok()?))
}

/// The server's error `message` for `statement`, with the statement and a caret under the
/// position when the message names one.
pub fn error(message: &str, statement: &str) -> String {
    let mut out = vec![message.to_string()];
    if let Some((line, column)) = position(message) {
        if let Some(text) = statement.lines().nth(line.saturating_sub(1)) {
            out.push(String::new());
            out.push(format!("  {text}"));
            let pad: String = text
                .chars()
                .take(column.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            out.push(format!("  {pad}^"));
        }
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tables_fit_the_width_and_cut_long_values_visibly() {
        let columns = vec!["ID".to_string(), "NOTE".to_string()];
        let rows = vec![
            vec!["1".to_string(), "short".to_string()],
            vec!["2".to_string(), "x".repeat(80)],
        ];
        let t = table(&columns, &rows, 40);
        for l in t.lines() {
            assert!(width_of(l) <= 40, "{l:?} is wider than 40");
        }
        assert!(t.contains('…'), "{t}");
        assert!(t.contains("| 1  | short"), "{t}");
        let wide = table(&columns, &rows, 200);
        assert!(wide.contains(&"x".repeat(80)), "{wide}");
    }

    #[test]
    fn errors_point_at_their_position() {
        let e = error(
            "syntax error: expected FROM, found 'FORM' at line 2, column 3",
            "SELECT *\n  FORM t;",
        );
        assert_eq!(
            e,
            "syntax error: expected FROM, found 'FORM' at line 2, column 3\n\n    FORM t;\n    ^"
        );
        assert_eq!(error("no position", "SELECT 1;"), "no position");
    }

    #[test]
    fn entities_read_as_tables() {
        let e = json!({"@type": "streams", "streams": [
            {"name": "PAYMENTS", "topic": "payments", "keyFormat": "JSON", "valueFormat": "JSON", "isWindowed": false}
        ]});
        let t = entity(&e, 120);
        assert!(
            t.contains("| PAYMENTS    | payments    | JSON       | JSON         | false    |"),
            "{t}"
        );
        let s = json!({"@type": "currentStatus", "commandStatus": {"message": "Stream created"}});
        assert_eq!(entity(&s, 80), "Stream created");
    }
}
