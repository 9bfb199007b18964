//! Merge patches on a store: kv values are patched whole, doc values field by field;
//! bad patches change nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use hearth_stores::backend::BackendKind;
use hearth_stores::{Kind, StoreError, Stores, StoresConfig};
use serde_json::json;

#[test]
fn patches_apply_and_bad_ones_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let stores = Stores::open(StoresConfig {
        root: dir.path().to_path_buf(),
        backend: BackendKind::Redb,
        actor: [1; 16],
        clock: Arc::new(|| 1_700_000_000_000),
    })
    .unwrap();
    for kind in [Kind::Kv, Kind::Doc] {
        let store = stores.create(&format!("s-{kind:?}"), kind, None).unwrap();
        store
            .put("k", json!({"a": 1, "b": {"x": 1, "y": 2}}))
            .unwrap();
        let after = store
            .patch("k", json!({"b": {"y": null, "z": 3}, "c": "new"}))
            .unwrap();
        let want = json!({"a": 1, "b": {"x": 1, "z": 3}, "c": "new"});
        assert_eq!(after, want, "{kind:?}");
        assert_eq!(store.get("k").unwrap(), Some(want.clone()), "{kind:?}");
        // A missing key starts as {}.
        assert_eq!(
            store.patch("new", json!({"n": 1})).unwrap(),
            json!({"n": 1})
        );
        for bad in [json!([1]), json!("text"), json!(null), json!(3)] {
            let err = store.patch("k", bad.clone()).unwrap_err();
            assert!(
                matches!(err, StoreError::Invalid(_)),
                "{kind:?} {bad}: {err}"
            );
        }
        assert_eq!(store.get("k").unwrap(), Some(want), "{kind:?}");
    }
    let series = stores.create("t", Kind::Timeseries, None).unwrap();
    assert!(matches!(
        series.patch("k", json!({"a": 1})),
        Err(StoreError::WrongKind { .. })
    ));
}
