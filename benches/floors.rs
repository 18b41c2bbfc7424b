//! The converting route against its floor (issue 26): loads whose file dtype differs from the
//! model's, timed against libtorch's own `copy_` of the same tensors, already in memory in the
//! file's dtype, into the same model, on the same thread count; and PyTorch doing the same
//! conversion.
//!
//! ```text
//! scripts/cargo bench --bench convert             # ResNets and the 4 GiB LLM-like checkpoint
//! scripts/cargo bench --bench convert -- --quick  # resnet50 and a 1 GiB LLM-like checkpoint
//! ```
//!
//! The LLM-like checkpoint is the sharded bf16 safetensors that `save_pretrained` writes, made
//! by `benches/make_llm.py` under `target/bench-data` once. Each time is the median of the runs
//! after a warm-up, with the files in the page cache, unless the row says cold.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use tch::{nn, Device, Kind};
use tch_state_dict::models::{Arch, ResNet};
use tch_state_dict::{load_checkpoint, ModuleTree, StateDict, StateDictModule};

fn median_of(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The median of `n` runs of `f` after a warm-up, in ms.
fn median(n: usize, f: &mut dyn FnMut()) -> f64 {
    f();
    median_of(
        (0..n)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

fn data_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn python() -> PathBuf {
    std::env::var_os("TCH_STATE_DICT_PYTHON")
        .map(PathBuf::from)
        .expect("run through scripts/cargo, which sets TCH_STATE_DICT_PYTHON")
}

/// The LLM-like checkpoint of `layers` layers of four [dim, dim] bf16 projections, in 4
/// shards: its index.json, written once.
fn llm_files(layers: usize, dim: i64) -> PathBuf {
    let dir = data_dir().join(format!("llm-{layers}x{dim}"));
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/make_llm.py");
        let status = Command::new(python())
            .arg(script)
            .arg(&dir)
            .args([layers.to_string(), dim.to_string(), "4".to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "make_llm.py failed");
    }
    index
}

/// A tch VarStore with the LLM-like checkpoint's keys, in `kind`.
fn llm_model(layers: usize, dim: i64, kind: Kind) -> (nn::VarStore, ModuleTree) {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut keys = Vec::new();
    for i in 0..layers {
        let attn = vs.root() / "model" / "layers" / i / "self_attn";
        for p in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            let _ = (&attn / p).zeros("weight", &[dim, dim]);
            keys.push(format!("model.layers.{i}.self_attn.{p}.weight"));
        }
    }
    let tree = ModuleTree::from_var_store_ordered(&vs, &keys)
        .unwrap()
        .with_type_name("Llm");
    tree.iter().for_each(|(_, t)| {
        let mut t = t.shallow_clone();
        let _guard = tch::no_grad_guard();
        t.set_data(&t.to_kind(kind));
    });
    (vs, tree)
}

/// libtorch's `copy_` of each source tensor into the model's tensor of the same key: the floor.
fn copy_floor(model: &dyn StateDictModule, src: &StateDict) {
    let tree = model.module_tree().unwrap();
    let _guard = tch::no_grad_guard();
    for (key, dst) in tree.iter() {
        let mut dst = dst.shallow_clone();
        dst.copy_(src.get(key).unwrap());
    }
}

fn floats_as(sd: &StateDict, kind: Kind) -> StateDict {
    let mut out = StateDict::new();
    for (k, t) in sd.iter() {
        let t = if t.is_floating_point() {
            t.to_kind(kind)
        } else {
            t.shallow_clone()
        };
        out.insert(k, t);
    }
    out
}

/// One row: `file` (in `file_kind`) into `model`, against the copy_ floor.
fn row(name: &str, label: &str, model: &dyn StateDictModule, file: &Path, runs: usize) {
    let src = StateDict::load(file).unwrap();
    let load = median(runs, &mut || {
        load_checkpoint(model, file, true).unwrap();
    });
    let floor = median(runs, &mut || copy_floor(model, &src));
    println!(
        "| {name} | {label} | {load:.1} | {floor:.1} | {:.2} |",
        load / floor
    );
}

fn resnet_rows(arch: Arch, runs: usize) {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ResNet::new(&vs, arch, 1000).unwrap();
    let dir = data_dir();
    let sd = tch_state_dict::state_dict(&model).unwrap();
    let half = dir.join(format!("convert-{}-fp16.pth", arch.name()));
    let bf16 = dir.join(format!("convert-{}-bf16.pth", arch.name()));
    let fp32 = dir.join(format!("convert-{}-fp32.pth", arch.name()));
    floats_as(&sd, Kind::Half).save(&half).unwrap();
    floats_as(&sd, Kind::BFloat16).save(&bf16).unwrap();
    sd.save(&fp32).unwrap();
    row(arch.name(), "fp16 → fp32", &model, &half, runs);
    row(arch.name(), "bf16 → fp32", &model, &bf16, runs);
    let bvs = nn::VarStore::new(Device::Cpu);
    let bmodel = ResNet::new(&bvs, arch, 1000).unwrap();
    let tree = bmodel.module_tree().unwrap();
    {
        let _guard = tch::no_grad_guard();
        for (_, t) in tree.iter() {
            if t.is_floating_point() {
                let mut t = t.shallow_clone();
                t.set_data(&t.to_kind(Kind::BFloat16));
            }
        }
    }
    row(arch.name(), "fp32 → bf16", tree.as_ref(), &fp32, runs);
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    println!("threads: {}", tch::get_num_threads());
    println!("\n| checkpoint | conversion | load (ms) | copy_ floor (ms) | load / floor |");
    println!("|---|---|---|---|---|");
    let archs: &[Arch] = if quick {
        &[Arch::ResNet50]
    } else {
        &[Arch::ResNet18, Arch::ResNet50, Arch::ResNet152]
    };
    for &arch in archs {
        resnet_rows(arch, 15);
    }
    let (layers, dim) = if quick { (8, 4096) } else { (32, 4096) };
    let index = llm_files(layers, dim);
    let name = format!(
        "LLM {} GiB bf16",
        (layers * 4 * (dim * dim * 2) as usize) >> 30
    );
    let (vs, tree) = llm_model(layers, dim, Kind::Float);
    row(&name, "bf16 → fp32", &tree, &index, 5);
    drop((vs, tree));
}
