//! `tch-state-dict`: inspect, convert, check and diff PyTorch checkpoints without Python.
//!
//! ```text
//! cargo install tch-state-dict --features cli
//! tch-state-dict inspect ckpt_epoch_240.pth
//! tch-state-dict convert ckpt_epoch_240.pth model.safetensors --key model
//! tch-state-dict check ckpt_epoch_240.pth --key model --arch cifar_resnet50 --classes 10
//! tch-state-dict diff before.pth after.safetensors
//! ```
//!
//! Exit codes: 0 for yes (printed, converted, would load, identical); 1 for no (`check`: the
//! load would fail; `diff`: the state dicts differ); 2 for an error (unreadable input, a bad
//! argument, an output that cannot be written), printed on stderr.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tch_state_dict::models::Arch;
use tch_state_dict::{Error, LazyStateDict};

mod check;
mod convert;
mod diff;
mod tree;

#[derive(Parser)]
#[command(
    name = "tch-state-dict",
    version,
    about = "Inspect, convert, check and diff PyTorch checkpoints (.pth, .safetensors, sharded) \
             without Python",
    after_help = "Exit codes: 0 yes, 1 no (check: the load would fail; diff: they differ), \
                  2 error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the checkpoint's tree: dicts, lists, numbers and strings, and each tensor's
    /// shape, dtype and size.
    Inspect {
        /// A torch.save file (zip or legacy), a .safetensors file or a sharded *.index.json.
        checkpoint: PathBuf,
        /// Print only the value under this top-level key (`model`).
        #[arg(long)]
        key: Option<String>,
    },
    /// Convert a state dict to .pth (torch.save), .safetensors or .ot (tch's VarStore
    /// format); the format comes from OUT's extension.
    Convert {
        /// The checkpoint to read.
        input: PathBuf,
        /// The file to write: *.pth, *.pt, *.bin, *.safetensors or *.ot.
        output: PathBuf,
        /// The state dict under this top-level key (`model`); the whole file when absent.
        #[arg(long)]
        key: Option<String>,
        /// Write the whole checkpoint (the value under --key, if given), not only a state
        /// dict, with the objects it holds (options, configs, a Lightning AttributeDict) as
        /// they came, for torch.load(weights_only=False) to resume from; .pth, .pt, .bin or
        /// .ckpt only. Without it, objects are refused, as weights_only=True refuses them.
        #[arg(long)]
        objects: bool,
    },
    /// Say whether the checkpoint loads into a model of this crate, as
    /// model.load_state_dict would, without loading it.
    Check {
        /// The checkpoint to check.
        checkpoint: PathBuf,
        /// The architecture (torchvision's name, `cifar_` + CIFAR's, or RepDistiller's).
        #[arg(long, value_parser = parse_arch)]
        arch: Arch,
        /// The model's number of classes.
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
        classes: i64,
        /// The state dict under this top-level key (`model`); the whole file when absent.
        #[arg(long)]
        key: Option<String>,
        #[command(flatten)]
        strict: Strictness,
    },
    /// Compare two state dicts: keys only in one, shapes, dtypes, and the largest absolute
    /// difference of each common tensor.
    Diff {
        /// The first checkpoint.
        a: PathBuf,
        /// The second checkpoint.
        b: PathBuf,
        /// The state dict under this top-level key, in both files.
        #[arg(long)]
        key: Option<String>,
        /// The key in A only, overriding --key.
        #[arg(long)]
        key_a: Option<String>,
        /// The key in B only, overriding --key.
        #[arg(long)]
        key_b: Option<String>,
    },
}

/// `--strict` (the default, as in PyTorch) or `--no-strict`.
#[derive(Args)]
struct Strictness {
    /// Missing and unexpected keys are errors (the default, as strict=True).
    #[arg(long, overrides_with = "no_strict")]
    strict: bool,
    /// Missing and unexpected keys are reported, not errors (strict=False).
    #[arg(long, overrides_with = "strict")]
    no_strict: bool,
}

