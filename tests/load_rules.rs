//! `load_state_dict`'s rules on values: what lands in the model, what never changes, and the
//! all-or-nothing guarantee. (The messages are compared with PyTorch in pytorch_messages.rs.)

mod common;

use common::{arange, hash_tensor, hashes};
use indexmap::IndexMap;
use tch::nn::{self, Module, ModuleT};
use tch::{Device, Kind, Tensor};
use tch_state_dict::{
    load_state_dict, load_state_dict_with, state_dict, Error, LoadOptions, ModuleKind, ModuleTree,
    ShapeMismatch, StateDict, Value,
};

/// A VarStore with a small classifier, as a tch user builds one, and its layers.
struct Net {
    vs: nn::VarStore,
    fc1: nn::Linear,
    bn: nn::BatchNorm,
    head: nn::Linear,
}

impl Net {
    fn new(classes: i64) -> Net {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let fc1 = nn::linear(&root / "fc1", 4, 8, Default::default());
        let bn = nn::batch_norm1d(&root / "bn", 8, Default::default());
        let head = nn::linear(&root / "linear", 8, classes, Default::default());
        Net { vs, fc1, bn, head }
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        self.head
            .forward(&self.bn.forward_t(&self.fc1.forward(xs), false).relu())
    }

    /// PyTorch's registration order for the same network.
    fn tree(&self) -> ModuleTree {
        let keys = [
            "fc1.weight",
            "fc1.bias",
            "bn.weight",
            "bn.bias",
            "bn.running_mean",
            "bn.running_var",
            "linear.weight",
            "linear.bias",
        ];
        ModuleTree::from_var_store_ordered(&self.vs, keys)
            .unwrap()
            .with_type_name("Net")
    }
}

/// A state dict for `Net` with distinct values in every tensor.
fn checkpoint(classes: i64) -> StateDict {
    let shapes: [(&str, &[i64]); 8] = [
        ("fc1.weight", &[8, 4]),
        ("fc1.bias", &[8]),
        ("bn.weight", &[8]),
        ("bn.bias", &[8]),
        ("bn.running_mean", &[8]),
        ("bn.running_var", &[8]),
        ("linear.weight", &[classes, 8]),
        ("linear.bias", &[classes]),
    ];
    shapes
        .iter()
        .enumerate()
        .map(|(i, (k, s))| (*k, arange(s, 100.0 * i as f64)))
        .collect()
}

fn load_error(
    r: Result<tch_state_dict::IncompatibleKeys, Error>,
) -> Box<tch_state_dict::LoadError> {
    match r {
        Err(Error::Load(e)) => e,
        other => panic!("expected Error::Load, got {other:?}"),
    }
}

#[test]
fn a_clean_load_copies_every_value() {
    let net = Net::new(10);
    let sd = checkpoint(10);
    let report = load_state_dict(&net.vs, &sd, true).unwrap();
    assert!(report.is_empty());
    assert_eq!(report.to_string(), "<All keys matched successfully>");
    let loaded = state_dict(&net.vs).unwrap();
    for (k, t) in sd.iter() {
        assert!(loaded.get(k).unwrap().equal(t), "{k}");
    }
}

#[test]
fn strict_load_reports_every_missing_and_unexpected_key_at_once() {
    let net = Net::new(10);
    let mut sd = checkpoint(10);
    sd.pop("fc1.weight");
    sd.pop("bn.running_var");
    sd.insert("bn.num_batches_tracked", Tensor::from(3i64));
    sd.insert(
        "extra.weight",
        Tensor::zeros([1], (Kind::Float, Device::Cpu)),
    );
    let e = load_error(load_state_dict(&net.tree(), &sd, true));
    assert_eq!(e.missing_keys, ["fc1.weight", "bn.running_var"]);
    // PyTorch's order: "extra" is no module, so the root reports it, before its child "bn".
    assert_eq!(
        e.unexpected_keys,
        ["extra.weight", "bn.num_batches_tracked"]
    );
    assert!(e.mismatched_keys.is_empty());
    assert!(e.strict);
}

