//! `convert`: a state dict from one format into another.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use tch::Tensor;
use tch_state_dict::{Checkpoint, Error, Format, LazyStateDict, SaveOptions, StateDict};

use crate::{open_state_dict, Failure};

/// State dicts larger than this are read tensor by tensor behind a progress bar.
const PROGRESS_BYTES: u64 = 64 << 20;

/// What `convert` writes, from the output's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// `torch.save` (zip): `.pth`, `.pt`, `.bin`.
    Torch,
    /// `.safetensors`.
    Safetensors,
    /// tch's `VarStore::save` format (`Tensor::save_multi`): `.ot`.
    Ot,
}

impl Target {
    fn of(path: &Path) -> Result<Target, Failure> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("pth" | "pt" | "bin" | "ckpt") => Ok(Target::Torch),
            Some("safetensors") => Ok(Target::Safetensors),
            Some("ot") => Ok(Target::Ot),
            _ => Err(Failure::Usage(format!(
                "{}: cannot tell the format to write from the extension; use .pth, .pt, .bin \
                 or .ckpt (torch.save), .safetensors, or .ot (tch's VarStore::save)",
                path.display()
            ))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Target::Torch => "torch.save",
            Target::Safetensors => "safetensors",
            Target::Ot => "tch VarStore",
        }
    }
}

/// Reads the state dict of `input` (under `key`) and writes it to `output`, in the format of
/// `output`'s extension. Above [`PROGRESS_BYTES`], a progress bar on stderr follows the
/// read, tensor by tensor, then the write.
pub fn run(
    input: &Path,
    output: &Path,
    key: Option<&str>,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let target = Target::of(output)?;
    let mut lazy = open_state_dict(input, key)?;
    let total = lazy.nbytes();
    let sd = if total > PROGRESS_BYTES {
        read_with_progress(&mut lazy, total)?
    } else {
        // Read together: storages are read across threads, and tensors that shared one in
        // Python (tied weights) share it here and in the file written.
        lazy.into_state_dict()?
    };
    let spinner = (total > PROGRESS_BYTES).then(|| {
        let spinner = ProgressBar::new_spinner().with_message(format!(
            "writing {} ({})",
            output.display(),
            target.name()
        ));
        spinner.enable_steady_tick(Duration::from_millis(100));
        spinner
    });
    let written = match target {
        Target::Torch => sd.save_as(output, Format::TorchZip).map_err(Failure::from),
        Target::Safetensors => sd
            .save_as(output, Format::Safetensors)
            .map_err(Failure::from),
        Target::Ot => save_ot(&sd, output),
    };
    if let Some(spinner) = spinner {
        spinner.finish_and_clear();
    }
    written?;
    writeln!(
        out,
        "wrote {} tensors ({}) to {} ({})",
        sd.len(),
        HumanBytes(sd.nbytes()),
        output.display(),
        target.name()
    )?;
    Ok(())
}

/// `convert --objects`: the whole value of `input` (under `key`), written to `output` with
/// its objects as they came ([`SaveOptions::objects`]).
pub fn run_with_objects(
    input: &Path,
    output: &Path,
    key: Option<&str>,
    out: &mut impl Write,
) -> Result<(), Failure> {
    if Target::of(output)? != Target::Torch {
        return Err(Failure::Usage(format!(
            "{}: --objects writes torch.save's format only (.pth, .pt, .bin or .ckpt): \
             safetensors and .ot hold tensors alone",
            output.display()
        )));
    }
    let ckpt = Checkpoint::open(input)?;
    // Under a key, only that value is read: not a training checkpoint's optimizer state
    // when the state dict is asked for.
    let value = match key {
        Some(key) => ckpt.value_at(key)?,
        None => ckpt.value()?,
    };
    value.save_with(output, &SaveOptions::new().objects(true))?;
    writeln!(
        out,
        "wrote {} with its objects to {} (torch.save; torch.load(weights_only=False) reads it)",
        key.map_or("the checkpoint".to_string(), |k| format!("{k:?}")),
        output.display()
    )?;
    Ok(())
}

/// Reads each tensor in turn, advancing a bar on stderr by its bytes. Unlike
/// [`LazyStateDict::into_state_dict`], tensors that shared a storage in the file are read
/// (and written) once each.
fn read_with_progress(lazy: &mut LazyStateDict<'static>, total: u64) -> Result<StateDict, Error> {
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template(
            "reading {wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} \
             {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut sd = StateDict::with_capacity(lazy.len());
    for (key, tensor) in lazy.iter() {
        sd.insert(key, tensor.read()?);
        bar.inc(tensor.nbytes());
    }
    bar.finish_and_clear();
    sd.set_metadata(lazy.metadata_mut().take());
    sd.set_safetensors_metadata(lazy.safetensors_metadata().cloned());
    Ok(sd)
}

/// Writes `sd` as `Tensor::save_multi` does (names with `|` for `.`, as `VarStore::save`
/// writes them), into a new temporary file beside `path` that is renamed into place.
fn save_ot(sd: &StateDict, path: &Path) -> Result<(), Failure> {
    if let Some(key) = sd.keys().find(|k| k.contains('|')) {
        return Err(Failure::Usage(format!(
            "{}: the key {key:?} holds '|', which the .ot format uses for '.'; rename it first",
            path.display()
        )));
    }
    let named: Vec<(&str, &Tensor)> = sd.iter().collect();
    let tmp = temporary_path(path);
    let io_error = |source: io::Error| {
        Failure::Crate(Error::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    // Unbuffered: every write's error reaches libtorch, which fails the save; a buffer
    // flushed when libtorch drops the stream would lose the last one.
    let file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(io_error)?;
    let written = Tensor::save_multi_to_stream(&named, file)
        .map_err(|source| Error::Torch {
            context: format!("{}: writing {} tensors", path.display(), named.len()),
            source,
        })
        .map_err(Failure::from)
        .and_then(|()| fs::rename(&tmp, path).map_err(io_error));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// `.<name>.<pid>.tmp` in the directory of `path`.
fn temporary_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}
