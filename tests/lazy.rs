//! `LazyStateDict`: key surgery on a file's state dict before its tensors are read, then a
//! load that reads each remaining tensor straight from the file into the model. The values,
//! reports and words must be those of the eager path (`StateDict::load` + `load_state_dict`)
//! on every fixture; failures must leave the model untouched.

mod common;

use common::{blank_model, fixture, tempdir};

use std::path::PathBuf;

use tch::{nn, Device, Kind, Tensor};
use tch_state_dict::models::{Arch, ResNet};
use tch_state_dict::{
    check_state_dict, load_state_dict, load_state_dict_with, state_dict, Checkpoint, Error,
    LazyStateDict, LoadOptions, ModuleTree, ReadOptions, StateDict, Value,
};

fn model_hashes(model: &ModuleTree) -> Vec<(String, u64)> {
    common::hashes(&state_dict(model).unwrap())
}

/// A 100-class CIFAR ResNet saved as `{'model': sd, 'epoch': 240}`, the seed's checkpoint.
fn training_checkpoint(dir: &std::path::Path, arch: Arch) -> (PathBuf, StateDict) {
    let vs = nn::VarStore::new(Device::Cpu);
    let trained = ResNet::new(&vs, arch, 100).unwrap();
    let sd = state_dict(&trained).unwrap();
    let path = dir.join("ckpt_epoch_240.pth");
    Value::dict([
        ("model", Value::from(sd.shallow_clone())),
        ("epoch", Value::from(240)),
    ])
    .save(&path)
    .unwrap();
    (path, sd)
}

#[test]
fn the_seeds_fix_pops_the_head_and_loads_the_rest_straight_from_the_file() {
    let dir = tempdir("seed");
    let (path, trained) = training_checkpoint(&dir, Arch::ResNet8x4);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ResNet::new(&vs, Arch::ResNet8x4, 10).unwrap();
    let head_before = common::hash_tensor(state_dict(&model).unwrap().get("fc.weight").unwrap());

    // The obvious code: open, pop, pop, load non-strictly.
    let mut sd = LazyStateDict::load_key(&path, "model").unwrap();
    let n = sd.len();
    assert!(sd.pop("fc.weight").is_some());
    assert!(sd.pop("fc.bias").is_some());
    assert_eq!(sd.len(), n - 2);
    let report = load_state_dict(&model, &sd, false).unwrap();
    assert_eq!(report.missing_keys, ["fc.weight", "fc.bias"]);
    assert!(report.unexpected_keys.is_empty());

    let loaded = state_dict(&model).unwrap();
    for (k, t) in trained.iter() {
        if k.starts_with("fc.") {
            continue;
        }
        assert!(loaded.get(k).unwrap().equal(t), "{k}");
    }
    assert_eq!(
        common::hash_tensor(loaded.get("fc.weight").unwrap()),
        head_before
    );
}

