//! `hearth run`, `hearth app deploy|ls|stop` and `hearth receipt verify`: computations
//! sent to the data, continuous apps, and receipts checked offline.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hearth_node::api::types as api;
use hearth_protocol::capability::{Actions, Chain, Invocation, Resource};
use hearth_protocol::compute::{Job, JobKind, MAX_MODULE_BYTES, MAX_PARAMS_BYTES};
use hearth_protocol::key::HolderKey;
use serde_json::{Value, json};

use super::{now, parse_duration, random_bytes};
use crate::client::{Client, segment};
use crate::cmd::cap::read_chain;
use crate::data_dir::DataDir;
use crate::error::{CliError, Exit, Result};
use crate::output::Output;

/// What `hearth run` takes.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// The computation: a WebAssembly component (`.wasm`).
    module: PathBuf,
    /// The capability that lets the key's holder run it.
    #[arg(long, value_name = "CAPFILE")]
    cap: PathBuf,
    /// The holder key the capability names.
    #[arg(long, value_name = "KEYFILE")]
    key: PathBuf,
    /// Parameters for the computation (JSON).
    #[arg(long, default_value = "{}")]
    params: String,
    /// Wait this long for a device holding the data to come online.
    #[arg(long, value_parser = parse_duration)]
    wait: Option<Duration>,
}

/// What `hearth app deploy` takes.
#[derive(Debug, clap::Args)]
pub(crate) struct DeployArgs {
    /// The app: a WebAssembly component (`.wasm`).
    module: PathBuf,
    /// The capability that lets the key's holder run it.
    #[arg(long, value_name = "CAPFILE")]
    cap: PathBuf,
    /// The holder key the capability names.
    #[arg(long, value_name = "KEYFILE")]
    key: PathBuf,
    /// The app's name (default: the module's file name).
    #[arg(long)]
    name: Option<String>,
    /// The store whose new readings it follows (default: the one store the
    /// capability lets it subscribe to).
    #[arg(long)]
    store: Option<String>,
    /// Parameters handed to every run (JSON).
    #[arg(long, default_value = "{}")]
    params: String,
    /// Wait this long for a device holding the store to come online.
    #[arg(long, value_parser = parse_duration)]
    wait: Option<Duration>,
}

/// Builds and signs a job.
fn job(module_path: &Path, cap: &Path, key: &Path, params: &str, kind: JobKind) -> Result<Job> {
    let module =
        std::fs::read(module_path).map_err(|err| CliError::read(module_path, err, "module"))?;
    if module.len() > MAX_MODULE_BYTES {
        return Err(CliError::new(
            Exit::Error,
            format!(
                "{} is {} bytes; a module may have at most {MAX_MODULE_BYTES}",
                module_path.display(),
                module.len()
            ),
        ));
    }
    if params.len() > MAX_PARAMS_BYTES {
        return Err(CliError::new(
            Exit::Usage,
            format!(
                "--params is {} bytes; the limit is {MAX_PARAMS_BYTES}",
                params.len()
            ),
        ));
    }
    serde_json::from_str::<Value>(params).map_err(|err| {
        CliError::new(Exit::Usage, format!("--params is not JSON: {err}"))
            .hint("pass a JSON object such as --params '{\"days\": 7}'")
    })?;
    let chain = read_chain(cap)?;
    let holder = HolderKey::read(key).map_err(|err| {
        CliError::key_file(
            err,
            key,
            "pass the holder key file (made by `hearth key new`) that the capability names",
        )
    })?;
    let audience = chain.leaf().capability().audience;
    if holder.public() != audience {
        return Err(CliError::new(
            Exit::Refused,
            format!(
                "{} does not hold this capability: it is held by {}",
                key.display(),
                audience.short()
            ),
        )
        .hint("pass the key whose public key the capability was approved for"));
    }
    let request = Job::signed_request(
        &hearth_protocol::capability::ModuleHash::of(&module),
        params,
        &kind,
    );
    let invocation = Invocation {
        cap_id: chain.leaf().id(),
        request_digest: Invocation::digest_request(&request),
        timestamp: now(),
        nonce: random_bytes()?,
    }
    .sign(holder.secret());
    Ok(Job {
        module,
        chain,
        params: params.to_owned(),
        kind,
        invocation,
    })
}

