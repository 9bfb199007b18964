//! Checking a saved job answer (`hearth run --json`'s output) offline, against the
//! mesh's owner key: what `hearth receipt verify` and the dashboard's computations
//! page both do.

use base64::Engine as _;
use hearth_protocol::compute::SignedReceipt;
use hearth_protocol::key::PublicKey;
use serde_json::Value;

use crate::api::types::Receipt;

/// Why a saved answer was not found valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptProblem {
    /// The text is not a saved answer at all (not JSON, no receipt, bad encoding).
    #[error("{0}")]
    Unreadable(String),
    /// It is one, and it does not verify.
    #[error("{0}")]
    Invalid(String),
}

/// A saved answer that verified.
#[derive(Debug, Clone)]
pub struct CheckedReceipt {
    /// The signed receipt.
    pub signed: SignedReceipt,
    /// Whether a result was given and matched the receipt's hash.
    pub result_checked: bool,
}

/// Checks `text` — the JSON `hearth run --json` printed, or a receipt object alone —
/// against `owner`: the signature, the executing device's certificate, the result's
/// hash when the result is given, and that every readable field says what was signed.
pub fn check(text: &str, owner: &PublicKey) -> Result<CheckedReceipt, ReceiptProblem> {
    let bad = |why: String| ReceiptProblem::Unreadable(why);
    let value: Value = serde_json::from_str(text).map_err(|err| bad(format!("not JSON: {err}")))?;
    let receipt = value
        .get("receipt")
        .filter(|r| r.is_object())
        .unwrap_or(&value);
    let encoded = receipt
        .get("encoded")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no receipt (`encoded`) in it".into()))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|err| bad(format!("the receipt is not base64: {err}")))?;
    let signed = SignedReceipt::decode(&bytes)
        .map_err(|err| bad(format!("the receipt does not decode: {err}")))?;
    let result = value.get("result_text").and_then(Value::as_str);
    signed
        .verify(owner, result)
        .map_err(|err| ReceiptProblem::Invalid(format!("the receipt does not verify: {err}")))?;
    // The parsed result printed next to the text must be that text.
    if let (Some(text), Some(parsed)) = (result, value.get("result"))
        && serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::String(text.to_owned()))
            != *parsed
    {
        return Err(ReceiptProblem::Invalid(
            "the file's `result` differs from its `result_text`, which the receipt covers".into(),
        ));
    }
    // The readable fields must say what the signed receipt says.
    let signed_fields = serde_json::to_value(Receipt::of(&signed)).unwrap_or_default();
    for (name, expected) in signed_fields.as_object().into_iter().flatten() {
        if receipt.get(name).is_some_and(|v| v != expected) {
            return Err(ReceiptProblem::Invalid(format!(
                "the receipt's `{name}` field differs from what was signed"
            )));
        }
    }
    Ok(CheckedReceipt {
        signed,
        result_checked: result.is_some(),
    })
}
