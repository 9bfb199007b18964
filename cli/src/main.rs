//! `hearth`: create a mesh, manage keys, review and approve manifests, delegate
//! capabilities, run the node and talk to it: stores, devices, drivers, computations,
//! the audit log.

mod client;
mod cmd;
mod data_dir;
mod error;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::data_dir::DataDir;
use crate::error::CliError;
use crate::output::Output;

/// Hearth: a personal data mesh. Your data stays on your devices; computations travel
/// to it.
#[derive(Debug, Parser)]
#[command(
    name = "hearth",
    version,
    propagate_version = true,
    after_help = "Examples:\n  \
        hearth init --name home                  # a new mesh, this device its home\n  \
        hearth node run                          # run the node (or: hearth service install)\n  \
        hearth invite --name phone --role mobile # a ticket for the next device\n  \
        hearth store create notes --kind kv\n  \
        hearth store put notes today '{\"mood\": \"fine\"}'\n  \
        hearth doctor                            # is it healthy?\n\n\
        Exit codes: 0 ok, 1 error, 2 usage, 3 refused, 4 not found, 5 unavailable."
)]
struct Cli {
    /// The node's data directory [default: $HEARTH_DATA_DIR, else ~/.local/share/hearth].
    #[arg(long, global = true, env = "HEARTH_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,

    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new mesh on this device: owner key, node key, device certificate, config.
    Init(cmd::init::Args),
    /// Holder keys for developers and apps, and the owner's recovery phrase.
    #[command(subcommand)]
    Key(cmd::key::Command),
    /// Review and approve app and computation manifests.
    #[command(subcommand)]
    App(cmd::app::Command),
    /// Show and delegate capabilities.
    #[command(subcommand)]
    Cap(cmd::cap::Command),
    /// A one-time ticket for a new device (needs a running node with the owner key).
    #[command(
        after_help = "Examples:\n  hearth invite --name phone --role mobile\n  hearth invite --role cloud --addr /dns4/cloud.example.org/udp/4001/quic-v1 --ttl 1h"
    )]
    Invite {
        /// How long the ticket works.
        #[arg(long, default_value = "10m", value_parser = cmd::parse_duration)]
        ttl: std::time::Duration,
        /// The new device's role (overrides what it asks for).
        #[arg(long, value_enum)]
        role: Option<cmd::RoleArg>,
        /// The new device's name (overrides what it asks for).
        #[arg(long)]
        name: Option<String>,
        /// Where the new device should dial this node, instead of the addresses it
        /// listens on: a DNS name or a forwarded port, e.g.
        /// /dns4/cloud.example.org/udp/4001/quic-v1 (repeat for several).
        #[arg(long = "addr", value_name = "MULTIADDR")]
        addrs: Vec<String>,
    },
    /// Join an existing mesh with a ticket (on a fresh data directory).
    #[command(
        after_help = "Examples:\n  hearth --data-dir ~/.local/share/hearth-phone join TICKET --name phone --role mobile"
    )]
    Join(cmd::join::Args),
    /// The devices of the mesh; `revoke NAME` removes one.
    Devices(cmd::devices::Args),
    /// Run the node.
    #[command(subcommand)]
    Node(cmd::node::Command),
    /// Run the node as a systemd service: `install [--user]` writes the unit.
    #[command(subcommand)]
    Service(cmd::service::Command),
    /// The node's configuration: `show` prints every setting and where it came from.
    #[command(subcommand)]
    Config(cmd::config::Command),
    /// This node, its peers and its stores.
    Status,
    /// Is this node healthy? Checks permissions, config, disk space, the running node,
    /// peers, clocks, the audit log and the stores; exit code 1 when one fails.
    #[command(
        after_help = "Examples:\n  hearth doctor\n  hearth doctor --json | jq '.checks[] | select(.verdict != \"pass\")'"
    )]
    Doctor,
    /// Stores on the running node: kv, timeseries and doc.
    #[command(subcommand)]
    Store(cmd::store::Command),
    /// The audit log: list entries, or `verify` it.
    Audit(cmd::audit::Args),
    /// Data sources built into the node: os-monitor, http-ingest, mqtt, file-import.
    #[command(subcommand)]
    Driver(cmd::driver::Command),
    /// Run a computation where the data is; prints its result and signed receipt.
    #[command(
        after_help = "Examples:\n  hearth run daily_mean.wasm --cap daily-mean.cap --key developer.key --params '{\"field\": \"load1\"}'\n  hearth --json run places.wasm --cap places.cap --key developer.key > run.json && hearth receipt verify run.json"
    )]
    Run(cmd::compute::RunArgs),
    /// Receipts of computations.
    #[command(subcommand)]
    Receipt(ReceiptCommand),
    /// Fetch every store sealed to a sealed holder (the cloud) onto this device, after
    /// `hearth init --recover`: verified, with progress.
    #[command(
        after_help = "Examples:\n  hearth restore --from /dns4/vm.example.net/udp/4001/quic-v1/p2p/12D3KooW..."
    )]
    Restore(cmd::restore::Args),
    /// The owner's dashboard in a browser: prints a one-time login link (two minutes)
    /// to the pages this node serves on its loopback address.
    #[command(after_help = "Examples:\n  hearth dashboard\n  hearth dashboard --open")]
    Dashboard {
        /// Open the link in the default browser (xdg-open).
        #[arg(long)]
        open: bool,
    },
    /// The export gateway's outbox: `ls`, `show`, `release`, `drop`, `pause`, `resume`,
    /// and `verify` for what a destination received.
    #[command(subcommand)]
    Export(cmd::export::Command),
    /// Shell completions, on stdout (e.g. `hearth completions bash >
    /// ~/.local/share/bash-completion/completions/hearth`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Man pages for every command, written into DIR (e.g. `hearth man --out
    /// ~/.local/share/man/man1`).
    Man {
        /// The directory to write `hearth.1`, `hearth-store.1`, … into.
        #[arg(long, value_name = "DIR", default_value = "man")]
        out: PathBuf,
    },
    /// The whole loop on a local three-device mesh (home, phone, cloud): pairing,
    /// drivers, replication by policy, computations run where the data is, receipts,
    /// the audit log.
    Demo(cmd::demo::Args),
}

