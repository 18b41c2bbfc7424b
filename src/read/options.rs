//! How a checkpoint is read: [`ReadOptions`] and the bounds of [`ReadLimits`].

use tch::{Device, Kind};

#[allow(unused_imports)] // for docs
use crate::error::Error;

/// Bounds on what a checkpoint may make this crate do. A file that would pass one gets
/// [`Error::LimitExceeded`] naming it. The defaults admit checkpoints of millions of tensors;
/// lower them for files from strangers.
///
/// # The memory budget
///
/// One budget bounds the memory that opening a file and building its value take:
/// [`max_memory`](Self::max_memory) bytes for a file of a given size, by default 256 MiB
/// plus 8 bytes per byte of the file.
///
/// - Everything the reader allocates for a file counts against it: the pickle (inflated,
///   when the archive stores it deflated: a deflated `data.pkl` may expand only within the
///   budget), every object the pickle machine makes with its strings and items, its stack,
///   marks and memo, the descriptions of tensors and storages, the records of opaque
///   objects, and then the [`Value`](crate::Value)s that
///   [`Checkpoint::value`](crate::Checkpoint::value) builds. 8 MiB of it are set aside for
///   the reader's own working memory.
/// - What a memo reference copies (`torch.Size(memo)`, `set(memo)`, `OrderedDict(memo)`,
///   `_codecs.encode(memo)`, a tensor rebuilt with a memoized size, an object's arguments)
///   is checked before it is copied and charged once copied, so a small file cannot make
///   large copies, and the work a file can cause is bounded with its memory.
/// - The tensors a value or a state dict holds, charged before libtorch makes the first:
///   libtorch's bookkeeping of each (896 bytes a tensor, 512 more a storage, measured) and
///   each storage's bytes (none for a view of the mapped file, `ReadOptions::mmap`). Each
///   tensor the file describes is made once per value, however often the pickle names it.
///   Each read has the budget that opening left: `value()` and `state_dict()` of one
///   [`Checkpoint`](crate::Checkpoint) are two reads.
///
/// A file that needs more fails with [`Error::LimitExceeded`], `limit: "max_memory"` and
/// `max` its budget in bytes. A `torch.save` state dict needs about 730 bytes of the budget
/// per tensor to open, and about 1.5 KiB more per tensor to read (2 KiB for a tensor with a
/// storage of its own), besides its bytes: real checkpoints, whose tensors are KiBs to GiBs,
/// read well within the default budget; a file of a million one-element tensors (about 100
/// bytes of file each) opens, but reading its tensors is refused, before any is made. Raise
/// [`max_memory_per_file_byte`](Self::max_memory_per_file_byte) for such a file you trust.
/// Loading a file straight into a model ([`load_checkpoint`](crate::load_checkpoint), a
/// [`LazyStateDict`](crate::LazyStateDict)) makes no tensors and is not charged for them.
/// Each shard of a sharded checkpoint has a budget of its own.
///
/// ```
/// use tch_state_dict::{ReadLimits, ReadOptions};
///
/// // 64 MiB plus 4 bytes per byte of the file, for files from strangers.
/// let mut limits = ReadLimits::default();
/// limits.max_memory_base = 64 << 20;
/// limits.max_memory_per_file_byte = 4;
/// assert_eq!(limits.max_memory(1 << 20), (64 << 20) + (4 << 20));
/// let options = ReadOptions::new().limits(limits);
/// # let _ = options;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadLimits {
    /// The memory budget's fixed part, in bytes: see [`max_memory`](Self::max_memory).
    /// Default: 256 MiB.
    pub max_memory_base: u64,
    /// The memory budget's part per byte of the file: see [`max_memory`](Self::max_memory).
    /// Default: 8.
    pub max_memory_per_file_byte: u64,
    /// The largest pickle (`data.pkl`) in bytes. Default: 1 GiB.
    pub max_pickle_bytes: u64,
    /// The most objects a pickle may create, each `None`, bool or small int counted though
    /// the reader shares them. Default: 256 M.
    pub max_objects: u64,
    /// The most memo entries a pickle may store. Default: 64 M.
    pub max_memo_entries: u64,
    /// The deepest nesting of containers. Default: 100.
    pub max_depth: usize,
    /// The most tensors a checkpoint may describe. Default: 16 M.
    pub max_tensors: u64,
    /// The most values a pickle may expand into, counting every copy a memo reference
    /// makes; the limit applied is also at most 16 values per object of the pickle, so a
    /// memo bomb fails in proportion to its size. Default: 256 M.
    pub max_values: u64,
    /// The largest a compressed storage may decompress to, as a multiple of its compressed
    /// size. Default: 1100 (deflate's own bound is about 1032).
    pub max_compression_ratio: u64,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            max_memory_base: 256 << 20,
            max_memory_per_file_byte: 8,
            max_pickle_bytes: 1 << 30,
            max_objects: 256 << 20,
            max_memo_entries: 64 << 20,
            max_depth: 100,
            max_tensors: 16 << 20,
            max_values: 256 << 20,
            max_compression_ratio: 1100,
        }
    }
}