#[test]
fn without_the_pop_the_lazy_load_fails_in_pytorchs_words_and_writes_nothing() {
    let dir = tempdir("mismatch");
    let (path, trained) = training_checkpoint(&dir, Arch::ResNet8x4);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ResNet::new(&vs, Arch::ResNet8x4, 10).unwrap();
    let before = common::hashes(&state_dict(&model).unwrap());
    let lazy = LazyStateDict::load_key(&path, "model").unwrap();
    let from_file = load_state_dict(&model, &lazy, false).unwrap_err();
    let in_memory = load_state_dict(&model, &trained, false).unwrap_err();
    match (&from_file, &in_memory) {
        (Error::Load(a), Error::Load(b)) => {
            assert_eq!(a.pytorch_message(), b.pytorch_message());
            assert!(a.pytorch_message().contains("size mismatch for fc.weight"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(common::hashes(&state_dict(&model).unwrap()), before);
    // The dry run says the same without reading anything.
    assert!(matches!(
        check_state_dict(&model, &lazy, &LoadOptions::new().strict(false)),
        Err(Error::Load(_))
    ));
}

#[test]
fn a_dataparallel_prefix_is_stripped_then_loaded_strictly() {
    let eager = {
        let mut sd = StateDict::load(fixture("dataparallel.pth")).unwrap();
        sd.strip_prefix("module.");
        sd
    };
    let mut lazy = LazyStateDict::load(fixture("dataparallel.pth")).unwrap();
    assert_eq!(lazy.strip_prefix("module."), eager.len());
    assert_eq!(
        lazy.keys().collect::<Vec<_>>(),
        eager.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        lazy.metadata()
            .map(|m| m.keys().cloned().collect::<Vec<_>>()),
        eager
            .metadata()
            .map(|m| m.keys().cloned().collect::<Vec<_>>())
    );
    let model = blank_model(&eager, None);
    assert!(load_state_dict(&model, &lazy, true).unwrap().is_empty());
    assert_eq!(model_hashes(&model), common::hashes(&eager));
}

#[test]
fn every_fixture_loads_the_values_the_eager_path_loads() {
    for name in [
        "dtypes.pth",
        "views.pth",
        "legacy.pth",
        "legacy_dtypes.pth",
        "protocol4.pth",
        "protocol5.pth",
        // A tch before 0.19 has no float8 kinds (tests/read_pytorch.rs checks its refusal).
        #[cfg(tch_float8)]
        "float8.pth",
        "unaligned.pth",
        "deflated.pth",
        "zero_crc.pth",
        "big_endian.pth",
        "other_root.pth",
        "parameters.pth",
        "model.safetensors",
        "sharded/model.safetensors.index.json",
        "sharded_bin/pytorch_model.bin.index.json",
    ] {
        let eager = StateDict::load(fixture(name)).unwrap();
        let lazy = LazyStateDict::load(fixture(name)).unwrap();
        assert_eq!(lazy.len(), eager.len(), "{name}");
        for ((k, l), (ek, e)) in lazy.iter().zip(eager.iter()) {
            assert_eq!(k, ek, "{name}");
            assert_eq!(l.size(), e.size(), "{name} {k}");
            assert_eq!(l.kind(), Some(e.kind()), "{name} {k}");
            assert!(!l.is_in_memory());
            // One tensor on demand.
            assert_eq!(
                common::hash_tensor(&l.read().unwrap()),
                common::hash_tensor(e),
                "{name} {k}"
            );
        }
        // Whole, into memory.
        let read = lazy.shallow_clone().into_state_dict().unwrap();
        assert_eq!(common::hashes(&read), common::hashes(&eager), "{name}");
        // Into models of the saved dtypes, and of float64 (a converting load).
        for kind in [None, Some(Kind::Double)] {
            let model = blank_model(&eager, kind);
            let report =
                load_state_dict(&model, &lazy, true).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(report.is_empty(), "{name}");
            let reference = blank_model(&eager, kind);
            load_state_dict(&reference, &eager, true).unwrap();
            assert_eq!(model_hashes(&model), model_hashes(&reference), "{name}");
        }
    }
}

#[test]
fn inserted_tensors_are_copied_and_file_entries_read() {
    let eager = StateDict::load(fixture("dtypes.pth")).unwrap();
    let mut lazy = LazyStateDict::load(fixture("dtypes.pth")).unwrap();
    let (key, t) = eager
        .iter()
        .find(|(_, t)| t.kind() == Kind::Float && t.numel() > 1)
        .unwrap();
    let replacement = t.ones_like() * 7.0;
    let old = lazy.insert(key, replacement.shallow_clone()).unwrap();
    assert!(!old.is_in_memory());
    assert!(lazy.get(key).unwrap().is_in_memory());
    // The key kept its place.
    assert_eq!(
        lazy.keys().collect::<Vec<_>>(),
        eager.keys().collect::<Vec<_>>()
    );
    let model = blank_model(&eager, None);
    load_state_dict(&model, &lazy, true).unwrap();
    assert!(model.get(key).unwrap().equal(&replacement));
    for (k, e) in eager.iter().filter(|(k, _)| *k != key) {
        assert!(model.get(k).unwrap().equal(e), "{k}");
    }
}

#[test]
fn retain_sees_shapes_and_dtypes_without_reading() {
    let dir = tempdir("retain");
    let (path, _) = training_checkpoint(&dir, Arch::ResNet8x4);
    let mut sd = LazyStateDict::load_key(&path, "model").unwrap();
    let in_features = sd.get("fc.weight").unwrap().size()[1];
    sd.retain(|_, t| t.size() != [100, in_features] && t.size() != [100]);
    assert!(!sd.contains_key("fc.weight") && !sd.contains_key("fc.bias"));
    sd.retain(|_, t| t.kind() == Some(Kind::Float));
    assert!(sd.keys().all(|k| !k.ends_with("num_batches_tracked")));
    assert!(sd.nbytes() > 0);
}

#[test]
fn rename_prefix_and_add_prefix_move_entries_unread() {
    let mut lazy = LazyStateDict::load(fixture("dataparallel.pth")).unwrap();
    let mut eager = StateDict::load(fixture("dataparallel.pth")).unwrap();
    lazy.strip_prefix("module.");
    eager.strip_prefix("module.");
    let first = eager.keys().next().unwrap().to_string();
    let module = first.split('.').next().unwrap().to_string();
    let from = format!("{module}.");
    assert_eq!(
        lazy.rename_prefix(&from, "renamed.").unwrap(),
        eager.rename_prefix(&from, "renamed.").unwrap()
    );
    lazy.add_prefix("net.");
    eager.add_prefix("net.");
    assert_eq!(
        lazy.keys().collect::<Vec<_>>(),
        eager.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        common::hashes(&lazy.into_state_dict().unwrap()),
        common::hashes(&eager)
    );
    // A rename onto an existing key is refused and changes nothing.
    let mut lazy = LazyStateDict::load(fixture("dtypes.pth")).unwrap();
    let keys: Vec<String> = lazy.keys().map(str::to_string).collect();
    assert!(matches!(
        lazy.rename(|_| "same".to_string()),
        Err(Error::DuplicateKey { .. })
    ));
    assert_eq!(lazy.keys().collect::<Vec<_>>(), keys);
}

#[test]
fn a_file_truncated_after_it_was_opened_is_refused_before_any_write() {
    let dir = tempdir("truncated");
    let path = dir.join("model.pth");
    let sd: StateDict = (0..8)
        .map(|i| {
            (
                format!("layer{i}.weight"),
                Tensor::randn([256, 256], (Kind::Float, Device::Cpu)),
            )
        })
        .collect();
    sd.save(&path).unwrap();
    let lazy = LazyStateDict::load(&path).unwrap();
    let ckpt = Checkpoint::open(&path).unwrap();
    let half = common::truncate_to_half(&path);
    for kind in [None, Some(Kind::Half)] {
        let model = blank_model(&sd, kind);
        let before = model_hashes(&model);
        let err = load_state_dict(&model, &lazy, true).unwrap_err();
        assert!(
            matches!(err, Error::FileChanged { found, .. } if found == half),
            "{err:?}"
        );
        assert_eq!(model_hashes(&model), before);
    }
    // Reading one tensor past the new end is an I/O error, not a signal.
    let last = lazy.get("layer7.weight").unwrap();
    assert!(matches!(last.read(), Err(Error::Io { .. })));
    // The same through Checkpoint::load_into, on a checkpoint opened before the cut.
    let model = blank_model(&sd, None);
    let before = model_hashes(&model);
    let err = ckpt.load_into(&model, &LoadOptions::new()).unwrap_err();
    assert!(
        matches!(err, Error::FileChanged { found, .. } if found == half),
        "{err:?}"
    );
    assert_eq!(model_hashes(&model), before);
    // Opened after the cut, the file is refused as the zip it no longer is.
    let err = Checkpoint::open(&path).map(|_| ()).unwrap_err();
    assert!(matches!(err, Error::Zip { .. }), "{err:?}");
}

#[test]
fn converting_loads_match_copy_for_every_dtype_pair() {
    let dir = tempdir("convert");
    // Large enough for several chunks per tensor and several threads, uneven sizes.
    let sizes = [2_500_001i64, 3, 1_200_000, 0, 700_001];
    let base: StateDict = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            (
                format!("t{i}"),
                Tensor::randn([n], (Kind::Float, Device::Cpu)) * 100.0,
            )
        })
        .collect();
    for (saved, model_kind) in [
        (Kind::Half, Kind::Float),
        (Kind::BFloat16, Kind::Float),
        (Kind::Float, Kind::BFloat16),
        (Kind::Float, Kind::Half),
        (Kind::Double, Kind::Float),
    ] {
        let sd: StateDict = base
            .iter()
            .map(|(k, t)| (k.to_string(), t.to_kind(saved)))
            .collect();
        for (name, format) in [("m.pth", "pth"), ("m.safetensors", "st")] {
            let path = dir.join(name);
            sd.save(&path).unwrap();
            for threads in [Some(1), Some(2), Some(3)] {
                let options = ReadOptions::new().threads(threads);
                let lazy = LazyStateDict::load_with(&path, &options).unwrap();
                let model = blank_model(&sd, Some(model_kind));
                load_state_dict(&model, &lazy, true).unwrap();
                for (k, t) in sd.iter() {
                    let got = model.get(k).unwrap();
                    assert_eq!(got.kind(), model_kind);
                    let want = t.to_kind(model_kind);
                    assert!(
                        got.equal(&want),
                        "{saved:?} -> {model_kind:?}, {format}, {threads:?} threads, {k}"
                    );
                }
            }
        }
    }
}

/// Every bf16 and fp16 bit pattern (NaNs, infinities, subnormals), and fp32 patterns around
/// each rounding boundary, loaded from a file into a model of the other width: bit for bit
/// what libtorch's conversion gives, at every position (the tensors are cut into parts and
/// blocks across threads).
#[test]
fn special_values_load_bit_for_bit_as_libtorch_converts_them() {
    let dir = tempdir("patterns");
    let halves = Tensor::arange(1 << 16, (Kind::Int, Device::Cpu)).to_kind(Kind::Int16);
    let lows = [
        0x0000i64, 0x0fff, 0x1000, 0x1001, 0x2000, 0x3000, 0x7fff, 0x8000, 0x8001,
    ];
    let highs = Tensor::arange(1 << 16, (Kind::Int64, Device::Cpu)) * 65536;
    let words: Vec<Tensor> = lows.iter().map(|&low| &highs + low).collect();
    let words = Tensor::cat(&words, 0).to_kind(Kind::Int);
    let cases = [
        (halves.view_dtype(Kind::BFloat16), Kind::Float),
        (halves.view_dtype(Kind::Half), Kind::Float),
        (words.view_dtype(Kind::Float), Kind::BFloat16),
        (words.view_dtype(Kind::Float), Kind::Half),
    ];
    for (i, (values, model_kind)) in cases.into_iter().enumerate() {
        let sd: StateDict = [("w".to_string(), values.shallow_clone())]
            .into_iter()
            .collect();
        let path = dir.join(format!("p{i}.safetensors"));
        sd.save(&path).unwrap();
        for threads in [Some(1), Some(2)] {
            let lazy =
                LazyStateDict::load_with(&path, &ReadOptions::new().threads(threads)).unwrap();
            let model = blank_model(&sd, Some(model_kind));
            load_state_dict(&model, &lazy, true).unwrap();
            let got = model.get("w").unwrap();
            let want = values.to_kind(model_kind);
            let bits = |t: &Tensor| match model_kind {
                Kind::Float => t.view_dtype(Kind::Int),
                _ => t.view_dtype(Kind::Int16),
            };
            assert!(
                bits(got).equal(&bits(&want)),
                "{:?} -> {model_kind:?}, {threads:?} threads",
                values.kind()
            );
        }
    }
}

#[test]
fn a_cast_asked_for_at_open_is_seen_by_the_load_as_by_the_eager_path() {
    // ReadOptions::kind(Half) rounds values through fp16 before they reach an fp32 model.
    let options = ReadOptions::new().kind(Some(Kind::Half));
    let eager = StateDict::load_with(fixture("dtypes.pth"), &options).unwrap();
    let lazy = LazyStateDict::load_with(fixture("dtypes.pth"), &options).unwrap();
    let plain = StateDict::load(fixture("dtypes.pth")).unwrap();
    let a = blank_model(&plain, Some(Kind::Float));
    let b = blank_model(&plain, Some(Kind::Float));
    load_state_dict(&a, &lazy, true).unwrap();
    load_state_dict(&b, &eager, true).unwrap();
    assert_eq!(model_hashes(&a), model_hashes(&b));
    for (k, t) in lazy.iter() {
        assert_eq!(t.kind(), Some(eager.get(k).unwrap().kind()), "{k}");
    }
}

#[test]
fn sharded_checkpoints_load_tensor_by_tensor_and_select_a_submodule() {
    let name = "sharded/model.safetensors.index.json";
    let eager = StateDict::load(fixture(name)).unwrap();
    let lazy = LazyStateDict::load(fixture(name)).unwrap();
    let model = blank_model(&eager, None);
    assert!(load_state_dict(&model, &lazy, true).unwrap().is_empty());
    assert_eq!(model_hashes(&model), common::hashes(&eager));

    // load_key of a sharded checkpoint: the entries under `key.`, prefix removed.
    let dir = tempdir("sharded");
    let t = |n: i64| Tensor::randn([n], (Kind::Float, Device::Cpu));
    let one: StateDict = [("model.a", t(3)), ("lm_head.weight", t(5))]
        .into_iter()
        .collect();
    let two: StateDict = [("model.b", t(7)), ("modelx.c", t(2))]
        .into_iter()
        .collect();
    one.save(dir.join("s-1.safetensors")).unwrap();
    two.save(dir.join("s-2.safetensors")).unwrap();
    let index = dir.join("model.safetensors.index.json");
    std::fs::write(
        &index,
        r#"{"weight_map": {"model.a": "s-1.safetensors", "lm_head.weight": "s-1.safetensors",
            "model.b": "s-2.safetensors", "modelx.c": "s-2.safetensors"}}"#,
    )
    .unwrap();
    let sub = LazyStateDict::load_key(&index, "model").unwrap();
    assert_eq!(sub.keys().collect::<Vec<_>>(), ["a", "b"]);
    let eager_sub = StateDict::load_key(&index, "model").unwrap();
    assert!(eager_sub
        .get("a")
        .unwrap()
        .equal(one.get("model.a").unwrap()));
    assert!(eager_sub
        .get("b")
        .unwrap()
        .equal(two.get("model.b").unwrap()));
    let mut tree = ModuleTree::new("Sub");
    tree.add_tensor("a", Tensor::zeros([3], (Kind::Double, Device::Cpu)))
        .unwrap();
    tree.add_tensor("b", Tensor::zeros([7], (Kind::Double, Device::Cpu)))
        .unwrap();
    Checkpoint::open(&index)
        .unwrap()
        .load_into_at("model", &tree, &LoadOptions::new())
        .unwrap();
    assert!(tree
        .get("b")
        .unwrap()
        .equal(&two.get("model.b").unwrap().to_kind(Kind::Double)));
    assert!(matches!(
        LazyStateDict::load_key(&index, "no_such_module"),
        Err(Error::KeyNotFound { .. })
    ));
}

