//! `hawking sql`: queries over the store, printed as a table, CSV or JSON.
//!
//! - `hawking sql "SELECT …"` runs the statement(s) given and stops at the first error.
//! - `hawking sql` at a terminal opens a prompt like psql's or duckdb's: statements end with
//!   `;` and may span lines, the history is kept in `~/.hawking_history` (or
//!   `$HAWKING_HISTORY`), Ctrl-C drops the statement being typed or cancels the one
//!   running, `\q`, `quit`, `exit` or Ctrl-D leave, and an error is printed without leaving.
//! - `hawking sql < script.sql` (stdin not a terminal) runs every statement of the script,
//!   prints errors and goes on, and fails at the end if any statement failed.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;
use hawking_query::{OutputFormat, QueryOptions, write_batches};
use rustyline::error::ReadlineError;
use rustyline::history::FileHistory;
use rustyline::{Config, Editor};

use hawking_query::{S3Options, StoreRoot, open_session};

#[derive(clap::Args)]
pub struct SqlArgs {
    /// The query; without one, an interactive prompt opens.
    query: Option<String>,
    /// Store directory, or `s3://bucket/prefix` (reached as the `AWS_*` environment
    /// variables say).
    #[arg(long, default_value = "./data")]
    data: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

impl From<Format> for OutputFormat {
    fn from(f: Format) -> Self {
        match f {
            Format::Table => OutputFormat::Table,
            Format::Csv => OutputFormat::Csv,
            Format::Json => OutputFormat::Json,
        }
    }
}

/// `hawking sql` with its arguments.
pub fn command(args: SqlArgs) -> anyhow::Result<()> {
    run(
        args.query.as_deref(),
        &args.data,
        args.format.into(),
        &QueryOptions::default(),
    )
}

pub fn run(
    query: Option<&str>,
    data: &str,
    format: OutputFormat,
    options: &QueryOptions,
) -> anyhow::Result<()> {
    let store = StoreRoot::open(data, &S3Options::default()).context("--data")?;
    store.require_store().context("--data")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let ctx = runtime.block_on(open_session(&store, options))?;
    match query {
        Some(text) => {
            let mut statements = Statements::default();
            statements.push(text);
            for statement in statements.finish() {
                let batches = runtime.block_on(execute(&ctx, &statement))?;
                print(&batches, format)?;
            }
            Ok(())
        }
        None if std::io::stdin().is_terminal() => Prompt::new(&ctx, format).run(&runtime),
        None => run_script(&runtime, &ctx, std::io::stdin().lock(), format),
    }
}

/// Runs a statement; a statement that returns no columns (`CREATE VIEW …`) yields nothing,
/// one with no rows yields an empty batch so its header still prints.
async fn execute(ctx: &SessionContext, sql: &str) -> anyhow::Result<Vec<RecordBatch>> {
    let df = ctx.sql(sql).await?;
    let schema = df.schema().as_arrow().clone();
    let batches = df.collect().await?;
    if batches.iter().all(|b| b.num_rows() == 0) && !schema.fields().is_empty() {
        return Ok(vec![RecordBatch::new_empty(std::sync::Arc::new(schema))]);
    }
    Ok(batches)
}

fn print(batches: &[RecordBatch], format: OutputFormat) -> anyhow::Result<()> {
    if batches.is_empty() {
        return Ok(());
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    write_batches(&mut out, batches, format).context("writing results")?;
    out.flush().context("writing results")?;
    Ok(())
}

fn run_script(
    runtime: &tokio::runtime::Runtime,
    ctx: &SessionContext,
    input: impl BufRead,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let mut statements = Statements::default();
    let (mut ran, mut failed) = (0, 0);
    let mut run_all = |complete: Vec<String>| -> anyhow::Result<()> {
        for statement in complete {
            ran += 1;
            match runtime.block_on(execute(ctx, &statement)) {
                Ok(batches) => print(&batches, format)?,
                Err(e) => {
                    failed += 1;
                    eprintln!("error: {}", error_text(&e));
                }
            }
        }
        Ok(())
    };
    for line in input.lines() {
        let line = line.context("reading statements from stdin")?;
        if statements.is_empty() && is_quit(&line) {
            break;
        }
        statements.push(&line);
        statements.push("\n");
        run_all(statements.take_complete())?;
    }
    // Like `hawking sql "SELECT 1"`, a last statement without `;` still runs.
    run_all(statements.finish())?;
    if failed > 0 {
        anyhow::bail!("{failed} of {ran} statements failed");
    }
    Ok(())
}

/// An error's chain of causes on one line; causes whose text their wrapper already includes
/// are not repeated.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in e.chain().map(|c| c.to_string()) {
        if !message.contains(&cause) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&cause);
        }
    }
    message
}

fn is_quit(line: &str) -> bool {
    let word = line.trim().trim_end_matches(';').trim();
    matches!(word, "\\q" | "quit" | "exit" | ".quit" | ".exit")
}

