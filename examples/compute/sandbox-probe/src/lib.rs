//! `sandbox-probe`: not an example to copy. It misbehaves on request so that the tests
//! can check that a node stops it: `{"do": "spin"}` loops forever (fuel, wall time),
//! `"grow"` allocates until memory runs out, `"read"` reads every reading of
//! `params.store` (grants checked by name), `"cursors"` opens 64 cursors on it and
//! takes one reading from each, keeping them all open, `"big"` returns `params.bytes`
//! bytes,
//! `"panic"` panics, `"fail"` returns an error, `"export"` hands `params.body` (text)
//! to the gateway for `params.destination`, `params.times` times (default 1), as
//! `params.format` (`"json"`, the default, or `"text"`) without checking it, and
//! returns the gateway's error if any. Deployed as a continuous app, it does what its
//! deploy parameters say on every run.

use hearth_sdk::{Value, Window, json, stores};

fn probe(params: Value) -> Result<Value, String> {
    // Deployed as a continuous app, it is called with its deploy parameters under
    // `params`.
    let params = match (params.get("do"), params.get("params")) {
        (None, Some(inner)) => inner.clone(),
        _ => params,
    };
    match params.get("do").and_then(Value::as_str).unwrap_or("") {
        "spin" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "grow" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1024 * 1024]);
                std::hint::black_box(&hoard);
            }
        }
        "read" => {
            let store = params.get("store").and_then(Value::as_str).unwrap_or("");
            let mut n = 0u64;
            for reading in stores::read(store, None, Window::all())? {
                reading?;
                n += 1;
            }
            Ok(json!({ "read": n }))
        }
        "cursors" => {
            let store = params.get("store").and_then(Value::as_str).unwrap_or("");
            let mut open = Vec::new();
            for _ in 0..64 {
                let mut readings = stores::read(store, None, Window::all())?;
                readings.next().transpose()?;
                open.push(readings);
            }
            Ok(json!({ "open": open.len() }))
        }
        "big" => {
            let bytes = params.get("bytes").and_then(Value::as_u64).unwrap_or(0);
            let len = usize::try_from(bytes).map_err(|e| e.to_string())?;
            Ok(Value::String("x".repeat(len)))
        }
        "export" => {
            let text = |key: &str| params.get(key).and_then(Value::as_str).unwrap_or("");
            let times = params.get("times").and_then(Value::as_u64).unwrap_or(1);
            for _ in 0..times {
                match text("format") {
                    "text" => hearth_sdk::gateway::send_text(text("destination"), text("body"))?,
                    _ => hearth_sdk::gateway::send_raw_json(text("destination"), text("body"))?,
                }
            }
            Ok(json!({ "exported": times }))
        }
        "panic" => panic_on_purpose(),
        "fail" => Err("the probe fails on purpose".into()),
        other => Err(format!("unknown probe {other:?}")),
    }
}

#[allow(clippy::panic)]
fn panic_on_purpose() -> ! {
    panic!("the probe panics on purpose")
}

hearth_sdk::computation!(probe);
