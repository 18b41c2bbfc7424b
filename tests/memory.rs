//! Peak memory of loads, measured in a child process (this test binary run again on one
//! test): the seed's workflow on a lazy state dict reads each tensor straight into the model,
//! so its peak RSS grows by a small fraction of the checkpoint; the eager path, which holds
//! the whole checkpoint in memory first, is measured the same way to show that the
//! measurement sees an intermediate copy when there is one.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use tch::{Device, Kind, Tensor};
use tch_state_dict::{load_state_dict, LazyStateDict, ModuleTree, StateDict, Value};

const CHILD: &str = "TCH_STATE_DICT_MEMORY_CHILD";
/// 64 layers of 1024 × 1024 fp32: 256 MiB, and a head of 100 classes.
const LAYERS: i64 = 64;
const WIDTH: i64 = 1024;

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tch-state-dict-mem-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn layers(kind: Kind, classes: i64) -> StateDict {
    let mut sd: StateDict = (0..LAYERS)
        .map(|i| {
            (
                format!("layers.{i}.weight"),
                Tensor::randn([WIDTH, WIDTH], (Kind::Float, Device::Cpu)).to_kind(kind),
            )
        })
        .collect();
    sd.insert(
        "linear.weight",
        Tensor::randn([classes, WIDTH], (Kind::Float, Device::Cpu)).to_kind(kind),
    );
    sd.insert(
        "linear.bias",
        Tensor::zeros([classes], (Kind::Float, Device::Cpu)).to_kind(kind),
    );
    sd
}

