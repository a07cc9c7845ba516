//! `sluice shell`: an interactive SQL shell over the REST API, and the same shell fed by
//! a pipe or a file (`-f`).
//!
//! Interactive: line editing and history (`~/.sluice_history`), statements that span
//! lines and run when their `;` arrives, results as tables that fit the terminal, push
//! queries printed row by row until Ctrl-C or their LIMIT. Not interactive (standard input
//! is not a terminal, or `-f file.sql`): statements run in order, results are printed
//! plainly, and the exit status is 1 if a statement failed.

mod client;
mod complete;
mod render;
mod split;

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use serde_json::{json, Value};

use client::{Client, QueryEvent, RequestError};
use split::Splitter;

/// `sluice shell` arguments.
#[derive(Debug, clap::Args)]
pub struct ShellArgs {
    /// The server's REST API.
    #[arg(long, default_value = "http://127.0.0.1:8088")]
    server: String,
    /// Run the statements of this file, then exit (1 if one failed).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutputFormat {
    Tabular,
    Json,
}

struct Shell {
    client: Client,
    format: OutputFormat,
    interactive: bool,
}

/// What a statement did to the session.
enum Outcome {
    Done,
    Failed,
    Exit,
}

const HELP: &str = "\
Statements end with ';' and may span lines. Sent to the server:
  CREATE STREAM | TABLE …;  CREATE … AS SELECT …;  INSERT INTO … SELECT …;
  SELECT … FROM table [WHERE …];            a pull query: the table's current rows
  SELECT … FROM stream EMIT CHANGES [LIMIT n];  a push query: rows as they come (Ctrl-C ends it)
  SHOW STREAMS | TABLES | QUERIES;  DESCRIBE [EXTENDED] name;  EXPLAIN …;
  TERMINATE query_id;  DROP STREAM | TABLE name;
Handled by the shell:
  SET 'property'='value';  UNSET 'property';  SHOW PROPERTIES;
  OUTPUT FORMAT JSON | TABULAR;  RUN SCRIPT 'file.sql';  help;  exit;";

/// Run the shell.
pub async fn run(args: ShellArgs) -> anyhow::Result<()> {
    let interactive = args.file.is_none() && std::io::stdin().is_terminal();
    let mut shell = Shell {
        client: Client::new(&args.server),
        format: OutputFormat::Tabular,
        interactive,
    };
    let ok = match (&args.file, interactive) {
        (Some(file), _) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            shell.run_text(&text).await
        }
        (None, false) => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            shell.run_text(&text).await
        }
        (None, true) => {
            shell.repl().await?;
            true
        }
    };
    if !ok {
        std::io::stdout().flush()?;
        std::process::exit(1);
    }
    Ok(())
}

fn terminal_width() -> usize {
    terminal_size::terminal_size()
        .map(|(w, _)| w.0 as usize)
        .or_else(|| std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()))
        .unwrap_or(120)
        .max(20)
}

impl Shell {
    /// Run every statement of `text`, stopping at the first failure; `false` if one failed.
    async fn run_text(&mut self, text: &str) -> bool {
        let mut splitter = Splitter::default();
        let mut statements = splitter.push(text);
        statements.extend(splitter.finish());
        for statement in statements {
            match self.execute(&statement).await {
                Outcome::Done => {}
                Outcome::Failed => return false,
                Outcome::Exit => return true,
            }
        }
        true
    }

