//! Whole pickled modules: `torch.save(model)` and `{'model': model}` give the module's state
//! dict, as `model.state_dict()` gives it in Python (tests/oracle/full_load.py): the same keys
//! in the same order, the same values, the same `_metadata`, through every way of reading a
//! state dict. The module's class is never imported.

mod common;

use common::tempdir;

use std::path::{Path, PathBuf};

use tch::{nn, Device};
use tch_state_dict::models;
use tch_state_dict::{
    load_checkpoint, load_state_dict, Checkpoint, Error, LazyStateDict, LoadOptions, StateDict,
    Value,
};

fn fixture(name: &str) -> PathBuf {
    common::test_file(&format!("fixtures/training/{name}"))
}

/// Python's `torch.load(path, weights_only=False)[key].state_dict()`, saved by Python and read
/// back as a plain state dict.
fn python_state_dict(path: &Path, key: &str, dir: &Path) -> StateDict {
    let out = dir.join("python_state_dict.pth");
    common::oracle(
        "oracle/full_load.py",
        &[
            "state_dict",
            path.to_str().unwrap(),
            key,
            out.to_str().unwrap(),
        ],
        "",
    );
    StateDict::load(&out).unwrap()
}

/// Same keys in the same order, bitwise equal tensors (dtype, shape, values), equal
/// `_metadata`.
fn assert_same(ours: &StateDict, python: &StateDict, what: &str) {
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        python.keys().collect::<Vec<_>>(),
        "{what}: keys"
    );
    for (k, t) in python.iter() {
        let o = ours.get(k).unwrap();
        assert_eq!(o.kind(), t.kind(), "{what}/{k}");
        assert_eq!(o.size(), t.size(), "{what}/{k}");
        assert_eq!(common::hash_tensor(o), common::hash_tensor(t), "{what}/{k}");
    }
    let versions = |sd: &StateDict| -> Vec<(String, Option<i64>)> {
        sd.metadata()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.get("version").and_then(Value::as_int)))
            .collect()
    };
    assert_eq!(versions(ours), versions(python), "{what}: _metadata");
}

/// Every way of reading the state dict of a module at `key` (`""`: the top level) gives
/// Python's.
fn assert_every_path_matches(path: &Path, key: &str, dir: &Path) -> StateDict {
    let python = python_state_dict(path, key, dir);
    let (eager, lazy) = if key.is_empty() {
        (
            StateDict::load(path).unwrap(),
            LazyStateDict::load(path).unwrap(),
        )
    } else {
        (
            StateDict::load_key(path, key).unwrap(),
            LazyStateDict::load_key(path, key).unwrap(),
        )
    };
    assert_same(&eager, &python, "StateDict::load");
    assert_eq!(
        lazy.keys().collect::<Vec<_>>(),
        python.keys().collect::<Vec<_>>()
    );
    assert_same(&lazy.into_state_dict().unwrap(), &python, "LazyStateDict");
    python
}

/// Loads the state dict at `key` (`""`: the top level) of `path` strictly into the crate's
/// 10-class resnet18, and requires the model's tensors to be Python's.
fn assert_loads_into_resnet18(path: &Path, key: &str, python: &StateDict) {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = models::resnet18(&vs, 10).unwrap();
    let ckpt = Checkpoint::open(path).unwrap();
    let options = LoadOptions::new();
    let report = match key {
        "" => ckpt.load_into(&model, &options),
        key => ckpt.load_into_at(key, &model, &options),
    }
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(report.missing_keys.is_empty() && report.unexpected_keys.is_empty());
    let loaded = tch_state_dict::state_dict(&model).unwrap();
    assert_same(&loaded, python, "loaded model");
}

#[test]
fn torch_save_of_an_nn_sequential() {
    let dir = tempdir("sequential");
    let path = fixture("sequential.pth");
    let python = assert_every_path_matches(&path, "", &dir);
    // A Linear without bias has no 'bias' key; ReLU and Flatten have no tensors.
    assert!(python.contains_key("3.1.weight") && !python.contains_key("3.1.bias"));
    // The whole value is the module object, its tensors read.
    let v = Value::load(&path).unwrap();
    let o = v.as_object().unwrap();
    assert_eq!(o.qualified_name(), "torch.nn.modules.container.Sequential");
    assert!(o.get_attr("_modules").is_some());
}