#[test]
fn non_strict_load_returns_missing_and_unexpected_and_loads_the_rest() {
    let net = Net::new(10);
    let mut sd = checkpoint(10);
    let fc1_weight_before = hash_tensor(&net.fc1.ws);
    sd.pop("fc1.weight");
    sd.insert("extra", Tensor::zeros([1], (Kind::Float, Device::Cpu)));
    let report = load_state_dict(&net.tree(), &sd, false).unwrap();
    assert_eq!(report.missing_keys, ["fc1.weight"]);
    assert_eq!(report.unexpected_keys, ["extra"]);
    assert_eq!(
        report.to_string(),
        "_IncompatibleKeys(missing_keys=['fc1.weight'], unexpected_keys=['extra'])"
    );
    assert_eq!(
        hash_tensor(&net.fc1.ws),
        fc1_weight_before,
        "a missing key keeps its value"
    );
    assert!(net.head.ws.equal(sd.get("linear.weight").unwrap()));
}

#[test]
fn shape_mismatch_is_an_error_in_both_modes_and_carries_both_shapes() {
    for strict in [true, false] {
        let net = Net::new(10);
        let e = load_error(load_state_dict(&net.tree(), &checkpoint(100), strict));
        assert_eq!(
            e.mismatched_keys,
            [
                ShapeMismatch {
                    key: "linear.weight".into(),
                    checkpoint_shape: vec![100, 8],
                    model_shape: vec![10, 8],
                },
                ShapeMismatch {
                    key: "linear.bias".into(),
                    checkpoint_shape: vec![100],
                    model_shape: vec![10],
                },
            ]
        );
        assert_eq!(e.type_name, "Net");
    }
}

#[test]
fn a_one_element_tensor_never_broadcasts() {
    let net = Net::new(10);
    let before = hashes(&state_dict(&net.vs).unwrap());
    let mut sd = checkpoint(10);
    // copy_ would broadcast this [1] into the [10] bias.
    sd.insert("linear.bias", Tensor::from_slice(&[5.0f32]));
    let e = load_error(load_state_dict(&net.vs, &sd, false));
    assert_eq!(e.mismatched_keys[0].checkpoint_shape, [1]);
    assert_eq!(hashes(&state_dict(&net.vs).unwrap()), before);
}

#[test]
fn a_one_element_tensor_loads_into_a_scalar() {
    let mut tree = ModuleTree::new("Scaler");
    let scale = Tensor::zeros([], (Kind::Float, Device::Cpu));
    tree.add_tensor("scale", scale.shallow_clone()).unwrap();
    let sd: StateDict = [("scale", Tensor::from_slice(&[2.5f32]))]
        .into_iter()
        .collect();
    load_state_dict(&tree, &sd, true).unwrap();
    assert_eq!(scale.size(), Vec::<i64>::new());
    assert_eq!(scale.double_value(&[]), 2.5);
}

#[test]
fn values_take_the_models_dtype_and_the_model_keeps_its_dtypes_and_grad_flags() {
    let net = Net::new(10);
    let sd = checkpoint(10);
    let mut half: StateDict = StateDict::new();
    for (k, t) in sd.iter() {
        let kind = if k.starts_with("fc1") {
            Kind::Double
        } else {
            Kind::Half
        };
        half.insert(k, t.to_kind(kind));
    }
    // A source that requires grad, as a Parameter saved with keep_vars would.
    half.insert(
        "linear.bias",
        sd.get("linear.bias")
            .unwrap()
            .to_kind(Kind::Half)
            .set_requires_grad(true),
    );
    load_state_dict(&net.vs, &half, true).unwrap();
    for (k, t) in state_dict(&net.vs).unwrap().iter() {
        assert_eq!(t.kind(), Kind::Float, "{k} changed dtype");
        let expected = half.get(k).unwrap().to_kind(Kind::Float);
        assert!(t.equal(&expected), "{k} holds the converted value");
    }
    assert!(net.fc1.ws.requires_grad() && net.head.bs.as_ref().unwrap().requires_grad());
    assert!(
        !net.bn.running_mean.requires_grad(),
        "a buffer stays without grad"
    );
    // The copies recorded no autograd history: parameters are still leaves and train.
    assert!(net.fc1.ws.is_leaf() && net.head.ws.is_leaf());
    let loss = net
        .forward(&Tensor::ones([2, 4], (Kind::Float, Device::Cpu)))
        .sum(None);
    loss.backward();
    assert!(net.fc1.ws.grad().defined());
}

