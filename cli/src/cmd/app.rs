//! `hearth app review` and `hearth app approve`: what a manifest asks for, in plain
//! words, and the owner's signature on it. (`deploy`, `ls` and `stop` live in
//! [`crate::cmd::compute`].)

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hearth_protocol::capability::ModuleHash;
use hearth_protocol::key::PublicKey;
use hearth_protocol::manifest::{Granularity, History, Manifest, Output as ManifestOutput};
use serde_json::{Value, json};

use super::{ensure_absent, now, parse_duration, parse_public_key, random_bytes, write_new_file};
use crate::cmd::cap::chain_json;
use crate::data_dir::DataDir;
use crate::error::{CliError, Exit, Result};
use crate::output::Output;

/// App commands.
// Parsed once per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Show every permission a manifest asks for, in plain words, destinations included.
    Review {
        /// The manifest (TOML).
        manifest: PathBuf,
    },
    /// Sign a capability for that module and holder (needs the owner key).
    #[command(
        after_help = "Examples:\n  hearth app review places.toml\n  hearth app approve places.toml --holder PUBKEY --expires 30d --out places.cap"
    )]
    Approve {
        /// The manifest (TOML).
        manifest: PathBuf,
        /// The holder's public key (`hearth key new` prints it).
        #[arg(long, value_parser = parse_public_key)]
        holder: PublicKey,
        /// How long the approval lasts.
        #[arg(long, value_parser = parse_duration, default_value = "30d")]
        expires: Duration,
        /// Where to write the capability (never overwritten).
        #[arg(long, value_name = "CAPFILE")]
        out: PathBuf,
        /// The device that counts the runs the manifest's `max_runs` allows, for the
        /// whole mesh (default: this device).
        #[arg(long, value_name = "DEVICE")]
        counted_by: Option<String>,
        /// Approve without asking.
        #[arg(long)]
        yes: bool,
    },
    /// Install a continuous app on the device holding its store: it runs on new
    /// readings and writes its derived stores.
    Deploy(crate::cmd::compute::DeployArgs),
    /// Every app of the mesh.
    Ls,
    /// Stop an app, wherever it runs.
    Stop {
        /// The app's name.
        name: String,
    },
}

pub(crate) fn run(dir: &DataDir, command: Command, out: &mut Output) -> Result<()> {
    match command {
        Command::Review { manifest } => review(&manifest, out),
        Command::Approve {
            manifest,
            holder,
            expires,
            out: cap_path,
            counted_by,
            yes,
        } => approve(
            dir, &manifest, holder, expires, &cap_path, counted_by, yes, out,
        ),
        Command::Deploy(args) => crate::cmd::compute::deploy(dir, args, out),
        Command::Ls => crate::cmd::compute::list(dir, out),
        Command::Stop { name } => crate::cmd::compute::stop(dir, &name, out),
    }
}

/// A parsed manifest and what is known of its module.
struct Loaded {
    manifest: Manifest,
    module_hash: Option<ModuleHash>,
    module_note: Option<String>,
}