/// Receipt commands.
#[derive(Debug, clap::Subcommand)]
enum ReceiptCommand {
    /// Check, offline, a receipt saved from `hearth run --json`: signed by a device of
    /// this mesh, and (when the file has it) for this very result. A body an export
    /// destination received is checked with `hearth export verify`: its
    /// `Hearth-Signature` names the job (`source=job:<id>`) whose receipt this is.
    Verify {
        /// The saved JSON (`-` for stdin).
        file: std::path::PathBuf,
    },
}

/// Is stderr the journal (a service started by systemd)? systemd sets `JOURNAL_STREAM`
/// to the device and inode of the stream it connected.
fn journal_is_stderr() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(stat) = rustix::fs::fstat(std::io::stderr()) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(stat.st_dev) && ino.parse::<u64>().ok() == Some(stat.st_ino)
}

fn init_tracing(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    if journal_is_stderr()
        && let Ok(journal) = tracing_journald::layer()
    {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        // Each event's fields become journal fields (`journalctl -o verbose`).
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(journal.with_syslog_identifier("hearth".into()))
            .try_init();
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(std::io::IsTerminal::is_terminal(&std::io::stderr())))
        .with_target(false)
        .try_init();
}

/// Where `--data-dir`'s value came from: the flag, `$HEARTH_DATA_DIR`, or neither.
fn data_dir_source(given: Option<&std::path::Path>) -> cmd::config::Source {
    use cmd::config::Source;
    let Some(given) = given else {
        return Source::Default;
    };
    let on_command_line = std::env::args_os()
        .any(|a| a == "--data-dir" || a.to_string_lossy().starts_with("--data-dir="));
    let from_env = std::env::var_os("HEARTH_DATA_DIR").is_some_and(|v| v == given.as_os_str());
    if !on_command_line && from_env {
        Source::Environment
    } else {
        Source::Flag
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    let source = data_dir_source(cli.data_dir.as_deref());
    let data_dir = DataDir::resolve(cli.data_dir)?;
    let mut out = Output::new(cli.json);
    match cli.command {
        Command::Init(args) => cmd::init::run(&data_dir, args, &mut out),
        Command::Key(command) => cmd::key::run(&data_dir, command, &mut out),
        Command::App(command) => cmd::app::run(&data_dir, command, &mut out),
        Command::Cap(command) => cmd::cap::run(&data_dir, command, &mut out),
        Command::Invite {
            ttl,
            role,
            name,
            addrs,
        } => cmd::node::invite(
            &data_dir,
            ttl,
            role.map(|r| r.as_str().to_owned()),
            name,
            addrs,
            &mut out,
        ),
        Command::Join(args) => cmd::join::run(&data_dir, args, &mut out),
        Command::Devices(args) => cmd::devices::run(&data_dir, args, &mut out),
        Command::Node(command) => cmd::node::run(&data_dir, command, &mut out),
        Command::Config(command) => cmd::config::run(&data_dir, source, command, &mut out),
        Command::Status => cmd::node::status(&data_dir, &mut out),
        Command::Doctor => cmd::doctor::run(&data_dir, &mut out),
        Command::Service(command) => cmd::service::run(&data_dir, command, &mut out),
        Command::Store(command) => cmd::store::run(&data_dir, command, &mut out),
        Command::Audit(args) => cmd::audit::run(&data_dir, args, &mut out),
        Command::Driver(command) => cmd::driver::run(&data_dir, command, &mut out),
        Command::Run(args) => cmd::compute::run(&data_dir, args, &mut out),
        Command::Receipt(ReceiptCommand::Verify { file }) => {
            cmd::compute::verify_receipt(&data_dir, &file, &mut out)
        }
        Command::Export(command) => cmd::export::run(&data_dir, command, &mut out),
        Command::Restore(args) => cmd::restore::run(&data_dir, args, &mut out),
        Command::Dashboard { open } => cmd::dashboard::run(&data_dir, open, &mut out),
        Command::Demo(args) => cmd::demo::run(args, &mut out),
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            // Into memory first: a closed pipe is then the quiet end every command has.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "hearth", &mut script);
            out.raw(&String::from_utf8_lossy(&script));
            Ok(())
        }
        Command::Man { out: dir } => man(&dir, &mut out),
    }
}

