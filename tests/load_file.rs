//! Loading a checkpoint file straight into a model (`Checkpoint::load_into`,
//! `load_checkpoint`): the same rules, words and values as `load_state_dict` of the file's
//! state dict, whichever path each tensor takes (read straight into the model, or converted).

mod common;

use common::{blank_model, fixture, tempdir};

use tch::{nn, Device, Kind, Tensor};
use tch_state_dict::models::{Arch, ResNet};
use tch_state_dict::{
    load_checkpoint, load_state_dict, state_dict, Checkpoint, Error, LoadOptions, ModuleKind,
    ModuleTree, ReadOptions, StateDict,
};

fn assert_loaded(model: &ModuleTree, sd: &StateDict) {
    for (k, want) in sd.iter() {
        let got = model.get(k).unwrap();
        let want = want.to_kind(got.kind());
        assert!(got.equal(&want), "{k}");
    }
}

#[test]
fn every_layout_and_format_loads_the_values_load_state_dict_loads() {
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
        "model.safetensors",
        "sharded/model.safetensors.index.json",
    ] {
        let sd = StateDict::load(fixture(name)).unwrap();
        let model = blank_model(&sd, None);
        let report = Checkpoint::open(fixture(name))
            .unwrap()
            .load_into(&model, &LoadOptions::new())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(report.is_empty(), "{name}");
        assert_loaded(&model, &sd);
        // From bytes in memory, too.
        if !name.contains("index.json") {
            let bytes = std::fs::read(fixture(name)).unwrap();
            let model = blank_model(&sd, None);
            Checkpoint::from_bytes(&bytes, &ReadOptions::new())
                .unwrap()
                .load_into(&model, &LoadOptions::new())
                .unwrap();
            assert_loaded(&model, &sd);
        }
    }
}

#[test]
fn other_dtypes_are_converted_and_the_model_keeps_its_own() {
    let sd = StateDict::load(fixture("dtypes.pth")).unwrap();
    let model = blank_model(&sd, Some(Kind::Double));
    load_checkpoint(&model, fixture("dtypes.pth"), true).unwrap();
    for (k, t) in sd.iter() {
        let got = model.get(k).unwrap();
        if t.is_floating_point() {
            assert_eq!(got.kind(), Kind::Double, "{k}");
        }
        assert!(got.equal(&t.to_kind(got.kind())), "{k}");
    }
}

#[test]
fn a_checkpoint_dict_loads_from_its_key() {
    let sd = StateDict::load_key(fixture("checkpoint.pth"), "model").unwrap();
    let mut model = ModuleTree::new("Small");
    model.add_module("bn1", ModuleKind::BatchNorm).unwrap();
    for (k, t) in sd.iter() {
        model
            .add_tensor(k, Tensor::zeros(t.size(), (t.kind(), Device::Cpu)))
            .unwrap();
    }
    let ckpt = Checkpoint::open(fixture("checkpoint.pth")).unwrap();
    assert!(ckpt
        .load_into_at("model", &model, &LoadOptions::new())
        .unwrap()
        .is_empty());
    assert_loaded(&model, &sd);
    assert!(matches!(
        ckpt.load_into(&model, &LoadOptions::new()),
        Err(Error::NotAStateDict { .. })
    ));
    assert!(matches!(
        ckpt.load_into_at("nope", &model, &LoadOptions::new()),
        Err(Error::KeyNotFound { .. })
    ));
}

#[test]
fn refusals_are_load_state_dicts_and_leave_the_model_untouched() {
    let sd = StateDict::load(fixture("dtypes.pth")).unwrap();
    let mut shapes = sd.shallow_clone();
    // The model's last tensor has another shape, and one key is missing from the file.
    shapes.insert("bool", Tensor::zeros([4], (Kind::Bool, Device::Cpu)));
    shapes.insert("extra", Tensor::zeros([1], (Kind::Float, Device::Cpu)));
    let model = blank_model(&shapes, None);
    let before = common::hashes(&state_dict(&model).unwrap());
    let from_file = Checkpoint::open(fixture("dtypes.pth"))
        .unwrap()
        .load_into(&model, &LoadOptions::new())
        .unwrap_err();
    let in_memory = load_state_dict(&model, &sd, true).unwrap_err();
    match (&from_file, &in_memory) {
        (Error::Load(a), Error::Load(b)) => assert_eq!(a.pytorch_message(), b.pytorch_message()),
        other => panic!("{other:?}"),
    }
    assert_eq!(common::hashes(&state_dict(&model).unwrap()), before);
}

