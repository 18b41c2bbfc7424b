//! TorchScript archives read as state dicts, their code never run: tch's own files
//! (`VarStore::save`, `Tensor::save_multi`), with `|` turned back into `.`, and
//! `torch.jit.save` of a scripted module, compared with `scripted.state_dict()` in Python.

mod common;

use common::tempdir;

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
    let flat = common::oracle(
        "oracle/full_load.py",
        &["flatten", dir.join("model.pth").to_str().unwrap()],
        "",
    );
    let flat: serde_json::Value = serde_json::from_str(&flat).unwrap();
    assert_eq!(flat["tensors"].as_object().unwrap().len(), 7);
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
}

/// `torch.jit.load(path).state_dict()` in Python, saved and read back as a plain state dict.
fn python_script_state_dict(path: &Path, dir: &Path) -> StateDict {
    let out = dir.join("python.pth");
    common::oracle(
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
    // scripted_v1.pt: as torch 1.x wrote it (version 1, six-item persistent ids, fp16
    // storages tagged 'cuda:0'), which torch.jit.load 2.11 reads.
    for name in ["scripted.pt", "scripted_linear.pt", "scripted_v1.pt"] {
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
}

#[test]
fn a_torch_1x_archive_loads_into_a_model() {
    let path = fixture("scripted_v1.pt");
    let lazy = LazyStateDict::load(&path).unwrap();
    assert_eq!(lazy.get("conv1.weight").unwrap().kind(), Some(Kind::Half));
    // Into an fp32 model built the tch way: converted, as load_state_dict converts.
    let vs = nn::VarStore::new(Device::Cpu);
    common::small_model(&vs, 10);
    let report = load_checkpoint(&vs, &path, true).unwrap();
    assert!(report.missing_keys.is_empty() && report.unexpected_keys.is_empty());
    let w = &vs.variables()["linear.weight"];
    assert_eq!(w.kind(), Kind::Float);
    let want = lazy.get("linear.weight").unwrap().read().unwrap();
    assert!(w.equal(&want.to_kind(Kind::Float)));
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

/// `requires_grad` as PyTorch gives it for a module's state dict: `state_dict()` detaches
/// every tensor, so `torch.jit.load(p).state_dict()` and `torch.load(p).state_dict()` have
/// it false everywhere, whatever data.pkl records (an LSTM's weights, a buffer made with
/// `requires_grad=True`). Compared with Python key by key, in one interpreter.
#[test]
fn a_modules_state_dict_has_requires_grad_as_pytorch_gives_it() {
    let script = "import sys, torch\n\
                  for p, key in zip(sys.argv[1::2], sys.argv[2::2]):\n\
                  \x20   if p.endswith('.pt'):\n\
                  \x20       m = torch.jit.load(p)\n\
                  \x20   else:\n\
                  \x20       m = torch.load(p, weights_only=False)\n\
                  \x20       m = m[key] if key else m\n\
                  \x20   flags = {k: v.requires_grad for k, v in m.state_dict().items()}\n\
                  \x20   kept = {k: v.requires_grad for k, v in m.state_dict(keep_vars=True).items()}\n\
                  \x20   print(p, sorted(flags.items()), any(kept.values()))\n";
    let files = [
        ("scripted_flags.pt", ""),
        ("scripted.pt", ""),
        ("sequential.pth", ""),
    ];
    let mut args = Vec::new();
    for (f, key) in files {
        args.push(fixture(f).to_string_lossy().into_owned());
        args.push(key.to_string());
    }
    let text = common::oracle_code(script, &args);
    let lines: Vec<&str> = text.lines().collect();
    for ((f, key), line) in files.iter().zip(&lines) {
        let path = fixture(f);
        let sd = if key.is_empty() {
            StateDict::load(&path).unwrap()
        } else {
            StateDict::load_key(&path, key).unwrap()
        };
        let mut flags: Vec<(String, bool)> = sd
            .iter()
            .map(|(k, t)| (k.to_string(), t.requires_grad()))
            .collect();
        flags.sort();
        let flags: Vec<String> = flags
            .iter()
            .map(|(k, g)| format!("('{k}', {})", if *g { "True" } else { "False" }))
            .collect();
        // Python: `path [(key, flag), ...] any_kept`; the file stores some flags true, so
        // the test would see a reader that kept them.
        let want = line.strip_prefix(path.to_str().unwrap()).unwrap().trim();
        let (want_flags, any_kept) = want.rsplit_once(' ').unwrap();
        assert_eq!(any_kept, "True", "{f}: the fixture stores requires_grad");
        assert_eq!(format!("[{}]", flags.join(", ")), want_flags, "{f}");
        // The lazy route reads them the same.
        let lazy = if key.is_empty() {
            LazyStateDict::load(&path).unwrap()
        } else {
            LazyStateDict::load_key(&path, key).unwrap()
        };
        for (k, t) in lazy.iter() {
            assert!(!t.read().unwrap().requires_grad(), "{f} {k}");
        }
    }
}
