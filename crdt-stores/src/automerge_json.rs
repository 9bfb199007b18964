//! JSON values out of automerge documents (for `doc` stores, whose values are nested
//! objects that merge field by field; `reconcile` writes them).

use automerge::{AutoCommit, ObjId, ObjType, ReadDoc as _, ScalarValue, Value as AmValue};
use serde_json::{Number, Value};

/// The automerge scalar of a JSON scalar (`None` for an array or object).
pub(crate) fn scalar(value: &Value) -> Option<ScalarValue> {
    Some(match value {
        Value::Null => ScalarValue::Null,
        Value::Bool(b) => ScalarValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => ScalarValue::Int(i),
            (None, Some(u), _) => ScalarValue::Uint(u),
            (None, None, Some(f)) => ScalarValue::F64(f),
            _ => ScalarValue::Null,
        },
        Value::String(s) => ScalarValue::Str(s.as_str().into()),
        Value::Array(_) | Value::Object(_) => return None,
    })
}

fn scalar_json(value: &ScalarValue) -> Value {
    match value {
        ScalarValue::Null => Value::Null,
        ScalarValue::Boolean(b) => Value::Bool(*b),
        ScalarValue::Int(i) | ScalarValue::Timestamp(i) => Value::Number((*i).into()),
        ScalarValue::Uint(u) => Value::Number((*u).into()),
        ScalarValue::F64(f) => Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        ScalarValue::Counter(c) => Value::Number(i64::from(c).into()),
        ScalarValue::Str(s) => Value::String(s.to_string()),
        ScalarValue::Bytes(_) | ScalarValue::Unknown { .. } => Value::Null,
    }
}

fn value_json(doc: &AutoCommit, value: AmValue<'_>, id: ObjId) -> Value {
    match value {
        AmValue::Scalar(s) => scalar_json(&s),
        // One pass over each object (a lookup per field would cost a search each).
        AmValue::Object(ObjType::Map | ObjType::Table) => Value::Object(
            doc.map_range(&id, ..)
                .map(|item| (item.key.to_owned(), value_json(doc, item.value, item.id)))
                .collect(),
        ),
        AmValue::Object(ObjType::List) => Value::Array(
            doc.list_range(&id, ..)
                .map(|item| value_json(doc, item.value, item.id))
                .collect(),
        ),
        AmValue::Object(ObjType::Text) => Value::String(doc.text(&id).unwrap_or_default()),
    }
}

/// Reads `obj[key]` back as JSON.
pub(crate) fn get(doc: &AutoCommit, obj: &ObjId, key: &str) -> Option<Value> {
    let (value, id) = doc.get(obj, key).ok()??;
    Some(value_json(doc, value, id))
}
