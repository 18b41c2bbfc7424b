//! Reading checkpoints as Python writes them, without executing anything.
//!
//! # Design note
//!
//! A file goes through three steps:
//!
//! 1. **Detect** the format from its first bytes, never from its name ([`Format`]).
//! 2. **Parse** the container (torch.save's zip or legacy layout, safetensors, a sharded
//!    index) and, for torch files, run the pickle in the restricted machine of
//!    [`pickle`]. The result is the format-neutral index of [`index`]: a tree of objects
//!    whose tensors are descriptions (storage, dtype, offset, size, stride), each checked
//!    with checked arithmetic against its storage's real length. No tensor data has been
//!    read yet, so a hostile file fails here, cheaply, and reading a checkpoint's structure
//!    costs only its pickle.
//! 3. **Materialize** what was asked for ([`materialize`]): each storage is read once into
//!    one buffer and its tensors are views of it, so tensors that shared a storage in Python
//!    share one here. Loads into a model skip this step where they can: `load/` reads each
//!    tensor's byte range straight into the model's tensor.
//!
//! Steps 2 and 3 are charged to one memory budget per file ([`budget`],
//! [`ReadLimits::max_memory`]): 256 MiB plus 8 bytes per byte of the file by default, the
//! tensors that values and state dicts hold included (their bytes and libtorch's
//! bookkeeping of each). Loads straight into a model make no tensors and charge none.
//!
//! This module imports nothing from the layers above it (state dicts, loading, models).

mod alloc;
pub(crate) mod budget;
mod crc;
pub(crate) mod dcp;
mod detect;
mod index;
mod known;
mod legacy;
mod materialize;
mod module;
mod options;
pub(crate) mod pickle;
mod pread;
mod safetensors_file;
mod sharded;
mod source;
mod threads;
mod torch_zip;
mod torchscript;
mod zip_dir;

use std::path::{Path, PathBuf};

use crate::error::Error;

pub(crate) use detect::detect;
pub use detect::Format;
pub(crate) use index::{
    check_before_writing, check_tensors, pickle_error, top_level_entry, OpenFile, Parsed,
    StorageLoc,
};
pub(crate) use materialize::{read_file_tensors, Materializer};
pub use options::{ReadLimits, ReadOptions};
pub(crate) use pickle::{graph_module_body, Id, Obj, TensorRef};
pub(crate) use pread::{
    bytes, bytes_mut, contiguous_strides, is_contiguous, read_all_with, view_end, Read, ReadFrom,
};
pub(crate) use sharded::Shards;
use source::open_regular;
pub(crate) use source::{map_file, Source};
pub(crate) use threads::{on_threads, PARALLEL_BYTES};

/// A file opened and parsed: one checkpoint file, or a sharded index with its shards.
pub(crate) enum Opened<'a> {
    Single(Box<OpenFile<'a>>),
    Sharded(Shards),
    Distributed(dcp::Dcp),
}

/// The files a model directory may hold, in the order `from_pretrained(dir)` looks for them.
const MODEL_FILES: [&str; 4] = [
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
];

/// Opens and parses the checkpoint at `path`, whatever its format: a file, a DCP directory
/// (or its `.metadata`), or a model directory (the first of [`MODEL_FILES`] in it).
pub(crate) fn open_path(path: &Path, options: &ReadOptions) -> Result<Opened<'static>, Error> {
    if let Some(metadata) = dcp::metadata_path(path) {
        return Ok(Opened::Distributed(dcp::open(&metadata, options)?));
    }
    if path.is_dir() {
        if let Some(file) = MODEL_FILES
            .iter()
            .map(|f| path.join(f))
            .find(|f| f.is_file())
        {
            return open_path(&file, options);
        }
    }
    let source = open_source(path)?;
    parse(path.to_path_buf(), source, options)
}

/// Parses a checkpoint whose bytes are `source`.
pub(crate) fn parse<'a>(
    path: PathBuf,
    source: Source<'a>,
    options: &ReadOptions,
) -> Result<Opened<'a>, Error> {
    let start = std::time::Instant::now();
    let len = source.len();
    let opened = parse_any(path.clone(), source, options)?;
    let (format, tensors, charged) = match &opened {
        Opened::Single(f) => {
            let budget = &f.parsed.budget;
            let charged = format!(
                ", {} of its {} bytes of memory",
                budget.used(),
                budget.max()
            );
            (f.parsed.format, f.parsed.arena.tensors.len(), charged)
        }
        Opened::Sharded(s) => (Format::ShardedIndex, s.num_tensors(), String::new()),
        Opened::Distributed(d) => (Format::Distributed, d.num_tensors(), String::new()),
    };
    log::debug!(
        "{}: {format:?}, {len} bytes, {tensors} tensors, parsed in {:.2} ms{charged}",
        path.display(),
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(opened)
}

fn parse_any<'a>(
    path: PathBuf,
    source: Source<'a>,
    options: &ReadOptions,
) -> Result<Opened<'a>, Error> {
    let format = detect(&path, source.bytes())?;
    if format == Format::ShardedIndex {
        // Shards are found next to the index, so only an index opened by its path has any.
        let from_path = matches!(source, Source::Mapped(..));
        return Ok(Opened::Sharded(sharded::parse(
            &path,
            source.bytes(),
            from_path,
            options,
        )?));
    }
    parse_single(path, source, format, options).map(|f| Opened::Single(Box::new(f)))
}

/// Opens one checkpoint file (not an index); `refuse` may turn its detected format into an
/// error before anything is parsed.
pub(crate) fn open_single(
    path: &Path,
    options: &ReadOptions,
    refuse: impl FnOnce(Format) -> Option<Error>,
) -> Result<OpenFile<'static>, Error> {
    let source = open_source(path)?;
    let format = detect(path, source.bytes())?;
    if let Some(error) = refuse(format) {
        return Err(error);
    }
    parse_single(path.to_path_buf(), source, format, options)
}

fn parse_single<'a>(
    path: PathBuf,
    source: Source<'a>,
    format: Format,
    options: &ReadOptions,
) -> Result<OpenFile<'a>, Error> {
    let budget = budget::Budget::for_file(&options.limits, source.len());
    let parsed = match format {
        Format::TorchZip | Format::TorchScript => torch_zip::parse(&path, source, options, budget)?,
        Format::TorchLegacy => legacy::parse(&path, source, options, budget)?,
        Format::Safetensors => safetensors_file::parse(&path, source, &options.limits, budget)?,
        Format::ShardedIndex => {
            return Err(Error::ShardIndex {
                path,
                reason: "a sharded index cannot be read as a single file".into(),
            })
        }
        // Never detected from bytes.
        Format::Distributed => {
            return Err(Error::UnknownFormat {
                path,
                found: "a DCP directory's file".into(),
            })
        }
    };
    Ok(OpenFile::new(path, options.clone(), parsed))
}

/// The file at `path`, mapped for parsing and kept open for reading tensors.
fn open_source(path: &Path) -> Result<Source<'static>, Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = open_regular(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len == 0 {
        return Err(Error::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    // SAFETY: see `map_file`: the map is read only while parsing, and tensors are read from
    // the file with positional reads, never through the map.
    let map = unsafe { map_file(&file) }.map_err(io)?;
    Ok(Source::Mapped(
        std::sync::Arc::new(map),
        std::sync::Arc::new(file),
    ))
}