#[test]
fn integer_buffers_keep_their_dtype() {
    let mut tree = ModuleTree::new("Net");
    let counter = Tensor::from(0i64);
    tree.add_tensor("bn.num_batches_tracked", counter.shallow_clone())
        .unwrap();
    let sd: StateDict = [("bn.num_batches_tracked", Tensor::from(7i32))]
        .into_iter()
        .collect();
    load_state_dict(&tree, &sd, true).unwrap();
    assert_eq!(counter.kind(), Kind::Int64);
    assert_eq!(counter.int64_value(&[]), 7);
}

#[test]
fn a_failing_strict_load_leaves_every_tensor_bit_identical() {
    let net = Net::new(10);
    let before = hashes(&state_dict(&net.vs).unwrap());
    let mut sd = checkpoint(10);
    sd.pop("bn.bias");
    assert!(load_state_dict(&net.tree(), &sd, true).is_err());
    assert_eq!(hashes(&state_dict(&net.vs).unwrap()), before);
}

#[test]
fn a_load_that_fails_on_its_last_key_writes_nothing() {
    let net = Net::new(10);
    let before = hashes(&state_dict(&net.vs).unwrap());
    let mut sd = checkpoint(10);
    // linear.bias is the last key in the model's order; everything before it is loadable.
    sd.insert("linear.bias", arange(&[11], 0.0));
    for strict in [true, false] {
        let e = load_error(load_state_dict(&net.tree(), &sd, strict));
        assert_eq!(e.mismatched_keys.len(), 1);
        assert_eq!(hashes(&state_dict(&net.vs).unwrap()), before);
    }
}

#[test]
fn skip_mismatched_loads_the_rest_and_reports_what_it_skipped() {
    let net = Net::new(10);
    let head_before = hash_tensor(&net.head.ws);
    let sd = checkpoint(100);
    let options = LoadOptions::new().skip_mismatched(true);
    let report = load_state_dict_with(&net.tree(), &sd, &options).unwrap();
    assert_eq!(
        report
            .mismatched_keys
            .iter()
            .map(|m| m.key.as_str())
            .collect::<Vec<_>>(),
        ["linear.weight", "linear.bias"]
    );
    assert!(report.missing_keys.is_empty() && report.unexpected_keys.is_empty());
    assert_eq!(hash_tensor(&net.head.ws), head_before);
    assert!(net.fc1.ws.equal(sd.get("fc1.weight").unwrap()));
    assert_eq!(
        report.to_string(),
        "_IncompatibleKeys(missing_keys=[], unexpected_keys=[], mismatched_keys=[\
         ('linear.weight', torch.Size([100, 8]), torch.Size([10, 8])), \
         ('linear.bias', torch.Size([100]), torch.Size([10]))])"
    );
    // Strict still applies to keys.
    let mut sd = checkpoint(100);
    sd.pop("fc1.bias");
    let e = load_error(load_state_dict_with(&net.tree(), &sd, &options));
    assert_eq!(e.missing_keys, ["fc1.bias"]);
    assert!(!e.pytorch_message().contains("size mismatch"));
}