impl ReadLimits {
    /// The memory budget of a file of `file_len` bytes: `max_memory_base +
    /// max_memory_per_file_byte × file_len` (saturating), 256 MiB + 8 × `file_len` by
    /// default. See [the memory budget](Self#the-memory-budget).
    pub fn max_memory(&self, file_len: u64) -> u64 {
        self.max_memory_per_file_byte
            .saturating_mul(file_len)
            .saturating_add(self.max_memory_base)
    }
}

/// How a checkpoint is read. Setters cannot fail and name their default.
///
/// ```
/// use tch::{Device, Kind};
/// use tch_state_dict::ReadOptions;
///
/// // torch.load(p, map_location="cuda:0"), then .half() on floating-point tensors.
/// let options = ReadOptions::new().device(Device::Cuda(0)).kind(Some(Kind::Half));
/// # let _ = options;
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ReadOptions {
    pub(crate) device: Device,
    pub(crate) kind: Option<Kind>,
    pub(crate) mmap: bool,
    pub(crate) threads: Option<usize>,
    pub(crate) verify_crc: bool,
    pub(crate) limits: ReadLimits,
    pub(crate) weights_only: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            device: Device::Cpu,
            kind: None,
            mmap: false,
            threads: None,
            verify_crc: false,
            limits: ReadLimits::default(),
            weights_only: false,
        }
    }
}

impl ReadOptions {
    /// Tensors on the CPU, in their saved dtypes, copied out of the file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where tensors are placed, like `map_location` (default: `Device::Cpu`). The saved
    /// location (`cuda:0`) is ignored, so a checkpoint saved on a GPU loads on a CPU machine.
    pub fn device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// Casts floating-point tensors to `kind` as they are read (default: `None`, keep each
    /// tensor's dtype). Integer and boolean tensors keep theirs, as `model.half()` does.
    pub fn kind(mut self, kind: Option<Kind>) -> Self {
        self.kind = kind;
        self
    }

    /// Makes CPU tensors views of a private memory map of the file instead of copies, as
    /// `torch.load(mmap=True)` (default: `false`). Nothing is read until used; writing to a
    /// tensor never changes the file. Replacing the file while its tensors live is unsafe
    /// in the way every memory map is: do not overwrite a checkpoint in place while you hold
    /// its tensors. The file mapped is the one opened, through its descriptor: a file
    /// renamed over the path since is never read. Storages that cannot be mapped
    /// (compressed, big-endian, misaligned, or on a system without `/proc/self/fd` or
    /// `/dev/fd`, such as Windows) are copied.
    pub fn mmap(mut self, mmap: bool) -> Self {
        self.mmap = mmap;
        self
    }

    /// How many threads reads use (default: `None`, libtorch's intra-op thread count,
    /// `tch::get_num_threads()`): loads into a model from a
    /// [`LazyStateDict`](crate::LazyStateDict) or
    /// [`Checkpoint::load_into`](crate::Checkpoint::load_into), and
    /// [`StateDict::load`](crate::StateDict::load). Reads are split across threads only when
    /// there are at least 8 MiB to read.
    pub fn threads(mut self, threads: Option<usize>) -> Self {
        self.threads = threads;
        self
    }

    /// Whether every storage of a torch zip file that is read is checked against the CRC-32
    /// the archive records for it (default: `false`). [`Error::CrcMismatch`] names a
    /// corrupt record.
    ///
    /// Whatever this says, the records that are read whole are always checked: `data.pkl`,
    /// `byteorder`, deflated storages, and stored storages of up to 1 MiB read into memory.
    /// This option adds the larger stored storages: when one is read into memory, and, for
    /// [`Checkpoint::load_into`](crate::Checkpoint::load_into) and the other loads straight
    /// from the file, every stored storage of the file in a pass before the first write
    /// into the model. Measured on a 1 GiB file in the page cache, the check adds 10–70% to
    /// a read into memory and 75–120% to a load into a model (a second pass over the file).
    /// `torch.load` checks no CRCs. Storages mapped with
    /// [`mmap`](Self::mmap) are not read, so not checked; a CRC of zero, which some writers
    /// leave, counts as not recorded.
    pub fn verify_crc(mut self, verify: bool) -> Self {
        self.verify_crc = verify;
        self
    }

    /// The bounds on what a file may make the reader do (default: [`ReadLimits::default`]).
    pub fn limits(mut self, limits: ReadLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Refuse what `torch.load(weights_only=True)` refuses (default: `false`).
    ///
    /// With `false`, a global outside the allowlist (`argparse.Namespace`, a pickled
    /// `nn.Module`'s class, `numpy.dtype`, even `os.system`) becomes a
    /// [`Value::Object`](crate::Value::Object) that records what the pickle built with it;
    /// nothing is imported or called either way, and only the allowlist makes tensors. With
    /// `true`, such a file fails to open with [`Error::DisallowedGlobal`], and a TorchScript
    /// archive (`torch.jit.save`, tch's `VarStore::save`) with [`Error::TorchScript`], as in
    /// PyTorch.
    pub fn weights_only(mut self, weights_only: bool) -> Self {
        self.weights_only = weights_only;
        self
    }
}

impl ReadOptions {
    /// The threads reads are split across.
    pub(crate) fn read_threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| tch::get_num_threads().max(1) as usize)
            .max(1)
    }
}