/// The peak resident set of this process so far, in bytes.
fn vm_hwm() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// Runs `mode` on `path` in a child process; returns its peak RSS growth during the load.
fn run_child(mode: &str, path: &Path) -> u64 {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--include-ignored", "--nocapture"])
        .env(CHILD, format!("{mode}\n{}", path.display()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{mode}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("growth="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{mode}: no growth line in {stdout}"))
}

#[test]
#[ignore = "the child process of the memory tests; run by them"]
fn child() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let (mode, path) = spec.split_once('\n').unwrap();
    // The 10-class fp32 model, allocated and touched before the baseline is taken.
    // (Nothing larger than a layer is allocated before it, so that the baseline is the
    // model's own peak.)
    let mut model = ModuleTree::new("Net");
    let ones = |shape: &[i64]| Tensor::ones(shape, (Kind::Float, Device::Cpu));
    for i in 0..LAYERS {
        model
            .add_tensor(&format!("layers.{i}.weight"), ones(&[WIDTH, WIDTH]))
            .unwrap();
    }
    model
        .add_tensor("linear.weight", ones(&[10, WIDTH]))
        .unwrap();
    model.add_tensor("linear.bias", ones(&[10])).unwrap();
    let before = vm_hwm();
    let report = match mode {
        "lazy" | "convert" => {
            let mut sd = LazyStateDict::load_key(path, "model").unwrap();
            sd.pop("linear.weight");
            sd.pop("linear.bias");
            load_state_dict(&model, &sd, false).unwrap()
        }
        "sharded" | "dcp" => {
            let mut sd = if mode == "dcp" {
                LazyStateDict::load_key(path, "model").unwrap()
            } else {
                LazyStateDict::load(path).unwrap()
            };
            sd.pop("linear.weight");
            sd.pop("linear.bias");
            load_state_dict(&model, &sd, false).unwrap()
        }
        "eager" => {
            let mut sd = StateDict::load_key(path, "model").unwrap();
            sd.pop("linear.weight");
            sd.pop("linear.bias");
            load_state_dict(&model, &sd, false).unwrap()
        }
        other => panic!("unknown mode {other}"),
    };
    assert_eq!(report.missing_keys, ["linear.weight", "linear.bias"]);
    let growth = vm_hwm().saturating_sub(before);
    println!("growth={growth}");
}

fn training_checkpoint(dir: &Path, kind: Kind) -> (PathBuf, u64) {
    let path = dir.join(format!("ckpt-{kind:?}.pth"));
    let sd = layers(kind, 100);
    Value::dict([("model", Value::from(sd)), ("epoch", Value::from(240))])
        .save(&path)
        .unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    (path, len)
}

#[test]
fn the_seeds_workflow_makes_no_intermediate_copy_of_the_checkpoint() {
    let dir = tempdir("seed");
    let (path, len) = training_checkpoint(&dir, Kind::Float);
    assert!(len >= 256 << 20);
    let lazy = run_child("lazy", &path);
    let eager = run_child("eager", &path);
    eprintln!("{len} B checkpoint: peak RSS growth lazy {lazy} B, eager {eager} B");
    assert!(
        lazy < len / 10,
        "the lazy load grew peak RSS by {lazy} B for a {len} B checkpoint"
    );
    // The measurement sees a copy when there is one.
    assert!(eager > len / 2, "eager growth {eager} B");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_converting_load_holds_chunks_not_tensors() {
    let dir = tempdir("convert");
    let (path, len) = training_checkpoint(&dir, Kind::Half);
    let growth = run_child("convert", &path);
    eprintln!("{len} B fp16 checkpoint into fp32: peak RSS growth {growth} B");
    // Model bytes are 2 × len; the bound is a tenth of the file, far below one fp32 layer
    // per thread plus the whole checkpoint.
    assert!(growth < len / 10, "grew by {growth} B");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_sharded_checkpoint_loads_without_holding_its_shards() {
    let dir = tempdir("sharded");
    let sd = layers(Kind::Float, 100);
    let mut map = serde_json::Map::new();
    let keys: Vec<String> = sd.keys().map(str::to_string).collect();
    let mut total = 0;
    for (n, chunk) in keys.chunks(keys.len().div_ceil(4)).enumerate() {
        let shard: StateDict = chunk
            .iter()
            .map(|k| (k.clone(), sd.get(k).unwrap().shallow_clone()))
            .collect();
        let name = format!("model-{n:05}.safetensors");
        shard.save(dir.join(&name)).unwrap();
        total += std::fs::metadata(dir.join(&name)).unwrap().len();
        for k in chunk {
            map.insert(k.clone(), serde_json::Value::String(name.clone()));
        }
    }
    let index = dir.join("model.safetensors.index.json");
    let json = serde_json::json!({ "weight_map": map });
    std::fs::write(&index, serde_json::to_vec(&json).unwrap()).unwrap();
    drop(sd);
    let growth = run_child("sharded", &index);
    let largest = (WIDTH * WIDTH * 4) as u64;
    eprintln!("{total} B in 4 shards: peak RSS growth {growth} B");
    assert!(
        growth < largest + (64 << 20),
        "grew by {growth} B; the largest tensor is {largest} B"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A DCP checkpoint of 2 ranks (even layers `Shard(0)`, odd ones `Shard(1)`, the head
/// replicated), written by real torch.distributed, loads chunk by chunk into the model's
/// boxes: peak RSS grows by less than the largest chunk plus 64 MiB.
#[test]
fn a_dcp_checkpoint_loads_without_holding_its_chunks() {
    let dir = tempdir("dcp");
    let out = dir.join("step-1");
    common::run_python(
        "oracle/dcp_save.py",
        &[
            "layers",
            out.to_str().unwrap(),
            &LAYERS.to_string(),
            &WIDTH.to_string(),
            "100",
        ],
        "",
    );
    let growth = run_child("dcp", &out);
    let largest_chunk = (WIDTH * WIDTH / 2 * 4) as u64;
    eprintln!("{LAYERS} layers in 2 ranks of DCP: peak RSS growth {growth} B");
    assert!(
        growth < largest_chunk + (64 << 20),
        "grew by {growth} B; the largest chunk is {largest_chunk} B"
    );
    std::fs::remove_dir_all(&dir).ok();
}