#[test]
fn loads_while_the_model_is_alive_and_the_model_sees_the_values() {
    let net = Net::new(3);
    let x = Tensor::ones([1, 4], (Kind::Float, Device::Cpu));
    let before = net.forward(&x);
    let sd = checkpoint(3);
    load_state_dict(&net.vs, &sd, true).unwrap();
    let after = net.forward(&x);
    assert!(!before.equal(&after));
    // The same network built from the checkpoint's values gives the same output.
    let other = Net::new(3);
    let vs_copy = &other.vs;
    tch::no_grad(|| {
        for (k, mut t) in vs_copy.variables() {
            t.copy_(sd.get(&k).unwrap());
        }
    });
    assert!(other.forward(&x).allclose(&after, 1e-6, 1e-6, false));
}

#[test]
fn a_bare_var_store_uses_natural_order() {
    let vs = nn::VarStore::new(Device::Cpu);
    for i in [10, 2, 9, 1] {
        let _ = vs.root().sub("layer1").sub(i).zeros("weight", &[1]);
    }
    let _ = vs.root().sub("layer1").zeros("bias", &[1]);
    let sd = state_dict(&vs).unwrap();
    assert_eq!(
        sd.keys().collect::<Vec<_>>(),
        [
            "layer1.bias",
            "layer1.1.weight",
            "layer1.2.weight",
            "layer1.9.weight",
            "layer1.10.weight",
        ]
    );
    let e = load_error(load_state_dict(&vs, &StateDict::new(), true));
    assert_eq!(e.missing_keys, sd.keys().collect::<Vec<_>>());
    assert!(e
        .pytorch_message()
        .starts_with("Error(s) in loading state_dict for VarStore:\n\t"));
}

#[test]
fn the_caller_names_a_bare_var_store() {
    let net = Net::new(10);
    let tree = ModuleTree::from_var_store(&net.vs)
        .unwrap()
        .with_type_name("MyNet");
    let e = load_error(load_state_dict(&tree, &StateDict::new(), true));
    assert!(e
        .pytorch_message()
        .starts_with("Error(s) in loading state_dict for MyNet:\n\t"));
}

#[test]
fn an_order_must_name_every_variable_once() {
    let net = Net::new(10);
    let r = ModuleTree::from_var_store_ordered(
        &net.vs,
        ["fc1.weight", "fc1.weight", "nope", "fc1.bias"],
    );
    match r {
        Err(Error::KeyOrder {
            unknown,
            repeated,
            left_out,
        }) => {
            assert_eq!(unknown, ["nope"]);
            assert_eq!(repeated, ["fc1.weight"]);
            assert_eq!(left_out.len(), 6);
            assert_eq!(left_out[0], "bn.bias");
        }
        other => panic!("{other:?}"),
    }
}

fn batch_norm_tree(counter: &Tensor) -> ModuleTree {
    let mut tree = ModuleTree::new("Net");
    tree.add_module("bn", ModuleKind::BatchNorm).unwrap();
    tree.add_tensor("bn.weight", Tensor::ones([2], (Kind::Float, Device::Cpu)))
        .unwrap();
    tree.add_tensor("bn.num_batches_tracked", counter.shallow_clone())
        .unwrap();
    tree
}

fn with_version(mut sd: StateDict, version: i64) -> StateDict {
    let mut entry = IndexMap::new();
    entry.insert("version".to_string(), Value::Int(version));
    sd.set_metadata(Some([("bn".to_string(), entry)].into_iter().collect()));
    sd
}

#[test]
fn batch_norm_counter_keeps_its_value_when_an_old_checkpoint_lacks_it() {
    let counter = Tensor::from(7i64);
    let tree = batch_norm_tree(&counter);
    let sd: StateDict = [("bn.weight", Tensor::zeros([2], (Kind::Float, Device::Cpu)))]
        .into_iter()
        .collect();
    assert!(load_state_dict(&tree, &sd, true).unwrap().is_empty());
    assert_eq!(counter.int64_value(&[]), 7);
    let sd = with_version(sd, 1);
    assert!(load_state_dict(&tree, &sd, true).unwrap().is_empty());
    let sd = with_version(sd, 2);
    let e = load_error(load_state_dict(&tree, &sd, true));
    assert_eq!(e.missing_keys, ["bn.num_batches_tracked"]);
    // Present, it loads.
    let mut sd = with_version(sd, 2);
    sd.insert("bn.num_batches_tracked", Tensor::from(40i64));
    load_state_dict(&tree, &sd, true).unwrap();
    assert_eq!(counter.int64_value(&[]), 40);
}

