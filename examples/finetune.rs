//! The story this crate exists for: a CIFAR ResNet50 trained on 100 classes, saved by a
//! training script as `{'model': ..., 'epoch': 240, 'acc': ...}`, fine-tuned for fewer.
//!
//! ```text
//! scripts/cargo run --example finetune
//! scripts/cargo run --example finetune -- --checkpoint ckpt.pth --key model \
//!     --arch cifar_resnet50 --classes 100 --new-classes 7
//! ```
//!
//! Without arguments it writes the checkpoint itself. It runs on CUDA when there is a GPU.

use std::path::PathBuf;

use tch::{nn, Device, Kind, Tensor};
use tch_state_dict::models::{replace_head, Arch, ResNet};
use tch_state_dict::{
    device_name, dtype_name, load_state_dict, state_dict, Error, LazyStateDict, Value,
};

struct Args {
    checkpoint: Option<PathBuf>,
    key: Option<String>,
    arch: Arch,
    classes: Option<i64>,
    new_classes: Option<i64>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        checkpoint: None,
        key: Some("model".to_string()),
        arch: Arch::CifarResNet50,
        classes: None,
        new_classes: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--checkpoint" => args.checkpoint = Some(PathBuf::from(value()?)),
            "--key" => {
                let k = value()?;
                args.key = if k.is_empty() { None } else { Some(k) };
            }
            "--arch" => {
                let name = value()?;
                args.arch = Arch::from_name(&name).ok_or_else(|| {
                    let all: Vec<&str> = Arch::all().iter().map(|a| a.name()).collect();
                    format!("unknown --arch {name}; one of {}", all.join(", "))
                })?;
            }
            "--classes" => {
                args.classes = Some(value()?.parse().map_err(|e| format!("--classes: {e}"))?)
            }
            "--new-classes" => {
                let n = value()?
                    .parse()
                    .map_err(|e| format!("--new-classes: {e}"))?;
                args.new_classes = Some(n);
            }
            other => {
                return Err(format!(
                    "unknown argument {other}\nusage: finetune [--checkpoint PATH] [--key KEY \
                     (\"\" for a bare state dict)] [--arch ARCH] [--classes N] [--new-classes M]"
                ))
            }
        }
    }
    Ok(args)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), Error> {
    let device = Device::cuda_if_available();
    println!("device: {}", device_name(device));

    // The checkpoint: a user's, or one a training script would have written.
    let path = match &args.checkpoint {
        Some(p) => p.clone(),
        None => write_training_checkpoint(args.arch, 100)?,
    };
    // Nothing is read yet: each load below reads the tensors it needs straight from the file
    // into the model.
    let checkpoint = match &args.key {
        Some(key) => LazyStateDict::load_key(&path, key)?,
        None => LazyStateDict::load(&path)?,
    };
    let head = args.arch.head_name();
    let classes = match args.classes {
        Some(c) => c,
        None => checkpoint
            .get(&format!("{head}.weight"))
            .map(|w| w.size()[0])
            .ok_or_else(|| Error::InvalidArgument {
                name: "--classes",
                reason: format!("the checkpoint has no {head}.weight to count classes from"),
            })?,
    };
    // The story loads into 10 classes, then replaces the head with 7; given --new-classes,
    // both use it.
    let (n_fix1, n) = (
        args.new_classes.unwrap_or(10),
        args.new_classes.unwrap_or(7),
    );
    println!(
        ">>> checkpoint = torch.load({:?}){}  # {} tensors, {classes} classes",
        path.display().to_string(),
        args.key
            .as_ref()
            .map(|k| format!("[{k:?}]"))
            .unwrap_or_default(),
        checkpoint.len()
    );

    // 1. The wall: a model with fewer classes refuses the checkpoint, even when not strict.
    let vs = nn::VarStore::new(device);
    let model = ResNet::new(&vs, args.arch, n_fix1)?;
    println!(
        "\n>>> model = {}(num_classes={n_fix1}); model.load_state_dict(checkpoint, strict=False)",
        args.arch
    );
    match load_state_dict(&model, &checkpoint, false) {
        Err(e) => println!("{e}"),
        Ok(report) => println!("{report}"),
    }

    // 2. Fix 1: drop the head's keys, load the rest non-strictly.
    let mut backbone = checkpoint.shallow_clone();
    backbone.pop(&format!("{head}.weight"));
    backbone.pop(&format!("{head}.bias"));
    println!("\n>>> checkpoint.pop(\"{head}.weight\"); checkpoint.pop(\"{head}.bias\")");
    println!(">>> model.load_state_dict(checkpoint, strict=False)");
    println!("{}", load_state_dict(&model, &backbone, false)?);

    // 3. Fix 2: build with the checkpoint's class count, load strictly, replace the head.
    let vs = nn::VarStore::new(device);
    let mut model = ResNet::new(&vs, args.arch, classes)?;
    println!(
        "\n>>> model = {}(num_classes={classes}); model.load_state_dict(checkpoint)",
        args.arch
    );
    println!("{}", load_state_dict(&model, &checkpoint, true)?);
    println!(">>> model.{head} = nn.Linear({}, {n})", model.in_features());
    replace_head(&mut model, n)?;
    let w = &model.head().ws;
    println!(
        "{head}: weight {} {} on {}, requires_grad={}",
        TorchSize(&w.size()),
        dtype_name(w.kind()),
        device_name(w.device()),
        w.requires_grad()
    );
    println!(
        "state_dict()[{:?}]: {}",
        format!("{head}.weight"),
        TorchSize(
            &state_dict(&model)?
                .get(&format!("{head}.weight"))
                .map(|t| t.size())
                .unwrap_or_default()
        )
    );
    let side = args.arch.input_size();
    let x = Tensor::randn([4, 3, side, side], (Kind::Float, device));
    let out = tch::no_grad(|| model.forward_t(&x, false));
    println!(
        ">>> model(torch.randn(4, 3, {side}, {side})).shape\n{}",
        TorchSize(&out.size())
    );
    Ok(())
}

/// What a Python training script writes at epoch 240: the model's state dict, with the epoch
/// and accuracy beside it.
fn write_training_checkpoint(arch: Arch, classes: i64) -> Result<PathBuf, Error> {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ResNet::new(&vs, arch, classes)?;
    let ckpt = Value::dict([
        ("model", Value::from(state_dict(&model)?)),
        ("epoch", Value::from(240)),
        ("acc", Value::from(0.7931)),
    ]);
    let dir = std::env::temp_dir().join("tch-state-dict-finetune");
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        path: dir.clone(),
        source,
    })?;
    let path = dir.join("ckpt_epoch_240.pth");
    ckpt.save(&path)?;
    println!(
        ">>> torch.save({{'model': {}(num_classes={classes}).state_dict(), 'epoch': 240, 'acc': 0.7931}}, {:?})",
        arch,
        path.display().to_string()
    );
    Ok(path)
}

/// A shape as PyTorch prints it: `torch.Size([4, 7])` (Rust's `{:?}` of a slice of integers
/// is Python's list repr).
struct TorchSize<'a>(&'a [i64]);

impl std::fmt::Display for TorchSize<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "torch.Size({:?})", self.0)
    }
}
