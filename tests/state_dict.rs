//! `StateDict`'s dict manners, and its key surgery checked against PyTorch's own helper.

mod common;

use indexmap::IndexMap;
use serde_json::{json, Value as Json};
use tch::{Device, Kind, Tensor};
use tch_state_dict::{Error, Metadata, StateDict, Value};

fn scalar(v: i64) -> Tensor {
    Tensor::from(v)
}

fn sd_of(keys: &[&str]) -> StateDict {
    keys.iter()
        .enumerate()
        .map(|(i, k)| (*k, scalar(i as i64)))
        .collect()
}

fn keys(sd: &StateDict) -> Vec<&str> {
    sd.keys().collect()
}

fn value(sd: &StateDict, key: &str) -> i64 {
    sd.get(key).unwrap().int64_value(&[])
}

fn metadata_of(keys: &[&str]) -> Metadata {
    keys.iter()
        .map(|k| {
            let mut entry = IndexMap::new();
            entry.insert("version".to_string(), Value::Int(1));
            (k.to_string(), entry)
        })
        .collect()
}

#[test]
fn insert_keeps_an_existing_keys_place_and_returns_the_old_tensor() {
    let mut sd = sd_of(&["a", "b", "c"]);
    let old = sd.insert("b", scalar(42)).unwrap();
    assert_eq!(old.int64_value(&[]), 1);
    assert_eq!(keys(&sd), ["a", "b", "c"]);
    assert_eq!(value(&sd, "b"), 42);
    assert!(sd.insert("d", scalar(3)).is_none());
    assert_eq!(keys(&sd), ["a", "b", "c", "d"]);
}

#[test]
fn pop_removes_and_keeps_the_order_of_the_rest() {
    let mut sd = sd_of(&["a", "b", "c", "d"]);
    assert_eq!(sd.pop("b").unwrap().int64_value(&[]), 1);
    assert!(sd.pop("b").is_none());
    assert_eq!(keys(&sd), ["a", "c", "d"]);
    assert_eq!(sd.len(), 3);
    assert!(!sd.contains_key("b") && sd.contains_key("c"));
    assert_eq!(sd.get_index_of("d"), Some(2));
}

#[test]
fn collect_extend_and_iterate_in_order() {
    // A repeated key keeps its first place and its last value, as dict(pairs) does.
    let sd: StateDict = vec![("x", scalar(1)), ("y", scalar(2)), ("x", scalar(3))]
        .into_iter()
        .collect();
    assert_eq!(keys(&sd), ["x", "y"]);
    assert_eq!(value(&sd, "x"), 3);
    let mut sd = sd;
    sd.extend([("z".to_string(), scalar(4)), ("y".to_string(), scalar(5))]);
    assert_eq!(keys(&sd), ["x", "y", "z"]);
    assert_eq!(value(&sd, "y"), 5);
    let borrowed: Vec<&String> = (&sd).into_iter().map(|(k, _)| k).collect();
    assert_eq!(borrowed, ["x", "y", "z"]);
    let owned: Vec<(String, i64)> = sd
        .into_iter()
        .map(|(k, t)| (k, t.int64_value(&[])))
        .collect();
    assert_eq!(owned, [("x".into(), 3), ("y".into(), 5), ("z".into(), 4)]);
    assert!(StateDict::new().is_empty());
}

/// Runs the same strip in Rust and in PyTorch's consume_prefix_in_state_dict_if_present.
#[test]
fn strip_prefix_does_what_consume_prefix_in_state_dict_if_present_does() {
    type Case<'a> = (Vec<&'a str>, Option<Vec<&'a str>>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        // DataParallel: every key prefixed, metadata with the wrapper's '' and 'module'.
        (
            vec!["module.conv.weight", "module.fc.weight", "module.fc.bias"],
            Some(vec!["", "module", "module.conv", "module.fc"]),
            "module.",
        ),
        // Mixed keys: stripped ones move to the end; a collision replaces in place.
        (
            vec!["_orig_mod.a", "b", "a", "_orig_mod.c", "d"],
            Some(vec!["", "_orig_mod", "_orig_mod.x", "b"]),
            "_orig_mod.",
        ),
        (vec!["fc.weight", "fc.bias"], None, "module."),
    ];
    let input: Json = cases
        .iter()
        .map(|(k, m, p)| {
            let keys: Vec<Json> = k.iter().enumerate().map(|(i, k)| json!([k, i])).collect();
            json!({"keys": keys, "metadata": m, "prefix": p})
        })
        .collect();
    let out = common::oracle("oracle/consume_prefix.py", &[], &input.to_string());
    let expected: Vec<Json> = serde_json::from_str(&out).unwrap();
    for ((k, m, p), py) in cases.iter().zip(expected) {
        let mut sd = sd_of(k);
        sd.set_metadata(m.as_ref().map(|m| metadata_of(m)));
        sd.strip_prefix(p);
        let got: Vec<Json> = sd
            .iter()
            .map(|(k, t)| json!([k, t.int64_value(&[])]))
            .collect();
        assert_eq!(Json::from(got), py["keys"], "keys for {k:?}");
        let meta = sd
            .metadata()
            .map(|m| Json::from(m.keys().cloned().collect::<Vec<_>>()))
            .unwrap_or(Json::Null);
        assert_eq!(meta, py["metadata"], "metadata for {k:?}");
    }
}

