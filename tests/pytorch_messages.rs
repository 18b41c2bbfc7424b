//! `load_state_dict`'s messages and reports against Python torch 2.11, byte for byte.
//!
//! Each scenario is built twice from one description: in Python by
//! `tests/oracle/load_messages.py` (a real `nn.Module` tree, real `nn.BatchNorm1d`), and here
//! as a `ModuleTree`. All scenarios go to Python in one run; each test compares one.

mod common;

use std::collections::HashMap;
use std::sync::OnceLock;

use indexmap::IndexMap;
use serde_json::{json, Value as Json};
use tch::{Device, Kind, Tensor};
use tch_state_dict::{load_state_dict, Error, Metadata, ModuleKind, ModuleTree, StateDict, Value};

type TensorSpec = (String, Option<Vec<i64>>, &'static str);

struct Scenario {
    name: &'static str,
    type_name: &'static str,
    modules: Vec<(String, &'static str)>,
    model: Vec<TensorSpec>,
    state_dict: Vec<TensorSpec>,
    metadata: Option<Vec<(String, i64)>>,
    strict: bool,
}

fn f32(key: &str, shape: &[i64]) -> TensorSpec {
    (key.to_string(), Some(shape.to_vec()), "float32")
}

/// A small CIFAR-style network: conv1, bn1, relu, layer1.0.{conv1,bn1}, linear.
fn cifar_modules() -> Vec<(String, &'static str)> {
    [
        ("conv1", "module"),
        ("bn1", "batchnorm"),
        ("relu", "module"),
        ("layer1", "module"),
        ("layer1.0", "module"),
        ("layer1.0.conv1", "module"),
        ("layer1.0.bn1", "batchnorm"),
        ("linear", "module"),
    ]
    .iter()
    .map(|(p, k)| (p.to_string(), *k))
    .collect()
}

fn bn(prefix: &str, n: i64) -> Vec<TensorSpec> {
    vec![
        f32(&format!("{prefix}.weight"), &[n]),
        f32(&format!("{prefix}.bias"), &[n]),
        f32(&format!("{prefix}.running_mean"), &[n]),
        f32(&format!("{prefix}.running_var"), &[n]),
        (
            format!("{prefix}.num_batches_tracked"),
            Some(vec![]),
            "int64",
        ),
    ]
}

fn cifar_tensors(classes: i64) -> Vec<TensorSpec> {
    let mut v = vec![f32("conv1.weight", &[4, 3, 3, 3])];
    v.extend(bn("bn1", 4));
    v.push(f32("layer1.0.conv1.weight", &[4, 4, 3, 3]));
    v.extend(bn("layer1.0.bn1", 4));
    v.push(f32("linear.weight", &[classes, 4]));
    v.push(f32("linear.bias", &[classes]));
    v
}

/// The `_metadata` PyTorch's `state_dict()` writes for the CIFAR-style network.
fn cifar_metadata() -> Vec<(String, i64)> {
    let mut m = vec![(String::new(), 1)];
    for (path, kind) in cifar_modules() {
        m.push((path, if kind == "batchnorm" { 2 } else { 1 }));
    }
    m
}

fn without(mut v: Vec<TensorSpec>, keys: &[&str]) -> Vec<TensorSpec> {
    v.retain(|t| !keys.contains(&t.0.as_str()));
    v
}

fn cifar(name: &'static str, classes: i64, sd: Vec<TensorSpec>, strict: bool) -> Scenario {
    Scenario {
        name,
        type_name: "ResNet",
        modules: cifar_modules(),
        model: cifar_tensors(classes),
        state_dict: sd,
        metadata: Some(cifar_metadata()),
        strict,
    }
}

fn scenarios() -> Vec<Scenario> {
    let linear_only = |name, sd, strict| Scenario {
        name,
        type_name: "Net",
        modules: vec![("linear".into(), "module")],
        model: vec![f32("linear.weight", &[10, 4]), f32("linear.bias", &[10])],
        state_dict: sd,
        metadata: None,
        strict,
    };
    let mut extra = cifar_tensors(10);
    extra.push(f32("linear.extra_weight", &[1]));
    extra.push(f32("head.fc.bias", &[10]));
    extra.push(f32("bn1.foo.bar", &[1]));
    extra.insert(0, f32("zzz", &[1]));
    let mut mixed = without(
        cifar_tensors(100),
        &["conv1.weight", "layer1.0.bn1.running_var"],
    );
    mixed.push(f32("linear.extra_weight", &[1]));
    mixed.push(f32("head.fc.bias", &[10]));
    let nbt = [
        "bn1.num_batches_tracked",
        "layer1.0.bn1.num_batches_tracked",
    ];
    let mut tch_bn = cifar_tensors(10);
    tch_bn.retain(|t| !t.0.ends_with("num_batches_tracked"));
    let dp: Vec<TensorSpec> = cifar_tensors(10)
        .into_iter()
        .map(|(k, s, d)| (format!("module.{k}"), s, d))
        .collect();
    let mut none_value = cifar_tensors(10);
    none_value[1].1 = None;
    let mut f64_sd = cifar_tensors(10);
    for t in &mut f64_sd {
        if t.2 == "float32" {
            t.2 = "float64";
        }
    }
    vec![
        cifar("story_non_strict", 10, cifar_tensors(100), false),
        cifar("story_strict", 10, cifar_tensors(100), true),
        cifar("all_matched", 10, cifar_tensors(10), true),
        cifar("missing_unexpected_mismatch", 10, mixed, true),
        cifar("unexpected_at_deepest_module", 10, extra, true),
        linear_only(
            "unexpected_order_issue_example",
            vec![
                f32("linear.weight", &[10, 4]),
                f32("linear.bias", &[10]),
                f32("linear.extra_weight", &[10]),
                f32("head.fc.bias", &[10]),
            ],
            true,
        ),
        linear_only(
            "non_strict_report",
            vec![
                f32("linear.weight", &[10, 4]),
                f32("linear.extra_weight", &[10]),
                f32("head.fc.bias", &[10]),
            ],
            false,
        ),
        Scenario {
            metadata: None,
            ..cifar(
                "bn_missing_counter_without_metadata",
                10,
                without(cifar_tensors(10), &nbt),
                true,
            )
        },
        Scenario {
            metadata: Some(
                cifar_metadata()
                    .into_iter()
                    .map(|(p, v)| (p, v.min(1)))
                    .collect(),
            ),
            ..cifar(
                "bn_missing_counter_version_1",
                10,
                without(cifar_tensors(10), &nbt),
                true,
            )
        },
        cifar(
            "bn_missing_counter_version_2",
            10,
            without(cifar_tensors(10), &nbt),
            true,
        ),
        Scenario {
            metadata: Some(
                cifar_metadata()
                    .into_iter()
                    .filter(|(p, _)| p != "bn1")
                    .collect(),
            ),
            ..cifar(
                "bn_missing_counter_no_entry",
                10,
                without(cifar_tensors(10), &nbt),
                true,
            )
        },
        Scenario {
            modules: cifar_modules()
                .into_iter()
                .map(|(p, _)| (p, "module"))
                .collect(),
            model: tch_bn,
            ..cifar(
                "counter_unexpected_in_tch_batch_norm",
                10,
                cifar_tensors(10),
                true,
            )
        },
        linear_only(
            "extra_state_first_in_its_module",
            vec![
                f32("linear.weight", &[10, 4]),
                f32("linear.bias", &[10]),
                f32("linear.zzz", &[1]),
                f32("linear._extra_state", &[1]),
                f32("_extra_state", &[1]),
                f32("top", &[1]),
            ],
            true,
        ),
        Scenario {
            name: "scalar_from_one_element",
            type_name: "Scaler",
            modules: vec![],
            model: vec![f32("scale", &[]), f32("shift", &[])],
            state_dict: vec![f32("scale", &[1]), f32("shift", &[2])],
            metadata: None,
            strict: true,
        },
        Scenario {
            name: "no_broadcast",
            type_name: "Net",
            modules: vec![],
            model: vec![f32("w", &[10]), f32("v", &[2, 3])],
            state_dict: vec![f32("w", &[1]), f32("v", &[3])],
            metadata: None,
            strict: false,
        },
        Scenario {
            name: "param_less_module_reports_its_keys",
            type_name: "Net",
            modules: vec![
                ("conv".into(), "module"),
                ("relu".into(), "module"),
                ("fc".into(), "module"),
            ],
            model: vec![f32("conv.weight", &[2]), f32("fc.weight", &[2])],
            state_dict: vec![
                f32("fc.y", &[1]),
                f32("relu.x", &[1]),
                f32("relu.inner.x", &[1]),
                f32("conv.z", &[1]),
                f32("zzz", &[1]),
                f32("conv.weight", &[2]),
            ],
            metadata: None,
            strict: true,
        },
        Scenario {
            name: "quotes_in_keys",
            type_name: "Net",
            modules: vec![],
            model: vec![f32("it's", &[1]), f32("plain", &[1])],
            state_dict: vec![
                f32("say \"hi\"", &[1]),
                f32("both'\"", &[1]),
                f32("tab\tkey", &[1]),
            ],
            metadata: None,
            strict: false,
        },
        Scenario {
            metadata: None,
            ..cifar("dataparallel_prefix", 10, dp, true)
        },
        cifar("value_not_a_tensor", 10, none_value, true),
        cifar("other_dtype_loads", 10, f64_sd, true),
    ]
}

fn to_json(s: &Scenario) -> Json {
    let tensors = |v: &[TensorSpec]| -> Json {
        v.iter()
            .map(|(k, shape, dtype)| json!([k, shape, dtype]))
            .collect()
    };
    let metadata = s.metadata.as_ref().map(|m| {
        m.iter()
            .map(|(k, v)| (k.clone(), json!({ "version": v })))
            .collect::<serde_json::Map<_, _>>()
    });
    json!({
        "name": s.name,
        "type_name": s.type_name,
        "modules": s.modules.iter().map(|(p, k)| json!([p, k])).collect::<Json>(),
        "model": tensors(&s.model),
        "state_dict": tensors(&s.state_dict),
        "metadata": metadata,
        "strict": s.strict,
    })
}

/// What PyTorch said for each scenario: (error text, report repr).
type PyResults = HashMap<String, (Option<String>, Option<String>)>;

fn pytorch() -> &'static PyResults {
    static RESULTS: OnceLock<PyResults> = OnceLock::new();
    RESULTS.get_or_init(|| {
        let input: Json = scenarios().iter().map(to_json).collect();
        let out = common::oracle("oracle/load_messages.py", &[], &input.to_string());
        let out: Json = serde_json::from_str(&out).expect("oracle output is JSON");
        out.as_object()
            .expect("an object")
            .iter()
            .map(|(name, r)| {
                let text = |f: &str| r[f].as_str().map(str::to_string);
                (name.clone(), (text("error"), text("report")))
            })
            .collect()
    })
}

fn kind(dtype: &str) -> Kind {
    match dtype {
        "float32" => Kind::Float,
        "float64" => Kind::Double,
        "int64" => Kind::Int64,
        other => panic!("dtype {other}"),
    }
}

fn zeros(spec: &TensorSpec) -> Tensor {
    match &spec.1 {
        Some(shape) => Tensor::zeros(shape.as_slice(), (kind(spec.2), Device::Cpu)),
        None => Tensor::new(),
    }
}

fn rust_side(s: &Scenario) -> (ModuleTree, StateDict) {
    let mut tree = ModuleTree::new(s.type_name);
    for (path, k) in &s.modules {
        let kind = if *k == "batchnorm" {
            ModuleKind::BatchNorm
        } else {
            ModuleKind::Module
        };
        tree.add_module(path, kind).unwrap();
    }
    for t in &s.model {
        tree.add_tensor(&t.0, zeros(t)).unwrap();
    }
    let mut sd: StateDict = s
        .state_dict
        .iter()
        .map(|t| (t.0.clone(), zeros(t)))
        .collect();
    if let Some(m) = &s.metadata {
        let metadata: Metadata = m
            .iter()
            .map(|(k, v)| {
                let mut entry = IndexMap::new();
                entry.insert("version".to_string(), Value::Int(*v));
                (k.clone(), entry)
            })
            .collect();
        sd.set_metadata(Some(metadata));
    }
    (tree, sd)
}

/// Runs one scenario here and compares with PyTorch; returns the Rust error's full text (with
/// hints) when there is one.
fn check(name: &str) -> Option<String> {
    let scenario = scenarios()
        .into_iter()
        .find(|s| s.name == name)
        .expect("scenario exists");
    let (py_error, py_report) = pytorch()
        .get(name)
        .unwrap_or_else(|| panic!("no Python result for {name}"))
        .clone();
    let (tree, sd) = rust_side(&scenario);
    match (
        load_state_dict(&tree, &sd, scenario.strict),
        py_error,
        py_report,
    ) {
        (Err(Error::Load(e)), Some(py), None) => {
            assert_eq!(e.pytorch_message(), py, "message differs from PyTorch's");
            let full = Error::Load(e.clone()).to_string();
            assert!(full.starts_with(&py), "hints must follow PyTorch's text");
            if e.hints.is_empty() {
                assert_eq!(full, py);
            }
            Some(full)
        }
        (Ok(report), None, Some(py)) => {
            assert_eq!(report.to_string(), py, "report differs from PyTorch's");
            None
        }
        (rust, py_error, py_report) => panic!(
            "{name}: Rust gave {rust:?}, PyTorch gave error {py_error:?} / report {py_report:?}"
        ),
    }
}

#[test]
fn size_mismatch_on_the_head_is_an_error_even_when_not_strict() {
    let full = check("story_non_strict").unwrap();
    assert!(full.contains("size mismatch for linear.weight: copying a param with shape torch.Size([100, 4]) from checkpoint, the shape in current model is torch.Size([10, 4])."));
    assert!(
        full.contains("hint: \"linear\" looks like a classifier head"),
        "{full}"
    );
}

#[test]
fn size_mismatch_when_strict() {
    check("story_strict").unwrap();
}

#[test]
fn all_keys_matched() {
    assert!(check("all_matched").is_none());
}

#[test]
fn missing_then_unexpected_then_size_mismatches() {
    check("missing_unexpected_mismatch").unwrap();
}

#[test]
fn unexpected_keys_in_module_pre_order() {
    check("unexpected_at_deepest_module").unwrap();
    let full = check("unexpected_order_issue_example").unwrap();
    assert!(
        full.contains("\"head.fc.bias\", \"linear.extra_weight\""),
        "{full}"
    );
}

#[test]
fn non_strict_returns_the_report() {
    assert!(check("non_strict_report").is_none());
}

#[test]
fn batch_norm_counter_keeps_its_value_for_old_checkpoints() {
    assert!(check("bn_missing_counter_without_metadata").is_none());
    assert!(check("bn_missing_counter_version_1").is_none());
    // Only bn1 lacks a metadata entry: its counter is kept, layer1.0.bn1's (version 2) is
    // missing.
    let full = check("bn_missing_counter_no_entry").unwrap();
    assert!(full.contains("Missing key(s) in state_dict: \"layer1.0.bn1.num_batches_tracked\". "));
}

#[test]
fn batch_norm_counter_is_missing_from_version_2_checkpoints() {
    let full = check("bn_missing_counter_version_2").unwrap();
    assert!(full.contains("Missing key(s) in state_dict: \"bn1.num_batches_tracked\""));
}

#[test]
fn counter_is_unexpected_where_the_model_has_none() {
    check("counter_unexpected_in_tch_batch_norm").unwrap();
}

#[test]
fn extra_state_is_reported_first_in_its_module() {
    check("extra_state_first_in_its_module").unwrap();
}

#[test]
fn one_element_tensor_loads_into_a_scalar() {
    check("scalar_from_one_element").unwrap();
}

#[test]
fn shapes_never_broadcast() {
    check("no_broadcast").unwrap();
}

#[test]
fn modules_without_tensors_report_their_keys() {
    check("param_less_module_reports_its_keys").unwrap();
}

#[test]
fn keys_are_quoted_as_python_repr_does() {
    assert!(check("quotes_in_keys").is_none());
}

#[test]
fn dataparallel_prefix_gets_a_hint() {
    let full = check("dataparallel_prefix").unwrap();
    assert!(
        full.contains("state_dict.strip_prefix(\"module.\")"),
        "{full}"
    );
}

#[test]
fn value_that_is_not_a_tensor() {
    check("value_not_a_tensor").unwrap();
}

#[test]
fn other_dtypes_load() {
    assert!(check("other_dtype_loads").is_none());
}
