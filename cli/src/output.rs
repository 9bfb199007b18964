//! Writing results: text for people, one JSON document for scripts. A closed pipe
//! (`hearth … | head`) ends the program quietly with success.

use std::io::Write as _;

use crate::error::CliError;

/// Where a command's result goes.
#[derive(Debug)]
pub(crate) struct Output {
    json: bool,
}

impl Output {
    pub(crate) fn new(json: bool) -> Self {
        Self { json }
    }

    /// Prints `text` (a person's view) or `value` (a script's), whichever was asked for.
    pub(crate) fn emit(
        &mut self,
        text: impl FnOnce() -> String,
        value: impl FnOnce() -> serde_json::Value,
    ) {
        let rendered = if self.json {
            let mut s = value().to_string();
            s.push('\n');
            s
        } else {
            let mut s = text();
            if !s.ends_with('\n') {
                s.push('\n');
            }
            s
        };
        write_stdout(&rendered);
    }

    /// Prints `text` (a person's view) or `value` as JSON (a script's).
    pub(crate) fn emit_typed(
        &mut self,
        text: impl FnOnce() -> String,
        value: &impl serde::Serialize,
    ) {
        self.emit(text, || serde_json::to_value(value).unwrap_or_default());
    }

    /// Is `--json` on?
    pub(crate) fn json(&self) -> bool {
        self.json
    }

    /// Prints `text` as it is (a generated file), whatever `--json` says.
    pub(crate) fn raw(&mut self, text: &str) {
        write_stdout(text);
    }

    /// Prints one line as it comes (for streams such as `tail`).
    pub(crate) fn line(&mut self, text: &str) {
        let mut line = text.to_owned();
        line.push('\n');
        write_stdout(&line);
    }

    /// A progress or advisory note for people, on stderr; silent under `--json`.
    pub(crate) fn note(&mut self, text: &str) {
        if !self.json {
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "{text}");
        }
    }
}

fn write_stdout(text: &str) {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(_) => std::process::exit(1),
    }
}

/// Prints an error as one line on stderr.
pub(crate) fn error_line(err: &CliError) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "hearth: error: {err}");
}

/// A table for people: a header row, then `rows`; the columns in `right` aligned right
/// (numbers). No borders, two spaces between columns, no wrapping.
pub(crate) fn table(header: &[&str], rows: Vec<Vec<String>>, right: &[usize]) -> String {
    use comfy_table::{CellAlignment, ContentArrangement, Table, presets};
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().copied());
    for row in rows {
        table.add_row(row);
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    for column in right {
        if let Some(c) = table.column_mut(*column) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut text: String = table
        .lines()
        .map(|line| format!("{}\n", line.trim_end()))
        .collect();
    if text.is_empty() {
        text.push('\n');
    }
    text
}

/// A progress bar on stderr for `total` steps of `unit`, drawn only on a terminal (and
/// never under `--json`).
pub(crate) fn progress(total: u64, unit: &str, json: bool) -> indicatif::ProgressBar {
    use std::io::IsTerminal as _;
    if json || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    let template = format!("[{{bar:40}}] {{percent:>3}}%  {{pos}}/{{len}} {unit}  {{eta}} left");
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("#>-"));
    }
    bar
}