/// Where the prompt keeps its history: `$HAWKING_HISTORY`, else `~/.hawking_history`.
fn history_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HAWKING_HISTORY") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".hawking_history"))
}

const HELP: &str = "\
Statements end with ';' and may span lines. Tables: flows, ip_history, history_gaps.
  \\d            list tables and views
  \\d NAME       columns of a table or view
  \\timing       show how long each statement took (on/off)
  \\q, quit      leave (or Ctrl-D); Ctrl-C drops the statement being typed or cancels the running one
Functions: cidr_contains(cidr, ip), ip_in_cidrs(ip, 'a/8,b/12'), ip_family(ip), cidr_network(ip, prefix),
           SELECT * FROM whois(ip, at [, cluster [, port, protocol]])";

struct Prompt<'a> {
    ctx: &'a SessionContext,
    format: OutputFormat,
    timing: bool,
}

impl<'a> Prompt<'a> {
    fn new(ctx: &'a SessionContext, format: OutputFormat) -> Self {
        Prompt {
            ctx,
            format,
            timing: false,
        }
    }

    fn run(mut self, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
        let config = Config::builder()
            .auto_add_history(false)
            .history_ignore_space(true)
            .max_history_size(10_000)?
            .history_ignore_dups(true)?
            .build();
        let mut editor: Editor<(), FileHistory> =
            Editor::with_config(config).context("opening the terminal")?;
        let history = history_path();
        if let Some(path) = &history
            && path.exists()
            && let Err(e) = editor.load_history(path)
        {
            eprintln!("warning: cannot read history {}: {e}", path.display());
        }
        println!("hawking sql: statements end with ';', \\? for help, \\q to quit");
        let mut statements = Statements::default();
        loop {
            let prompt = if statements.is_empty() {
                "hawking> "
            } else {
                "      -> "
            };
            let line = match editor.readline(prompt) {
                Ok(line) => line,
                Err(ReadlineError::Interrupted) => {
                    statements = Statements::default();
                    continue;
                }
                Err(ReadlineError::Eof) => break,
                Err(e) => return Err(e).context("reading the prompt"),
            };
            if statements.is_empty() {
                let command = line.trim();
                if is_quit(command) {
                    break;
                }
                if let Some(meta) = command.strip_prefix('\\') {
                    let _ = editor.add_history_entry(command);
                    self.meta(runtime, meta);
                    self.save(&mut editor, history.as_deref());
                    continue;
                }
                if command.is_empty() {
                    continue;
                }
            }
            statements.push(&line);
            statements.push("\n");
            for statement in statements.take_complete() {
                let _ = editor.add_history_entry(format!("{};", statement.trim()));
                self.save(&mut editor, history.as_deref());
                self.run_statement(runtime, &statement);
            }
        }
        self.save(&mut editor, history.as_deref());
        Ok(())
    }

    fn save(&self, editor: &mut Editor<(), FileHistory>, path: Option<&Path>) {
        if let Some(path) = path
            && let Err(e) = editor.save_history(path)
        {
            eprintln!("warning: cannot write history {}: {e}", path.display());
        }
    }

    fn run_statement(&self, runtime: &tokio::runtime::Runtime, sql: &str) {
        let started = Instant::now();
        let result = runtime.block_on(async {
            tokio::select! {
                r = execute(self.ctx, sql) => Some(r),
                _ = tokio::signal::ctrl_c() => None,
            }
        });
        match result {
            None => eprintln!("cancelled"),
            Some(Err(e)) => eprintln!("error: {}", error_text(&e)),
            Some(Ok(batches)) => {
                if let Err(e) = print(&batches, self.format) {
                    eprintln!("error: {}", error_text(&e));
                    return;
                }
                let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                if self.format == OutputFormat::Table && !batches.is_empty() {
                    let noun = if rows == 1 { "row" } else { "rows" };
                    if self.timing {
                        println!("({rows} {noun}, {:.3} s)", started.elapsed().as_secs_f64());
                    } else {
                        println!("({rows} {noun})");
                    }
                } else if self.timing {
                    println!("({:.3} s)", started.elapsed().as_secs_f64());
                }
            }
        }
    }

    fn meta(&mut self, runtime: &tokio::runtime::Runtime, command: &str) {
        let mut words = command.split_whitespace();
        match (words.next(), words.next()) {
            (Some("?") | Some("h"), _) => println!("{HELP}"),
            (Some("timing"), _) => {
                self.timing = !self.timing;
                println!("timing is {}", if self.timing { "on" } else { "off" });
            }
            (Some("d"), None) => self.run_statement(
                runtime,
                "SELECT table_name, table_type FROM information_schema.tables \
                 WHERE table_schema = 'public' ORDER BY table_name",
            ),
            (Some("d"), Some(name)) => self.run_statement(
                runtime,
                &format!(
                    "SELECT column_name, data_type, is_nullable FROM information_schema.columns \
                     WHERE table_schema = 'public' AND table_name = '{}' ORDER BY ordinal_position",
                    name.replace('\'', "''")
                ),
            ),
            _ => eprintln!("unknown command \\{command}: \\? lists the commands"),
        }
    }
}