#[test]
fn a_module_of_an_unknown_class_under_a_key() {
    let dir = tempdir("in-dict");
    let path = fixture("model_in_dict.pth");
    let python = assert_every_path_matches(&path, "model", &dir);
    // Its own parameter and persistent buffer first, then its children; the non-persistent
    // buffer, the None submodule and the Linear's None bias are not there.
    assert_eq!(
        python.keys().collect::<Vec<_>>(),
        [
            "scale",
            "step",
            "features.0.weight",
            "features.0.bias",
            "features.1.weight",
            "features.1.bias",
            "features.1.running_mean",
            "features.1.running_var",
            "features.1.num_batches_tracked",
            "head.weight"
        ]
    );
    // The top level is a dict holding a module: the error says where the state dict is.
    let err = StateDict::load(&path).unwrap_err();
    match &err {
        Error::NotAStateDict { entries, .. } => assert_eq!(
            entries[0],
            (
                "'model'".to_string(),
                "an nn.Module fakepkg.Net with a state dict of 10 tensors".to_string()
            )
        ),
        other => panic!("{other:?}"),
    }
    assert!(err
        .to_string()
        .contains("StateDict::load_key(path, \"model\")"));
}

/// The generated code of a GraphModule's value: kept as a string, never run.
fn graph_module_code(v: &Value) -> String {
    let o = v.as_object().unwrap();
    assert_eq!(
        o.qualified_name(),
        "torch.fx.graph_module.reduce_graph_module"
    );
    let code = o.get_attr("_code").and_then(Value::as_str).unwrap();
    code.to_string()
}

#[test]
fn a_torch_fx_graph_module_gives_its_state_dict() {
    let dir = tempdir("fx-small");
    let path = fixture("fx_small.pth");
    let python = assert_every_path_matches(&path, "", &dir);
    assert_eq!(python.len(), 8);
    let code = graph_module_code(&Value::load(&path).unwrap());
    assert!(code.contains("def forward(self, x)"), "{code}");
    // Into the same model built the tch way, strictly.
    let vs = nn::VarStore::new(Device::Cpu);
    common::small_model(&vs, 10);
    let report = load_checkpoint(&vs, &path, true).unwrap();
    assert!(report.missing_keys.is_empty() && report.unexpected_keys.is_empty());
    // tch's BatchNorm has no num_batches_tracked: every other tensor is Python's.
    let loaded = tch_state_dict::state_dict(&vs).unwrap();
    assert_eq!(loaded.len(), 7);
    for (k, t) in loaded.iter() {
        let p = python.get(k).unwrap();
        assert_eq!(common::hash_tensor(t), common::hash_tensor(p), "{k}");
    }
}

#[test]
fn graph_modules_of_torch_package_and_torch_deploy_give_the_same_state_dict() {
    // fx_small.pth's module as reduce_package_graph_module(importer, body, name) and
    // reduce_deploy_graph_module(importer, body, import_block) calls: the body is the second
    // argument. torch.load cannot rebuild these without their importer; the state dict is
    // the one of the same module saved plainly, which tests above compare with Python.
    let plain = StateDict::load(fixture("fx_small.pth")).unwrap();
    for name in ["fx_package.pth", "fx_deploy.pth"] {
        let path = fixture(name);
        for sd in [
            StateDict::load(&path).unwrap(),
            LazyStateDict::load(&path)
                .unwrap()
                .into_state_dict()
                .unwrap(),
        ] {
            assert_same(&sd, &plain, name);
        }
        let v = Value::load(&path).unwrap();
        let code = v.attr("_code").and_then(Value::as_str).unwrap();
        assert!(code.contains("def forward(self, x)"), "{name}");
    }
}

#[test]
fn a_graph_module_with_nested_submodules_and_buffers_under_a_key() {
    let dir = tempdir("fx-nested");
    let path = fixture("fx_nested.pth");
    let python = assert_every_path_matches(&path, "model", &dir);
    // torch.fx copied the buffers the graph reads into nested modules of its own, as
    // persistent buffers, the one that was not persistent too: Python's keys say so.
    let keys: Vec<&str> = python.keys().collect();
    assert!(
        keys.contains(&"blocks.0.scale") && keys.contains(&"mean"),
        "{keys:?}"
    );
    assert!(keys.contains(&"blocks.1.shift"), "{keys:?}");
    let v = Value::load(&path).unwrap();
    let code = graph_module_code(v.get("model").unwrap());
    assert!(code.contains("blocks"), "{code}");
    // The top level is a dict holding a module: the error says where the state dict is.
    let err = StateDict::load(&path).unwrap_err();
    assert!(
        err.to_string()
            .contains("StateDict::load_key(path, \"model\")"),
        "{err}"
    );
}