#[test]
fn skip_mismatched_works_on_a_lazy_state_dict() {
    let dir = tempdir("skip");
    let (path, trained) = training_checkpoint(&dir, Arch::ResNet8x4);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ResNet::new(&vs, Arch::ResNet8x4, 10).unwrap();
    let lazy = LazyStateDict::load_key(&path, "model").unwrap();
    let report =
        load_state_dict_with(&model, &lazy, &LoadOptions::new().skip_mismatched(true)).unwrap();
    let skipped: Vec<&str> = report
        .mismatched_keys
        .iter()
        .map(|m| m.key.as_str())
        .collect();
    assert_eq!(skipped, ["fc.weight", "fc.bias"]);
    let loaded = state_dict(&model).unwrap();
    assert!(loaded
        .get("conv1.weight")
        .unwrap()
        .equal(trained.get("conv1.weight").unwrap()));
}

#[test]
fn a_lazy_state_dict_from_bytes_loads_like_one_from_a_file() {
    let bytes = std::fs::read(fixture("dtypes.pth")).unwrap();
    let lazy = LazyStateDict::from_bytes(&bytes).unwrap();
    let eager = StateDict::load(fixture("dtypes.pth")).unwrap();
    let model = blank_model(&eager, Some(Kind::Double));
    load_state_dict(&model, &lazy, true).unwrap();
    let reference = blank_model(&eager, Some(Kind::Double));
    load_state_dict(&reference, &eager, true).unwrap();
    assert_eq!(model_hashes(&model), model_hashes(&reference));
    // Display never reads: it names where each tensor is.
    assert!(lazy.to_string().contains("in file"));
}

