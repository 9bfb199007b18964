//! The body of the exported `run`: parameters in, result out, both JSON.

use std::sync::Once;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::error::Category;

/// What the exported `run` of [`crate::computation!`] does: installs the panic hook,
/// then [`handle`]s the call.
pub fn run<P, R, F>(params: String, f: F) -> Result<String, String>
where
    P: DeserializeOwned,
    R: Serialize,
    F: FnOnce(P) -> Result<R, String>,
{
    install_panic_hook();
    handle(&params, f)
}

/// Parses `params` (JSON text; empty counts as `{}`) into `P`, calls `f` and turns its
/// result into JSON text: what a computation's `run` does, minus the panic hook, so a
/// computation's pure parts can be tested on the host.
///
/// ```
/// use hearth_sdk::{Value, json};
///
/// fn double(params: Value) -> Result<Value, String> {
///     let x = params["x"].as_f64().ok_or("expected a number `x`")?;
///     Ok(json!({ "doubled": 2.0 * x }))
/// }
///
/// assert_eq!(hearth_sdk::handle(r#"{"x": 1.5}"#, double), Ok(r#"{"doubled":3.0}"#.to_owned()));
/// assert!(hearth_sdk::handle("{x: 1}", double).unwrap_err().starts_with("the parameters are not JSON"));
/// ```
pub fn handle<P, R, F>(params: &str, f: F) -> Result<String, String>
where
    P: DeserializeOwned,
    R: Serialize,
    F: FnOnce(P) -> Result<R, String>,
{
    let text = if params.trim().is_empty() {
        "{}"
    } else {
        params
    };
    let params: P = serde_json::from_str(text).map_err(|e| match e.classify() {
        Category::Data => format!("the parameters do not fit this computation: {e}"),
        Category::Syntax | Category::Eof | Category::Io => {
            format!("the parameters are not JSON: {e}")
        }
    })?;
    let result = f(params)?;
    serde_json::to_string(&result).map_err(|e| format!("could not turn the result into JSON: {e}"))
}

/// Sends panic messages to the node's log before the trap, once per instance.
fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            crate::log::error(format!("the computation {info}"));
        }));
    });
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::{Value, json};

    use super::handle;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Params {
        #[serde(default)]
        n: u32,
    }

    fn echo(params: Value) -> Result<Value, String> {
        Ok(json!({ "got": params }))
    }

    #[test]
    fn empty_parameters_are_an_empty_object() {
        assert_eq!(handle("", echo), Ok(r#"{"got":{}}"#.to_owned()));
        assert_eq!(handle("  \n", echo), Ok(r#"{"got":{}}"#.to_owned()));
        assert_eq!(
            handle("", |p: Params| Ok::<_, String>(p.n)),
            Ok("0".to_owned())
        );
    }

    #[test]
    fn bad_parameters_say_what_is_wrong() {
        let syntax = handle("{", echo).unwrap_err();
        assert!(
            syntax.starts_with("the parameters are not JSON"),
            "{syntax}"
        );
        let data = handle(r#"{"m": 1}"#, |p: Params| Ok::<_, String>(p.n)).unwrap_err();
        assert!(
            data.starts_with("the parameters do not fit this computation: unknown field `m`"),
            "{data}"
        );
    }

    #[test]
    fn the_computation_error_is_passed_on() {
        assert_eq!(
            handle("{}", |_: Value| Err::<Value, _>("no data".to_owned())),
            Err("no data".to_owned())
        );
    }
}