#[test]
fn torchvision_resnet18_traced_by_torch_fx_loads_into_the_crates_resnet18() {
    let dir = tempdir("fx-resnet18");
    let path = dir.join("resnet18_fx.pth");
    common::oracle(
        "oracle/full_load.py",
        &[
            "save_model",
            "resnet18",
            "10",
            path.to_str().unwrap(),
            "",
            "fx",
        ],
        "",
    );
    let python = assert_every_path_matches(&path, "", &dir);
    graph_module_code(&Value::load(&path).unwrap());
    assert_loads_into_resnet18(&path, "", &python);
}

#[test]
fn a_whole_model_in_the_legacy_format_names_its_classes_by_persistent_ids() {
    // torch.save(model, _use_new_zipfile_serialization=False), as PyTorch 1.5 and older
    // saved every whole model: ('module', class, source_file, source) for each class.
    let dir = tempdir("legacy-whole");
    for how in [vec!["legacy"], vec!["fx", "legacy"]] {
        let path = dir.join(format!("resnet18_{}.pt", how.join("_")));
        let mut args = vec![
            "save_model",
            "resnet18",
            "10",
            path.to_str().unwrap(),
            "model",
        ];
        args.extend(&how);
        common::oracle("oracle/full_load.py", &args, "");
        assert_eq!(
            Checkpoint::open(&path).unwrap().format(),
            tch_state_dict::Format::TorchLegacy
        );
        let python = assert_every_path_matches(&path, "model", &dir);
        assert_loads_into_resnet18(&path, "model", &python);
    }
}

#[test]
fn torchvision_resnet18_saved_whole_loads_into_the_crates_resnet18() {
    let dir = tempdir("resnet18");
    let path = dir.join("resnet18_model.pth");
    common::oracle(
        "oracle/full_load.py",
        &["save_model", "resnet18", "10", path.to_str().unwrap(), ""],
        "",
    );
    let python = assert_every_path_matches(&path, "", &dir);
    let meta = python.metadata().unwrap();
    assert_eq!(meta["bn1"]["version"].as_int(), Some(2));
    assert_eq!(meta["layer1.0"]["version"].as_int(), Some(1));

    // model.load_state_dict(torch.load(p, weights_only=False).state_dict()), strictly.
    let vs = nn::VarStore::new(Device::Cpu);
    let model = models::resnet18(&vs, 10).unwrap();
    let report = load_checkpoint(&model, &path, true).unwrap();
    assert!(report.missing_keys.is_empty() && report.unexpected_keys.is_empty());
    assert_same(
        &tch_state_dict::state_dict(&model).unwrap(),
        &python,
        "loaded model",
    );

    // BatchNorm's num_batches_tracked rule holds: the synthesized _metadata says version 2,
    // so a missing num_batches_tracked is a missing key, as in PyTorch.
    let mut sd = LazyStateDict::load(&path).unwrap();
    sd.pop("bn1.num_batches_tracked");
    let report = load_state_dict(&model, &sd, false).unwrap();
    assert_eq!(report.missing_keys, ["bn1.num_batches_tracked"]);
    // With the version below 2, as an old checkpoint, the model keeps its own value.
    if let Some(m) = sd.metadata_mut() {
        m.get_mut("bn1")
            .unwrap()
            .insert("version".into(), Value::Int(1));
    }
    let report = load_state_dict(&model, &sd, true).unwrap();
    assert!(report.missing_keys.is_empty());
}

#[test]
fn cifar_resnet50_saved_whole_under_model_is_the_seeds_story() {
    let dir = tempdir("cifar50");
    let path = dir.join("ckpt_epoch_240.pth");
    common::oracle(
        "oracle/full_load.py",
        &[
            "save_model",
            "cifar_resnet50",
            "100",
            path.to_str().unwrap(),
            "model",
        ],
        "",
    );
    let python = assert_every_path_matches(&path, "model", &dir);
    // Loaded straight into the crate's CIFAR ResNet50, then the head replaced.
    let vs = nn::VarStore::new(Device::Cpu);
    let mut model = models::cifar_resnet50(&vs, 100).unwrap();
    Checkpoint::open(&path)
        .unwrap()
        .load_into_at("model", &model, &LoadOptions::new())
        .unwrap();
    assert_same(
        &tch_state_dict::state_dict(&model).unwrap(),
        &python,
        "loaded model",
    );
    models::replace_head(&mut model, 7).unwrap();
    assert_eq!(model.num_classes(), 7);
}
