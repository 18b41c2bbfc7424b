//! Every ResNet against PyTorch: the same random weights loaded in Python (torchvision, and
//! tests/oracle/resnets.py for the CIFAR family) and in Rust give the same keys in the same
//! order, the same shapes, eval-mode logits equal within 1e-4, and the same train-mode
//! updates of running_mean, running_var and num_batches_tracked.

mod common;

use tch::nn;
use tch::{Device, Kind, Tensor};
use tch_state_dict::models::{Arch, ResNet};
use tch_state_dict::{load_state_dict, state_dict, Checkpoint, StateDict};

/// Relative closeness, scaled by the largest magnitude of the expected values.
fn assert_close(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.size(), want.size(), "{what}: shape");
    let scale = want.abs().max().double_value(&[]).max(1e-6);
    let diff = (got - want).abs().max().double_value(&[]);
    assert!(
        diff <= 1e-4 * scale,
        "{what}: max difference {diff} over a scale of {scale}"
    );
}

fn parity(arch: Arch, classes: i64) {
    let dir = common::tempdir(arch.name());
    let out = dir.to_str().unwrap();
    common::oracle(
        "oracle/resnets.py",
        &["parity", arch.name(), &classes.to_string(), out],
        "",
    );
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ResNet::new(&vs, arch, classes).unwrap();

    // The same keys, in the same order, with the same shapes, before anything is loaded.
    let keys: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("keys.json")).unwrap()).unwrap();
    let ours = state_dict(&model).unwrap();
    let ours: Vec<(String, Vec<i64>)> = ours
        .iter()
        .map(|(k, t)| (k.to_string(), t.size()))
        .collect();
    let theirs: Vec<(String, Vec<i64>)> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let shape = e[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_i64().unwrap())
                .collect();
            (e[0].as_str().unwrap().to_string(), shape)
        })
        .collect();
    assert_eq!(ours, theirs, "{arch}: keys and shapes");

    // Python's state dict loads strictly, with nothing missing or unexpected.
    let sd = StateDict::load(dir.join("state_dict.pth")).unwrap();
    let report = load_state_dict(&model, &sd, true).unwrap();
    assert!(report.is_empty(), "{arch}: {report}");

    let expected = Checkpoint::open(dir.join("expected.pth"))
        .unwrap()
        .value()
        .unwrap();
    let tensor = |k: &str| {
        expected
            .get(k)
            .unwrap()
            .as_tensor()
            .unwrap()
            .shallow_clone()
    };
    let input = tensor("input");
    let eval = tch::no_grad(|| model.forward_t(&input, false));
    assert_close(
        &eval,
        &tensor("eval_logits"),
        &format!("{arch}: eval logits"),
    );

    // One train-mode forward: batch statistics, and running statistics updated in place.
    let train = tch::no_grad(|| model.forward_t(&input, true));
    assert_close(
        &train,
        &tensor("train_logits"),
        &format!("{arch}: train logits"),
    );
    let after = StateDict::try_from(expected.get("after_train").unwrap().shallow_clone()).unwrap();
    let now = state_dict(&model).unwrap();
    for (k, want) in after.iter() {
        let got = now.get(k).unwrap();
        if k.ends_with("num_batches_tracked") {
            assert_eq!(got.int64_value(&[]), 4, "{arch}: {k}");
            assert!(got.equal(want), "{arch}: {k}");
        } else {
            assert_close(got, want, &format!("{arch}: {k}"));
        }
    }
}

macro_rules! parity_tests {
    ($($name:ident => $arch:ident, $classes:expr;)*) => {
        $(
            #[test]
            fn $name() {
                parity(Arch::$arch, $classes);
            }
        )*
    };
}

parity_tests! {
    torchvision_resnet18 => ResNet18, 10;
    torchvision_resnet34 => ResNet34, 10;
    torchvision_resnet50 => ResNet50, 1000;
    torchvision_resnet101 => ResNet101, 10;
    torchvision_resnet152 => ResNet152, 10;
    torchvision_wide_resnet50_2 => WideResNet50_2, 10;
    torchvision_resnext50_32x4d => ResNeXt50_32x4d, 10;
    cifar_resnet18 => CifarResNet18, 100;
    cifar_resnet34 => CifarResNet34, 100;
    cifar_resnet50 => CifarResNet50, 100;
    cifar_resnet101 => CifarResNet101, 100;
    cifar_resnet152 => CifarResNet152, 100;
    cifar_resnet8 => ResNet8, 100;
    cifar_resnet14 => ResNet14, 100;
    cifar_resnet20 => ResNet20, 100;
    cifar_resnet32 => ResNet32, 100;
    cifar_resnet44 => ResNet44, 100;
    cifar_resnet56 => ResNet56, 100;
    cifar_resnet110 => ResNet110, 100;
    cifar_resnet8x4 => ResNet8x4, 100;
    cifar_resnet32x4 => ResNet32x4, 100;
}