fn post(dir: &DataDir, job: &Job, wait: Option<Duration>) -> Result<api::JobAnswer> {
    let wait = wait.unwrap_or_default();
    if wait > hearth_node::compute::MAX_WAIT {
        return Err(CliError::new(
            Exit::Usage,
            format!(
                "--wait is at most {}",
                humantime::format_duration(hearth_node::compute::MAX_WAIT)
            ),
        ));
    }
    let client = Client::connect(dir)?;
    let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
    client.post_bytes(
        "/v1/jobs",
        &api::JobQuery { wait_ms },
        &job.encode(),
        wait + Duration::from_secs(300),
    )
}

/// What `hearth run --json` prints: the node's answer, and the result's size.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct RunOutput {
    /// The result parsed as JSON (the text itself when it is not JSON).
    pub(crate) result: Value,
    /// The exact text the receipt hashes.
    pub(crate) result_text: String,
    /// Its length in bytes.
    pub(crate) result_bytes: u64,
    /// The signed receipt.
    pub(crate) receipt: api::Receipt,
}

/// `hearth run`.
pub(crate) fn run(dir: &DataDir, args: RunArgs, out: &mut Output) -> Result<()> {
    let job = job(
        &args.module,
        &args.cap,
        &args.key,
        &args.params,
        JobKind::Run,
    )?;
    let api::JobAnswer::Done(answer) = post(dir, &job, args.wait)? else {
        return Err(unexpected("a result"));
    };
    let run = RunOutput {
        result_bytes: answer.result_text.len() as u64,
        result: answer.result,
        result_text: answer.result_text,
        receipt: answer.receipt,
    };
    let receipt = &run.receipt;
    out.emit_typed(
        || {
            let pretty = serde_json::to_string_pretty(&run.result).unwrap_or_default();
            let reads: Vec<String> = receipt
                .data_heads
                .iter()
                .map(|v| format!("{} @ {}", v.store, short(&v.digest, 16)))
                .collect();
            format!(
                "{pretty}\n\nreceipt: job {} ran on {} (module {}, capability {}), read {}, \
                 result sha256 {}, fuel {}\nsave it with --json to check it later: \
                 `hearth receipt verify FILE`",
                receipt.job,
                receipt.ran_on,
                short(&receipt.module_hash, 16),
                short(&receipt.cap_id, 12),
                if reads.is_empty() {
                    "no store".to_owned()
                } else {
                    reads.join(", ")
                },
                short(&receipt.result_hash, 16),
                receipt.fuel,
            )
        },
        &run,
    );
    Ok(())
}

/// The first `n` characters of a hex string or id.
fn short(text: &str, n: usize) -> &str {
    text.get(..n).unwrap_or(text)
}

/// The node answered a job with the other kind of answer (a deploy for a run, or the
/// reverse).
fn unexpected(what: &str) -> CliError {
    CliError::new(
        Exit::Error,
        format!("the node's answer to the job is not {what}"),
    )
}

/// The store an app follows when `--store` is not given: the one store the capability
/// lets it subscribe to.
fn default_store(chain: &Chain) -> Result<String> {
    let grants = &chain.leaf().capability().grants;
    let stores: Vec<&str> = grants
        .iter()
        .filter(|g| g.actions.contains(Actions::SUBSCRIBE))
        .filter_map(|g| match &g.resource {
            Resource::Store(name) if !name.contains('*') => Some(name.as_str()),
            _ => None,
        })
        .collect();
    match stores.as_slice() {
        [one] => return Ok((*one).to_owned()),
        [] => {}
        many => {
            return Err(CliError::new(
                Exit::Usage,
                format!(
                    "the capability lets the app follow several stores ({}); say which one",
                    many.join(", ")
                ),
            )
            .hint("pass --store NAME"));
        }
    }
    Err(CliError::new(
        Exit::Refused,
        "the capability lets the app subscribe to no store by name (its manifest needs \
         access = [\"read\", \"subscribe\"] on the store it follows)"
            .to_owned(),
    ))
}

