//! `sluice shell` used without a terminal, as scripts and CI use it: statements piped in or
//! read with `-f`, against the real server. Results print as tables, errors name their
//! position with a caret, and the exit status says whether every statement worked.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::json;
use sluice_e2e::{produce, unique, TestServer};

use crate::process::sluice_binary;

/// Run `sluice shell --server url` with `input` on standard input (not a terminal).
async fn shell(url: &str, args: &[&str], input: &str) -> Output {
    let (url, args, input) = (
        url.to_string(),
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        input.to_string(),
    );
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(sluice_binary())
            .args(["shell", "--server", &url])
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("COLUMNS", "100")
            .spawn()
            .expect("sluice shell");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write statements");
        child.wait_with_output().expect("shell output")
    })
    .await
    .expect("shell task")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_statements_print_tables_and_fail_with_a_caret() {
    let server = TestServer::start().await;
    let (stream, topic, table) = (
        unique("SH_PAY").to_uppercase(),
        unique("sh_pay"),
        unique("SH_TOTALS").to_uppercase(),
    );
    let script = format!(
        "-- a comment, then a statement over two lines\n\
         CREATE STREAM {stream} (card VARCHAR, amount BIGINT)\n  WITH (KAFKA_TOPIC='{topic}', PARTITIONS=1);\n\
         SET 'auto.offset.reset'='earliest';\n\
         CREATE TABLE {table} AS SELECT card, SUM(amount) AS total FROM {stream} GROUP BY card;\n\
         SHOW STREAMS; SHOW PROPERTIES;\n"
    );
    let out = shell(&server.url, &[], &script).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains(&format!("| {stream}")), "{stdout}");
    assert!(
        stdout.contains("| auto.offset.reset | earliest |"),
        "{stdout}"
    );
    for line in stdout
        .lines()
        .filter(|l| l.starts_with('|') || l.starts_with('+'))
    {
        assert!(
            line.chars().count() <= 100,
            "a table wider than COLUMNS: {line}"
        );
    }

    produce(
        &topic,
        &[
            (None, json!({"card": "c1", "amount": 5}).to_string()),
            (None, json!({"card": "c1", "amount": 7}).to_string()),
            (None, json!({"card": "c2", "amount": 1}).to_string()),
        ],
    )
    .await;
    // A pull query, run until the table has caught up.
    let file = std::env::temp_dir()
        .join(unique("pull"))
        .with_extension("sql");
    std::fs::write(
        &file,
        format!("SELECT card, total FROM {table} ORDER BY card;\n"),
    )
    .expect("write the script");
    let mut stdout = String::new();
    for _ in 0..60 {
        let out = shell(&server.url, &["-f", file.to_str().expect("path")], "").await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        stdout = text(&out.stdout);
        if stdout.contains("| c1   | 12    |") && stdout.contains("| c2   | 1     |") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        stdout.contains("| CARD | TOTAL |") || stdout.contains("| card | total |"),
        "{stdout}"
    );
    assert!(stdout.contains("| c1   | 12    |"), "{stdout}");
    assert!(stdout.contains("(2 rows)"), "{stdout}");

    // A push query with LIMIT ends by itself.
    let out = shell(
        &server.url,
        &[],
        &format!(
            "SET 'auto.offset.reset'='earliest';\nSELECT card, amount FROM {stream} EMIT CHANGES LIMIT 2;\n"
        ),
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("(2 rows)"), "{stdout}");

    // PRINT, JSON output, UNSET and RUN SCRIPT.
    let script = std::env::temp_dir()
        .join(unique("script"))
        .with_extension("sql");
    std::fs::write(&script, "SHOW STREAMS;\n").expect("write the script");
    let out = shell(
        &server.url,
        &[],
        &format!(
            "PRINT '{topic}' FROM BEGINNING LIMIT 2;\n\
             OUTPUT FORMAT JSON;\n\
             SELECT card, total FROM {table} WHERE card = 'c1';\n\
             SET 'auto.offset.reset'='earliest'; UNSET 'auto.offset.reset';\n\
             RUN SCRIPT '{}';\n",
            script.display()
        ),
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let printed: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("rowtime: "))
        .collect();
    assert_eq!(printed.len(), 2, "{stdout}");
    assert!(
        printed[0].ends_with(r#"key: <null>, value: {"amount":5,"card":"c1"}, partition: 0"#),
        "{stdout}"
    );
    assert!(stdout.contains(r#"{"card":"c1","total":12}"#), "{stdout}");
    assert!(
        stdout.contains("Successfully unset local property 'auto.offset.reset'."),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#""@type": "streams""#),
        "RUN SCRIPT ran SHOW STREAMS: {stdout}"
    );

    // A failing statement: the server's message, a caret under its position, exit 1,
    // and the statements after it are not run.
    let out = shell(
        &server.url,
        &[],
        &format!("SELECT card\n  FORM {table};\nSHOW STREAMS;\n"),
    )
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("line 2, column"), "{stderr}");
    assert!(
        stderr.contains("\n    FORM"),
        "the statement line is shown: {stderr}"
    );
    assert!(stderr.lines().any(|l| l.trim() == "^"), "a caret: {stderr}");
    assert!(
        !text(&out.stdout).contains("Stream Name"),
        "stopped at the failure"
    );

    // An unreachable server is named, and the status is 1.
    let out = shell("http://127.0.0.1:9", &[], "SHOW STREAMS;\n").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot reach the server at http://127.0.0.1:9"),
        "{}",
        text(&out.stderr)
    );
    server.stop().await;
}

