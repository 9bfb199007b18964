//! `hearth key`: holder keys and the owner's recovery phrase.

use std::path::PathBuf;

use hearth_protocol::key::HolderKey;
use serde_json::json;

use super::random_bytes;
use crate::data_dir::DataDir;
use crate::error::{CliError, Result};
use crate::output::Output;

/// Key commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Make a holder key for a developer or an app (never the owner key); prints its
    /// public key.
    New {
        /// Where to write the secret key (created with mode 0600; never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print the public key of a holder key file.
    Public {
        /// The holder key file.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Print the owner key's 24-word recovery phrase (needs the owner key).
    RecoveryPhrase,
}

pub(crate) fn run(dir: &DataDir, command: Command, out: &mut Output) -> Result<()> {
    match command {
        Command::New { out: path } => {
            let key = HolderKey::from_seed(random_bytes()?);
            key.write_new(&path).map_err(|err| {
                CliError::key_file(
                    err,
                    &path,
                    "choose another --out path; an existing key is never replaced",
                )
            })?;
            let public = key.public().to_string();
            out.emit(
                || public.to_string(),
                || json!({ "public_key": public, "file": path.display().to_string() }),
            );
            out.note(&format!(
                "Wrote the secret key to {}. Give the public key above to the mesh owner to approve.",
                path.display()
            ));
            Ok(())
        }
        Command::Public { key: path } => {
            let key = HolderKey::read(&path).map_err(|err| {
                CliError::key_file(err, &path, "pass a file written by `hearth key new`")
            })?;
            let public = key.public().to_string();
            out.emit(|| public.clone(), || json!({ "public_key": public }));
            Ok(())
        }
        Command::RecoveryPhrase => {
            let owner = dir.owner_key()?;
            let phrase = owner.recovery_phrase();
            out.note("Anyone with these words controls your mesh. Write them down and keep them offline.");
            out.emit(
                || phrase.to_string(),
                || json!({ "recovery_phrase": phrase.as_str(), "owner": owner.public().to_string() }),
            );
            Ok(())
        }
    }
}