/// `hearth app deploy`.
pub(crate) fn deploy(dir: &DataDir, args: DeployArgs, out: &mut Output) -> Result<()> {
    let chain = read_chain(&args.cap)?;
    let store = match args.store {
        Some(store) => store,
        None => default_store(&chain)?,
    };
    let name = match args.name {
        Some(name) => name,
        None => args
            .module
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("app")
            .replace('_', "-"),
    };
    let kind = JobKind::Deploy {
        app: name,
        store: store.clone(),
    };
    let job = job(&args.module, &args.cap, &args.key, &args.params, kind)?;
    let api::JobAnswer::Deployed(answer) = post(dir, &job, args.wait)? else {
        return Err(unexpected("a deployed app"));
    };
    out.emit(
        || {
            format!(
                "app {} runs on {}, following store {store}",
                answer.app, answer.device
            )
        },
        || json!({ "app": answer.app, "device": answer.device, "store": store }),
    );
    Ok(())
}

/// `hearth app ls`.
pub(crate) fn list(dir: &DataDir, out: &mut Output) -> Result<()> {
    let answer: api::Apps = Client::connect(dir)?.get("/v1/apps", &())?;
    let apps = &answer.apps;
    out.emit_typed(
        || {
            if apps.is_empty() {
                return "no apps".into();
            }
            let rows = apps
                .iter()
                .map(|a| {
                    let mut state = a.state.clone();
                    if let Some(err) = &a.last_error {
                        state.push_str(&format!(" (last error: {err})"));
                    }
                    vec![
                        a.name.clone(),
                        a.device.clone().unwrap_or_else(|| "-".into()),
                        a.store.clone().unwrap_or_else(|| "-".into()),
                        a.runs.map_or("-".to_owned(), |n| n.to_string()),
                        state,
                    ]
                })
                .collect();
            crate::output::table(&["NAME", "DEVICE", "STORE", "RUNS", "STATE"], rows, &[3])
        },
        &answer,
    );
    Ok(())
}

/// `hearth app stop`.
pub(crate) fn stop(dir: &DataDir, name: &str, out: &mut Output) -> Result<()> {
    let answer: api::AppStopped =
        Client::connect(dir)?.delete(&format!("/v1/apps/{}", segment(name)))?;
    out.emit_typed(
        || format!("stopped app {name} (on {})", answer.device),
        &answer,
    );
    Ok(())
}

/// `hearth receipt verify FILE`: checks, offline, a receipt saved from
/// `hearth run --json` against this mesh's owner key.
pub(crate) fn verify_receipt(dir: &DataDir, file: &Path, out: &mut Output) -> Result<()> {
    let text = if file == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|err| CliError::new(Exit::Error, format!("cannot read stdin: {err}")))?;
        text
    } else {
        std::fs::read_to_string(file).map_err(|err| CliError::read(file, err, "receipt"))?
    };
    let owner = dir.owner_public()?;
    let checked = hearth_node::compute::receipt::check(&text, &owner).map_err(|problem| {
        use hearth_node::compute::receipt::ReceiptProblem;
        match problem {
            ReceiptProblem::Unreadable(why) => {
                CliError::new(Exit::Error, format!("{}: {why}", file.display()))
                    .hint("pass the JSON that `hearth run --json` printed")
            }
            ReceiptProblem::Invalid(why) => CliError::new(Exit::Refused, why),
        }
    })?;
    let r = &checked.signed.receipt;
    let result_checked = checked.result_checked;
    out.emit(
        || {
            format!(
                "valid: job {} ran on {} (a device of this mesh), module {}, {}",
                r.job,
                r.ran_on,
                hex::encode(r.module_hash.0).get(..16).unwrap_or(""),
                if result_checked {
                    "and the result matches"
                } else {
                    "no result given to compare"
                }
            )
        },
        || {
            json!({
                "valid": true,
                "job": r.job.to_string(),
                "ran_on": r.ran_on,
                "result_checked": result_checked,
            })
        },
    );
    Ok(())
}