/// The interactive shell in a real pseudo-terminal: the prompt, a statement typed over
/// two lines, tab completion of a stream's name, a push query that prints rows as they
/// come and ends with Ctrl-C (the shell stays), an error with its caret, history kept in a
/// file, `exit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_shell_in_a_terminal() {
    let server = TestServer::start().await;
    let (stream, topic) = (unique("SH_TTY").to_uppercase(), unique("sh_tty"));
    server
        .ok(&format!(
            "CREATE STREAM {stream} (card VARCHAR, amount BIGINT) WITH (KAFKA_TOPIC='{topic}', PARTITIONS=1);"
        ))
        .await;
    produce(
        &topic,
        &[(None, json!({"card": "tty-card", "amount": 42}).to_string())],
    )
    .await;
    let history = std::env::temp_dir().join(unique("history"));
    let url = server.url.clone();
    let history_file = history.clone();
    let screen = tokio::task::spawn_blocking(move || -> Result<String, rexpect::error::Error> {
        let mut command = Command::new(sluice_binary());
        command
            .args(["shell", "--server", &url])
            .env("SLUICE_HISTORY", &history_file)
            .env("TERM", "xterm")
            .env("COLUMNS", "100");
        let mut tty = rexpect::session::spawn_command(command, Some(30_000))?;
        let mut screen = tty.exp_string("sluice> ")?;
        tty.send_line("SHOW")?;
        screen += &tty.exp_string("      > ")?;
        tty.send_line("STREAMS;")?;
        screen += &tty.exp_string(&stream)?;
        screen += &tty.exp_string("sluice> ")?;
        // Tab completes the stream's name (unique: the rest of it after "SH_TTY").
        tty.send("DESCRIBE SH_TT")?;
        tty.send("\t")?;
        tty.send_line(";")?;
        screen += &tty.exp_string("Kafka topic")?;
        screen += &tty.exp_string("sluice> ")?;
        tty.send_line("SET 'auto.offset.reset'='earliest';")?;
        screen += &tty.exp_string("sluice> ")?;
        tty.send_line(&format!("SELECT card, amount FROM {stream} EMIT CHANGES;"))?;
        screen += &tty.exp_string("tty-card")?;
        // The query is still running: Ctrl-C ends it, not the shell.
        tty.send_control('c')?;
        screen += &tty.exp_string("sluice> ")?;
        tty.send_line(&format!("SELECT card FROM {stream} WHERE amount > 'x'"))?;
        // Type the rest at the next prompt, as a person does: the terminal discards what
        // is typed ahead while the line editor switches modes.
        screen += &tty.exp_string("      > ")?;
        tty.send_line(";")?;
        screen += &tty.exp_string("^")?;
        screen += &tty.exp_string("sluice> ")?;
        tty.send_line("exit")?;
        screen += &tty.exp_eof()?;
        Ok(screen)
    })
    .await
    .expect("terminal task");
    let screen = screen.unwrap_or_else(|e| panic!("the shell did not behave: {e}"));
    assert!(screen.contains("Connected to"), "{screen}");
    assert!(screen.contains("| card"), "a table header: {screen}");
    assert!(
        screen.contains("is a stream"),
        "the server's message: {screen}"
    );
    let saved = std::fs::read_to_string(&history).expect("history file");
    assert!(saved.contains("STREAMS;"), "{saved}");
    assert!(saved.contains("EMIT CHANGES;"), "{saved}");
    server.stop().await;
}

/// With no server at the address, the interactive shell says so plainly and stays: each
/// statement tries again (the same happens when the server goes away mid-session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_shell_without_a_server_stays() {
    let screen = tokio::task::spawn_blocking(|| -> Result<String, rexpect::error::Error> {
        let mut command = Command::new(sluice_binary());
        command
            .args(["shell", "--server", "http://127.0.0.1:9"])
            .env(
                "SLUICE_HISTORY",
                std::env::temp_dir().join(unique("history")),
            )
            .env("TERM", "xterm");
        let mut tty = rexpect::session::spawn_command(command, Some(30_000))?;
        let mut screen = tty.exp_string("cannot reach the server at http://127.0.0.1:9")?;
        screen += &tty.exp_string("sluice> ")?;
        tty.send_line("SHOW STREAMS;")?;
        screen += &tty.exp_string("cannot reach the server")?;
        screen += &tty.exp_string("sluice> ")?;
        tty.send_line("exit")?;
        screen += &tty.exp_eof()?;
        Ok(screen)
    })
    .await
    .expect("terminal task");
    let screen = screen.unwrap_or_else(|e| panic!("the shell did not behave: {e}"));
    assert!(screen.contains("once the server is back"), "{screen}");
}
