//! tch's own models: a torchvision checkpoint loads strictly into `tch::vision::resnet*` with
//! no key surgery, because a tch BatchNorm (no `num_batches_tracked`) consumes the
//! checkpoint's counter; and the logits are torchvision's.

mod common;

use std::path::PathBuf;

use tch::nn::{self, ModuleT};
use tch::Device;
use tch_state_dict::{
    load_state_dict, Checkpoint, Error, LazyStateDict, LoadOptions, ModuleTree, StateDict,
};

fn oracle(arch: &str) -> (PathBuf, StateDict) {
    let dir = std::env::temp_dir().join(format!(
        "tch-state-dict-vision-{arch}-{}",
        std::process::id()
    ));
    let out = dir.to_str().unwrap();
    common::run_python("oracle/tch_vision.py", &[arch, out], "");
    let expected = StateDict::load(dir.join("expected.pth")).unwrap();
    (dir.join("state_dict.pth"), expected)
}

fn check(arch: &str, build: fn(&nn::Path, i64) -> Box<dyn ModuleT>) {
    let (path, expected) = oracle(arch);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = build(&vs.root(), 1000);
    let sd = LazyStateDict::load(&path).unwrap();
    let counters = sd
        .keys()
        .filter(|k| k.ends_with("num_batches_tracked"))
        .count();
    assert!(counters > 0);
    // Strict, with no key surgery.
    let report = load_state_dict(&vs, &sd, true).unwrap_or_else(|e| panic!("{arch}: {e}"));
    assert!(report.is_empty(), "{arch}: {report:?}");
    assert_eq!(report.dropped_keys.len(), counters, "{arch}");
    assert!(report.dropped_keys[0].ends_with("num_batches_tracked"));
    let x = expected.get("input").unwrap();
    let want = expected.get("logits").unwrap();
    let got = tch::no_grad(|| net.forward_t(x, false));
    let err = (&got - want).abs().max().double_value(&[]);
    let scale = want.abs().max().double_value(&[]);
    assert!(
        err <= 1e-4 * scale.max(1.0),
        "{arch}: max |diff| {err} (scale {scale})"
    );
    std::fs::remove_dir_all(path.parent().unwrap()).ok();
}

#[test]
fn torchvision_resnet18_loads_strictly_into_tchs_resnet18() {
    check("resnet18", |p, n| {
        Box::new(tch::vision::resnet::resnet18(p, n))
    });
}

#[test]
fn torchvision_resnet34_loads_strictly_into_tchs_resnet34() {
    check("resnet34", |p, n| {
        Box::new(tch::vision::resnet::resnet34(p, n))
    });
}

#[test]
fn torchvision_resnet50_loads_strictly_into_tchs_resnet50() {
    check("resnet50", |p, n| {
        Box::new(tch::vision::resnet::resnet50(p, n))
    });
}

#[test]
fn torchvision_resnet101_loads_strictly_into_tchs_resnet101() {
    check("resnet101", |p, n| {
        Box::new(tch::vision::resnet::resnet101(p, n))
    });
}

#[test]
fn torchvision_resnet152_loads_strictly_into_tchs_resnet152() {
    check("resnet152", |p, n| {
        Box::new(tch::vision::resnet::resnet152(p, n))
    });
}

#[test]
fn the_counter_rule_needs_both_running_statistics_and_is_off_for_pytorch_models() {
    use tch::{Kind, Tensor};
    let t = |shape: &[i64]| Tensor::zeros(shape, (Kind::Float, Device::Cpu));
    let counter = || Tensor::zeros([], (Kind::Int64, Device::Cpu));
    let sd: StateDict = [
        ("bn.running_mean", t(&[4])),
        ("bn.running_var", t(&[4])),
        ("bn.num_batches_tracked", counter()),
        ("ln.weight", t(&[4])),
        ("ln.num_batches_tracked", counter()),
    ]
    .into_iter()
    .collect();
    let build = |drops: bool| {
        let mut tree = ModuleTree::new("Net").drop_batch_norm_counters(drops);
        tree.add_tensor("bn.running_mean", t(&[4])).unwrap();
        tree.add_tensor("bn.running_var", t(&[4])).unwrap();
        tree.add_tensor("ln.weight", t(&[4])).unwrap();
        tree
    };
    // On: bn's counter is consumed; ln has no running statistics, so its counter is
    // unexpected.
    let report = load_state_dict(&build(true), &sd, false).unwrap();
    assert_eq!(report.dropped_keys, ["bn.num_batches_tracked"]);
    assert_eq!(report.unexpected_keys, ["ln.num_batches_tracked"]);
    // Off (a tree describing a PyTorch model): PyTorch's semantics, both unexpected.
    let err = load_state_dict(&build(false), &sd, true).unwrap_err();
    match err {
        Error::Load(e) => assert_eq!(
            e.unexpected_keys,
            ["bn.num_batches_tracked", "ln.num_batches_tracked"]
        ),
        other => panic!("{other:?}"),
    }
    // A bare VarStore as the target has it on; a tree built from it is off unless asked.
    let vs = nn::VarStore::new(Device::Cpu);
    let _bn = nn::batch_norm2d(vs.root() / "bn", 4, Default::default());
    assert!(!ModuleTree::from_var_store(&vs)
        .unwrap()
        .drops_batch_norm_counters());
    let bn_only: StateDict = sd
        .iter()
        .filter(|(k, _)| k.starts_with("bn."))
        .map(|(k, t)| (k.to_string(), t.shallow_clone()))
        .collect();
    let mut with_affine = bn_only.shallow_clone();
    with_affine.insert("bn.weight", t(&[4]));
    with_affine.insert("bn.bias", t(&[4]));
    let report = Checkpoint::from_bytes(
        &with_affine
            .to_bytes(tch_state_dict::Format::TorchZip)
            .unwrap(),
        &Default::default(),
    )
    .unwrap()
    .load_into(&vs, &LoadOptions::new())
    .unwrap();
    assert_eq!(report.dropped_keys, ["bn.num_batches_tracked"]);
}