fn load(path: &Path) -> Result<Loaded> {
    let text =
        std::fs::read_to_string(path).map_err(|err| CliError::read(path, err, "manifest"))?;
    let manifest = Manifest::parse(&text).map_err(|err| {
        CliError::new(Exit::Error, format!("{}: {err}", path.display()))
            .hint("fix the manifest and run `hearth app review` again")
    })?;
    let module_path = manifest
        .module
        .path
        .as_ref()
        .map(|p| path.parent().unwrap_or_else(|| Path::new(".")).join(p));
    let (module_hash, module_note) = match (&module_path, manifest.module.hash) {
        (None, pinned) => (pinned, None),
        (Some(file), pinned) => match std::fs::read(file) {
            Ok(bytes) => {
                let actual = ModuleHash::of(&bytes);
                if let Some(pinned) = pinned
                    && pinned != actual
                {
                    return Err(CliError::new(
                        Exit::Error,
                        format!(
                            "{} has hash {actual}, but the manifest pins {pinned}",
                            file.display()
                        ),
                    )
                    .hint("rebuild the module or update `module.sha256` in the manifest"));
                }
                (Some(actual), None)
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => (
                pinned,
                Some(format!("the module file {} does not exist", file.display())),
            ),
            Err(err) => return Err(CliError::read(file, err, "module")),
        },
    };
    Ok(Loaded {
        manifest,
        module_hash,
        module_note,
    })
}

fn review(path: &Path, out: &mut Output) -> Result<()> {
    let loaded = load(path)?;
    let text = || {
        let mut text = loaded.manifest.render_plain();
        match (&loaded.module_hash, &loaded.module_note) {
            (Some(hash), _) => text.push_str(&format!("\nModule hash: {hash}\n")),
            (None, Some(note)) => {
                text.push_str(&format!("\nNote: {note}; it must exist before approval.\n"))
            }
            (None, None) => {}
        }
        text
    };
    out.emit(text, || manifest_json(&loaded));
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn approve(
    dir: &DataDir,
    path: &Path,
    holder: PublicKey,
    expires: Duration,
    cap_path: &Path,
    counted_by: Option<String>,
    yes: bool,
    out: &mut Output,
) -> Result<()> {
    ensure_absent(cap_path)?;
    let loaded = load(path)?;
    let module_hash = loaded.module_hash.ok_or_else(|| {
        CliError::new(
            Exit::NotFound,
            loaded
                .module_note
                .clone()
                .unwrap_or_else(|| "the manifest names no module".into()),
        )
        .hint("build the module first, or pin its hash with `module.sha256`")
    })?;
    let owner = dir.owner_key()?;
    if holder == owner.public() {
        return Err(
            CliError::new(Exit::Usage, "the holder is the owner key itself")
                .hint("make a holder key with `hearth key new --out FILE` and pass its public key"),
        );
    }

    if !yes {
        confirm(&loaded.manifest, &holder)?;
    }

    // Runs are counted for the whole mesh on one device: this one unless told.
    let counter = match counted_by {
        Some(device) => device,
        None => dir.config()?.name,
    };
    let chain = loaded
        .manifest
        .approve(
            owner.secret(),
            holder,
            module_hash,
            now(),
            expires,
            random_bytes()?,
            &counter,
        )
        .map_err(|err| CliError::new(Exit::Error, format!("cannot sign the capability: {err}")))?;
    let leaf = chain.leaf();
    let header = format!(
        "# Hearth capability {id}: {name} {version} for holder {holder}, until {until}.\n",
        id = leaf.id().short(),
        name = loaded.manifest.name,
        version = loaded.manifest.version,
        holder = holder.short(),
        until = leaf.capability().expires,
    );
    write_new_file(
        cap_path,
        format!("{header}{}\n", chain.to_text()).as_bytes(),
    )?;
    crate::cmd::cap::remember(dir, &chain);

    let id = leaf.id();
    let until = leaf.capability().expires;
    out.emit(
        || {
            format!(
                "Approved {} {} for holder {} until {until}.\nCapability {} written to {}.",
                loaded.manifest.name,
                loaded.manifest.version,
                holder.short(),
                id.short(),
                cap_path.display()
            )
        },
        || {
            json!({
                "cap_id": id.to_string(),
                "file": cap_path.display().to_string(),
                "holder": holder.to_string(),
                "module_hash": module_hash.to_string(),
                "expires": until.to_string(),
                "capability": chain_json(&chain),
            })
        },
    );
    Ok(())
}

/// Shows the review and asks; refuses when nobody is there to ask.
fn confirm(manifest: &Manifest, holder: &PublicKey) -> Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(CliError::new(
            Exit::Usage,
            "approval needs a confirmation and there is no terminal to ask",
        )
        .hint("read `hearth app review MANIFEST`, then pass --yes"));
    }
    let mut stderr = std::io::stderr().lock();
    let _ = write!(
        stderr,
        "{}\nApprove this for holder {}? [y/N] ",
        manifest.render_plain(),
        holder.short()
    );
    let _ = stderr.flush();
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .map_err(|err| CliError::new(Exit::Error, format!("cannot read the answer: {err}")))?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "Yes") {
        Ok(())
    } else {
        Err(CliError::new(Exit::Refused, "not approved").hint("nothing was written"))
    }
}

fn manifest_json(loaded: &Loaded) -> Value {
    let m = &loaded.manifest;
    let grants: Vec<Value> = m
        .grants
        .iter()
        .map(|g| {
            let history = match g.history {
                History::All => json!("all"),
                History::Recent(d) => json!({ "recent": humantime::format_duration(d).to_string() }),
                History::Window { since, until } => json!({
                    "since": since.map(|t| t.to_string()),
                    "until": until.map(|t| t.to_string()),
                }),
            };
            json!({
                "store": g.store,
                "access": g.actions.names(),
                "fields": g.fields,
                "granularity": match g.granularity { Granularity::Raw => "raw", Granularity::Aggregate => "aggregate" },
                "history": history,
                "purpose": g.purpose,
            })
        })
        .collect();
    let outputs: Vec<Value> = m
        .outputs
        .iter()
        .map(|o| match o {
            ManifestOutput::Result { purpose } => json!({ "type": "result", "purpose": purpose }),
            ManifestOutput::DerivedStore { store, purpose } => {
                json!({ "type": "derived-store", "store": store, "purpose": purpose })
            }
            ManifestOutput::Export {
                destination,
                purpose,
                review,
                max_per_day,
                max_bytes_per_day,
            } => json!({ "type": "export", "destination": destination, "purpose": purpose,
                         "review": review, "max_per_day": max_per_day,
                         "max_bytes_per_day": max_bytes_per_day }),
        })
        .collect();
    let destinations: Vec<&str> = m
        .outputs
        .iter()
        .filter_map(|o| match o {
            ManifestOutput::Export { destination, .. } => Some(destination.as_str()),
            _ => None,
        })
        .collect();
    json!({
        "name": m.name,
        "version": m.version,
        "description": m.description,
        "author": m.author,
        "module": {
            "path": m.module.path,
            "hash": loaded.module_hash.map(|h| h.to_string()),
            "note": loaded.module_note,
        },
        "grants": grants,
        "outputs": outputs,
        "export_destinations": destinations,
        "limits": {
            "max_result_bytes": m.max_result_bytes(),
            "max_runs": m.limits.max_runs,
            "devices": m.limits.devices,
            "fuel": m.limits.fuel,
            "memory_mb": m.limits.memory_mb,
            "wall_time": m.limits.wall_time.map(|d| humantime::format_duration(d).to_string()),
        },
        "plain": m.render_plain(),
    })
}