/// Splits text typed or piped line by line into statements at `;`, except inside quotes
/// and comments. A statement holding nothing but comments and blanks is dropped (Grafana's
/// `-- ping` and blank lines between statements are not errors).
#[derive(Default)]
struct Statements {
    buffer: String,
    /// Bytes of `buffer` already scanned, and the lexical state there.
    scanned: usize,
    state: Lex,
    /// Whether the current statement has anything besides comments and blanks.
    has_code: bool,
    complete: Vec<String>,
    statement_start: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Lex {
    #[default]
    Code,
    SingleQuoted,
    DoubleQuoted,
    LineComment,
    BlockComment,
}

impl Statements {
    /// Whether nothing but blanks and finished comments is waiting for a `;`.
    fn is_empty(&self) -> bool {
        !self.has_code && self.state == Lex::Code && self.complete.is_empty()
    }

    fn push(&mut self, text: &str) {
        self.buffer.push_str(text);
        let bytes = self.buffer.as_bytes();
        let mut i = self.scanned;
        while i < bytes.len() {
            let c = bytes[i];
            let next = bytes.get(i + 1).copied();
            match self.state {
                Lex::Code => match c {
                    b'\'' => {
                        self.state = Lex::SingleQuoted;
                        self.has_code = true;
                    }
                    b'"' => {
                        self.state = Lex::DoubleQuoted;
                        self.has_code = true;
                    }
                    b'-' if next == Some(b'-') => {
                        self.state = Lex::LineComment;
                        i += 1;
                    }
                    b'/' if next == Some(b'*') => {
                        self.state = Lex::BlockComment;
                        i += 1;
                    }
                    b';' => {
                        if self.has_code {
                            self.complete
                                .push(self.buffer[self.statement_start..i].trim().to_string());
                        }
                        self.statement_start = i + 1;
                        self.has_code = false;
                    }
                    c if !c.is_ascii_whitespace() => self.has_code = true,
                    _ => {}
                },
                // A doubled quote inside a literal is the quote itself: leaving and
                // re-entering the literal reads it the same way.
                Lex::SingleQuoted if c == b'\'' => self.state = Lex::Code,
                Lex::DoubleQuoted if c == b'"' => self.state = Lex::Code,
                Lex::LineComment if c == b'\n' => self.state = Lex::Code,
                Lex::BlockComment if c == b'*' && next == Some(b'/') => {
                    self.state = Lex::Code;
                    i += 1;
                }
                _ => {}
            }
            i += 1;
        }
        self.scanned = i;
    }

    /// The statements completed so far, removed from the buffer.
    fn take_complete(&mut self) -> Vec<String> {
        self.buffer.drain(..self.statement_start);
        self.scanned -= self.statement_start;
        self.statement_start = 0;
        std::mem::take(&mut self.complete)
    }

    /// Every statement, the last one even without its `;`.
    fn finish(mut self) -> Vec<String> {
        let mut all = self.take_complete();
        if self.has_code {
            all.push(self.buffer.trim().to_string());
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(lines: &[&str]) -> (Vec<String>, Vec<String>) {
        let mut s = Statements::default();
        let mut done = Vec::new();
        for l in lines {
            s.push(l);
            s.push("\n");
            done.extend(s.take_complete());
        }
        (done, s.finish())
    }

    #[test]
    fn statements_end_at_semicolons_and_may_span_lines() {
        let (done, rest) = split(&["SELECT 1;", "SELECT", "  2", ";SELECT 3; SELECT 4"]);
        assert_eq!(done, vec!["SELECT 1", "SELECT\n  2", "SELECT 3"]);
        assert_eq!(
            rest,
            vec!["SELECT 4"],
            "the unterminated last one runs at the end"
        );
    }

    #[test]
    fn semicolons_in_quotes_and_comments_do_not_end_a_statement() {
        let (done, rest) = split(&[
            "SELECT 'a;b', \"c;d\" -- e;f",
            "FROM t /* g; */ WHERE x = 'it''s;';",
        ]);
        assert_eq!(
            done,
            vec!["SELECT 'a;b', \"c;d\" -- e;f\nFROM t /* g; */ WHERE x = 'it''s;'"]
        );
        assert!(rest.is_empty());
    }

    #[test]
    fn comment_only_and_empty_statements_are_dropped() {
        let (done, rest) = split(&["-- ping", ";;", "/* nothing */ ;", "", "SELECT 1;"]);
        assert_eq!(done, vec!["SELECT 1"]);
        assert!(rest.is_empty());
        let (_, rest) = split(&["-- only a comment"]);
        assert!(rest.is_empty());
    }

    #[test]
    fn quit_words_are_recognised_with_or_without_semicolon() {
        for q in ["\\q", "quit", " exit; ", ".quit"] {
            assert!(is_quit(q), "{q}");
        }
        assert!(!is_quit("quitter"));
    }
}
