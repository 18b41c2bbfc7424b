//! Saving a file so that readers see the old file or the new one, whole, and nothing else.
//!
//! # Design note
//!
//! A save writes a new temporary file in the target's directory and renames it over the
//! target:
//!
//! * the temporary file is `.{name}.tch-state-dict-XXXXXX.tmp`, six random characters,
//!   created with `create_new` (`O_CREAT | O_EXCL`, through the `tempfile` crate), so it is
//!   never an existing file and never the target of a symlink planted at its name; two saves
//!   to one path, from threads or processes, write two files, and the rename of the later
//!   one wins: the target is always one of the two, whole;
//! * it takes the target's permissions when the target is a regular file (a `0600`
//!   checkpoint stays `0600`), and `0666` less the umask otherwise, as `torch.save` does;
//! * it is fsynced, renamed into place, and the directory is fsynced, so that after a crash
//!   the target is the old file or the new one;
//! * a symlink at the target's path is replaced, not followed (as `mv` does); a directory
//!   there is refused with [`Error::Unwritable`].
//!
//! A save that fails removes its temporary file. A process that dies during a save cannot,
//! so its file stays; the next save of the same target removes such debris, so it does not
//! grow. Debris is told from a save in progress by a lock: on Unix a save holds `flock` on
//! its temporary file for as long as it writes, and a file counts as debris when it is not
//! locked and was last modified over a minute ago (a lock dies with its process). Without
//! `flock` (Windows) it counts as debris after an hour without a write. Temporary files of
//! other targets, and of versions before this naming, are left alone.

use std::fs::{File, Permissions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::error::Error;

/// What marks a temporary file of this crate, after `.{name}.`.
const MARKER: &str = "tch-state-dict-";
const SUFFIX: &str = ".tmp";
const RANDOM_CHARS: usize = 6;

/// How long a temporary file must have gone unmodified before it can be debris: over a
/// minute and unlocked where saves lock their files, an hour elsewhere.
#[cfg(unix)]
const STALE_AFTER: Duration = Duration::from_secs(60);
#[cfg(not(unix))]
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// Writes through `write` into a new temporary file beside `path`, fsyncs it, renames it over
/// `path` and fsyncs the directory.
pub(super) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<&File>) -> Result<(), Error>,
) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let unwritable = |reason: &str| Error::Unwritable {
        path: path.to_path_buf(),
        what: "the file".into(),
        reason: reason.into(),
    };
    let name = path
        .file_name()
        .ok_or_else(|| unwritable("the path does not name a file"))?
        .to_string_lossy()
        .into_owned();
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let permissions = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => return Err(unwritable("it is a directory")),
        Ok(m) => m.is_file().then(|| m.permissions()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(e)),
    };
    let prefix = format!(".{name}.{MARKER}");
    remove_debris(dir, &prefix);

    let mut builder = tempfile::Builder::new();
    builder
        .prefix(&prefix)
        .suffix(SUFFIX)
        .rand_bytes(RANDOM_CHARS);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // The mode a new file gets from `open(path, 'wb')`: 0666 less the umask.
        builder.permissions(Permissions::from_mode(0o666));
    }
    // Removed when dropped, so every error below leaves no temporary file.
    let tmp = builder.tempfile_in(dir).map_err(io)?;
    let file = tmp.as_file();
    #[cfg(unix)]
    {
        // Marks the file as in use until it is closed (see `remove_debris`). A file system
        // without locks only loses the mark.
        let _ = flock::try_lock(file);
    }
    if let Some(permissions) = permissions {
        file.set_permissions(permissions).map_err(io)?;
    }
    let mut out = BufWriter::with_capacity(1 << 20, file);
    write(&mut out)?;
    out.flush().map_err(io)?;
    drop(out);
    file.sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    sync_dir(dir).map_err(io)
}

/// Makes the rename durable: fsyncs the directory that holds the new entry.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    match File::open(dir).and_then(|d| d.sync_all()) {
        // Some file systems cannot fsync a directory; they say so with EINVAL.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
        other => other,
    }
}

/// Windows makes a rename durable with the file's own flush.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Removes the temporary files named `{prefix}XXXXXX.tmp` in `dir` that earlier saves left
/// behind when their process died. Best effort: a file that cannot be examined or removed
/// stays.
fn remove_debris(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_ours = name.len() == prefix.len() + RANDOM_CHARS + SUFFIX.len()
            && name.starts_with(prefix)
            && name.ends_with(SUFFIX);
        if !is_ours {
            continue;
        }
        // `DirEntry::metadata` does not follow symlinks: only regular files are removed.
        let Ok(meta) = entry.metadata() else { continue };
        let stale = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age >= STALE_AFTER);
        if !meta.is_file() || !stale {
            continue;
        }
        let path = entry.path();
        #[cfg(unix)]
        {
            // A save in progress holds the lock; only a file no one holds is debris. The
            // lock is held until the file is removed, so no save can take it meanwhile.
            let Ok(file) = flock::open_no_follow(&path) else {
                continue;
            };
            if !matches!(flock::try_lock(&file), Ok(true)) {
                continue;
            }
            let _ = std::fs::remove_file(&path);
        }
        #[cfg(not(unix))]
        {
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(unix)]
mod flock {
    use std::fs::File;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    use std::path::Path;

    /// Opens `path` for reading without following a symlink and without blocking on a FIFO.
    pub(super) fn open_no_follow(path: &Path) -> std::io::Result<File> {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
    }

    /// Takes an exclusive `flock` on `file` without waiting: `Ok(false)` when another open
    /// file holds it. The lock lasts until `file` (every descriptor of its open file) is
    /// closed, or its process dies.
    pub(super) fn try_lock(file: &File) -> std::io::Result<bool> {
        // SAFETY: flock takes a descriptor, which `file` keeps open for the call, and flags;
        // it touches no memory of ours.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let error = std::io::Error::last_os_error();
        if error.kind() == std::io::ErrorKind::WouldBlock {
            Ok(false)
        } else {
            Err(error)
        }
    }
}
