//! Writing a JSON value into an automerge document with the fewest changes: only the
//! fields whose values differ are written, so that edits other replicas made meanwhile
//! to other fields survive the merge. (automerge's own `update_object` writes every
//! scalar again, equal or not, which would make a whole-document write conflict with
//! every concurrent edit.)
//!
//! - An object replaces an object field by field: fields that differ are reconciled,
//!   fields the new value lacks are deleted, equal scalars are left alone.
//! - An array reconciles element by element by index; surplus elements are deleted
//!   from the end.
//! - A string written where the document holds text (a field the store declares as
//!   text) is spliced in as the difference between the two, so concurrent edits to
//!   different parts of the text both survive.
//! - Anything else, or a change of type, is written anew.
//!
//! [`merge_patch`] applies an RFC 7386 JSON Merge Patch the same way: `null` deletes a
//! field, an object patches recursively, anything else is reconciled in place.

use automerge::{
    AutoCommit, AutomergeError, ObjId, ObjType, Prop, ReadDoc as _, ScalarValue, Value as AmValue,
    transaction::Transactable as _,
};
use serde_json::{Map, Value};

use crate::automerge_json::scalar;

/// The fields of a document that are text (merged character by character): dotted
/// paths from the document's root, array indices left out (`notes`, `profile.bio`,
/// `items.title` for the `title` of every element of `items`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TextFields<'a>(pub(crate) &'a [String]);

impl TextFields<'_> {
    fn holds(&self, path: &str) -> bool {
        self.0.iter().any(|p| p == path)
    }
}

/// Texts longer than this together (old and new, in bytes or characters) are replaced
/// rather than diffed.
const MAX_DIFFED_TEXT: usize = 64 * 1024;