fn parse_arch(name: &str) -> Result<Arch, String> {
    Arch::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = Arch::all().iter().map(|a| a.name()).collect();
        format!("no architecture {name:?}; one of {}", names.join(", "))
    })
}

/// A command's answer when it ran: yes (exit 0) or no (exit 1).
enum Answer {
    Yes,
    No,
}

/// Why a command could not answer (exit 2).
enum Failure {
    /// The crate's error: an unreadable checkpoint, a key that is not there, a file that
    /// cannot be written.
    Crate(Error),
    /// Standard output could not be written.
    Stdout(io::Error),
    /// An argument that only makes sense once the command runs (an output extension).
    Usage(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Crate(e)
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Stdout(e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let result = run(cli.command, &mut out).and_then(|answer| {
        out.flush()?;
        Ok(answer)
    });
    match result {
        Ok(Answer::Yes) => ExitCode::SUCCESS,
        Ok(Answer::No) => ExitCode::from(1),
        // `tch-state-dict inspect big.pth | head`: the reader has what it wanted.
        Err(Failure::Stdout(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(failure) => {
            // What was printed before the failure comes first.
            let _ = out.flush();
            match failure {
                Failure::Crate(e) => {
                    eprintln!("error: {}", with_causes(&e));
                    if let Some(hint) = hint(&e) {
                        eprintln!("{hint}");
                    }
                }
                Failure::Stdout(e) => eprintln!("error: writing to standard output: {e}"),
                Failure::Usage(e) => eprintln!("error: {e}"),
            }
            ExitCode::from(2)
        }
    }
}

fn run(command: Command, out: &mut impl Write) -> Result<Answer, Failure> {
    match command {
        Command::Inspect { checkpoint, key } => {
            out.write_all(tree::inspect(&checkpoint, key.as_deref())?.as_bytes())?;
            Ok(Answer::Yes)
        }
        Command::Convert {
            input,
            output,
            key,
            objects,
        } => {
            if objects {
                convert::run_with_objects(&input, &output, key.as_deref(), out)?;
            } else {
                convert::run(&input, &output, key.as_deref(), out)?;
            }
            Ok(Answer::Yes)
        }
        Command::Check {
            checkpoint,
            arch,
            classes,
            key,
            strict,
        } => check::run(
            &checkpoint,
            key.as_deref(),
            arch,
            classes,
            !strict.no_strict,
            out,
        ),
        Command::Diff {
            a,
            b,
            key,
            key_a,
            key_b,
        } => {
            let key_a = key_a.or_else(|| key.clone());
            let key_b = key_b.or(key);
            diff::run(&a, key_a.as_deref(), &b, key_b.as_deref(), out)
        }
    }
}

/// The state dict of `path`, or the one under its top-level `key`, with nothing read yet.
fn open_state_dict(path: &Path, key: Option<&str>) -> Result<LazyStateDict<'static>, Error> {
    match key {
        Some(key) => LazyStateDict::load_key(path, key),
        None => LazyStateDict::load(path),
    }
}

/// The error's message, followed by those of its causes that it does not already hold.
fn with_causes(e: &Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// What to type instead, for the errors a command-line user makes.
fn hint(e: &Error) -> Option<String> {
    match e {
        Error::NotAStateDict {
            at: None, entries, ..
        } => {
            // Python's repr of the key that holds a state dict: 'model', or 0 for a key that
            // is no string, which `--key` cannot name.
            let key = entries
                .iter()
                .find(|(_, what)| what.starts_with("a state dict"))
                .map(|(k, _)| k.as_str());
            let quoted = |k: &str, q: char| k.len() >= 2 && k.starts_with(q) && k.ends_with(q);
            Some(match key {
                Some(key) if quoted(key, '\'') || quoted(key, '"') => {
                    format!("hint: pass --key {}", &key[1..key.len() - 1])
                }
                Some(key) => format!(
                    "hint: the state dict is under the key {key}, which is no string and which \
                     --key cannot name; convert --objects writes the whole checkpoint"
                ),
                None => "hint: pass --key with the key that holds the state dict".to_string(),
            })
        }
        _ => None,
    }
}
