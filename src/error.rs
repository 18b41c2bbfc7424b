//! The crate's one error type.

use std::fmt::Write;
use std::path::PathBuf;

use crate::report::LoadError;

/// Everything that can go wrong in this crate. Each variant names the key or path it is
/// about; causes are chained with `source()`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `load_state_dict` refused the state dict: missing or unexpected keys (strict), or
    /// shapes that differ (always). The model is unchanged. Its `Display` is PyTorch's
    /// message, character for character, followed by hints.
    #[error(transparent)]
    Load(Box<LoadError>),

    /// A name that cannot be a state-dict key or module path.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key or path.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// Two keys of a state dict would get the same name.
    #[error("two keys would both be named {key:?}: {sources:?}")]
    DuplicateKey {
        /// The name they would share.
        key: String,
        /// The keys that would get it.
        sources: Vec<String>,
    },

    /// An order given for a `VarStore`'s variables does not name each of them exactly once.
    #[error(
        "the key order does not match the VarStore: not in the VarStore {unknown:?}, \
         named twice {repeated:?}, left out {left_out:?}"
    )]
    KeyOrder {
        /// Keys in the order that the VarStore lacks.
        unknown: Vec<String>,
        /// Keys the order names more than once.
        repeated: Vec<String>,
        /// Variables of the VarStore that the order leaves out.
        left_out: Vec<String>,
    },

    /// A file could not be opened, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The file is empty.
    #[error("{}: the file is empty", path.display())]
    EmptyFile {
        /// The file.
        path: PathBuf,
    },

    /// The file is a Git LFS pointer, not the checkpoint it points to.
    #[error(
        "{}: this is a Git LFS pointer, not the checkpoint itself; fetch it with `git lfs pull`",
        path.display()
    )]
    LfsPointer {
        /// The file.
        path: PathBuf,
    },

    /// The file is a TorchScript archive (`torch.jit.save`, or tch's `VarStore::save`), and
    /// [`ReadOptions::weights_only`](crate::ReadOptions::weights_only) refuses those, as
    /// `torch.load(weights_only=True)` does.
    #[error(
        "{}: this is a TorchScript archive (torch.jit.save, or tch's VarStore::save), which \
         weights_only refuses as PyTorch does; without weights_only its parameters and buffers \
         are read without running its code",
        path.display()
    )]
    TorchScript {
        /// The file.
        path: PathBuf,
    },

    /// The bytes are in no format this crate reads.
    #[error(
        "{}: not a checkpoint this crate reads ({found}); it reads torch.save files (zip or \
         legacy), safetensors and sharded *.index.json files",
        path.display()
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// What the bytes look like instead.
        found: String,
    },

    /// The zip container of a torch.save file is malformed or truncated.
    #[error("{}: malformed zip archive: {source}", path.display())]
    Zip {
        /// The file.
        path: PathBuf,
        /// The zip reader's error.
        #[source]
        source: zip::result::ZipError,
    },

    /// A record the checkpoint needs is missing (`archive/data.pkl`, a storage).
    #[error("{}: the checkpoint has no record {record}", path.display())]
    MissingRecord {
        /// The file.
        path: PathBuf,
        /// The record's name.
        record: String,
    },

    /// A record is present but malformed (a storage past the end of the file, a bad
    /// `byteorder`, a legacy header that is not torch's).
    #[error("{}: record {record}: {reason}", path.display())]
    InvalidRecord {
        /// The file.
        path: PathBuf,
        /// The record's name.
        record: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A zip record's bytes do not have the CRC-32 the archive records for them: the file
    /// was corrupted after it was written. (`torch.load` does not check CRCs and would read
    /// the corrupt bytes.)
    #[error(
        "{}: record {record} is corrupt: its CRC-32 is {found:08x}, the archive records \
         {expected:08x}",
        path.display()
    )]
    CrcMismatch {
        /// The file.
        path: PathBuf,
        /// The record's name (`archive/data/0`).
        record: String,
        /// The CRC-32 the archive records.
        expected: u32,
        /// The CRC-32 of the bytes read.
        found: u32,
    },

    /// The pickle is malformed, or does something a checkpoint has no need for.
    #[error("{}: {entry}{}: {kind}", path.display(), at_byte(*offset))]
    Pickle {
        /// The file.
        path: PathBuf,
        /// The record holding the pickle (`archive/data.pkl`).
        entry: String,
        /// The offset of the failing opcode in the pickle; `None` when the failure is found
        /// after parsing, while building values.
        offset: Option<u64>,
        /// What went wrong.
        kind: PickleError,
    },

    /// With [`ReadOptions::weights_only`](crate::ReadOptions::weights_only), the pickle
    /// names a global outside the allowlist (`os.system`, `argparse.Namespace`): the file is
    /// refused, as `torch.load(weights_only=True)` refuses it. Without it, the global
    /// becomes a [`Value::Object`](crate::Value::Object) and is never imported or called.
    #[error(
        "{}: {entry}, byte {offset}: the global {module}.{name} is not allowed; a checkpoint \
         may only rebuild tensors, storages and plain containers",
        path.display()
    )]
    DisallowedGlobal {
        /// The file.
        path: PathBuf,
        /// The record holding the pickle.
        entry: String,
        /// The offset of the opcode in the pickle.
        offset: u64,
        /// The global's module.
        module: String,
        /// The global's name.
        name: String,
    },

    /// A tensor of a dtype this crate cannot hold as a tch tensor (`torch.uint16`,
    /// `torch.uint32`, `torch.uint64`, `torch.complex32`, quantized dtypes,
    /// `torch.float8_e8m0fnu`, `torch.float4_e2m1fn_x2`, safetensors' `F4` and `F6`), when it
    /// is read, materialized or loaded. A file holding one still opens, and its entry is
    /// listed (`LazyTensor::dtype_name`), so that `pop` or `retain` can drop it.
    #[error("{}: {}unsupported dtype {dtype}", path.display(), key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default())]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The entry: a state dict's key, or for a whole value the path to the tensor from
        /// the root (`model.buf`, `optimizer.state.0.step`); `None` where no key names it.
        key: Option<String>,
        /// PyTorch's name of the dtype: `torch.uint64`.
        dtype: String,
    },

    /// A tensor that does not fit its storage: negative or overflowing sizes, strides or
    /// offsets, or an extent past the storage's end.
    #[error("{}: storage {storage}: {reason}", path.display())]
    InvalidTensor {
        /// The file.
        path: PathBuf,
        /// The storage's key.
        storage: String,
        /// What is wrong.
        reason: String,
    },

    /// A storage whose bytes in the file (its zip record, or a legacy file's size header) are
    /// not the size its persistent id declares. `torch.load` refuses it too: "record size
    /// (24 bytes) does not match expected size (4398046511104 bytes ...)".
    #[error(
        "{}: storage {storage}: record size ({found} bytes) does not match expected size \
         ({expected} bytes)",
        path.display()
    )]
    StorageSizeMismatch {
        /// The file.
        path: PathBuf,
        /// The storage's key.
        storage: String,
        /// The size the pickle declares, in bytes (saturated at `u64::MAX`).
        expected: u64,
        /// The size the file holds, in bytes.
        found: u64,
    },

    /// A DCP checkpoint (`torch.distributed.checkpoint`) whose `.metadata` or `.distcp`
    /// files are not what DCP writes: `field` names the part (`storage_data`,
    /// `_StorageInfo.relative_path`, `TensorProperties.dtype`, ...).
    #[error("{}: {field}: {reason}", path.display())]
    InvalidDistributed {
        /// The `.metadata` file, or the `.distcp` file.
        path: PathBuf,
        /// The field of DCP's metadata that is wrong.
        field: String,
        /// What is wrong.
        reason: String,
    },

    /// A DCP tensor whose chunks do not tile it: a chunk outside its shape, two that
    /// overlap, or a gap. Found before anything is read.
    #[error("{}: {key}: {reason}", path.display())]
    ChunkLayout {
        /// The `.metadata` file.
        path: PathBuf,
        /// The tensor's flattened key.
        key: String,
        /// What is wrong.
        reason: String,
    },

    /// The file exceeds one of [`ReadLimits`](crate::ReadLimits).
    #[error("{}: exceeds the limit {limit} = {max}", path.display())]
    LimitExceeded {
        /// The file.
        path: PathBuf,
        /// The limit's name.
        limit: &'static str,
        /// Its value.
        max: u64,
    },

    /// A malformed safetensors file (header too large, overlapping or trailing data, ...).
    #[error("{}: invalid safetensors file: {source}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The safetensors crate's error.
        #[source]
        source: safetensors::SafeTensorError,
    },

    /// A state dict was asked for, and the object is something else: usually a checkpoint
    /// dict that holds the state dict under a key such as `model`.
    #[error("{}", not_a_state_dict(path, at.as_deref(), found, entries))]
    NotAStateDict {
        /// The file.
        path: PathBuf,
        /// The top-level key looked under, if any.
        at: Option<String>,
        /// What the object is.
        found: String,
        /// For a dict, each key (as Python prints it) and what it holds.
        entries: Vec<(String, String)>,
    },

    /// A state dict was asked for, and the object there is an instance of a class outside
    /// the allowlist that holds none: `argparse.Namespace`, or `os.system(...)` in a
    /// hostile file. Its class was never imported; the object is
    /// [`Value::Object`](crate::Value::Object) in [`Checkpoint::value`](crate::Checkpoint::value).
    #[error(
        "{}: {} is an object of class {module}.{name}, not a state dict (it was read as data; \
         nothing was imported or called)",
        path.display(),
        match at {
            Some(key) => format!("the value under {key:?}"),
            None => "the top-level object".to_string(),
        }
    )]
    OpaqueObject {
        /// The file.
        path: PathBuf,
        /// The top-level key looked under, if any.
        at: Option<String>,
        /// The class's module (`argparse`).
        module: String,
        /// The class's name (`Namespace`).
        name: String,
    },

    /// A module object (a pickled `nn.Module`, a TorchScript module) whose state dict was
    /// asked for holds something a module's parameters, buffers or submodules cannot be.
    #[error(
        "{}: {}the module {} cannot give a state dict: {reason}",
        path.display(),
        at.as_ref().map(|k| format!("under {k:?}, ")).unwrap_or_default(),
        if module.is_empty() { "at the top".to_string() } else { format!("{module:?}") }
    )]
    InvalidModule {
        /// The file.
        path: PathBuf,
        /// The top-level key looked under, if any.
        at: Option<String>,
        /// The module's path in the model (`layer1.0`; empty for the top module).
        module: String,
        /// Its class and what it holds that a module cannot: `a
        /// torch.nn.modules.linear.Linear whose parameter "weight" is an object of class
        /// os.system`.
        reason: String,
    },

    /// The top-level dict has no such key.
    #[error("{}: no key {key:?} at the top level; its keys are {available:?}", path.display())]
    KeyNotFound {
        /// The file.
        path: PathBuf,
        /// The key asked for.
        key: String,
        /// The keys it has.
        available: Vec<String>,
    },

    /// The file is shorter than the storages it was opened with: it was truncated or
    /// replaced after it was opened. Found before anything was written into the model.
    #[error(
        "{}: the file is {found} bytes, but its tensors need {needed}: it was truncated or \
         replaced after it was opened",
        path.display()
    )]
    FileChanged {
        /// The file.
        path: PathBuf,
        /// The bytes its storages reach.
        needed: u64,
        /// The bytes it has now.
        found: u64,
    },

    /// A sharded checkpoint's index is malformed or does not match its shards.
    #[error("{}: sharded checkpoint: {reason}", path.display())]
    ShardIndex {
        /// The index or shard file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A value cannot be written in the format asked for.
    #[error("{}: cannot write {what}: {reason}", path.display())]
    Unwritable {
        /// The file.
        path: PathBuf,
        /// The key or value.
        what: String,
        /// Why.
        reason: String,
    },

    /// An argument out of its range (`num_classes` below 1).
    #[error("invalid {name}: {reason}")]
    InvalidArgument {
        /// The argument.
        name: &'static str,
        /// Why it is refused.
        reason: String,
    },

    /// There is no `Linear` to replace at this path of the `VarStore`.
    #[error("no Linear layer at {path:?} to replace: {reason}")]
    NotALinear {
        /// The dotted path.
        path: String,
        /// What is there instead.
        reason: String,
    },

    /// libtorch failed on an operation the crate had checked (out of memory, say).
    #[error("{context}")]
    Torch {
        /// What was being done.
        context: String,
        /// libtorch's error.
        #[source]
        source: tch::TchError,
    },

    /// libtorch failed while copying a checked value into the model (a device fault, say).
    /// Tensors copied before this one hold their new values.
    #[error("copying {key:?} into the model failed")]
    Copy {
        /// The key being copied.
        key: String,
        /// libtorch's error.
        #[source]
        source: tch::TchError,
    },
}

