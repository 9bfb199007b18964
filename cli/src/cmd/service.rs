//! `hearth service install|uninstall [--user]`: a systemd unit that runs this data
//! directory's node, hardened, with its logs in the journal and `systemctl reload`
//! sending SIGHUP (limits and drivers).

use std::path::{Path, PathBuf};

use crate::data_dir::DataDir;
use crate::error::{CliError, Exit, Result};
use crate::output::Output;

/// `hearth service` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Write a systemd unit for this data directory's node (then enable it with the
    /// `systemctl` commands it prints).
    #[command(after_help = "Examples:\n  \
        hearth service install --user        # ~/.config/systemd/user/hearth.service\n  \
        sudo hearth --data-dir /var/lib/hearth service install\n  \
        hearth service install --print       # only show the unit")]
    Install(InstallArgs),
    /// Remove the unit written by `install` (stop and disable it first).
    Uninstall {
        /// The unit of the user's service manager.
        #[arg(long)]
        user: bool,
    },
}

/// What `hearth service install` takes.
#[derive(Debug, clap::Args)]
pub(crate) struct InstallArgs {
    /// A unit for the user's service manager (`systemctl --user`) instead of the
    /// system's.
    #[arg(long)]
    user: bool,
    /// Print the unit on stdout and write nothing.
    #[arg(long)]
    print: bool,
    /// Replace an existing unit file.
    #[arg(long)]
    force: bool,
    /// The system user the node runs as (system units; default: the owner of the data
    /// directory).
    #[arg(long, value_name = "USER")]
    run_as: Option<String>,
}

/// The unit's name.
pub(crate) const UNIT: &str = "hearth.service";

/// `text` (a path) as one word of a unit file: quoted when it needs it, with systemd's
/// specifiers (`%`) escaped, and in a command line (`exec`) its variables (`$`) too.
/// Paths with control characters never reach here ([`unit_path`]).
fn quoted(text: &str, exec: bool) -> String {
    let mut escaped = text.replace('%', "%%");
    if exec {
        escaped = escaped.replace('$', "$$");
    }
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@".contains(c))
    {
        escaped
    } else {
        format!("\"{}\"", escaped.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// A path the unit may name: UTF-8 without control characters (a newline in a path
/// would start a line of its own in the unit).
fn unit_path(path: &Path, what: &str) -> Result<String> {
    match path.to_str() {
        Some(text) if !text.chars().any(char::is_control) => Ok(text.to_owned()),
        _ => Err(CliError::new(
            Exit::Usage,
            format!(
                "{what} {} has characters a unit file cannot name (control characters or \
                 bytes that are not UTF-8)",
                path.display()
            ),
        )
        .hint("move it to a plain path")),
    }
}

/// The unit file for running `exe` on `data_dir`, as `user` (system units).
pub(crate) fn unit(exe: &str, data_dir: &str, user_unit: bool, run_as: Option<&str>) -> String {
    let mut text = format!(
        "# Written by `hearth service install`{}.\n\
         [Unit]\n\
         Description=Hearth node\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         Type=exec\n\
         ExecStart={} --data-dir {} node run\n\
         ExecReload=/bin/kill -HUP $MAINPID\n\
         Restart=on-failure\n\
         RestartSec=5s\n\
         TimeoutStopSec=30s\n\
         Environment=RUST_LOG=info\n",
        if user_unit { " --user" } else { "" },
        quoted(exe, true),
        quoted(data_dir, true),
    );
    if let Some(user) = run_as.filter(|_| !user_unit) {
        text.push_str(&format!("User={user}\n"));
    }
    // Hardening: the node needs the network, its data directory, and memory it can
    // make executable (wasmtime compiles computations to machine code, so
    // MemoryDenyWriteExecute is off); nothing else.
    text.push_str(&format!(
        "UMask=0077\n\
         NoNewPrivileges=yes\n\
         ProtectSystem=strict\n\
         ReadWritePaths={}\n\
         PrivateTmp=yes\n\
         ProtectKernelTunables=yes\n\
         ProtectKernelModules=yes\n\
         ProtectKernelLogs=yes\n\
         ProtectControlGroups=yes\n\
         ProtectClock=yes\n\
         ProtectHostname=yes\n\
         RestrictSUIDSGID=yes\n\
         RestrictRealtime=yes\n\
         RestrictNamespaces=yes\n\
         LockPersonality=yes\n\
         SystemCallArchitectures=native\n\
         RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK\n",
        quoted(data_dir, false)
    ));
    if !user_unit {
        text.push_str(
            "PrivateDevices=yes\n\
             CapabilityBoundingSet=\n\
             AmbientCapabilities=\n",
        );
    }
    text.push_str(&format!(
        "\n[Install]\nWantedBy={}\n",
        if user_unit {
            "default.target"
        } else {
            "multi-user.target"
        }
    ));
    text
}

/// Where the unit goes.
fn unit_file(user: bool) -> Result<PathBuf> {
    if !user {
        return Ok(PathBuf::from("/etc/systemd/system").join(UNIT));
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|home| PathBuf::from(home).join(".config"))
        })
        .ok_or_else(|| {
            CliError::new(Exit::Usage, "no home directory: $HOME is not set")
                .hint("set HOME, or install a system unit (without --user) as root")
        })?;
    Ok(config.join("systemd/user").join(UNIT))
}

/// The user a system unit runs the node as by default: the owner of the data directory
/// (its files are that user's), by uid; none when that is root.
fn default_user(data_dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let uid = std::fs::metadata(data_dir).ok()?.uid();
    (uid != 0).then(|| uid.to_string())
}

/// A system unit runs the node as `run_as` at every boot: refuse root unless asked for
/// by name, and a binary that someone other than root could replace.
fn system_unit_checks(exe: &Path, run_as: Option<&str>) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    if run_as.is_none() {
        return Err(CliError::new(
            Exit::Usage,
            "the data directory belongs to root, so the node would run as root",
        )
        .hint(
            "give the node a user of its own (`useradd --system hearth`, `chown -R hearth \
             DATA_DIR`) or say `--run-as root` to accept it",
        ));
    }
    for path in [Some(exe), exe.parent()].into_iter().flatten() {
        let meta = std::fs::metadata(path).map_err(|err| {
            CliError::new(
                Exit::Error,
                format!("cannot read {}: {err}", path.display()),
            )
        })?;
        if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            return Err(CliError::new(
                Exit::Refused,
                format!(
                    "{} may be changed by someone other than root, and a system unit would run \
                     it at every boot",
                    path.display()
                ),
            )
            .hint("install hearth where only root writes (e.g. `install -m 755 hearth /usr/local/bin/`) and run that one"));
        }
    }
    Ok(())
}

