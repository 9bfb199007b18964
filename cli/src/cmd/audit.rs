//! `hearth audit` and `hearth audit verify`.

use hearth_node::api::types as api;
use hearth_node::layout;
use hearth_protocol::key::NodeKey;
use hearth_protocol::time::UnixMillis;

use crate::client::Client;
use crate::data_dir::DataDir;
use crate::error::{CliError, Exit, Result};
use crate::output::Output;

/// Arguments of `hearth audit`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Entries from T on (RFC 3339, milliseconds, or a duration such as 1h).
    #[arg(long, value_name = "T", value_parser = parse_time)]
    since: Option<u64>,
    /// Entries written by this device.
    #[arg(long, value_name = "NAME")]
    device: Option<String>,
    /// Entries with this action (or a prefix ending in `.`, e.g. `store.`).
    #[arg(long, value_name = "A")]
    action: Option<String>,
}

/// Audit subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Check every hash and signed checkpoint of this node's audit log; exits with 1 on
    /// any break. Works with the node stopped.
    Verify,
}

fn parse_time(text: &str) -> std::result::Result<u64, String> {
    if let Some(t) = UnixMillis::parse(text) {
        return Ok(t.0);
    }
    humantime::parse_duration(text)
        .map(|d| super::now().saturating_sub(d).0)
        .map_err(|_| "expected RFC 3339, milliseconds, or a duration such as 1h".into())
}

pub(crate) fn run(dir: &DataDir, args: Args, out: &mut Output) -> Result<()> {
    match args.command {
        Some(Command::Verify) => verify(dir, out),
        None => list(dir, &args, out),
    }
}

fn list(dir: &DataDir, args: &Args, out: &mut Output) -> Result<()> {
    let client = Client::connect(dir)?;
    let q = api::AuditQuery {
        since: args.since,
        device: args.device.clone(),
        action: args.action.clone(),
    };
    let r: api::AuditEntries = client.get("/v1/audit", &q)?;
    out.emit_typed(
        || {
            let mut text = String::new();
            for e in &r.entries {
                text.push_str(&format!(
                    "{:>6} {} {:<8} {:<8} {:<16} {:<24} {} ({} bytes)\n",
                    e.seq,
                    UnixMillis(e.time),
                    e.device,
                    short_actor(&e.actor),
                    e.action,
                    e.object,
                    e.outcome,
                    e.bytes,
                ));
            }
            if text.is_empty() {
                text.push_str("(no entries)\n");
            }
            text
        },
        &r,
    );
    Ok(())
}

fn short_actor(actor: &str) -> &str {
    actor.get(..10).unwrap_or(actor)
}

fn verify(dir: &DataDir, out: &mut Output) -> Result<()> {
    let key_path = dir.root().join("node.key");
    let key = NodeKey::read(&key_path).map_err(|err| {
        CliError::key_file(err, &key_path, "run this on the device whose log it is")
    })?;
    let path = dir.root().join(layout::AUDIT_FILE);
    if !path.exists() {
        return Err(
            CliError::new(Exit::NotFound, format!("{} does not exist", path.display()))
                .hint("the log is created when the node first runs"),
        );
    }
    let result = hearth_stores::audit::verify(&path, &key.public())
        .map_err(|err| CliError::new(Exit::Error, err.to_string()))?;
    let copies = hearth_node::audit_copy::verify_copies(dir.root())
        .map_err(|err| CliError::new(Exit::Error, err.to_string()))?;
    let value = api::AuditVerified::of(result.clone(), copies.clone());
    let ok = value.ok;
    out.emit_typed(
        || {
            let mut text = String::new();
            if result.ok() {
                let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
                text.push_str(&format!(
                    "The audit log is intact: {}, {} ({} after the last checkpoint protected by the hash chain only).\n",
                    plural(result.entries, "entry", "entries"),
                    plural(result.checkpoints, "signed checkpoint", "signed checkpoints"),
                    plural(result.unsigned_tail, "entry", "entries"),
                ));
            } else {
                text.push_str(&format!("The audit log has been tampered with ({} problems):\n", result.findings.len()));
                for f in &result.findings {
                    if f.line > 0 {
                        text.push_str(&format!("  line {}: {}\n", f.line, f.problem));
                    } else {
                        text.push_str(&format!("  {}\n", f.problem));
                    }
                }
            }
            for copy in &copies {
                if copy.ok {
                    text.push_str(&format!(
                        "The copy of {}'s log held here is intact and its log continues it ({} entries).\n",
                        copy.device, copy.entries
                    ));
                } else {
                    text.push_str(&format!(
                        "The copy of {}'s log held here shows tampering ({} problems):\n",
                        copy.device,
                        copy.findings.len()
                    ));
                    for f in &copy.findings {
                        text.push_str(&format!("  {f}\n"));
                    }
                }
            }
            text
        },
        &value,
    );
    if ok {
        Ok(())
    } else {
        let problems =
            result.findings.len() + copies.iter().map(|c| c.findings.len()).sum::<usize>();
        Err(CliError::new(
            Exit::Error,
            format!("audit verification failed: {problems} problems"),
        ))
    }
}
