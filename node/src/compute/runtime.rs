//! The WebAssembly runtime: one wasmtime engine per node with fuel, epoch interruption
//! and a pooling allocator; components compiled once and cached on disk by content
//! hash; one fresh instance per run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

use super::host::{Computation, ComputationPre, HostState};

/// How often the epoch advances: the granularity of the wall-time limit.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Largest linear memory any computation may have.
pub const MAX_MEMORY_BYTES: usize = 256 * 1024 * 1024;
/// Compiled components kept in memory.
const LOADED_CAPACITY: usize = 32;

/// Limits of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Fuel (roughly, WebAssembly instructions).
    pub fuel: u64,
    /// Linear memory, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock time.
    pub wall_time: Duration,
    /// Result size, in bytes.
    pub result_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 10_000_000_000,
            memory_bytes: 64 * 1024 * 1024,
            wall_time: Duration::from_secs(30),
            result_bytes: 1024 * 1024,
        }
    }
}

/// Why a run did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The module is not a component this node runs.
    #[error("{0}")]
    Module(String),
    /// A host call the capability does not allow.
    #[error("{0}")]
    Refused(String),
    /// It trapped, ran out of a limit, or returned an error.
    #[error("{0}")]
    Failed(String),
}

/// What a finished run gives back.
#[derive(Debug)]
pub struct Outcome {
    /// The result text, or the computation's own error message.
    pub result: Result<String, String>,
    /// Fuel used.
    pub fuel: u64,
    /// The host state: what was read and written.
    pub(crate) state: HostState,
}

/// A linked component and when it was last used.
type Loaded = (u64, ComputationPre<HostState>);

/// The runtime.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: PathBuf,
    loaded: Mutex<BTreeMap<[u8; 32], Loaded>>,
    uses: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("cache_dir", &self.cache_dir)
            .finish_non_exhaustive()
    }
}

/// Interfaces a component may import: its own world, and the `wasi:cli`/`wasi:io`
/// baseline that Rust's `std` links (trapping stubs here: a computation has no
/// environment, no stdio and no exit). Filesystem, sockets, clocks and randomness are
/// refused at load.
fn import_allowed(name: &str) -> bool {
    let name = name.split('@').next().unwrap_or(name);
    name.starts_with("hearth:compute/")
        || name.starts_with("wasi:io/")
        || matches!(
            name,
            "wasi:cli/environment"
                | "wasi:cli/exit"
                | "wasi:cli/stdin"
                | "wasi:cli/stdout"
                | "wasi:cli/stderr"
                | "wasi:cli/terminal-input"
                | "wasi:cli/terminal-output"
                | "wasi:cli/terminal-stdin"
                | "wasi:cli/terminal-stdout"
                | "wasi:cli/terminal-stderr"
        )
}