#[test]
fn a_one_element_tensor_loads_into_a_scalar_from_a_file() {
    let dir = tempdir("scalar");
    let path = dir.join("scalar.pth");
    let sd: StateDict = [("scale", Tensor::from_slice(&[2.5f32]))]
        .into_iter()
        .collect();
    sd.save(&path).unwrap();
    let mut model = ModuleTree::new("Net");
    let scale = Tensor::zeros([], (Kind::Float, Device::Cpu));
    model.add_tensor("scale", scale.shallow_clone()).unwrap();
    load_checkpoint(&model, &path, true).unwrap();
    assert_eq!(scale.double_value(&[]), 2.5);
}

#[test]
fn a_resnet_loads_from_pth_and_safetensors() {
    let dir = tempdir("resnet");
    let vs = nn::VarStore::new(Device::Cpu);
    let trained = ResNet::new(&vs, Arch::ResNet8x4, 100).unwrap();
    let sd = state_dict(&trained).unwrap();
    for name in ["model.pth", "model.safetensors"] {
        let path = dir.join(name);
        sd.save(&path).unwrap();
        let vs2 = nn::VarStore::new(Device::Cpu);
        let fresh = ResNet::new(&vs2, Arch::ResNet8x4, 100).unwrap();
        assert!(load_checkpoint(&fresh, &path, true).unwrap().is_empty());
        assert_eq!(
            common::hashes(&state_dict(&fresh).unwrap()),
            common::hashes(&sd),
            "{name}"
        );
    }
}

#[test]
#[ignore = "needs CUDA"]
fn a_cuda_model_loads_from_a_file() {
    let dir = tempdir("cuda");
    let vs = nn::VarStore::new(Device::Cpu);
    let trained = ResNet::new(&vs, Arch::CifarResNet18, 10).unwrap();
    let path = dir.join("model.pth");
    state_dict(&trained).unwrap().save(&path).unwrap();
    let gpu = nn::VarStore::new(Device::Cuda(0));
    let model = ResNet::new(&gpu, Arch::CifarResNet18, 10).unwrap();
    load_checkpoint(&model, &path, true).unwrap();
    let a = state_dict(&trained).unwrap();
    let b = state_dict(&model).unwrap();
    assert_eq!(common::hashes(&a), common::hashes(&b));
}

#[test]
fn large_loads_split_across_threads_land_byte_for_byte() {
    let dir = tempdir("threads");
    let path = dir.join("big.pth");
    // 24 MiB in tensors of uneven sizes, so that tensors straddle the threads' runs.
    let sizes = [3_000_001i64, 1_500_000, 7, 1_800_000, 0, 13, 4_000_000];
    let sd = common::random_vectors(&sizes);
    sd.save(&path).unwrap();
    for threads in [Some(1), Some(2), Some(3), Some(8), None] {
        let model = blank_model(&sd, None);
        let options = ReadOptions::new().threads(threads);
        Checkpoint::open_with(&path, &options)
            .unwrap()
            .load_into(&model, &LoadOptions::new())
            .unwrap();
        assert_eq!(
            common::hashes(&state_dict(&model).unwrap()),
            common::hashes(&sd),
            "{threads:?} threads"
        );
    }
}

#[test]
fn tensors_that_share_memory_take_the_last_value_as_with_copy() {
    let dir = tempdir("tied");
    let path = dir.join("tied.pth");
    let first = Tensor::full([3_000_000], 1.0, (Kind::Float, Device::Cpu));
    let second = Tensor::full([3_000_000], 2.0, (Kind::Float, Device::Cpu));
    let sd: StateDict = [("embed.weight", first), ("head.weight", second)]
        .into_iter()
        .collect();
    sd.save(&path).unwrap();
    let shared = Tensor::zeros([3_000_000], (Kind::Float, Device::Cpu));
    let mut model = ModuleTree::new("Tied");
    model
        .add_tensor("embed.weight", shared.shallow_clone())
        .unwrap();
    model
        .add_tensor("head.weight", shared.shallow_clone())
        .unwrap();
    let options = ReadOptions::new().threads(Some(2));
    Checkpoint::open_with(&path, &options)
        .unwrap()
        .load_into(&model, &LoadOptions::new())
        .unwrap();
    assert_eq!(shared.min().double_value(&[]), 2.0);
    assert_eq!(shared.max().double_value(&[]), 2.0);
}
