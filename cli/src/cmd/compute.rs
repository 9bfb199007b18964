//! `hearth run`, `hearth app deploy|ls|stop` and `hearth receipt verify`: computations
//! sent to the data, continuous apps, and receipts checked offline.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hearth_protocol::capability::{Actions, Chain, Invocation, Resource};
use hearth_protocol::compute::{Job, JobKind, MAX_MODULE_BYTES, MAX_PARAMS_BYTES, SignedReceipt};
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

fn post(dir: &DataDir, job: &Job, wait: Option<Duration>) -> Result<Value> {
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
        &[("wait_ms", wait_ms.to_string())],
        &job.encode(),
        wait + Duration::from_secs(300),
    )
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
    let answer = post(dir, &job, args.wait)?;
    let result = answer["result"].clone();
    let receipt = answer["receipt"].clone();
    out.emit(
        || {
            let pretty = serde_json::to_string_pretty(&result).unwrap_or_default();
            let reads: Vec<String> = receipt["data_heads"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|v| {
                            format!(
                                "{} @ {}",
                                v["store"].as_str().unwrap_or(""),
                                v["digest"].as_str().unwrap_or("").get(..16).unwrap_or("")
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "{pretty}\n\nreceipt: job {} ran on {} (module {}, capability {}), read {}, \
                 result sha256 {}, fuel {}\nsave it with --json to check it later: \
                 `hearth receipt verify FILE`",
                receipt["job"].as_str().unwrap_or(""),
                receipt["ran_on"].as_str().unwrap_or(""),
                receipt["module_hash"]
                    .as_str()
                    .unwrap_or("")
                    .get(..16)
                    .unwrap_or(""),
                receipt["cap_id"]
                    .as_str()
                    .unwrap_or("")
                    .get(..12)
                    .unwrap_or(""),
                if reads.is_empty() {
                    "no store".to_owned()
                } else {
                    reads.join(", ")
                },
                receipt["result_hash"]
                    .as_str()
                    .unwrap_or("")
                    .get(..16)
                    .unwrap_or(""),
                receipt["fuel"],
            )
        },
        || {
            json!({
                "result": result,
                "result_text": answer["result_text"],
                "result_bytes": answer["result_text"].as_str().map_or(0, str::len),
                "receipt": receipt,
            })
        },
    );
    Ok(())
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
    let answer = post(dir, &job, args.wait)?;
    out.emit(
        || {
            format!(
                "app {} runs on {}, following store {store}",
                answer["app"].as_str().unwrap_or(""),
                answer["device"].as_str().unwrap_or("")
            )
        },
        || json!({ "app": answer["app"], "device": answer["device"], "store": store }),
    );
    Ok(())
}

/// `hearth app ls`.
pub(crate) fn list(dir: &DataDir, out: &mut Output) -> Result<()> {
    let answer = Client::connect(dir)?.get("/v1/apps", &[])?;
    let apps = answer["apps"].as_array().cloned().unwrap_or_default();
    out.emit(
        || {
            if apps.is_empty() {
                return "no apps".into();
            }
            let mut text = format!(
                "{:<20} {:<10} {:<20} {:>6}  state\n",
                "name", "device", "store", "runs"
            );
            for a in &apps {
                let mut state = a["state"].as_str().unwrap_or("").to_owned();
                if let Some(err) = a["last_error"].as_str() {
                    state.push_str(&format!(" (last error: {err})"));
                }
                text.push_str(&format!(
                    "{:<20} {:<10} {:<20} {:>6}  {state}\n",
                    a["name"].as_str().unwrap_or(""),
                    a["device"].as_str().unwrap_or(""),
                    a["store"].as_str().unwrap_or(""),
                    a["runs"].as_u64().map_or("-".to_owned(), |n| n.to_string()),
                ));
            }
            text
        },
        || json!({ "apps": apps }),
    );
    Ok(())
}

/// `hearth app stop`.
pub(crate) fn stop(dir: &DataDir, name: &str, out: &mut Output) -> Result<()> {
    let answer = Client::connect(dir)?.delete(&format!("/v1/apps/{}", segment(name)))?;
    out.emit(
        || {
            format!(
                "stopped app {name} (on {})",
                answer["device"].as_str().unwrap_or("")
            )
        },
        || json!({ "name": name, "device": answer["device"] }),
    );
    Ok(())
}

/// `hearth receipt verify FILE`: checks, offline, a receipt saved from
/// `hearth run --json` against this mesh's owner key.
pub(crate) fn verify_receipt(dir: &DataDir, file: &Path, out: &mut Output) -> Result<()> {
    use base64::Engine as _;
    let text = if file == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|err| CliError::new(Exit::Error, format!("cannot read stdin: {err}")))?;
        text
    } else {
        std::fs::read_to_string(file).map_err(|err| CliError::read(file, err, "receipt"))?
    };
    let bad = |why: String| {
        CliError::new(Exit::Error, format!("{}: {why}", file.display()))
            .hint("pass the JSON that `hearth run --json` printed")
    };
    let value: Value =
        serde_json::from_str(&text).map_err(|err| bad(format!("not JSON: {err}")))?;
    let receipt = if value["receipt"].is_object() {
        &value["receipt"]
    } else {
        &value
    };
    let encoded = receipt["encoded"]
        .as_str()
        .ok_or_else(|| bad("no receipt (`encoded`) in it".into()))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|err| bad(format!("the receipt is not base64: {err}")))?;
    let signed = SignedReceipt::decode(&bytes)
        .map_err(|err| bad(format!("the receipt does not decode: {err}")))?;
    let owner = dir.owner_public()?;
    let result = value["result_text"].as_str();
    signed.verify(&owner, result).map_err(|err| {
        CliError::new(Exit::Refused, format!("the receipt does not verify: {err}"))
    })?;
    // The readable fields must say what the signed receipt says.
    let r = &signed.receipt;
    let fields = [
        ("job", json!(r.job.to_string())),
        ("ran_on", json!(r.ran_on)),
        ("node", json!(r.node.peer_id())),
        ("module_hash", json!(hex::encode(r.module_hash.0))),
        ("cap_id", json!(r.cap_id.to_string())),
        (
            "data_heads",
            json!(
                r.data_heads
                    .iter()
                    .map(|v| json!({ "store": v.store, "digest": hex::encode(v.digest) }))
                    .collect::<Vec<_>>()
            ),
        ),
        ("result_hash", json!(hex::encode(r.result_hash))),
        ("fuel", json!(r.fuel)),
        ("finished", json!(r.finished.0)),
        ("signature", json!(hex::encode(signed.signature.to_bytes()))),
    ];
    // The parsed result printed next to the text must be that text.
    if let (Some(text), Some(parsed)) = (result, value.get("result"))
        && serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::String(text.to_owned()))
            != *parsed
    {
        return Err(CliError::new(
            Exit::Refused,
            "the file's `result` differs from its `result_text`, which the receipt covers",
        ));
    }
    for (name, expected) in &fields {
        if receipt.get(*name).is_some_and(|v| v != expected) {
            return Err(CliError::new(
                Exit::Refused,
                format!("the receipt's `{name}` field differs from what was signed"),
            ));
        }
    }
    out.emit(
        || {
            format!(
                "valid: job {} ran on {} (a device of this mesh), module {}, {}",
                r.job,
                r.ran_on,
                hex::encode(r.module_hash.0).get(..16).unwrap_or(""),
                if result.is_some() {
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
                "result_checked": result.is_some(),
            })
        },
    );
    Ok(())
}