impl Runtime {
    /// A runtime whose compiled components are cached in `cache_dir`.
    pub fn new(cache_dir: &Path) -> Result<Arc<Self>, String> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(32)
            .total_core_instances(128)
            .total_memories(32)
            .total_tables(128)
            .max_memory_size(MAX_MEMORY_BYTES)
            .max_memories_per_component(4)
            .max_tables_per_component(16);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .memory_reservation(MAX_MEMORY_BYTES as u64)
            .memory_guard_size(64 * 1024)
            .memory_reservation_for_growth(0)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|err| format!("wasmtime: {err:#}"))?;
        let mut linker: Linker<HostState> = Linker::new(&engine);
        Computation::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |state| state,
        )
        .map_err(|err| format!("wasmtime: {err:#}"))?;
        std::fs::create_dir_all(cache_dir)
            .map_err(|err| format!("cannot create {}: {err}", cache_dir.display()))?;
        // The epoch ticker ends when the engine is dropped.
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|err| format!("cannot start the epoch ticker: {err}"))?;
        Ok(Arc::new(Self {
            engine,
            linker,
            cache_dir: cache_dir.to_owned(),
            loaded: Mutex::new(BTreeMap::new()),
            uses: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// Where the module with this hash is kept, so that apps survive restarts.
    pub fn module_path(&self, hash: &[u8; 32]) -> PathBuf {
        self.cache_dir.join(format!("{}.wasm", hex::encode(hash)))
    }

    /// Keeps the module's bytes on disk (for apps).
    pub fn keep_module(&self, module: &[u8]) -> Result<(), String> {
        let hash: [u8; 32] = Sha256::digest(module).into();
        let path = self.module_path(&hash);
        if path.exists() {
            return Ok(());
        }
        write_atomically(&path, module)
    }

    /// The compiled, linked form of `module`, from memory, the disk cache, or a fresh
    /// compilation (which is then cached).
    fn load(&self, module: &[u8]) -> Result<ComputationPre<HostState>, RunError> {
        let hash: [u8; 32] = Sha256::digest(module).into();
        let use_no = self.uses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        {
            let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((last, pre)) = loaded.get_mut(&hash) {
                *last = use_no;
                return Ok(pre.clone());
            }
        }
        let component = match self.cached(&hash) {
            Some(component) => component,
            None => {
                let component = Component::new(&self.engine, module).map_err(|err| {
                    RunError::Module(format!(
                        "the module is not a valid WebAssembly component: {err:#}"
                    ))
                })?;
                self.check_imports(&component)?;
                if let Ok(artifact) = component.serialize() {
                    let mut file = Vec::with_capacity(artifact.len() + 32);
                    file.extend_from_slice(&Sha256::digest(&artifact));
                    file.extend_from_slice(&artifact);
                    if let Err(err) = write_atomically(&self.compiled_path(&hash), &file) {
                        tracing::warn!(error = %err, "could not cache a compiled module");
                    }
                }
                component
            }
        };
        self.check_imports(&component)?;
        let mut linker = self.linker.clone();
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|err| RunError::Module(format!("cannot link the module: {err:#}")))?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|err| RunError::Module(format!("cannot link the module: {err:#}")))?;
        let pre = ComputationPre::new(pre).map_err(|err| {
            RunError::Module(format!(
                "the module does not export the `hearth:compute` world's `run`: {err:#}"
            ))
        })?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if loaded.len() >= LOADED_CAPACITY
            && let Some(oldest) = loaded
                .iter()
                .min_by_key(|(_, (last, _))| *last)
                .map(|(h, _)| *h)
        {
            loaded.remove(&oldest);
        }
        loaded.insert(hash, (use_no, pre.clone()));
        Ok(pre)
    }

    fn compiled_path(&self, hash: &[u8; 32]) -> PathBuf {
        // The engine's compatibility hash is part of the name: a new wasmtime or other
        // settings compile afresh instead of tripping over an old artifact.
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        self.cache_dir.join(format!(
            "{}-{:016x}.cwasm",
            hex::encode(hash),
            hasher.finish()
        ))
    }

    /// The cached compilation of the module with `hash`, if one is on disk, intact.
    fn cached(&self, hash: &[u8; 32]) -> Option<Component> {
        let path = self.compiled_path(hash);
        let file = std::fs::read(&path).ok()?;
        let (sum, artifact) = file.split_at_checked(32)?;
        if Sha256::digest(artifact).as_slice() != sum {
            tracing::warn!(path = %path.display(), "a cached compiled module is damaged; compiling again");
            let _ = std::fs::remove_file(&path);
            return None;
        }
        // SAFETY: `deserialize` trusts its input to be an artifact that this engine's
        // `serialize` produced. This one is: the node wrote it to its own data
        // directory (0700) under a name that carries the module's hash and the
        // engine's compatibility hash, after compiling and checking the module, and
        // the SHA-256 in front of it matches, so it is byte for byte what was written.
        // Nothing from the network or from a job is ever passed here.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(&self.engine, artifact) };
        match component {
            Ok(component) => Some(component),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "a cached compiled module does not load; compiling again");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    fn check_imports(&self, component: &Component) -> Result<(), RunError> {
        let ty = component.component_type();
        let refused: Vec<String> = ty
            .imports(&self.engine)
            .filter(|(name, _)| !import_allowed(name))
            .map(|(name, _)| name.to_owned())
            .collect();
        if refused.is_empty() {
            Ok(())
        } else {
            Err(RunError::Module(format!(
                "the module imports what a computation may not have: {} (only \
                 hearth:compute/* and the wasi:cli/wasi:io baseline of std are allowed)",
                refused.join(", ")
            )))
        }
    }

    /// Compiles (or finds) `module` and checks its imports without running it.
    pub fn prepare(&self, module: &[u8]) -> Result<(), RunError> {
        self.load(module).map(|_| ())
    }

    /// Runs `module`'s `run(params)` with `state` under `limits`. Blocking: call it
    /// from a blocking thread.
    pub(crate) fn run(
        &self,
        module: &[u8],
        state: HostState,
        params: &str,
        limits: Limits,
    ) -> Result<Outcome, RunError> {
        let pre = self.load(module)?;
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store
            .set_fuel(limits.fuel)
            .map_err(|err| RunError::Failed(format!("{err:#}")))?;
        let ticks = u64::try_from(limits.wall_time.as_millis() / EPOCH_TICK.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        let called = pre
            .instantiate(&mut store)
            .and_then(|instance| instance.call_run(&mut store, params));
        let fuel = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        let state = store.into_data();
        match called {
            Ok(result) => {
                if let Ok(text) = &result
                    && text.len() > limits.result_bytes
                {
                    return Err(RunError::Failed(format!(
                        "the result is {} bytes; the limit is {}",
                        text.len(),
                        limits.result_bytes
                    )));
                }
                Ok(Outcome {
                    result,
                    fuel,
                    state,
                })
            }
            Err(err) => {
                if let Some(reason) = &state.refused {
                    return Err(RunError::Refused(reason.clone()));
                }
                if let Some(memory) = err.downcast_ref::<super::host::HostMemory>() {
                    return Err(RunError::Failed(memory.to_string()));
                }
                let message = match err.downcast_ref::<Trap>() {
                    Some(Trap::OutOfFuel) => {
                        format!("ran out of fuel (the limit is {})", limits.fuel)
                    }
                    Some(Trap::Interrupt) => format!(
                        "ran longer than the wall-time limit of {}",
                        humantime::format_duration(limits.wall_time)
                    ),
                    Some(Trap::MemoryOutOfBounds) => "trapped: out-of-bounds memory access".into(),
                    Some(trap) => format!("trapped: {trap}"),
                    None => {
                        // The causes, without the backtrace: its frames depend on the data.
                        let text = err
                            .chain()
                            .map(ToString::to_string)
                            .filter(|m| !m.contains("wasm backtrace"))
                            .collect::<Vec<_>>()
                            .join(": ");
                        if text.contains("memory") && text.contains("grow") {
                            format!(
                                "needed more memory than the limit of {} MiB",
                                limits.memory_bytes / (1024 * 1024)
                            )
                        } else {
                            format!("trapped: {text}")
                        }
                    }
                };
                Err(RunError::Failed(message))
            }
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    hearth_protocol::statefile::write_durable(path, bytes)
        .map_err(|err| format!("cannot write {}: {err}", path.display()))
}
