//! `hearth restore --from ADDR`: on a device made with `hearth init --recover`, fetch
//! every store sealed to a sealed holder (the cloud), verified, with progress.

use std::time::{Duration, Instant};

use hearth_node::api::types as api;

use crate::client::Client;
use crate::data_dir::DataDir;
use crate::error::{CliError, Exit, Result};
use crate::output::Output;

/// How often the node is asked where fetching stands.
const POLL: Duration = Duration::from_millis(500);

/// Arguments of `hearth restore`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The sealed holder's address, `/p2p/PEER` at the end (what `hearth status` on it
    /// shows under Listen).
    #[arg(long)]
    from: String,

    /// Give up after this long.
    #[arg(long, default_value = "30m", value_parser = super::parse_duration)]
    timeout: Duration,
}

pub(crate) fn run(dir: &DataDir, args: Args, out: &mut Output) -> Result<()> {
    let client = Client::connect(dir)?;
    let mut status: api::Restore = client.send(
        "POST",
        "/v1/restore",
        &api::RestoreRequest {
            from: args.from.clone(),
        },
    )?;
    let started = Instant::now();
    let mut last = String::new();
    while !status.done {
        if started.elapsed() >= args.timeout {
            return Err(CliError::new(
                Exit::Unavailable,
                format!(
                    "not every sealed store came in within {}",
                    humantime::format_duration(args.timeout)
                ),
            )
            .hint("check that the sealed holder is running and reachable at --from, then run it again (what came in stays)"));
        }
        let line = progress_line(&status);
        if line != last {
            out.note(&line);
            last = line;
        }
        std::thread::sleep(POLL);
        status = client.get("/v1/restore", &())?;
    }
    let refused: u64 = status.stores.iter().map(|s| s.refused).sum();
    out.emit_typed(
        || {
            let mut text = String::new();
            for s in &status.stores {
                text.push_str(&format!(
                    "{:<28} {} records ({} blobs from {})\n",
                    s.name, s.records, s.fetched, s.holder
                ));
            }
            text.push_str(&format!(
                "Restored {} sealed stores; every blob authenticated under the owner's keys{}.\n",
                status.stores.len(),
                if refused > 0 {
                    format!(" except {refused} refused (see hearth audit --action sealed.fetch)")
                } else {
                    String::new()
                }
            ));
            text
        },
        &status,
    );
    Ok(())
}

fn progress_line(status: &api::Restore) -> String {
    if status.catalogue_from.is_empty() {
        return "waiting for a sealed holder and the mesh's catalogue...".into();
    }
    let parts: Vec<String> = status
        .stores
        .iter()
        .map(|s| match s.kept {
            Some(kept) => format!("{} {}/{kept}", s.name, s.fetched),
            None => format!("{} {}/?", s.name, s.fetched),
        })
        .collect();
    format!("fetching: {}", parts.join(", "))
}