pub(crate) fn run(dir: &DataDir, command: Command, out: &mut Output) -> Result<()> {
    match command {
        Command::Install(args) => install(dir, &args, out),
        Command::Uninstall { user } => {
            let path = unit_file(user)?;
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    return Err(CliError::new(
                        Exit::NotFound,
                        format!("{} does not exist", path.display()),
                    ));
                }
                Err(err) => {
                    return Err(CliError::new(
                        Exit::Error,
                        format!("cannot remove {}: {err}", path.display()),
                    ));
                }
            }
            let ctl = if user {
                "systemctl --user"
            } else {
                "systemctl"
            };
            out.emit(
                || format!("Removed {}. Then: {ctl} daemon-reload", path.display()),
                || serde_json::json!({ "removed": path.display().to_string() }),
            );
            Ok(())
        }
    }
}

fn install(dir: &DataDir, args: &InstallArgs, out: &mut Output) -> Result<()> {
    if !dir.is_initialised() {
        return Err(CliError::new(
            Exit::NotFound,
            format!("{} is not a Hearth data directory", dir.root().display()),
        )
        .hint("run `hearth init` or `hearth join` first, or pass the right --data-dir"));
    }
    // The unit names absolute paths: this binary and the data directory.
    let exe = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .map_err(|err| CliError::new(Exit::Error, format!("cannot find this program: {err}")))?;
    let data_dir = dir.root().canonicalize().map_err(|err| {
        CliError::new(
            Exit::Error,
            format!("cannot resolve {}: {err}", dir.root().display()),
        )
    })?;
    let run_as = args.run_as.clone().or_else(|| default_user(&data_dir));
    if !args.user {
        system_unit_checks(&exe, run_as.as_deref())?;
    }
    let text = unit(
        &unit_path(&exe, "this program's path")?,
        &unit_path(&data_dir, "the data directory")?,
        args.user,
        run_as.as_deref(),
    );
    if args.print {
        out.emit(|| text.clone(), || serde_json::json!({ "unit": text }));
        return Ok(());
    }
    let path = unit_file(args.user)?;
    if path.exists() && !args.force {
        return Err(
            CliError::new(Exit::Error, format!("{} exists already", path.display()))
                .hint("pass --force to replace it"),
        );
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|err| {
            CliError::new(
                Exit::Error,
                format!("cannot create {}: {err}", parent.display()),
            )
        })?;
    }
    // Readable by the service manager (not secret: it names paths only).
    let write = || {
        use std::os::unix::fs::PermissionsExt as _;
        hearth_protocol::statefile::write_durable(&path, text.as_bytes())?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
    };
    write().map_err(|err| {
        CliError::new(
            Exit::Error,
            format!("cannot write {}: {err}", path.display()),
        )
        .hint(if args.user {
            "check that ~/.config is writable"
        } else {
            "a system unit is written as root: run it with sudo, or pass --user"
        })
    })?;
    let ctl = if args.user {
        "systemctl --user"
    } else {
        "systemctl"
    };
    out.emit(
        || {
            format!(
                "Wrote {}. Start it now and at every boot{}:\n  {ctl} daemon-reload\n  {ctl} \
                 enable --now hearth\nLogs: journalctl {}-u hearth -f   Reload limits and \
                 drivers: {ctl} reload hearth",
                path.display(),
                if args.user {
                    " (and `loginctl enable-linger` to run it without a login)"
                } else {
                    ""
                },
                if args.user { "--user " } else { "" }
            )
        },
        || serde_json::json!({ "unit_file": path.display().to_string(), "unit": text }),
    );
    Ok(())
}