    async fn repl(&mut self) -> anyhow::Result<()> {
        let history = std::env::var("SLUICE_HISTORY").map_or_else(
            |_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".sluice_history"),
            PathBuf::from,
        );
        let mut editor: rustyline::Editor<complete::SqlHelper, rustyline::history::DefaultHistory> =
            rustyline::Editor::new()?;
        let names = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
        editor.set_helper(Some(complete::SqlHelper {
            names: names.clone(),
        }));
        let _ = editor.load_history(&history);
        println!("Sluice shell. Statements end with ';'. Type 'help;' for help, 'exit' to leave.");
        match self.client.info().await {
            Ok(version) => println!("Connected to {} (Sluice {version}).", self.client.server),
            Err(e) => println!("{e}\nStatements are sent when it is back."),
        }
        self.refresh_names(&names).await;
        let mut splitter = Splitter::default();
        loop {
            let prompt = if splitter.is_pending() {
                "      > "
            } else {
                "sluice> "
            };
            let line = tokio::task::block_in_place(|| editor.readline(prompt));
            let line = match line {
                Ok(line) => line,
                Err(rustyline::error::ReadlineError::Interrupted) => {
                    splitter.clear();
                    continue;
                }
                Err(rustyline::error::ReadlineError::Eof) => break,
                Err(e) => return Err(e.into()),
            };
            // `exit` and `help` work without a semicolon, alone on a line.
            let bare = line.trim().trim_end_matches(';').to_ascii_lowercase();
            if !splitter.is_pending() && matches!(bare.as_str(), "exit" | "quit" | "help") {
                let _ = editor.add_history_entry(line.trim());
                if bare == "help" {
                    println!("{HELP}");
                    continue;
                }
                break;
            }
            for statement in splitter.push(&format!("{line}\n")) {
                let _ = editor.add_history_entry(statement.as_str());
                let _ = editor.save_history(&history);
                if let Outcome::Exit = self.execute(&statement).await {
                    let _ = editor.save_history(&history);
                    return Ok(());
                }
                self.refresh_names(&names).await;
            }
        }
        let _ = editor.save_history(&history);
        Ok(())
    }

    /// Fetch the stream, table and column names tab completion offers.
    async fn refresh_names(&self, names: &std::sync::Mutex<Vec<String>>) {
        let mut found: Vec<String> = vec![];
        for (statement, list) in [("SHOW STREAMS;", "streams"), ("SHOW TABLES;", "tables")] {
            let Ok(entities) = self.client.ksql(statement).await else {
                return;
            };
            for e in &entities {
                for s in e[list].as_array().into_iter().flatten() {
                    if let Some(n) = s["name"].as_str() {
                        found.push(n.to_string());
                    }
                }
            }
        }
        let sources = found.clone();
        for source in sources.iter().take(50) {
            if let Ok(entities) = self.client.ksql(&format!("DESCRIBE {source};")).await {
                for e in &entities {
                    let fields = e["sourceDescription"]["fields"].as_array();
                    for f in fields.into_iter().flatten() {
                        if let Some(n) = f["name"].as_str() {
                            found.push(n.to_string());
                        }
                    }
                }
            }
        }
        found.sort();
        found.dedup();
        *names.lock().unwrap_or_else(|p| p.into_inner()) = found;
    }

    /// Run one statement and print what it gives.
    async fn execute(&mut self, statement: &str) -> Outcome {
        let words: Vec<String> = statement
            .trim_end_matches(';')
            .split_whitespace()
            .map(str::to_ascii_uppercase)
            .collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        match words.as_slice() {
            ["EXIT"] | ["QUIT"] => return Outcome::Exit,
            ["HELP"] => {
                println!("{HELP}");
                return Outcome::Done;
            }
            ["SET", ..] => return self.set(statement),
            ["UNSET", ..] => return self.unset(statement),
            ["SHOW", "PROPERTIES"] => {
                self.show_properties();
                return Outcome::Done;
            }
            ["OUTPUT", "FORMAT", f] => {
                self.format = match *f {
                    "JSON" => OutputFormat::Json,
                    "TABULAR" => OutputFormat::Tabular,
                    _ => return self.fail("OUTPUT FORMAT takes JSON or TABULAR", statement),
                };
                println!("Output format: {f}");
                return Outcome::Done;
            }
            ["RUN", "SCRIPT", ..] => return Box::pin(self.run_script(statement)).await,
            ["PRINT", ..] => return self.print(statement).await,
            ["SELECT", ..] => return self.query(statement).await,
            _ => {}
        }
        match self.client.ksql(statement).await {
            Ok(entities) => {
                for e in entities {
                    self.print_entity(&e);
                }
                Outcome::Done
            }
            Err(e) => self.request_failed(e, statement),
        }
    }

    fn print_entity(&self, e: &Value) {
        match self.format {
            OutputFormat::Json => {
                println!("{}", serde_json::to_string_pretty(e).unwrap_or_default())
            }
            OutputFormat::Tabular => println!("{}", render::entity(e, terminal_width())),
        }
    }

    async fn query(&mut self, sql: &str) -> Outcome {
        // `EMIT` and `CHANGES` may be split over lines.
        let words: Vec<String> = sql
            .split_whitespace()
            .map(str::to_ascii_uppercase)
            .collect();
        let push = words
            .windows(2)
            .any(|w| w[0] == "EMIT" && w[1].starts_with("CHANGES"));
        let width = terminal_width();
        let format = self.format;
        let mut columns: Vec<String> = vec![];
        let mut rows: Vec<Vec<String>> = vec![];
        let mut widths: Vec<usize> = vec![];
        let mut count = 0u64;
        let mut on_event = |event: QueryEvent| match event {
            QueryEvent::Header(c) => {
                columns = c;
                if push && format == OutputFormat::Tabular {
                    // Rows come one by one: size the columns by their names.
                    let guess: Vec<String> = columns.iter().map(|c| format!("{c:<14}")).collect();
                    widths = render::widths(&columns, &[guess], width);
                    println!("{}", render::border(&widths));
                    println!("{}", render::line(&columns, &widths));
                    println!("{}", render::border(&widths));
                }
            }
            QueryEvent::Row(values) => {
                count += 1;
                match format {
                    OutputFormat::Json => {
                        // In column order (a JSON map would sort the names).
                        let fields: Vec<String> = columns
                            .iter()
                            .zip(&values)
                            .map(|(c, v)| format!("{}:{v}", Value::String(c.clone())))
                            .collect();
                        println!("{{{}}}", fields.join(","));
                    }
                    OutputFormat::Tabular => {
                        let cells: Vec<String> = values.iter().map(render::cell).collect();
                        if push {
                            println!("{}", render::line(&cells, &widths));
                        } else {
                            rows.push(cells);
                        }
                    }
                }
                let _ = std::io::stdout().flush();
            }
        };
        let result = if push && self.interactive {
            tokio::select! {
                r = self.client.query(sql, &mut on_event) => r,
                _ = tokio::signal::ctrl_c() => {
                    println!("^C");
                    Ok(())
                }
            }
        } else {
            self.client.query(sql, &mut on_event).await
        };
        match result {
            Ok(()) => {
                if format == OutputFormat::Tabular {
                    if push {
                        println!("{}", render::border(&widths));
                    } else {
                        println!("{}", render::table(&columns, &rows, width));
                    }
                }
                if format == OutputFormat::Tabular || self.interactive {
                    println!("({count} row{})", if count == 1 { "" } else { "s" });
                }
                Outcome::Done
            }
            Err(e) => self.request_failed(e, sql),
        }
    }

    /// `PRINT topic …`: the topic's records as the server writes them, until LIMIT or
    /// Ctrl-C.
    async fn print(&mut self, statement: &str) -> Outcome {
        let on_line = |line: &str| {
            println!("{line}");
            let _ = std::io::stdout().flush();
        };
        let result = if self.interactive {
            tokio::select! {
                r = self.client.lines(statement, on_line) => r,
                _ = tokio::signal::ctrl_c() => {
                    println!("^C");
                    Ok(())
                }
            }
        } else {
            self.client.lines(statement, on_line).await
        };
        match result {
            Ok(()) => Outcome::Done,
            Err(e) => self.request_failed(e, statement),
        }
    }

    fn request_failed(&self, e: RequestError, statement: &str) -> Outcome {
        match e {
            RequestError::Unreachable(m) if self.interactive => {
                eprintln!("{m}\nThe statement was not run; it will work once the server is back.");
                Outcome::Failed
            }
            RequestError::Unreachable(m) | RequestError::Server(m) => self.fail(&m, statement),
        }
    }

    fn fail(&self, message: &str, statement: &str) -> Outcome {
        eprintln!("{}", render::error(message, statement));
        Outcome::Failed
    }

    fn set(&mut self, statement: &str) -> Outcome {
        let quoted = quoted_strings(statement);
        match quoted.as_slice() {
            [k, v] => {
                self.client.properties.insert(k.clone(), v.clone());
                println!("Successfully changed local property '{k}' to '{v}'.");
                Outcome::Done
            }
            _ => self.fail("usage: SET 'property'='value';", statement),
        }
    }

    fn unset(&mut self, statement: &str) -> Outcome {
        match quoted_strings(statement).as_slice() {
            [k] => {
                match self.client.properties.remove(k) {
                    Some(_) => println!("Successfully unset local property '{k}'."),
                    None => println!("Property '{k}' was not set."),
                }
                Outcome::Done
            }
            _ => self.fail("usage: UNSET 'property';", statement),
        }
    }

    fn show_properties(&self) {
        let entity = json!({
            "@type": "properties",
            "properties": self.client.properties.iter()
                .map(|(k, v)| json!({"name": k, "value": v}))
                .collect::<Vec<_>>(),
        });
        self.print_entity(&entity);
        if self.format == OutputFormat::Tabular {
            println!("These are sent with every statement (as streamsProperties); the server's own settings are its command-line flags.");
        }
    }

    async fn run_script(&mut self, statement: &str) -> Outcome {
        let quoted = quoted_strings(statement);
        let [file] = quoted.as_slice() else {
            return self.fail("usage: RUN SCRIPT 'file.sql';", statement);
        };
        match std::fs::read_to_string(file) {
            Ok(text) => {
                if self.run_text(&text).await {
                    Outcome::Done
                } else {
                    Outcome::Failed
                }
            }
            Err(e) => self.fail(&format!("cannot read {file}: {e}"), statement),
        }
    }
}

/// The single-quoted strings of `statement`, in order (`''` is a quote).
fn quoted_strings(statement: &str) -> Vec<String> {
    let mut out = vec![];
    let mut chars = statement.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\'' {
            continue;
        }
        let mut s = String::new();
        loop {
            match chars.next() {
                Some('\'') if chars.peek() == Some(&'\'') => {
                    chars.next();
                    s.push('\'');
                }
                Some('\'') | None => break,
                Some(c) => s.push(c),
            }
        }
        out.push(s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_strings_of_set_and_run_script() {
        assert_eq!(
            quoted_strings("SET 'auto.offset.reset' = 'earliest';"),
            vec!["auto.offset.reset", "earliest"]
        );
        assert_eq!(quoted_strings("RUN SCRIPT 'it''s.sql';"), vec!["it's.sql"]);
    }
}
