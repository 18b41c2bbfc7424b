//! Prints a checkpoint's tree, and converts between `.pth` and `.safetensors`.
//!
//! ```text
//! scripts/cargo run --example inspect -- ckpt_epoch_240.pth
//! scripts/cargo run --example inspect -- ckpt_epoch_240.pth --key model --to model.safetensors
//! scripts/cargo run --example inspect -- model.safetensors --to model.pth
//! scripts/cargo run --example inspect -- model.ot --to model.pth
//! ```
//!
//! Objects of classes the reader does not import (`argparse.Namespace`, a pickled
//! `nn.Module`) print as Python's repr would; nothing of theirs is imported or run.
//!
//! Without arguments it inspects a checkpoint it writes itself. The `tch-state-dict` tool
//! (`cargo install tch-state-dict --features cli`) prints the same tree with `inspect`, and
//! adds `convert`, `check` and `diff`; this example shares its code.

use std::path::PathBuf;
use std::process::ExitCode;

use tch::{Device, Kind, Tensor};
use tch_state_dict::{Error, StateDict, Value};

#[path = "../src/bin/tch-state-dict/tree.rs"]
mod tree;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut path = None;
    let mut key = None;
    let mut to = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--key" => key = it.next().cloned(),
            "--to" => to = it.next().map(PathBuf::from),
            "-h" | "--help" => {
                println!(
                    "usage: inspect [CHECKPOINT] [--key KEY] [--to OUTPUT.pth|OUTPUT.safetensors]"
                );
                return Ok(());
            }
            other => path = Some(PathBuf::from(other)),
        }
    }
    let path = match path {
        Some(p) => p,
        None => demo_checkpoint()?,
    };

    print!("{}", tree::inspect(&path, None)?);

    if let Some(out) = to {
        let sd = match &key {
            Some(k) => StateDict::load_key(&path, k)?,
            None => StateDict::load(&path)?,
        };
        sd.save(&out)?;
        println!("\nwrote {} tensors to {}", sd.len(), out.display());
    }
    Ok(())
}

/// A training checkpoint as a Python script writes one: `{'model': ..., 'epoch': 240, ...}`.
fn demo_checkpoint() -> Result<PathBuf, Error> {
    let mut model = StateDict::new();
    let opts = (Kind::Float, Device::Cpu);
    model.insert("conv1.weight", Tensor::randn([8, 3, 3, 3], opts));
    model.insert("bn1.weight", Tensor::ones([8], opts));
    model.insert("bn1.num_batches_tracked", Tensor::from(240i64));
    model.insert("linear.weight", Tensor::randn([100, 8], opts));
    model.insert("linear.bias", Tensor::zeros([100], opts));
    let ckpt = Value::dict([
        ("model", Value::from(model)),
        ("epoch", Value::from(240)),
        ("acc", Value::from(0.9)),
        (
            "lr_history",
            Value::from(vec![Value::from(0.1), Value::from(0.01)]),
        ),
    ]);
    let path = std::env::temp_dir().join("tch-state-dict-demo-ckpt_epoch_240.pth");
    ckpt.save(&path)?;
    Ok(path)
}
