//! `hearth export`: the outbox of this device's export gateway (what waits, what was
//! sent), the owner's release and drop, pause and resume, and the offline check a
//! destination makes of what it received.

use std::path::{Path, PathBuf};

use hearth_node::api::types as api;
use hearth_protocol::export::ExportId;
use hearth_protocol::key::PublicKey;
use serde_json::json;

use crate::client::{Client, segment};
use crate::data_dir::DataDir;
use crate::error::{CliError, Exit, Result};
use crate::output::Output;

/// `hearth export` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// The exports in this device's outbox: held for your release, queued, and those
    /// finished in the last two days.
    #[command(alias = "list")]
    Ls,
    /// One export, with its body: exactly what would leave, or left.
    Show {
        /// The export's id (32 hex digits, from `hearth export ls`).
        id: String,
    },
    /// Release a held export: your consent for this one body to be sent.
    #[command(
        after_help = "Examples:\n  hearth export ls\n  hearth export show 3f2a…\n  hearth export release 3f2a…"
    )]
    Release {
        /// The export's id.
        id: String,
    },
    /// Drop an export that has not been delivered: it is never sent.
    Drop {
        /// The export's id.
        id: String,
    },
    /// Stop all sending at once (kept across restarts); computations may still queue
    /// exports, which wait.
    Pause,
    /// Start sending again after `pause`.
    Resume,
    /// Check, offline, a body a destination received: that a device of this mesh sent
    /// it (the `Hearth-Certificate` header) and signed exactly this body for this
    /// destination (the `Hearth-Signature` header).
    #[command(
        after_help = "Examples:\n  hearth export verify --body body.json --destination https://study.example.org/submit \\\n      --signature \"$(cat sig.txt)\" --certificate cert.txt --owner 9f3c…"
    )]
    Verify(VerifyArgs),
}

/// `hearth export verify`.
#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    /// The body as received (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    body: PathBuf,
    /// The URL the request was sent to, as the grant names it.
    #[arg(long, value_name = "URL")]
    destination: String,
    /// The `Hearth-Signature` header's value.
    #[arg(long, value_name = "HEADER")]
    signature: String,
    /// The `Hearth-Certificate` header's value, or a file holding it.
    #[arg(long, value_name = "TEXT|FILE")]
    certificate: String,
    /// The mesh owner's public key (default: this data directory's mesh).
    #[arg(long, value_name = "KEY", value_parser = super::parse_public_key)]
    owner: Option<PublicKey>,
}

pub(crate) fn run(dir: &DataDir, command: Command, out: &mut Output) -> Result<()> {
    match command {
        Command::Ls => list(dir, out),
        Command::Show { id } => show(dir, &id, out),
        Command::Release { id } => act(dir, &id, "release", out),
        Command::Drop { id } => act(dir, &id, "drop", out),
        Command::Pause => pause(dir, true, out),
        Command::Resume => pause(dir, false, out),
        Command::Verify(args) => verify(dir, args, out),
    }
}

fn check_id(id: &str) -> Result<String> {
    id.parse::<ExportId>()
        .map(|id| id.to_string())
        .map_err(|err| CliError::new(Exit::Usage, err).hint("`hearth export ls` lists the ids"))
}

fn when(ms: u64) -> String {
    hearth_protocol::time::UnixMillis(ms).to_string()
}

fn list(dir: &DataDir, out: &mut Output) -> Result<()> {
    let answer: api::Exports = Client::connect(dir)?.get("/v1/exports", &())?;
    out.emit_typed(
        || {
            let mut text = String::new();
            if answer.paused {
                text.push_str("Sending is PAUSED (`hearth export resume` starts it again).\n");
            }
            if answer.exports.is_empty() {
                text.push_str("no exports");
                return text;
            }
            let rows = answer
                .exports
                .iter()
                .map(|e| {
                    let mut state = e.state.clone();
                    if e.state == "queued" && e.attempts > 0 {
                        state.push_str(&format!(" (attempt {} failed)", e.attempts));
                    }
                    vec![
                        e.id.clone(),
                        state,
                        e.destination.clone(),
                        e.bytes.to_string(),
                        when(e.queued_at),
                        e.source.clone(),
                    ]
                })
                .collect();
            text.push_str(&crate::output::table(
                &["ID", "STATE", "DESTINATION", "BYTES", "QUEUED", "FROM"],
                rows,
                &[3],
            ));
            text
        },
        &answer,
    );
    Ok(())
}