#[test]
#[ignore = "needs CUDA"]
fn a_lazy_load_into_a_cuda_model_converts_in_chunks() {
    let dir = tempdir("cuda");
    let (path, trained) = training_checkpoint(&dir, Arch::CifarResNet18);
    let gpu = nn::VarStore::new(Device::Cuda(0));
    let model = ResNet::new(&gpu, Arch::CifarResNet18, 10).unwrap();
    let mut sd = LazyStateDict::load_key(&path, "model").unwrap();
    sd.pop("linear.weight");
    sd.pop("linear.bias");
    let report = load_state_dict(&model, &sd, false).unwrap();
    assert_eq!(report.missing_keys, ["linear.weight", "linear.bias"]);
    let loaded = state_dict(&model).unwrap();
    for (k, t) in trained.iter().filter(|(k, _)| !k.starts_with("linear.")) {
        assert_eq!(
            common::hash_tensor(loaded.get(k).unwrap()),
            common::hash_tensor(t),
            "{k}"
        );
    }
}

#[test]
fn in_memory_loads_copy_across_threads_byte_for_byte() {
    // More than 8 MiB, so that plain copies are split across threads.
    let sd = common::random_vectors(&[3_000_001, 7, 1_500_000, 0, 2_000_000]);
    let model = blank_model(&sd, None);
    load_state_dict(&model, &sd, true).unwrap();
    assert_eq!(model_hashes(&model), common::hashes(&sd));
    // A snapshot of the model's own state dict (copies) puts its values back after they
    // changed, across threads as well; the live state dict (the model's own tensors) loads
    // onto the model without changing a value.
    let snapshot: StateDict = state_dict(&model)
        .unwrap()
        .iter()
        .map(|(k, t)| (k.to_string(), t.copy()))
        .collect();
    for (_, t) in state_dict(&model).unwrap().iter() {
        let _ = t.shallow_clone().g_add_scalar_(1.0);
    }
    assert_ne!(model_hashes(&model), common::hashes(&sd));
    load_state_dict(&model, &snapshot, true).unwrap();
    assert_eq!(model_hashes(&model), common::hashes(&sd));
    let live = state_dict(&model).unwrap();
    load_state_dict(&model, &live, true).unwrap();
    assert_eq!(model_hashes(&model), common::hashes(&sd));
}

