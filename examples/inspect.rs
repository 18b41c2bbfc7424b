//! Prints a checkpoint's tree, and converts between `.pth` and `.safetensors`.
//!
//! ```text
//! scripts/cargo run --example inspect -- ckpt_epoch_240.pth
//! scripts/cargo run --example inspect -- ckpt_epoch_240.pth --key model --to model.safetensors
//! scripts/cargo run --example inspect -- model.safetensors --to model.pth
//! ```
//!
//! Without arguments it inspects a checkpoint it writes itself.

use std::path::PathBuf;

use tch::{Device, Kind, Tensor};
use tch_state_dict::{dtype_name, Checkpoint, Error, ReadOptions, StateDict, Value};

fn main() -> Result<(), Error> {
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

    // A private memory map: nothing is copied that is not printed or converted.
    let ckpt = Checkpoint::open_with(&path, &ReadOptions::new().mmap(true))?;
    println!(
        "{} ({:?}, {} tensors)",
        path.display(),
        ckpt.format(),
        ckpt.num_tensors()
    );
    if let Some(meta) = ckpt.safetensors_metadata() {
        println!("__metadata__: {meta:?}");
    }
    let value = ckpt.value()?;
    print_value(&value, 0);

    if let Some(out) = to {
        let sd = match &key {
            Some(k) => ckpt.state_dict_at(k)?,
            None => ckpt.state_dict()?,
        };
        sd.save(&out)?;
        println!("\nwrote {} tensors to {}", sd.len(), out.display());
    }
    Ok(())
}

fn nbytes(t: &Tensor) -> usize {
    t.numel() * t.kind().elt_size_in_bytes()
}

fn tensor_line(t: &Tensor) -> String {
    format!(
        "tensor torch.Size({:?}) {} ({} bytes{})",
        t.size(),
        dtype_name(t.kind()),
        nbytes(t),
        if t.requires_grad() {
            ", requires_grad"
        } else {
            ""
        }
    )
}

fn key_text(k: &Value) -> String {
    match k {
        Value::Str(s) => format!("{s:?}"),
        Value::Int(i) => i.to_string(),
        other => format!("<{}>", other.type_name()),
    }
}

fn print_value(v: &Value, indent: usize) {
    let pad = "  ".repeat(indent);
    match v {
        Value::Dict(d) => {
            let tensors = d
                .items
                .iter()
                .filter(|(_, v)| v.as_tensor().is_some())
                .count();
            let total: usize = d
                .items
                .iter()
                .filter_map(|(_, v)| v.as_tensor())
                .map(nbytes)
                .sum();
            println!(
                "{} of {} items{}{}",
                v.type_name(),
                d.items.len(),
                if tensors > 0 {
                    format!(", {tensors} tensors, {total} bytes")
                } else {
                    String::new()
                },
                d.metadata
                    .as_ref()
                    .map(|m| format!(", _metadata for {} modules", m.len()))
                    .unwrap_or_default()
            );
            let width = d
                .items
                .iter()
                .map(|(k, _)| key_text(k).len())
                .max()
                .unwrap_or(0);
            for (k, item) in &d.items {
                print!("{pad}  {:<width$}  ", key_text(k));
                print_value(item, indent + 1);
            }
        }
        Value::List(items) | Value::Tuple(items) | Value::Set(items) => {
            println!("{} of {} items", v.type_name(), items.len());
            for (i, item) in items.iter().enumerate() {
                print!("{pad}  [{i}]  ");
                print_value(item, indent + 1);
            }
        }
        Value::Tensor(t) => println!("{}", tensor_line(t)),
        Value::Str(s) => println!("{s:?}"),
        Value::Int(i) => println!("{i}"),
        Value::Float(f) => println!("{f}"),
        Value::Bool(b) => println!("{}", if *b { "True" } else { "False" }),
        Value::None => println!("None"),
        Value::Bytes(b) => println!("bytes of length {}", b.len()),
        Value::BigInt(b) => println!("int of {} bytes", b.len()),
        Value::Device(d) => println!("torch.device({d:?})"),
        Value::Dtype(k) => println!("torch.{}", dtype_name(*k)),
        other => println!("{}", other.type_name()),
    }
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
