//! The bytes of a checkpoint: a file read with positional reads (and mapped for parsing), or
//! bytes in memory.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// The bytes of a checkpoint.
pub(crate) enum Source<'a> {
    /// A file, mapped for parsing and kept open for reading tensors into a model; shared by
    /// the entries of a file that holds several checkpoints (a DCP `.distcp` file).
    Mapped(Arc<memmap2::Mmap>, Arc<File>),
    Owned(Vec<u8>),
    Borrowed(&'a [u8]),
}

impl Source<'_> {
    /// Where reads of tensors' bytes come from: the open file (`pread`, the map is for
    /// parsing), or the bytes in memory.
    pub(crate) fn read_from(&self) -> super::pread::ReadFrom<'_> {
        match self {
            Source::Mapped(_, file) => super::pread::ReadFrom::File(file),
            other => super::pread::ReadFrom::Bytes(other.bytes()),
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.bytes().len() as u64
    }

    /// `len` bytes at `offset`: read from the file (not through the map) when there is one.
    /// The caller has checked the range against the length.
    pub(crate) fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        match self {
            Source::Mapped(_, file) => {
                let mut buf = vec![0u8; len];
                read_exact_at(file, &mut buf, offset)?;
                Ok(buf)
            }
            other => Ok(other.bytes()[offset as usize..offset as usize + len].to_vec()),
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Source::Mapped(m, _) => m,
            Source::Owned(v) => v,
            Source::Borrowed(b) => b,
        }
    }
}

/// Opens `path` for reading, and fails with `InvalidInput` unless it is a regular file (a
/// symlink to one is fine). A FIFO is opened without blocking (`O_NONBLOCK`, which regular
/// files ignore), so that a FIFO given as a checkpoint or shard is refused rather than
/// waited on forever; a directory or device is refused too.
pub(crate) fn open_regular(path: &Path) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    let what = if kind.is_dir() {
        "a directory"
    } else {
        file_type_name(&kind)
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("not a regular file but {what}"),
    ))
}

#[cfg(unix)]
fn file_type_name(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "something else"
    }
}

#[cfg(not(unix))]
fn file_type_name(_kind: &std::fs::FileType) -> &'static str {
    "something else"
}

/// Maps `file` read-only, for parsing.
///
/// The map serves the parsers that look at a file's structure: detection (its first bytes),
/// a safetensors header, a sharded index, and the legacy format, whose pickle's length is
/// known only by running it, so that a multi-GB legacy file is parsed without reading its
/// tensor data. Tensor data is never read through the map: loads and materialization use
/// `pread` (see `load/direct.rs` for the measurement), which turns a truncated file into an
/// error rather than SIGBUS.
///
/// # Safety
///
/// The map is only sound while no one truncates or writes the file; every memory map carries
/// this caveat, and this crate never writes a file it has open. Readers that must not trust
/// the file system's other users can read the file into memory and use
/// [`Checkpoint::from_bytes`](crate::Checkpoint::from_bytes) instead.
pub(crate) unsafe fn map_file(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: the caller accepts the caveat above; the map is private and read-only.
    unsafe { memmap2::Mmap::map(file) }
}

/// The first `len` bytes of the open `file` as a 1-D uint8 tensor over a private memory map
/// that libtorch owns (`Tensor::from_file`), for `ReadOptions::mmap`. The file is mapped
/// through its descriptor (`/proc/self/fd/N`, `/dev/fd/N` on other Unixes), never by its
/// path: a file renamed over the path since it was opened is not the one read. `None`
/// where that cannot be done (Windows, no `/proc`); the caller then copies.
pub(crate) fn map_open_file(file: &File, len: u64) -> Option<tch::Tensor> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::io::AsRawFd;
        let dir = if cfg!(target_os = "linux") {
            "/proc/self/fd"
        } else {
            "/dev/fd"
        };
        let by_fd = format!("{dir}/{}", file.as_raw_fd());
        // The descriptor stays open while `file` lives, so the name keeps naming this file;
        // checking it once guards against a `/proc` or `/dev/fd` that is not what it seems.
        let (ours, named) = (file.metadata().ok()?, std::fs::metadata(&by_fd).ok()?);
        if (ours.dev(), ours.ino()) != (named.dev(), named.ino()) {
            return None;
        }
        let len = i64::try_from(len).ok()?;
        tch::Tensor::f_from_file(
            &by_fd,
            false,
            Some(len),
            (tch::Kind::Uint8, tch::Device::Cpu),
        )
        .ok()
    }
    #[cfg(not(unix))]
    {
        let _ = (file, len);
        None
    }
}

/// Fills `buf` from `offset`, or fails with `UnexpectedEof` where the file ends first.
#[cfg(unix)]
pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
}

/// Fills `buf` from `offset`, or fails with `UnexpectedEof` where the file ends first.
#[cfg(windows)]
pub(crate) fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}
