//! TorchScript archives read as state dicts, their code never run: tch's own files
//! (`VarStore::save`, `Tensor::save_multi`), with `|` turned back into `.`, and
//! `torch.jit.save` of a scripted module, compared with `scripted.state_dict()` in Python.

mod common;

use std::path::{Path, PathBuf};

use tch::nn::{self, ConvConfig, Module, ModuleT};
use tch::{Device, Kind, Tensor};
use tch_state_dict::{
    load_checkpoint, load_state_dict, state_dict, Checkpoint, Error, Format, LazyStateDict,
    ReadOptions, StateDict, Value,
};

fn fixture(name: &str) -> PathBuf {
    common::test_file(&format!("fixtures/training/{name}"))
}

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tch-state-dict-torchscript-{tag}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A small tch model with nested paths, a BatchNorm and a bias-free conv.
struct Net {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    head: nn::Linear,
}

impl Net {
    fn new(vs: &nn::VarStore) -> Net {
        let root = vs.root();
        let conv = ConvConfig {
            bias: false,
            ..Default::default()
        };
        Net {
            conv: nn::conv2d(&root / "features" / "conv", 3, 4, 3, conv),
            bn: nn::batch_norm2d(&root / "features" / "bn", 4, Default::default()),
            head: nn::linear(&root / "head", 4, 10, Default::default()),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let y = self.bn.forward_t(&self.conv.forward(x), true);
        self.head
            .forward(&y.mean_dim(&[2i64, 3][..], false, Kind::Float))
    }
}

fn assert_same_variables(a: &nn::VarStore, b: &nn::VarStore) {
    let (a, b) = (a.variables(), b.variables());
    assert_eq!(a.len(), b.len());
    for (k, t) in &a {
        assert!(t.equal(&b[k]), "{k}");
    }
}

#[test]
fn a_var_store_file_round_trips_strictly_into_the_var_store_that_wrote_it() {
    let dir = tempdir("varstore");
    let path = dir.join("model.ot");
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = Net::new(&vs);
    // Running statistics away from their defaults.
    let _ = net.forward(&Tensor::randn([2, 3, 6, 6], (Kind::Float, Device::Cpu)));
    vs.save(&path).unwrap();

    let ckpt = Checkpoint::open(&path).unwrap();
    assert_eq!(ckpt.format(), Format::TorchScript);
    let sd = StateDict::load(&path).unwrap();
    let mut keys: Vec<&str> = sd.keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "features.bn.bias",
            "features.bn.running_mean",
            "features.bn.running_var",
            "features.bn.weight",
            "features.conv.weight",
            "head.bias",
            "head.weight"
        ]
    );

    // Into a fresh VarStore of the same model, strictly: every value lands.
    tch::manual_seed(2);
    let fresh = nn::VarStore::new(Device::Cpu);
    let _ = Net::new(&fresh);
    let report = load_state_dict(&fresh, &sd, true).unwrap();
    assert!(report.missing_keys.is_empty() && report.unexpected_keys.is_empty());
    assert_same_variables(&vs, &fresh);

    // Straight from the file into the model, and through a lazy state dict.
    tch::manual_seed(3);
    let direct = nn::VarStore::new(Device::Cpu);
    let _ = Net::new(&direct);
    load_checkpoint(&direct, &path, true).unwrap();
    assert_same_variables(&vs, &direct);
    let lazy = LazyStateDict::load(&path).unwrap();
    assert_eq!(lazy.len(), 7);

    // tch's own reader agrees.
    let theirs = Tensor::load_multi(&path).unwrap();
    assert_eq!(theirs.len(), sd.len());
    for (name, t) in &theirs {
        assert!(t.equal(sd.get(&name.replace('|', ".")).unwrap()), "{name}");
    }

    // As the inspect example converts: to .pth and .safetensors, which Python reads.
    for out in ["model.pth", "model.safetensors"] {
        let out = dir.join(out);
        sd.save(&out).unwrap();
        let back = StateDict::load(&out).unwrap();
        for (k, t) in sd.iter() {
            assert!(back.get(k).unwrap().equal(t), "{k}");
        }
    }
    let flat = common::run_python(
        "oracle/full_load.py",
        &["flatten", dir.join("model.pth").to_str().unwrap()],
        "",
    );
    let flat: serde_json::Value = serde_json::from_str(&flat).unwrap();
    assert_eq!(flat["tensors"].as_object().unwrap().len(), 7);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tensor_save_multi_reads_back_with_dotted_names() {
    let dir = tempdir("multi");
    let path = dir.join("tensors.ot");
    let a = Tensor::arange(6, (Kind::Float, Device::Cpu)).view([2, 3]);
    let b = Tensor::from_slice(&[1i64, -2, 3]);
    Tensor::save_multi(&[("layer.weight", &a), ("step", &b)], &path).unwrap();
    let sd = StateDict::load(&path).unwrap();
    assert!(sd.get("layer.weight").unwrap().equal(&a));
    assert!(sd.get("step").unwrap().equal(&b));
    assert_eq!(sd.len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `torch.jit.load(path).state_dict()` in Python, saved and read back as a plain state dict.
fn python_script_state_dict(path: &Path, dir: &Path) -> StateDict {
    let out = dir.join("python.pth");
    common::run_python(
        "oracle/full_load.py",
        &[
            "script_state_dict",
            path.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
        "",
    );
    StateDict::load(&out).unwrap()
}

#[test]
fn a_scripted_module_reads_as_scripted_state_dict() {
    let dir = tempdir("scripted");
    for name in ["scripted.pt", "scripted_linear.pt"] {
        let path = fixture(name);
        let python = python_script_state_dict(&path, &dir);
        let ours = StateDict::load(&path).unwrap();
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            python.keys().collect::<Vec<_>>(),
            "{name}"
        );
        for (k, t) in python.iter() {
            let o = ours.get(k).unwrap();
            assert_eq!(o.kind(), t.kind(), "{name}/{k}");
            assert_eq!(common::hash_tensor(o), common::hash_tensor(t), "{name}/{k}");
        }
        let versions = |sd: &StateDict| -> Vec<(String, Option<i64>)> {
            sd.metadata()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.get("version").and_then(Value::as_int)))
                .collect()
        };
        assert_eq!(versions(&ours), versions(&python), "{name}");
    }
    // The non-persistent buffer is in a scripted state_dict; the plain tensor attribute is
    // not; the Linear without bias has no bias key.
    let keys: Vec<String> = StateDict::load(fixture("scripted.pt"))
        .unwrap()
        .keys()
        .map(str::to_string)
        .collect();
    assert!(keys.contains(&"offset".to_string()));
    assert!(!keys.contains(&"plain".to_string()));
    assert!(!keys.contains(&"seq.2.bias".to_string()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn weights_only_refuses_torchscript_as_pytorch_does() {
    let options = ReadOptions::new().weights_only(true);
    assert!(matches!(
        Checkpoint::open_with(fixture("scripted.pt"), &options).map(|_| ()),
        Err(Error::TorchScript { .. })
    ));
    // Without it, the module objects are values; their code is never read as code.
    let v = Value::load(fixture("scripted.pt")).unwrap();
    assert_eq!(
        v.as_object().unwrap().qualified_name(),
        "__torch__.Scripted"
    );
    let conv = v.attr("conv").and_then(Value::as_object).unwrap();
    assert!(conv.get_attr("weight").and_then(Value::as_tensor).is_some());
    // A state dict straight from the archive into a model's tensors.
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = nn::linear(vs.root(), 2, 2, Default::default());
    load_checkpoint(&vs, fixture("scripted_linear.pt"), true).unwrap();
    assert_eq!(state_dict(&vs).unwrap().len(), 2);
}
