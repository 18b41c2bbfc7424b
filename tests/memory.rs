//! Peak memory of loads, measured in a child process (this test binary run again on one
//! test): the seed's workflow on a lazy state dict reads each tensor straight into the model,
//! so its peak RSS grows by a small fraction of the checkpoint; the eager path, which holds
//! the whole checkpoint in memory first, is measured the same way to show that the
//! measurement sees an intermediate copy when there is one.
//!
//! The child resets its peak resident set (`VmHWM`, through `/proc/self/clear_refs`) once the
//! model is allocated, and says whether it could: where it cannot, an earlier peak would hide
//! part of the growth, and the upper bounds are skipped, saying so.

mod common;

use common::tempdir;

use std::path::{Path, PathBuf};
use std::process::Command;

use tch::{Device, Kind, Tensor};
use tch_state_dict::{load_state_dict, LazyStateDict, ModuleTree, StateDict, Value};

const CHILD: &str = "TCH_STATE_DICT_MEMORY_CHILD";
/// 64 layers of 1024 × 1024 fp32: 256 MiB, and a head of 100 classes.
const LAYERS: i64 = 64;
const WIDTH: i64 = 1024;

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

/// What a child measured: its peak RSS growth during the load, and whether it could reset
/// its peak RSS first (without the reset, the growth is measured from the peak so far, which
/// may hide part of it).
struct Growth {
    bytes: u64,
    reset: bool,
}

impl Growth {
    /// Whether an upper bound can be checked on this measurement; says why not when not.
    fn measured(&self, what: &str) -> bool {
        if !self.reset {
            common::skipped(&format!("the bound on {what}"), common::NO_RESET);
        }
        self.reset
    }
}

/// Runs `mode` on `path` in a child process; returns its peak RSS growth during the load.
fn run_child(mode: &str, path: &Path) -> Growth {
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
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{mode}: no {name} line in {stdout}"))
    };
    Growth {
        bytes: field("growth=")
            .parse()
            .unwrap_or_else(|e| panic!("{mode}: growth: {e}")),
        reset: field("reset=") == "true",
    }
}

#[test]
#[ignore = "the child process of the memory tests; run by them"]
fn child() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let (mode, path) = spec.split_once('\n').unwrap();
    // The 10-class fp32 model, allocated and touched before the baseline is taken: peak RSS
    // is reset to the resident set with the model in it.
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
    let reset = common::reset_peak_rss();
    let before = reset.unwrap_or_else(common::peak_rss);
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
    let growth = common::peak_rss().saturating_sub(before);
    println!("growth={growth}");
    println!("reset={}", reset.is_some());
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
    eprintln!(
        "{len} B checkpoint: peak RSS growth lazy {} B, eager {} B",
        lazy.bytes, eager.bytes
    );
    if lazy.measured("the lazy load") {
        assert!(
            lazy.bytes < len / 10,
            "the lazy load grew peak RSS by {} B for a {len} B checkpoint",
            lazy.bytes
        );
    }
    // The measurement sees a copy when there is one (a lower bound, which a measurement
    // without the reset can only understate: checked either way).
    assert!(eager.bytes > len / 2, "eager growth {} B", eager.bytes);
}

#[test]
fn a_converting_load_holds_chunks_not_tensors() {
    let dir = tempdir("convert");
    let (path, len) = training_checkpoint(&dir, Kind::Half);
    let growth = run_child("convert", &path);
    eprintln!(
        "{len} B fp16 checkpoint into fp32: peak RSS growth {} B",
        growth.bytes
    );
    // Model bytes are 2 × len; the bound is a tenth of the file, far below one fp32 layer
    // per thread plus the whole checkpoint.
    if growth.measured("the converting load") {
        assert!(growth.bytes < len / 10, "grew by {} B", growth.bytes);
    }
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
    eprintln!("{total} B in 4 shards: peak RSS growth {} B", growth.bytes);
    if growth.measured("the sharded load") {
        assert!(
            growth.bytes < largest + (64 << 20),
            "grew by {} B; the largest tensor is {largest} B",
            growth.bytes
        );
    }
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
    eprintln!(
        "{LAYERS} layers in 2 ranks of DCP: peak RSS growth {} B",
        growth.bytes
    );
    if growth.measured("the DCP load") {
        assert!(
            growth.bytes < largest_chunk + (64 << 20),
            "grew by {} B; the largest chunk is {largest_chunk} B",
            growth.bytes
        );
    }
}
