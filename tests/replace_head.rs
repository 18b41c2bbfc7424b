//! `replace_head`, `replace_linear` and freezing: the head is new, initialized as PyTorch
//! initializes `nn.Linear`, registered under the old name, the only head the VarStore, an
//! optimizer and `load_state_dict` know of.

mod common;

use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};
use tch_state_dict::models::{self, replace_head, replace_linear, Arch, ResNet};
use tch_state_dict::{load_state_dict, state_dict, Error, StateDict};

/// libtorch's generator is global: tests that draw from it run one at a time, so that the
/// seeded one sees only its own draws.
fn rng() -> std::sync::MutexGuard<'static, ()> {
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    RNG.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn trainable_contains(vs: &nn::VarStore, t: &Tensor) -> bool {
    vs.trainable_variables().iter().any(|v| v.is_set_to(t))
}

#[test]
fn the_new_head_takes_the_old_name_and_the_old_one_is_gone() {
    let _rng = rng();
    let vs = nn::VarStore::new(Device::Cpu);
    let mut model = ResNet::new(&vs, Arch::CifarResNet50, 100).unwrap();
    let (n_vars, n_trainable) = (vs.len(), vs.trainable_variables().len());
    let old_weight = model.head().ws.shallow_clone();
    let old_bias = model.head().bs.as_ref().unwrap().shallow_clone();
    let keys_before: Vec<String> = state_dict(&model)
        .unwrap()
        .keys()
        .map(String::from)
        .collect();

    replace_head(&mut model, 7).unwrap();

    assert_eq!(model.num_classes(), 7);
    assert_eq!(model.head().ws.size(), [7, 2048]);
    let sd = state_dict(&model).unwrap();
    assert_eq!(sd.keys().collect::<Vec<_>>(), keys_before);
    assert_eq!(sd.get("linear.weight").unwrap().size(), [7, 2048]);
    assert_eq!(sd.get("linear.bias").unwrap().size(), [7]);
    let names = vs.variables();
    assert_eq!(vs.len(), n_vars);
    assert!(
        names.keys().all(|k| !k.contains("__")),
        "a renamed duplicate"
    );
    assert!(names["linear.weight"].is_set_to(&model.head().ws));
    assert_eq!(vs.trainable_variables().len(), n_trainable);
    assert!(!trainable_contains(&vs, &old_weight) && !trainable_contains(&vs, &old_bias));
    assert!(trainable_contains(&vs, &model.head().ws));
    assert!(model.head().ws.requires_grad());
    // The forward pass gives [N, 7].
    let out = model.forward_t(
        &Tensor::randn([3, 3, 32, 32], (Kind::Float, Device::Cpu)),
        false,
    );
    assert_eq!(out.size(), [3, 7]);
}

#[test]
fn initialization_is_pytorchs_for_the_same_seed() {
    let _rng = rng();
    let dir = common::tempdir("init");
    let path = dir.join("linear.pth");
    common::oracle(
        "oracle/resnets.py",
        &["linear", "7", "64", "10", path.to_str().unwrap()],
        "",
    );
    let python = StateDict::load(&path).unwrap();

    let vs = nn::VarStore::new(Device::Cpu);
    let mut model = ResNet::new(&vs, Arch::ResNet8, 100).unwrap();
    tch::manual_seed(7);
    replace_head(&mut model, 10).unwrap();
    // torch.manual_seed(7); nn.Linear(64, 10): the same values, bit for bit.
    assert!(model.head().ws.equal(python.get("weight").unwrap()));
    assert!(model
        .head()
        .bs
        .as_ref()
        .unwrap()
        .equal(python.get("bias").unwrap()));
    // And within PyTorch's bounds: U(-1/sqrt(64), 1/sqrt(64)) for both.
    let bound = 1.0 / 8.0;
    assert!(model.head().ws.abs().max().double_value(&[]) <= bound);
}