fn child_path(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// Makes `obj[key]` (a map) equal to `value` with the fewest changes.
pub(crate) fn put(
    doc: &mut AutoCommit,
    obj: &ObjId,
    key: &str,
    value: &Value,
    text: TextFields<'_>,
) -> Result<(), AutomergeError> {
    let existing = owned(doc.get(obj, key)?);
    reconcile(
        doc,
        obj,
        Prop::Map(key.to_owned()),
        existing,
        value,
        "",
        text,
    )
}

/// What a field or element holds now, detached from the document.
type Existing = Option<(AmValue<'static>, ObjId)>;

fn owned(found: Option<(AmValue<'_>, ObjId)>) -> Existing {
    found.map(|(value, id)| (value.into_owned(), id))
}

/// Applies the merge patch `patch` (an object) to `obj[key]`; a key that does not
/// exist, or does not hold an object, is made an object first.
pub(crate) fn merge_patch(
    doc: &mut AutoCommit,
    obj: &ObjId,
    key: &str,
    patch: &Map<String, Value>,
    text: TextFields<'_>,
) -> Result<(), AutomergeError> {
    let target = match doc.get(obj, key)? {
        Some((AmValue::Object(ObjType::Map), id)) => id,
        _ => doc.put_object(obj, key, ObjType::Map)?,
    };
    patch_map(doc, &target, patch, "", text)
}

fn patch_map(
    doc: &mut AutoCommit,
    map: &ObjId,
    patch: &Map<String, Value>,
    path: &str,
    text: TextFields<'_>,
) -> Result<(), AutomergeError> {
    for (field, change) in patch {
        let here = child_path(path, field);
        match change {
            Value::Null => {
                if doc.get(map, field.as_str())?.is_some() {
                    doc.delete(map, field.as_str())?;
                }
            }
            Value::Object(inner) => {
                let target = match doc.get(map, field.as_str())? {
                    Some((AmValue::Object(ObjType::Map), id)) => id,
                    _ => doc.put_object(map, field.as_str(), ObjType::Map)?,
                };
                patch_map(doc, &target, inner, &here, text)?;
            }
            other => {
                let existing = owned(doc.get(map, field.as_str())?);
                reconcile(
                    doc,
                    map,
                    Prop::Map(field.clone()),
                    existing,
                    other,
                    &here,
                    text,
                )?;
            }
        }
    }
    Ok(())
}

/// Makes `parent[prop]`, which holds `existing`, equal to `value`. For a list, `prop`
/// is an index below the list's length.
fn reconcile(
    doc: &mut AutoCommit,
    parent: &ObjId,
    prop: Prop,
    existing: Existing,
    value: &Value,
    path: &str,
    text: TextFields<'_>,
) -> Result<(), AutomergeError> {
    match (value, existing) {
        (Value::Object(map), Some((AmValue::Object(ObjType::Map), id))) => {
            reconcile_map(doc, &id, map, path, text)
        }
        (Value::Array(items), Some((AmValue::Object(ObjType::List), id))) => {
            reconcile_list(doc, &id, items, path, text)
        }
        (Value::String(new), Some((AmValue::Object(ObjType::Text), id))) => {
            let old = doc.length(&id);
            if old + new.len() > MAX_DIFFED_TEXT {
                // A character diff costs up to the product of the lengths: past this,
                // the text is replaced whole (concurrent edits to it then conflict).
                let old = isize::try_from(old).unwrap_or(isize::MAX);
                doc.splice_text(&id, 0, old, new)
            } else {
                doc.update_text(&id, new)
            }
        }
        (Value::Object(_) | Value::Array(_), _) => {
            let id = doc.put_object(parent, prop, object_type(value, path, text))?;
            fill(doc, &id, value, path, text)
        }
        (Value::String(_), _) if text.holds(path) => {
            let id = doc.put_object(parent, prop, ObjType::Text)?;
            fill(doc, &id, value, path, text)
        }
        (scalar_value, existing) => {
            let new = scalar(scalar_value).unwrap_or(ScalarValue::Null);
            let same = matches!(&existing, Some((AmValue::Scalar(old), _)) if old.as_ref() == &new);
            if same {
                Ok(())
            } else {
                doc.put(parent, prop, new)
            }
        }
    }
}

fn reconcile_map(
    doc: &mut AutoCommit,
    map: &ObjId,
    value: &Map<String, Value>,
    path: &str,
    text: TextFields<'_>,
) -> Result<(), AutomergeError> {
    // One pass over the map's fields (a lookup per field would cost a search each).
    let mut existing: std::collections::BTreeMap<String, (AmValue<'static>, ObjId)> = doc
        .map_range(map, ..)
        .map(|item| (item.key.to_owned(), (item.value.into_owned(), item.id)))
        .collect();
    for field in existing.keys() {
        if !value.contains_key(field) {
            doc.delete(map, field.as_str())?;
        }
    }
    for (field, v) in value {
        let old = existing.remove(field);
        reconcile(
            doc,
            map,
            Prop::Map(field.clone()),
            old,
            v,
            &child_path(path, field),
            text,
        )?;
    }
    Ok(())
}

fn reconcile_list(
    doc: &mut AutoCommit,
    list: &ObjId,
    items: &[Value],
    path: &str,
    text: TextFields<'_>,
) -> Result<(), AutomergeError> {
    let existing: Vec<(AmValue<'static>, ObjId)> = doc
        .list_range(list, ..)
        .map(|item| (item.value.into_owned(), item.id))
        .collect();
    let old = existing.len();
    let mut existing = existing.into_iter();
    for (index, item) in items.iter().enumerate() {
        if index < old {
            let current = existing.next();
            reconcile(doc, list, Prop::Seq(index), current, item, path, text)?;
        } else {
            insert(doc, list, index, item, path, text)?;
        }
    }
    for index in (items.len()..old).rev() {
        doc.delete(list, index)?;
    }
    Ok(())
}

fn object_type(value: &Value, path: &str, text: TextFields<'_>) -> ObjType {
    match value {
        Value::Array(_) => ObjType::List,
        Value::String(_) if text.holds(path) => ObjType::Text,
        _ => ObjType::Map,
    }
}

/// Inserts `value` at `index` of `list` (a new element).
fn insert(
    doc: &mut AutoCommit,
    list: &ObjId,
    index: usize,
    value: &Value,
    path: &str,
    text: TextFields<'_>,
) -> Result<(), AutomergeError> {
    match value {
        Value::Object(_) | Value::Array(_) => {
            let id = doc.insert_object(list, index, object_type(value, path, text))?;
            fill(doc, &id, value, path, text)
        }
        Value::String(_) if text.holds(path) => {
            let id = doc.insert_object(list, index, ObjType::Text)?;
            fill(doc, &id, value, path, text)
        }
        other => doc.insert(list, index, scalar(other).unwrap_or(ScalarValue::Null)),
    }
}

/// Fills a new, empty object with `value`.
fn fill(
    doc: &mut AutoCommit,
    id: &ObjId,
    value: &Value,
    path: &str,
    text: TextFields<'_>,
) -> Result<(), AutomergeError> {
    match value {
        Value::Object(map) => reconcile_map(doc, id, map, path, text),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                insert(doc, id, index, item, path, text)?;
            }
            Ok(())
        }
        Value::String(s) => doc.splice_text(id, 0, 0, s),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use automerge::ROOT;
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::automerge_json::get;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-5i64..5).prop_map(|i| json!(i)),
            (-4i32..4).prop_map(|i| json!(f64::from(i) + 0.5)),
            "[a-c]{0,3}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-d]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn doc_with(actor: u8, value: &Value) -> AutoCommit {
        let mut doc = AutoCommit::new().with_actor(automerge::ActorId::from([actor; 16]));
        put(&mut doc, &ROOT, "k", value, TextFields::default()).unwrap();
        doc.commit();
        doc
    }

    /// Two replicas of one document; each writes the whole value with its own edit.
    fn forked(base: &Value) -> (AutoCommit, AutoCommit) {
        let mut a = doc_with(1, base);
        let mut b = a.fork().with_actor(automerge::ActorId::from([2; 16]));
        b.commit();
        (a, b)
    }

    fn merged(a: &mut AutoCommit, b: &mut AutoCommit) {
        a.merge(b).unwrap();
        b.merge(a).unwrap();
    }

    proptest! {
        #[test]
        fn a_write_makes_the_document_equal_to_the_value(first in json_value(), second in json_value()) {
            let mut doc = doc_with(1, &first);
            prop_assert_eq!(get(&doc, &ROOT, "k"), Some(first.clone()));
            put(&mut doc, &ROOT, "k", &second, TextFields::default()).unwrap();
            doc.commit();
            prop_assert_eq!(get(&doc, &ROOT, "k"), Some(second));
        }

        #[test]
        fn writing_the_same_value_changes_nothing(value in json_value()) {
            let mut doc = doc_with(1, &value);
            let heads = doc.get_heads();
            put(&mut doc, &ROOT, "k", &value, TextFields::default()).unwrap();
            doc.commit();
            prop_assert_eq!(doc.get_heads(), heads);
        }

        #[test]
        fn concurrent_edits_to_different_fields_both_survive(
            base in prop::collection::btree_map("[a-f]", json_value(), 2..6),
            x in json_value(),
            y in json_value(),
        ) {
            let fields: Vec<String> = base.keys().cloned().collect();
            let base = Value::Object(base.into_iter().collect());
            let (mut a, mut b) = forked(&base);
            let mut on_a = base.clone();
            on_a[&fields[0]] = x.clone();
            let mut on_b = base.clone();
            on_b[&fields[1]] = y.clone();
            put(&mut a, &ROOT, "k", &on_a, TextFields::default()).unwrap();
            put(&mut b, &ROOT, "k", &on_b, TextFields::default()).unwrap();
            merged(&mut a, &mut b);
            let mut both = base.clone();
            both[&fields[0]] = x;
            both[&fields[1]] = y;
            prop_assert_eq!(get(&a, &ROOT, "k"), Some(both.clone()));
            prop_assert_eq!(get(&b, &ROOT, "k"), Some(both));
        }

        #[test]
        fn concurrent_edits_to_one_field_converge(
            base in prop::collection::btree_map("[a-f]", json_value(), 1..4),
            x in json_value(),
            y in json_value(),
        ) {
            let field = base.keys().next().unwrap().clone();
            let base = Value::Object(base.into_iter().collect());
            let (mut a, mut b) = forked(&base);
            let mut on_a = base.clone();
            on_a[&field] = x.clone();
            let mut on_b = base.clone();
            on_b[&field] = y.clone();
            put(&mut a, &ROOT, "k", &on_a, TextFields::default()).unwrap();
            put(&mut b, &ROOT, "k", &on_b, TextFields::default()).unwrap();
            merged(&mut a, &mut b);
            let (va, vb) = (get(&a, &ROOT, "k").unwrap(), get(&b, &ROOT, "k").unwrap());
            prop_assert_eq!(&va, &vb);
            // The other fields are the base's; the edited one is one of the two writes
            // or, where both wrote into the same object, a merge of them.
            for (f, v) in base.as_object().unwrap() {
                if *f != field {
                    prop_assert_eq!(&va[f], v);
                }
            }
        }
    }

    /// RFC 7386, appendix A: every example, as a patch to a document's field.
    #[test]
    fn merge_patch_follows_rfc_7386() {
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (original, patch, expected) in cases {
            let mut doc = doc_with(1, &original);
            merge_patch(
                &mut doc,
                &ROOT,
                "k",
                patch.as_object().unwrap(),
                TextFields::default(),
            )
            .unwrap();
            assert_eq!(
                get(&doc, &ROOT, "k"),
                Some(expected),
                "{original} + {patch}"
            );
        }
    }

    #[test]
    fn concurrent_patches_to_different_fields_merge() {
        let base = json!({"name": "Ada", "city": "London", "tags": ["x"]});
        let (mut a, mut b) = forked(&base);
        let p1 = json!({"city": "Paris"});
        let p2 = json!({"name": "Ada L.", "tags": null});
        merge_patch(
            &mut a,
            &ROOT,
            "k",
            p1.as_object().unwrap(),
            TextFields::default(),
        )
        .unwrap();
        merge_patch(
            &mut b,
            &ROOT,
            "k",
            p2.as_object().unwrap(),
            TextFields::default(),
        )
        .unwrap();
        merged(&mut a, &mut b);
        let want = json!({"name": "Ada L.", "city": "Paris"});
        assert_eq!(get(&a, &ROOT, "k"), Some(want.clone()));
        assert_eq!(get(&b, &ROOT, "k"), Some(want));
    }

    #[test]
    fn a_long_text_is_replaced_not_diffed() {
        let text = ["notes".to_owned()];
        let fields = TextFields(&text);
        let mut doc = AutoCommit::new();
        let long_a = "a".repeat(MAX_DIFFED_TEXT);
        let long_b = "b".repeat(MAX_DIFFED_TEXT);
        put(&mut doc, &ROOT, "k", &json!({"notes": long_a}), fields).unwrap();
        put(
            &mut doc,
            &ROOT,
            "k",
            &json!({"notes": long_b.clone()}),
            fields,
        )
        .unwrap();
        assert_eq!(get(&doc, &ROOT, "k"), Some(json!({"notes": long_b})));
    }

    #[test]
    fn text_fields_merge_concurrent_edits_to_the_text() {
        let text = ["notes".to_owned()];
        let fields = TextFields(&text);
        let mut a = AutoCommit::new().with_actor(automerge::ActorId::from([1; 16]));
        put(&mut a, &ROOT, "k", &json!({"notes": "buy milk"}), fields).unwrap();
        a.commit();
        let mut b = a.fork().with_actor(automerge::ActorId::from([2; 16]));
        put(
            &mut a,
            &ROOT,
            "k",
            &json!({"notes": "buy oat milk"}),
            fields,
        )
        .unwrap();
        put(
            &mut b,
            &ROOT,
            "k",
            &json!({"notes": "buy milk and eggs"}),
            fields,
        )
        .unwrap();
        merged(&mut a, &mut b);
        let want = json!({"notes": "buy oat milk and eggs"});
        assert_eq!(get(&a, &ROOT, "k"), Some(want.clone()));
        assert_eq!(get(&b, &ROOT, "k"), Some(want));
    }
}
