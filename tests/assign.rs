//! `LoadOptions::assign(true)`, PyTorch's `load_state_dict(assign=True)`: the model's tensors
//! take the checkpoint's tensors themselves (dtype, device, storage), every holder of a
//! tensor sees the change, `requires_grad` is kept, and a refused load changes nothing.

mod common;

use common::tempdir;

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};
use tch_state_dict::{
    load_state_dict_with, state_dict, Error, LazyStateDict, LoadOptions, StateDict,
};

fn bf16_checkpoint() -> StateDict {
    [
        (
            "fc.weight",
            Tensor::randn([8, 16], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16),
        ),
        (
            "fc.bias",
            Tensor::randn([8], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16),
        ),
    ]
    .into_iter()
    .collect()
}

#[test]
fn a_bf16_checkpoint_assigned_into_an_f32_model_shares_its_storage() {
    let vs = nn::VarStore::new(Device::Cpu);
    let fc = nn::linear(vs.root() / "fc", 16, 8, Default::default());
    let sd = bf16_checkpoint();
    let options = LoadOptions::new().assign(true);
    let report = load_state_dict_with(&vs, &sd, &options).unwrap();
    assert!(report.is_empty());
    // The module's own handles see the new tensors: bf16, the checkpoint's storage, no copy.
    assert_eq!(fc.ws.kind(), Kind::BFloat16);
    assert_eq!(fc.ws.data_ptr(), sd.get("fc.weight").unwrap().data_ptr());
    assert_eq!(
        fc.bs.as_ref().unwrap().data_ptr(),
        sd.get("fc.bias").unwrap().data_ptr()
    );
    // requires_grad is kept.
    assert!(fc.ws.requires_grad());
    assert!(state_dict(&vs)
        .unwrap()
        .get("fc.weight")
        .unwrap()
        .equal(sd.get("fc.weight").unwrap()));
    // The forward pass runs in bf16.
    let x = Tensor::randn([3, 16], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
    let y = fc.forward(&x);
    assert_eq!(y.size(), [3, 8]);
    assert_eq!(y.kind(), Kind::BFloat16);
}

#[test]
fn without_assign_the_model_keeps_its_dtype_and_storage() {
    let vs = nn::VarStore::new(Device::Cpu);
    let fc = nn::linear(vs.root() / "fc", 16, 8, Default::default());
    let before = fc.ws.data_ptr();
    let sd = bf16_checkpoint();
    load_state_dict_with(&vs, &sd, &LoadOptions::new()).unwrap();
    assert_eq!(fc.ws.kind(), Kind::Float);
    assert_eq!(fc.ws.data_ptr(), before);
}

#[test]
fn a_lazy_state_dict_is_assigned_from_its_file() {
    let dir = tempdir("lazy");
    let path = dir.join("bf16.safetensors");
    let sd = bf16_checkpoint();
    sd.save(&path).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let fc = nn::linear(vs.root() / "fc", 16, 8, Default::default());
    let lazy = LazyStateDict::load(&path).unwrap();
    load_state_dict_with(&vs, &lazy, &LoadOptions::new().assign(true)).unwrap();
    assert_eq!(fc.ws.kind(), Kind::BFloat16);
    assert!(fc.ws.equal(sd.get("fc.weight").unwrap()));
    assert!(fc.ws.requires_grad());
}

#[test]
fn a_refused_assign_changes_nothing() {
    let vs = nn::VarStore::new(Device::Cpu);
    let fc = nn::linear(vs.root() / "fc", 16, 8, Default::default());
    let before = common::hashes(&state_dict(&vs).unwrap());
    let mut sd = bf16_checkpoint();
    sd.insert("fc.bias", Tensor::zeros([9], (Kind::BFloat16, Device::Cpu)));
    let err = load_state_dict_with(&vs, &sd, &LoadOptions::new().assign(true)).unwrap_err();
    assert!(matches!(err, Error::Load(_)));
    assert_eq!(fc.ws.kind(), Kind::Float);
    assert_eq!(common::hashes(&state_dict(&vs).unwrap()), before);

    // A file truncated after it was opened: refused before any tensor changes.
    let dir = tempdir("truncated");
    let path = dir.join("bf16.pth");
    bf16_checkpoint().save(&path).unwrap();
    let lazy = LazyStateDict::load(&path).unwrap();
    common::truncate_to_half(&path);
    let err = load_state_dict_with(&vs, &lazy, &LoadOptions::new().assign(true)).unwrap_err();
    assert!(matches!(err, Error::FileChanged { .. }), "{err:?}");
    assert_eq!(fc.ws.kind(), Kind::Float);
    assert_eq!(common::hashes(&state_dict(&vs).unwrap()), before);
}