#[test]
fn an_optimizer_built_afterwards_trains_only_live_variables() {
    let _rng = rng();
    let vs = nn::VarStore::new(Device::Cpu);
    let mut model = ResNet::new(&vs, Arch::ResNet8, 100).unwrap();
    let old_head = model.head().ws.copy();
    let old_head_tensor = model.head().ws.shallow_clone();
    replace_head(&mut model, 5).unwrap();
    model.freeze_backbone();
    let conv_before = vs.variables()["conv1.weight"].copy();
    let head_before = model.head().ws.copy();
    let mut opt = nn::Sgd::default().build(&vs, 0.1).unwrap();
    let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let labels = Tensor::from_slice(&[0i64, 1, 2, 3]);
    // The old head is outside the forward pass: a term of the loss gives it a gradient of
    // its own, so that an optimizer that still held it would move it.
    let _ = old_head_tensor.set_requires_grad(true);
    let loss = model.forward_t(&x, true).cross_entropy_for_logits(&labels)
        + old_head_tensor.sum(Kind::Float) * 1e-2;
    opt.backward_step(&loss);
    assert!(
        old_head_tensor.grad().defined()
            && old_head_tensor.grad().abs().min().double_value(&[]) > 0.0,
        "the old head has a gradient"
    );
    assert!(!model.head().ws.equal(&head_before), "the new head trains");
    assert!(
        vs.variables()["conv1.weight"].equal(&conv_before),
        "the frozen backbone does not"
    );
    assert!(
        old_head_tensor.equal(&old_head),
        "the old head is out of the optimizer"
    );
    // Unfrozen, the backbone trains again.
    model.unfreeze();
    let loss = model.forward_t(&x, true).cross_entropy_for_logits(&labels);
    opt.backward_step(&loss);
    assert!(!vs.variables()["conv1.weight"].equal(&conv_before));
}

#[test]
fn freezing_sets_requires_grad_on_parameters_only() {
    let _rng = rng();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ResNet::new(&vs, Arch::ResNet8, 10).unwrap();
    model.freeze_backbone();
    for (name, t) in vs.variables() {
        let expected = name.starts_with("fc.");
        assert_eq!(t.requires_grad(), expected, "{name}");
    }
    model.unfreeze();
    for (name, t) in vs.variables() {
        let buffer = name.contains("running_") || name.ends_with("num_batches_tracked");
        assert_eq!(t.requires_grad(), !buffer, "{name}");
    }
    models::freeze(&vs, |name| name.starts_with("layer3."));
    assert!(vs.variables()["layer3.0.conv1.weight"].requires_grad());
    assert!(!vs.variables()["conv1.weight"].requires_grad());
    models::unfreeze(&vs);
    assert!(vs.variables()["conv1.weight"].requires_grad());
}

#[test]
fn a_following_load_sees_the_new_head() {
    let _rng = rng();
    let vs = nn::VarStore::new(Device::Cpu);
    let mut model = ResNet::new(&vs, Arch::ResNet8, 100).unwrap();
    let checkpoint = state_dict(&model).unwrap().shallow_clone();
    let checkpoint = {
        let mut c = StateDict::new();
        for (k, t) in checkpoint.iter() {
            c.insert(k, t.copy());
        }
        c
    };
    replace_head(&mut model, 7).unwrap();
    let err = load_state_dict(&model, &checkpoint, false).unwrap_err();
    let Error::Load(e) = &err else {
        panic!("{err}")
    };
    assert_eq!(e.mismatched_keys.len(), 2);
    assert_eq!(e.mismatched_keys[0].model_shape, [7, 64]);
    assert_eq!(e.mismatched_keys[0].checkpoint_shape, [100, 64]);
    // The backbone still loads with the head's keys popped (fix 1 after fix 2).
    let mut backbone = checkpoint.shallow_clone();
    backbone.pop("fc.weight");
    backbone.pop("fc.bias");
    let report = load_state_dict(&model, &backbone, false).unwrap();
    assert_eq!(report.missing_keys, ["fc.weight", "fc.bias"]);
}

