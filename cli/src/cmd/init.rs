//! `hearth init`: a new mesh on this device.

use std::io::{BufRead as _, IsTerminal as _};
use std::time::Duration;

use hearth_protocol::capability::Role;
use hearth_protocol::device;
use hearth_protocol::key::{NodeKey, OwnerKey};
use serde_json::json;
use zeroize::Zeroizing;

use super::{now, random_bytes, write_new_file};
use crate::data_dir::{Config, DataDir};
use crate::error::{CliError, Exit, Result};
use crate::output::Output;

/// How long a device certificate is valid. Revocation, not expiry, is how a device
/// is removed; the long life spares the owner re-certifying devices.
pub(crate) const DEVICE_CERT_LIFETIME: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

/// Arguments of `hearth init`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// This device's name in the mesh (letters, digits, `.`, `_`, `-`).
    #[arg(long)]
    name: String,

    /// This device's role.
    #[arg(long, value_enum, default_value = "home")]
    role: super::RoleArg,

    /// Restore the owner key from its 24-word recovery phrase, read from stdin,
    /// instead of making a new one.
    #[arg(long)]
    recover: bool,
}

pub(crate) fn run(dir: &DataDir, args: Args, out: &mut Output) -> Result<()> {
    if !hearth_protocol::device::is_valid_device_name(&args.name) {
        return Err(CliError::new(
            Exit::Usage,
            format!("{:?} is not a valid device name", args.name),
        )
        .hint("use letters, digits, `.`, `_` or `-`, at most 128 characters, not starting with `12D3KooW` (peer ids do)"));
    }
    let role: Role = args
        .role
        .as_str()
        .parse()
        .map_err(|err: String| CliError::new(Exit::Usage, err))?;
    if dir.is_initialised() {
        return Err(CliError::new(
            Exit::Error,
            format!("{} already holds a Hearth node", dir.root().display()),
        )
        .hint("pass another --data-dir to create a second node on this machine"));
    }

    let owner = if args.recover {
        read_recovery_phrase()?
    } else {
        OwnerKey::from_seed(random_bytes()?)
    };
    let node = NodeKey::from_seed(random_bytes()?);
    let issued = now();
    let certificate = device::issue_certificate(
        owner.secret(),
        None,
        node.public(),
        &args.name,
        role,
        issued,
        issued.saturating_add(DEVICE_CERT_LIFETIME),
        random_bytes()?,
    )
    .map_err(|err| {
        CliError::new(
            Exit::Error,
            format!("cannot sign the device certificate: {err}"),
        )
    })?;
    let config = Config {
        name: args.name.clone(),
        role: role.to_string(),
        owner: owner.public().to_string(),
        bootstrap: Vec::new(),
        compute: None,
        mesh: None,
        node: None,
        metrics: None,
        export: None,
    };
    let config_text = toml::to_string(&config)
        .map_err(|err| CliError::new(Exit::Error, format!("cannot write the config: {err}")))?;

    create_dir(dir)?;
    // Write every file, or none: on a failure remove what was written.
    let mut written = Vec::new();
    let result = (|| {
        let path = dir.owner_key_path();
        owner.write_new(&path).map_err(|err| {
            CliError::key_file(err, &path, "check the data directory's permissions")
        })?;
        written.push(path);
        let path = dir.node_key_path();
        node.write_new(&path).map_err(|err| {
            CliError::key_file(err, &path, "check the data directory's permissions")
        })?;
        written.push(path);
        let path = dir.device_cert_path();
        write_new_file(&path, format!("{}\n", certificate.to_text()).as_bytes())?;
        written.push(path);
        let path = dir.config_path();
        write_new_file(
            &path,
            format!("# Hearth node configuration.\n{config_text}").as_bytes(),
        )?;
        written.push(path);
        Ok(())
    })();
    if let Err(err) = result {
        for path in written {
            let _ = std::fs::remove_file(path);
        }
        return Err(err);
    }

    let mesh_id = owner.public().mesh_id();
    let peer_id = node.public().peer_id();
    out.emit(
        || {
            format!(
                "Created mesh {mesh_id} with this device as {name} ({role}).\n\
                 Owner key:  {owner}\n\
                 Peer id:    {peer_id}\n\
                 Data dir:   {dir}\n\
                 The owner key is the root of your mesh. Write down its recovery phrase now:\n  \
                 hearth key recovery-phrase{dd}",
                name = args.name,
                owner = owner.public(),
                dir = dir.root().display(),
                dd = data_dir_flag(dir),
            )
        },
        || {
            json!({
                "mesh_id": mesh_id,
                "owner": owner.public().to_string(),
                "peer_id": peer_id,
                "name": args.name,
                "role": role.as_str(),
                "data_dir": dir.root().display().to_string(),
            })
        },
    );
    Ok(())
}

/// ` --data-dir DIR` when the data dir is not the default, for printed commands.
pub(crate) fn data_dir_flag(dir: &DataDir) -> String {
    match DataDir::resolve(None) {
        Ok(default) if default.root() == dir.root() => String::new(),
        _ => format!(" --data-dir {}", dir.root().display()),
    }
}

/// Creates the data directory, private to this user (0700).
pub(crate) fn create_dir(dir: &DataDir) -> Result<()> {
    hearth_protocol::statefile::create_private_dir(dir.root()).map_err(|err| {
        CliError::new(
            Exit::Error,
            format!(
                "cannot create the data directory {}: {err}",
                dir.root().display()
            ),
        )
    })
}

fn read_recovery_phrase() -> Result<OwnerKey> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln_prompt("Type the 24-word recovery phrase and press Enter:");
    }
    let mut line = Zeroizing::new(String::new());
    stdin.lock().read_line(&mut line).map_err(|err| {
        CliError::new(
            Exit::Error,
            format!("cannot read the recovery phrase: {err}"),
        )
    })?;
    OwnerKey::from_recovery_phrase(&line).map_err(|err| {
        CliError::new(Exit::Usage, err.to_string())
            .hint("check the words against the list you wrote down")
    })
}

fn eprintln_prompt(text: &str) {
    use std::io::Write as _;
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{text}");
}