#[test]
fn every_arch_is_tested_and_named() {
    let source = std::fs::read_to_string(common::test_file("models.rs")).unwrap();
    for &arch in Arch::all() {
        assert_eq!(Arch::from_name(arch.name()), Some(arch));
        let variant = format!("{arch:?}");
        assert!(
            source.contains(&format!("=> {variant},")),
            "{variant} has no parity test"
        );
    }
}

#[test]
fn models_report_their_head() {
    let vs = nn::VarStore::new(Device::Cpu);
    let m = ResNet::new(&vs, Arch::CifarResNet50, 100).unwrap();
    assert_eq!(
        (m.head_name(), m.in_features(), m.num_classes()),
        ("linear", 2048, 100)
    );
    let vs = nn::VarStore::new(Device::Cpu);
    let m = ResNet::new(&vs, Arch::ResNet18, 1000).unwrap();
    assert_eq!(
        (m.head_name(), m.in_features(), m.num_classes()),
        ("fc", 512, 1000)
    );
    let vs = nn::VarStore::new(Device::Cpu);
    let m = ResNet::new(&vs, Arch::ResNet32x4, 100).unwrap();
    assert_eq!(
        (m.head_name(), m.in_features(), m.num_classes()),
        ("fc", 256, 100)
    );
    assert!(matches!(
        ResNet::new(&vs, Arch::ResNet8, 0),
        Err(tch_state_dict::Error::InvalidArgument {
            name: "num_classes",
            ..
        })
    ));
}

#[test]
fn the_error_header_names_resnet() {
    let vs = nn::VarStore::new(Device::Cpu);
    let m = ResNet::new(&vs, Arch::ResNet8, 10).unwrap();
    let mut sd = state_dict(&m).unwrap().shallow_clone();
    sd.insert("fc.bias", Tensor::zeros([100], (Kind::Float, Device::Cpu)));
    let err = load_state_dict(&m, &sd, false).unwrap_err().to_string();
    assert!(
        err.starts_with("Error(s) in loading state_dict for ResNet:\n\tsize mismatch for fc.bias"),
        "{err}"
    );
}

#[test]
fn a_model_under_a_path_has_relative_keys() {
    let vs = nn::VarStore::new(Device::Cpu);
    let m = ResNet::new_at(&vs, "backbone.net", Arch::ResNet8, 10).unwrap();
    let sd = state_dict(&m).unwrap();
    assert_eq!(sd.keys().next(), Some("conv1.weight"));
    assert!(vs.variables().contains_key("backbone.net.conv1.weight"));
    assert_eq!(m.var_store_prefix(), "backbone.net.");
    assert_eq!(vs.len(), sd.len());
}

#[test]
#[ignore = "needs CUDA"]
fn cuda_forward_matches_cpu() {
    let cpu = nn::VarStore::new(Device::Cpu);
    let m = ResNet::new(&cpu, Arch::CifarResNet18, 10).unwrap();
    let gpu = nn::VarStore::new(Device::Cuda(0));
    let g = ResNet::new(&gpu, Arch::CifarResNet18, 10).unwrap();
    load_state_dict(&g, &state_dict(&m).unwrap(), true).unwrap();
    let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    let a = tch::no_grad(|| m.forward_t(&x, false));
    // cuDNN's convolutions run in TF32 by default, which differs from the CPU's fp32 by more
    // than a load could; without cuDNN they go through cuBLAS in fp32.
    tch::Cuda::set_user_enabled_cudnn(false);
    let b =
        tch::no_grad(|| g.forward_t(&x.to_device(Device::Cuda(0)), false)).to_device(Device::Cpu);
    tch::Cuda::set_user_enabled_cudnn(true);
    assert_close(&b, &a, "cuda logits");
}