/// Writes a man page per command into `dir`.
fn man(dir: &std::path::Path, out: &mut Output) -> Result<(), CliError> {
    use clap::CommandFactory as _;
    std::fs::create_dir_all(dir).map_err(|err| {
        CliError::new(
            error::Exit::Error,
            format!("cannot create {}: {err}", dir.display()),
        )
    })?;
    clap_mangen::generate_to(Cli::command(), dir).map_err(|err| {
        CliError::new(
            error::Exit::Error,
            format!("cannot write the man pages into {}: {err}", dir.display()),
        )
    })?;
    let count = std::fs::read_dir(dir).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "1"))
            .count()
    });
    out.emit(
        || format!("Wrote {count} man pages into {}.", dir.display()),
        || serde_json::json!({ "dir": dir.display().to_string(), "pages": count }),
    );
    Ok(())
}

/// Colour only on a terminal, and never when `NO_COLOR` is set (<https://no-color.org>).
pub(crate) fn colour(stream_is_terminal: bool) -> bool {
    stream_is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Parses arguments; a usage error becomes one line on stderr and exit code 2.
fn parse_args() -> Cli {
    match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            use clap::error::ErrorKind;
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                err.exit();
            }
            let rendered = err.render().to_string();
            let message = rendered
                .lines()
                .map(str::trim)
                .filter(|line| {
                    !line.is_empty()
                        && !line.starts_with("Usage:")
                        && !line.starts_with("For more information")
                })
                .map(|line| line.strip_prefix("error: ").unwrap_or(line))
                .collect::<Vec<_>>()
                .join(" ");
            let error = CliError::new(error::Exit::Usage, message).hint("see `hearth --help`");
            output::error_line(&error);
            std::process::exit(error.exit as i32);
        }
    }
}

fn main() -> ExitCode {
    // Keys, certificates, stores and logs: nothing Hearth writes is for other users.
    hearth_node::keep_files_private();
    let cli = parse_args();
    init_tracing(cli.verbose, cli.quiet);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            output::error_line(&err);
            ExitCode::from(err.exit as u8)
        }
    }
}