#[test]
fn the_new_head_has_the_models_dtype() {
    let _rng = rng();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let mut model = ResNet::new(&vs, Arch::ResNet8, 100).unwrap();
    vs.double();
    replace_head(&mut model, 3).unwrap();
    assert_eq!(model.head().ws.kind(), Kind::Double);
    let out = model.forward_t(
        &Tensor::randn([1, 3, 32, 32], (Kind::Double, Device::Cpu)),
        false,
    );
    assert_eq!(out.size(), [1, 3]);
}

#[test]
fn a_model_under_a_path_replaces_its_own_head() {
    let _rng = rng();
    let vs = nn::VarStore::new(Device::Cpu);
    let mut model = ResNet::new_at(&vs, "backbone", Arch::ResNet8, 100).unwrap();
    replace_head(&mut model, 4).unwrap();
    assert_eq!(vs.variables()["backbone.fc.weight"].size(), [4, 64]);
    assert!(!vs.variables().contains_key("fc.weight"));
}

/// A tch model of the user's own, with its head in a field.
#[derive(Debug)]
struct Net {
    body: nn::Linear,
    classifier: nn::Linear,
}

impl Module for Net {
    fn forward(&self, xs: &Tensor) -> Tensor {
        self.classifier.forward(&self.body.forward(xs).relu())
    }
}

#[test]
fn replace_linear_works_on_any_tch_model() {
    let _rng = rng();
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let mut net = Net {
        body: nn::linear(&root / "body", 8, 16, Default::default()),
        classifier: nn::linear(&root / "head" / "classifier", 16, 100, Default::default()),
    };
    let old = net.classifier.ws.shallow_clone();
    net.classifier = replace_linear(&vs, "head.classifier", 3).unwrap();
    assert_eq!(
        net.forward(&Tensor::ones([2, 8], (Kind::Float, Device::Cpu)))
            .size(),
        [2, 3]
    );
    assert_eq!(vs.len(), 4);
    assert!(!trainable_contains(&vs, &old));
    assert_eq!(vs.variables()["head.classifier.weight"].size(), [3, 16]);

    // Refusals leave the VarStore as it was.
    let before: Vec<(String, Vec<i64>)> = {
        let mut v: Vec<_> = vs
            .variables()
            .into_iter()
            .map(|(k, t)| (k, t.size()))
            .collect();
        v.sort();
        v
    };
    assert!(matches!(
        replace_linear(&vs, "head.nothing", 3),
        Err(Error::NotALinear { path, .. }) if path == "head.nothing"
    ));
    assert!(matches!(
        replace_linear(&vs, "head.classifier", 0),
        Err(Error::InvalidArgument { .. })
    ));
    let _ = vs.root().sub("odd").zeros("weight", &[4]);
    assert!(matches!(
        replace_linear(&vs, "odd", 3),
        Err(Error::NotALinear { .. })
    ));
    let mut after: Vec<_> = vs
        .variables()
        .into_iter()
        .map(|(k, t)| (k, t.size()))
        .collect();
    after.retain(|(k, _)| k != "odd.weight");
    after.sort();
    assert_eq!(after, before);
}

#[test]
#[ignore = "needs CUDA"]
fn replace_head_on_cuda() {
    let _rng = rng();
    let vs = nn::VarStore::new(Device::Cuda(0));
    let mut model = ResNet::new(&vs, Arch::CifarResNet50, 100).unwrap();
    replace_head(&mut model, 7).unwrap();
    assert_eq!(model.head().ws.device(), Device::Cuda(0));
    let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cuda(0)));
    assert_eq!(model.forward_t(&x, false).size(), [2, 7]);
    assert!(!vs.variables().keys().any(|k| k.contains("__")));
}