#[test]
fn sources_that_alias_the_model_are_copied_in_order_as_pytorch_does() {
    // sd["a"] is the model's b and sd["b"] the model's a: PyTorch copies a, then b, so both
    // end with b's original values.
    let a = Tensor::full([3_000_000], 1.0, (Kind::Float, Device::Cpu));
    let b = Tensor::full([3_000_000], 2.0, (Kind::Float, Device::Cpu));
    let mut model = ModuleTree::new("Net");
    model.add_tensor("a", a.shallow_clone()).unwrap();
    model.add_tensor("b", b.shallow_clone()).unwrap();
    let swapped: StateDict = [("a", b.shallow_clone()), ("b", a.shallow_clone())]
        .into_iter()
        .collect();
    load_state_dict(&model, &swapped, true).unwrap();
    for t in [&a, &b] {
        assert_eq!(t.min().double_value(&[]), 2.0);
        assert_eq!(t.max().double_value(&[]), 2.0);
    }
}

#[test]
fn progress_is_reported_in_order_up_to_the_total() {
    use std::sync::{Arc, Mutex};
    let dir = tempdir("progress");
    let path = dir.join("big.pth");
    let sd = common::random_vectors(&[3_000_001, 1_500_000, 7, 4_000_000]);
    sd.save(&path).unwrap();
    let total = sd.nbytes();
    for kind in [None, Some(Kind::Half), Some(Kind::Double)] {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&calls);
        let options = LoadOptions::new().progress(move |done, all| {
            seen.lock().unwrap().push((done, all));
        });
        let model = blank_model(&sd, kind);
        let lazy = LazyStateDict::load(&path).unwrap();
        load_state_dict_with(&model, &lazy, &options).unwrap();
        let calls = calls.lock().unwrap().clone();
        let model_bytes = state_dict(&model).unwrap().nbytes();
        assert!(calls.len() > 2, "{kind:?}: {calls:?}");
        assert!(calls.windows(2).all(|w| w[0].0 < w[1].0), "{calls:?}");
        assert!(calls.iter().all(|&(_, all)| all == model_bytes));
        assert_eq!(calls.last().unwrap().0, model_bytes);
        if kind.is_none() {
            assert_eq!(model_bytes, total);
        }
    }
}