#[test]
fn the_counter_rule_is_only_for_batch_norm_modules() {
    let mut tree = ModuleTree::new("Net");
    tree.add_tensor("bn.num_batches_tracked", Tensor::from(0i64))
        .unwrap();
    let e = load_error(load_state_dict(&tree, &StateDict::new(), true));
    assert_eq!(e.missing_keys, ["bn.num_batches_tracked"]);
}

#[test]
fn state_dict_shares_storage_and_is_detached() {
    let net = Net::new(10);
    let sd = state_dict(&net.vs).unwrap();
    let mut w = sd.get("fc1.weight").unwrap().shallow_clone();
    assert!(!w.requires_grad());
    let _ = w.fill_(3.0);
    assert_eq!(net.fc1.ws.double_value(&[0, 0]), 3.0);
}

#[test]
fn state_dict_metadata_gives_each_module_its_version() {
    let counter = Tensor::from(0i64);
    let sd = state_dict(&batch_norm_tree(&counter)).unwrap();
    let metadata = sd.metadata().unwrap();
    assert_eq!(metadata.keys().collect::<Vec<_>>(), ["", "bn"]);
    assert_eq!(metadata[""]["version"].as_int(), Some(1));
    assert_eq!(metadata["bn"]["version"].as_int(), Some(2));
}

/// A snapshot of a model's own state dict (copies of its tensors, as
/// `copy.deepcopy(model.state_dict())`) puts back the values the model had when it was taken;
/// the live state dict, whose tensors are the model's own (trainable ones included), loads
/// onto the model without an error and without changing a value.
#[test]
fn a_model_loads_its_own_state_dict() {
    let net = Net::new(10);
    let before = hashes(&state_dict(&net.vs).unwrap());
    let snapshot: StateDict = state_dict(&net.tree())
        .unwrap()
        .iter()
        .map(|(k, t)| (k.to_string(), t.copy()))
        .collect();
    // Every value moves, as training moves them.
    for (_, t) in state_dict(&net.vs).unwrap().iter() {
        let _ = t.shallow_clone().g_add_scalar_(1.0);
    }
    let moved = hashes(&state_dict(&net.vs).unwrap());
    assert!(
        moved.iter().zip(&before).all(|(m, b)| m.1 != b.1),
        "every tensor changed"
    );
    load_state_dict(&net.tree(), &snapshot, true).unwrap();
    assert_eq!(hashes(&state_dict(&net.vs).unwrap()), before);
    let live = state_dict(&net.tree()).unwrap();
    load_state_dict(&net.tree(), &live, true).unwrap();
    assert_eq!(hashes(&state_dict(&net.vs).unwrap()), before);
}

#[test]
fn an_undefined_tensor_is_refused_by_key() {
    let net = Net::new(10);
    let mut sd = checkpoint(10);
    sd.insert("fc1.bias", Tensor::new());
    let e = load_error(load_state_dict(&net.tree(), &sd, false));
    assert_eq!(e.undefined_keys, ["fc1.bias"]);
}

#[test]
fn hints_follow_pytorchs_text() {
    let net = Net::new(10);
    let mut sd = checkpoint(10);
    sd.add_prefix("module.");
    let err = load_state_dict(&net.tree(), &sd, true).unwrap_err();
    let text = err.to_string();
    let Error::Load(e) = &err else { panic!() };
    assert!(text.starts_with(&e.pytorch_message()));
    assert!(
        text.ends_with("strip it first: state_dict.strip_prefix(\"module.\")"),
        "{text}"
    );

    let mut sd = checkpoint(10);
    sd.rename_prefix("linear.", "fc.").unwrap();
    let text = load_state_dict(&net.tree(), &sd, true)
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("state_dict.rename_prefix(\"fc.\", \"linear.\")"),
        "{text}"
    );
}
