//! `sandbox-fs`: not an example to copy. It reads a file, so it imports the WASI
//! filesystem, and a node must refuse to load it.

use hearth_sdk::{Value, json};

fn read_file(params: Value) -> Result<Value, String> {
    let path = params
        .get("path")
        .and_then(Value::as_str)
        .unwrap_or("/etc/passwd");
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    Ok(json!({ "bytes": text.len() }))
}

hearth_sdk::computation!(read_file);