#[test]
fn add_prefix_prefixes_keys_and_metadata() {
    let mut sd = sd_of(&["fc.weight", "fc.bias"]);
    sd.set_metadata(Some(metadata_of(&["", "fc"])));
    sd.add_prefix("module.");
    assert_eq!(keys(&sd), ["module.fc.weight", "module.fc.bias"]);
    let meta: Vec<&String> = sd.metadata().unwrap().keys().collect();
    assert_eq!(meta, ["module", "module.fc"]);
    // And stripping gives back what was there.
    sd.strip_prefix("module.");
    assert_eq!(keys(&sd), ["fc.weight", "fc.bias"]);
    let meta: Vec<&String> = sd.metadata().unwrap().keys().collect();
    assert_eq!(meta, ["", "fc"]);
}

#[test]
fn rename_keeps_order_and_refuses_collisions_without_changing_anything() {
    let mut sd = sd_of(&["a.w", "b.w", "c"]);
    sd.rename(|k| k.to_uppercase()).unwrap();
    assert_eq!(keys(&sd), ["A.W", "B.W", "C"]);
    assert_eq!(value(&sd, "B.W"), 1);
    let r = sd.rename(|k| if k == "C" { "A.W".into() } else { k.into() });
    match r {
        Err(Error::DuplicateKey { key, sources }) => {
            assert_eq!(key, "A.W");
            assert_eq!(sources, ["A.W", "C"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(keys(&sd), ["A.W", "B.W", "C"]);
}

#[test]
fn rename_prefix_moves_a_head_and_its_metadata() {
    let mut sd = sd_of(&["conv.weight", "fc.weight", "fc.bias", "fcx.weight"]);
    sd.set_metadata(Some(metadata_of(&["", "conv", "fc", "fc.inner"])));
    assert_eq!(sd.rename_prefix("fc.", "linear.").unwrap(), 2);
    assert_eq!(
        keys(&sd),
        ["conv.weight", "linear.weight", "linear.bias", "fcx.weight"]
    );
    let meta: Vec<&String> = sd.metadata().unwrap().keys().collect();
    assert_eq!(meta, ["", "conv", "linear", "linear.inner"]);
    assert!(matches!(sd.rename_prefix("linear.", "head."), Ok(2)));
    assert!(matches!(
        sd.rename_prefix("head.", "conv."),
        Err(Error::DuplicateKey { .. })
    ));
    assert!(matches!(
        sd_of(&["a.w", "b.w"]).rename_prefix("a.", "b."),
        Err(Error::DuplicateKey { .. })
    ));
}

#[test]
fn retain_keeps_what_the_predicate_accepts() {
    let mut sd = sd_of(&["backbone.w", "fc.weight", "backbone.b", "fc.bias"]);
    sd.retain(|k, _| !k.starts_with("fc."));
    assert_eq!(keys(&sd), ["backbone.w", "backbone.b"]);
    sd.retain(|_, t| t.int64_value(&[]) > 0);
    assert_eq!(keys(&sd), ["backbone.b"]);
}

#[test]
fn display_and_debug_show_a_table_and_never_contents() {
    let mut sd = StateDict::new();
    sd.insert(
        "layer1.0.conv1.weight",
        Tensor::full([64, 3, 7, 7], 1234.5, (Kind::Float, Device::Cpu)),
    );
    sd.insert("bn.num_batches_tracked", Tensor::from(0i64));
    let text = sd.to_string();
    assert_eq!(
        text,
        "StateDict: 2 tensors, 36.8 KiB\n  \
         layer1.0.conv1.weight   [64, 3, 7, 7]  float32  cpu\n  \
         bn.num_batches_tracked  []             int64    cpu"
    );
    assert!(!text.contains("1234"));
    assert_eq!(format!("{sd:?}"), text);
}

#[test]
fn shallow_clone_shares_storage_like_dict_copy() {
    let sd = sd_of(&["a"]);
    let copy = sd.shallow_clone();
    let _ = copy.get("a").unwrap().shallow_clone().fill_(9);
    assert_eq!(value(&sd, "a"), 9);
}
