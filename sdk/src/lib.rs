//! The guest side of Hearth: what a computation's author links against to build a
//! WebAssembly component (`wasm32-wasip2`) that a Hearth node runs next to the data.
//!
//! A computation is one function from parameters to a result, both JSON. The node
//! passes the caller's parameters; the function reads the stores its capability grants
//! through [`stores`], may append to derived stores through [`output`], may hand
//! bodies to the node's export gateway through [`gateway`], writes lines to the
//! node's log through [`log`], and returns its result or a message saying why
//! it failed. The sandbox has no clock, no randomness, no filesystem and no network;
//! [`time`] turns the timestamps of readings into calendar days.
//!
//! ```no_run
//! use hearth_sdk::{Aggregate, Value, Window, json, stores};
//!
//! // The mean of `load1` over everything the capability lets this computation see.
//! fn mean_load(params: Value) -> Result<Value, String> {
//!     let store = params["store"].as_str().unwrap_or("os-monitor");
//!     let mean = stores::aggregate(store, Aggregate::Mean, Some("load1"), Window::all())?;
//!     Ok(json!({ "store": store, "mean": mean }))
//! }
//!
//! hearth_sdk::computation!(mean_load);
//! ```
//!
//! The function may take any type that implements `serde::Deserialize` and return any
//! type that implements `serde::Serialize`, so parameters can be a struct with
//! defaults and `#[serde(deny_unknown_fields)]`.
//!
//! Build with `cargo build --release --target wasm32-wasip2` as a `cdylib`; the
//! resulting `.wasm` is a component. Keep to ordered collections (`BTreeMap`, not
//! `HashMap`, whose hasher draws on `wasi:random`) and leave out `SystemTime`,
//! `Instant`, `std::fs` and `std::env`: the node refuses components that import more
//! than `hearth:compute/*` and the small `wasi:cli`/`wasi:io` baseline of `std`.

// Public only so that `computation!` can reach it from the author's crate.
#[doc(hidden)]
#[allow(unsafe_code)]
pub mod bindings;
mod run;
pub mod stores;
pub mod time;

pub use run::handle;
pub use serde_json::{self, Value, json};
pub use stores::{Aggregate, Reading, Readings, Window};

/// Appends to derived stores: the stores a continuous app writes.
pub mod output {
    use serde::Serialize;

    use crate::bindings::hearth::compute::output as host;

    /// Appends a reading at `ts` (milliseconds since the Unix epoch) with `value` to
    /// timeseries store `store`, which the capability must let this computation
    /// write. The host creates the store on first use.
    pub fn append<T: Serialize + ?Sized>(store: &str, ts: u64, value: &T) -> Result<(), String> {
        let text = serde_json::to_string(value)
            .map_err(|e| format!("could not turn the value for store {store:?} into JSON: {e}"))?;
        host::append(store, ts, &text)
    }
}

/// Data that leaves the mesh through the node's export gateway.
///
/// The computation never opens a connection: [`gateway::send_json`] hands a body to
/// the node, which sends it after the run succeeds, to a destination the capability's
/// `export:` grant names, when the owner's consent allows (perhaps after the owner
/// releases it).
pub mod gateway {
    use serde::Serialize;

    use crate::bindings::hearth::compute::gateway::{self as host, Format};

    /// Marks `value`, as JSON, for export to `destination`.
    pub fn send_json<T: Serialize + ?Sized>(destination: &str, value: &T) -> Result<(), String> {
        let text = serde_json::to_string(value)
            .map_err(|e| format!("could not turn the export for {destination} into JSON: {e}"))?;
        host::send(destination, Format::Json, &text)
    }

    /// Marks `json`, JSON text the computation made itself, for export to
    /// `destination`; the node checks that it is JSON.
    pub fn send_raw_json(destination: &str, json: &str) -> Result<(), String> {
        host::send(destination, Format::Json, json)
    }

    /// Marks `text` for export to `destination`, as plain text.
    pub fn send_text(destination: &str, text: &str) -> Result<(), String> {
        host::send(destination, Format::Text, text)
    }
}

/// Lines in the node's log, kept with the job's id.
pub mod log {
    use crate::bindings::hearth::compute::log::{self as host, Level};

    /// Logs a line for whoever debugs the computation.
    pub fn debug(message: impl AsRef<str>) {
        host::log(Level::Debug, message.as_ref());
    }

    /// Logs a line about normal progress.
    pub fn info(message: impl AsRef<str>) {
        host::log(Level::Info, message.as_ref());
    }

    /// Logs a line about something unexpected that the computation got past.
    pub fn warn(message: impl AsRef<str>) {
        host::log(Level::Warn, message.as_ref());
    }

    /// Logs a line about a failure.
    pub fn error(message: impl AsRef<str>) {
        host::log(Level::Error, message.as_ref());
    }
}

/// Defines a computation's entry point: `computation!(f)` exports `f` as the
/// component's `run`.
///
/// `f` is a function (or a path to one) of type `fn(P) -> Result<R, String>` where
/// `P: serde::de::DeserializeOwned` and `R: serde::Serialize`; `serde_json::Value`
/// works for both. On each call the generated `run`:
///
/// 1. installs, once, a panic hook that writes the panic message and location to the
///    node's log at error level (a panic then traps, and the node reports the trap);
/// 2. parses the parameters as JSON into `P` (empty parameters count as `{}`), and
///    returns a message saying what is wrong when they do not parse or do not fit;
/// 3. calls `f` and returns its error, or its result as JSON text.
///
/// Use it once per crate, at the crate root or in any module.
#[macro_export]
macro_rules! computation {
    ($run:path) => {
        const _: () = {
            struct HearthComputation;

            impl $crate::__private::Guest for HearthComputation {
                fn run(
                    params: ::std::string::String,
                ) -> ::core::result::Result<::std::string::String, ::std::string::String> {
                    $crate::__private::run(params, $run)
                }
            }

            $crate::__private::bindings::__export_computation!(
                HearthComputation with_types_in $crate::__private::bindings
            );
        };
    };
}

/// What [`computation!`] expands to refers to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::bindings::{self, Guest};
    pub use crate::run::run;
}