impl Error {
    /// This error, met inside the value under `segment` (a dict key, a list index): an
    /// unsupported dtype's key gains the segment in front (`model` + `buf` = `model.buf`).
    pub(crate) fn under(self, segment: impl FnOnce() -> String) -> Error {
        match self {
            Error::UnsupportedDtype { path, key, dtype } => {
                let segment = segment();
                let key = Some(match key {
                    Some(k) => format!("{segment}.{k}"),
                    None => segment,
                });
                Error::UnsupportedDtype { path, key, dtype }
            }
            other => other,
        }
    }
}

impl From<LoadError> for Error {
    fn from(e: LoadError) -> Self {
        Error::Load(Box::new(e))
    }
}

/// What went wrong in a pickle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PickleError {
    /// An opcode this machine does not know.
    #[error("unknown opcode 0x{0:02x}")]
    UnknownOpcode(u8),
    /// The pickle ends in the middle of an opcode, or before `STOP`.
    #[error("the pickle is truncated")]
    Truncated,
    /// A `PROTO` above 5.
    #[error("unsupported pickle protocol {0}")]
    UnsupportedProtocol(u8),
    /// An opcode needs more values than the stack holds (above the last mark).
    #[error("stack underflow")]
    StackUnderflow,
    /// An opcode needs a mark and there is none.
    #[error("no mark on the stack")]
    NoMark,
    /// A memo lookup of an index never stored.
    #[error("memo index {0} was never stored")]
    MemoNotFound(u32),
    /// A constructor got arguments of the wrong kind or number.
    #[error("bad arguments for {callable}: {reason}")]
    BadArguments {
        /// The constructor (`_rebuild_tensor_v2`, `OrderedDict`, ...).
        callable: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A persistent id that is not `('storage', type, key, location, numel)`.
    #[error("bad persistent id: {0}")]
    PersistentId(String),
    /// A feature a checkpoint has no use for (extension registry, out-of-band buffers).
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// A string that is not valid UTF-8, or a malformed text literal.
    #[error("invalid string or number literal")]
    InvalidLiteral,
    /// An object called or used as a constructor that is not one.
    #[error("{0} is not callable")]
    NotCallable(&'static str),
    /// `BUILD` on an object that takes no state.
    #[error("BUILD on a value of type {0}")]
    BadBuild(&'static str),
    /// The same key twice in one dict.
    #[error("duplicate key {0:?} in a dict")]
    DuplicateKey(String),
    /// Containers or modules nested deeper than the limit.
    #[error("values nested deeper than {0}")]
    TooDeep(usize),
    /// A cycle where none can be: a module among its own submodules, which PyTorch's
    /// `state_dict()` would recurse into forever. (Values that hold themselves are read as
    /// [`Value::Recursive`](crate::Value::Recursive).)
    #[error("a cycle: {0}")]
    Cycle(String),
    /// An opcode that only a hand-made pickle would emit where it appears.
    #[error("{0}")]
    Malformed(&'static str),
}

fn not_a_state_dict(
    path: &std::path::Path,
    at: Option<&str>,
    found: &str,
    entries: &[(String, String)],
) -> String {
    const SHOWN: usize = 20;
    let mut out = format!("{}: ", path.display());
    match at {
        Some(key) => {
            let _ = write!(
                out,
                "the value under {key:?} is not a state dict: it is {found}"
            );
        }
        None => {
            let _ = write!(
                out,
                "the top-level object is not a state dict: it is {found}"
            );
        }
    }
    if !entries.is_empty() {
        out.push_str(", holding ");
        let shown: Vec<String> = entries
            .iter()
            .take(SHOWN)
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        out.push_str(&shown.join(", "));
        if entries.len() > SHOWN {
            let _ = write!(out, " and {} more", entries.len() - SHOWN);
        }
        let nested: Vec<&str> = entries
            .iter()
            .filter(|(_, v)| v.contains("state dict of"))
            .filter_map(|(k, _)| k.strip_prefix('\'').and_then(|k| k.strip_suffix('\'')))
            .collect();
        if let Some(key) = nested.first() {
            let _ = write!(
                out,
                "; load that state dict with StateDict::load_key(path, {key:?}) \
                 (torch.load(path)[{key:?}])"
            );
        }
    }
    out
}

fn at_byte(offset: Option<u64>) -> String {
    offset.map(|o| format!(", byte {o}")).unwrap_or_default()
}