/// `text` with every control character but line feeds and tabs written as `\u{..}`:
/// what a destination or a computation wrote cannot redraw the owner's terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn describe(e: &api::ExportInfo) -> String {
    let mut text = format!(
        "export {}\n  state:        {}{}\n  destination:  {}\n  from:         {} (capability {})\n  body:         {} bytes of {}, sha256 {}\n  queued:       {}; expires {}\n",
        e.id,
        e.state,
        if e.review && e.state == "held" {
            " (waits for your release: `hearth export release ID`)"
        } else {
            ""
        },
        e.destination,
        e.source,
        e.cap_id.get(..16).unwrap_or(&e.cap_id),
        e.bytes,
        e.content_type,
        e.sha256,
        when(e.queued_at),
        when(e.expires_at),
    );
    if let Some(at) = e.released_at {
        text.push_str(&format!("  released:     {}\n", when(at)));
    }
    if e.attempts > 0 {
        text.push_str(&format!("  attempts:     {}\n", e.attempts));
    }
    if let Some(at) = e.next_attempt_at {
        text.push_str(&format!("  next attempt: {}\n", when(at)));
    }
    if let Some(status) = e.status {
        text.push_str(&format!("  last answer:  {status}\n"));
    }
    if let Some(err) = &e.last_error {
        text.push_str(&format!("  last error:   {}\n", printable(err)));
    }
    if let Some(at) = e.finished_at {
        text.push_str(&format!("  finished:     {}\n", when(at)));
    }
    if let Some(body) = &e.body {
        text.push_str("  body:\n");
        for line in printable(body).lines() {
            text.push_str(&format!("    {line}\n"));
        }
    }
    text
}

fn show(dir: &DataDir, id: &str, out: &mut Output) -> Result<()> {
    let id = check_id(id)?;
    let answer: api::ExportInfo =
        Client::connect(dir)?.get(&format!("/v1/exports/{}", segment(&id)), &())?;
    out.emit_typed(|| describe(&answer), &answer);
    Ok(())
}

fn act(dir: &DataDir, id: &str, action: &str, out: &mut Output) -> Result<()> {
    let id = check_id(id)?;
    let answer: api::ExportInfo = Client::connect(dir)?.send(
        "POST",
        &format!("/v1/exports/{}/{action}", segment(&id)),
        &json!({}),
    )?;
    out.emit_typed(
        || match action {
            "release" => format!(
                "released export {id}: {} bytes go to {} now",
                answer.bytes, answer.destination
            ),
            _ => format!(
                "dropped export {id}: it will not be sent to {}",
                answer.destination
            ),
        },
        &answer,
    );
    Ok(())
}

fn pause(dir: &DataDir, paused: bool, out: &mut Output) -> Result<()> {
    let path = if paused {
        "/v1/exports/pause"
    } else {
        "/v1/exports/resume"
    };
    let answer: api::ExportsPaused = Client::connect(dir)?.send("POST", path, &json!({}))?;
    out.emit_typed(
        || {
            if paused {
                format!(
                    "sending paused; {} export(s) wait (`hearth export resume` sends again)",
                    answer.waiting
                )
            } else {
                format!("sending resumed; {} export(s) waiting", answer.waiting)
            }
        },
        &answer,
    );
    Ok(())
}

fn read_input(path: &Path, what: &str) -> Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
            .map_err(|err| CliError::new(Exit::Error, format!("cannot read stdin: {err}")))?;
        return Ok(bytes);
    }
    std::fs::read(path).map_err(|err| CliError::read(path, err, what))
}

fn verify(dir: &DataDir, args: VerifyArgs, out: &mut Output) -> Result<()> {
    let body = read_input(&args.body, "body")?;
    let certificate = if args.certificate.trim_start().starts_with("hcap1:") {
        args.certificate.clone()
    } else {
        let path = Path::new(&args.certificate);
        String::from_utf8_lossy(&read_input(path, "certificate")?).into_owned()
    };
    let owner = match args.owner {
        Some(owner) => owner,
        None => dir.owner_public()?,
    };
    let (signature, device) = hearth_protocol::export::verify_received(
        &owner,
        &certificate,
        &args.signature,
        &args.destination,
        &body,
        super::now(),
    )
    .map_err(|err| CliError::new(Exit::Refused, format!("the export does not verify: {err}")))?;
    out.emit(
        || {
            format!(
                "valid: device {} ({}) of this mesh signed these {} bytes for {} (export {}, from {})",
                device.name,
                device.role,
                body.len(),
                args.destination,
                signature.export,
                signature.source
            )
        },
        || {
            json!({
                "valid": true,
                "device": device.name,
                "role": device.role.as_str(),
                "node_key": device.node_key.to_string(),
                "export": signature.export.to_string(),
                "source": signature.source,
                "bytes": body.len(),
                "sha256": hex::encode(hearth_protocol::export::body_hash(&body)),
            })
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(super::printable("a\tb\nc"), "a\tb\nc");
        assert_eq!(super::printable("x\u{1b}[2Jy\r"), "x\\u{1b}[2Jy\\u{d}");
    }
}