/// A model whose keys are the readable entries of unsupported_dtypes.pth (`weight`,
/// `bias`), plus `u64` as an int64 buffer when `with_u64`.
fn model_for_unsupported(with_u64: bool) -> ModuleTree {
    let mut tree = ModuleTree::new("Net");
    tree.add_tensor("weight", Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)))
        .unwrap();
    if with_u64 {
        tree.add_tensor("u64", Tensor::zeros([2], (Kind::Int64, Device::Cpu)))
            .unwrap();
    }
    tree.add_tensor("bias", Tensor::zeros([2], (Kind::Float, Device::Cpu)))
        .unwrap();
    tree
}

/// An entry of a dtype tch cannot hold is refused when a load would read it, before anything
/// is written and naming its key; popped, or left out as unexpected, it is never read.
#[test]
fn a_load_refuses_an_unsupported_entry_only_when_it_would_read_it() {
    let path = fixture("unsupported_dtypes.pth");
    let eager = {
        let mut lazy = LazyStateDict::load(&path).unwrap();
        lazy.retain(|_, t| t.kind().is_some());
        lazy.into_state_dict().unwrap()
    };

    // The model has a u64 buffer: the entry would be read, so the load is refused, the
    // dry run too, and the model is untouched.
    let model = model_for_unsupported(true);
    let before = model_hashes(&model);
    let sd = LazyStateDict::load(&path).unwrap();
    for result in [
        load_state_dict(&model, &sd, false),
        check_state_dict(&model, &sd, &LoadOptions::new().strict(false)),
    ] {
        assert!(
            matches!(&result, Err(Error::UnsupportedDtype { key: Some(k), dtype, .. }) if k == "u64" && dtype == "torch.uint64"),
            "{result:?}"
        );
    }
    assert_eq!(model_hashes(&model), before);

    // Popped: missing, and the rest loads.
    let mut popped = sd.shallow_clone();
    popped.pop("u64");
    let report = load_state_dict(&model, &popped, false).unwrap();
    assert_eq!(report.missing_keys, ["u64"]);
    assert_eq!(report.unexpected_keys, ["u16", "u32", "c32", "e8m0", "f4"]);
    assert!(model
        .get("weight")
        .unwrap()
        .equal(eager.get("weight").unwrap()));
    assert!(model.get("bias").unwrap().equal(eager.get("bias").unwrap()));

    // A model without such keys: the entries are unexpected, never read; strictly, the
    // usual error.
    let model = model_for_unsupported(false);
    let report = load_state_dict(&model, &sd, false).unwrap();
    assert_eq!(report.unexpected_keys.len(), 6);
    assert!(model.get("bias").unwrap().equal(eager.get("bias").unwrap()));
    assert!(matches!(
        load_state_dict(&model, &sd, true),
        Err(Error::Load(e)) if e.unexpected_keys.len() == 6
    ));
}
