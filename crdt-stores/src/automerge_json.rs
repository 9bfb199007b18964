//! JSON values in and out of automerge documents (for `doc` stores, whose values are
//! nested objects that merge field by field).

use automerge::{
    AutoCommit, ObjId, ObjType, Prop, ReadDoc as _, ScalarValue, Value as AmValue,
    transaction::Transactable as _,
};
use serde_json::{Map, Number, Value};

fn scalar(value: &Value) -> Option<ScalarValue> {
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

/// Writes `value` at `obj[key]` (a map), as nested automerge objects.
pub(crate) fn put(
    doc: &mut AutoCommit,
    obj: &ObjId,
    key: &str,
    value: &Value,
) -> Result<(), automerge::AutomergeError> {
    match value {
        Value::Object(map) => {
            let child = doc.put_object(obj, key, ObjType::Map)?;
            fill_map(doc, &child, map)
        }
        Value::Array(items) => {
            let child = doc.put_object(obj, key, ObjType::List)?;
            fill_list(doc, &child, items)
        }
        other => doc.put(obj, key, scalar(other).unwrap_or(ScalarValue::Null)),
    }
}

fn fill_map(
    doc: &mut AutoCommit,
    obj: &ObjId,
    map: &Map<String, Value>,
) -> Result<(), automerge::AutomergeError> {
    for (key, value) in map {
        put(doc, obj, key, value)?;
    }
    Ok(())
}

fn fill_list(
    doc: &mut AutoCommit,
    obj: &ObjId,
    items: &[Value],
) -> Result<(), automerge::AutomergeError> {
    for (index, value) in items.iter().enumerate() {
        match value {
            Value::Object(map) => {
                let child = doc.insert_object(obj, index, ObjType::Map)?;
                fill_map(doc, &child, map)?;
            }
            Value::Array(inner) => {
                let child = doc.insert_object(obj, index, ObjType::List)?;
                fill_list(doc, &child, inner)?;
            }
            other => doc.insert(obj, index, scalar(other).unwrap_or(ScalarValue::Null))?,
        }
    }
    Ok(())
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
        AmValue::Object(ObjType::Map | ObjType::Table) => {
            let mut map = Map::new();
            for key in doc.keys(&id) {
                if let Ok(Some((v, child))) = doc.get(&id, Prop::Map(key.clone())) {
                    map.insert(key, value_json(doc, v, child));
                }
            }
            Value::Object(map)
        }
        AmValue::Object(ObjType::List) => {
            let len = doc.length(&id);
            let mut items = Vec::with_capacity(len);
            for index in 0..len {
                if let Ok(Some((v, child))) = doc.get(&id, index) {
                    items.push(value_json(doc, v, child));
                }
            }
            Value::Array(items)
        }
        AmValue::Object(ObjType::Text) => Value::String(doc.text(&id).unwrap_or_default()),
    }
}

/// Reads `obj[key]` back as JSON.
pub(crate) fn get(doc: &AutoCommit, obj: &ObjId, key: &str) -> Option<Value> {
    let (value, id) = doc.get(obj, key).ok()??;
    Some(value_json(doc, value, id))
}
