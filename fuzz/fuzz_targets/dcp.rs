//! The input as a torch.distributed.checkpoint (DCP) directory: a `.metadata` pickle and
//! the `.distcp` item files it names, written into a directory of their own and opened by
//! its path. This reaches DCP's fields (`state_dict_metadata`, `storage_data`,
//! `planner_data`), each item's `torch.save` zip read from a window of its file, zstd
//! items, the chunks' tiling checks and the load of every tensor.
//!
//! Layout of an input (all lengths little-endian `u32`):
//!
//! ```text
//! len, .metadata                        the .metadata file (len bytes)
//! then, repeated: rank, n, len, bytes   the file __<rank>_<n>.distcp (rank and n: one byte each)
//! ```
//!
//! A length past the end of the input takes what is left; fewer than 6 bytes after a file
//! end the input. At most [`MAX_FILES`] item files are written (the largest fixture,
//! `file_per_item`, has 36). `fuzz/seed.sh` packs the DCP fixtures this way.
//!
//! The directory is made once per process under the system's temporary directory
//! (`tch-state-dict-fuzz-dcp-<pid>`, left behind: at most `-max_len` bytes); every file
//! in it is removed before each input's files are written, so no input sees another's.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tch_state_dict::Checkpoint;

#[path = "common.rs"]
mod common;

/// The most `.distcp` files one input writes.
const MAX_FILES: usize = 64;

/// The checkpoint's directory, made once per process.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("tch-state-dict-fuzz-dcp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the checkpoint's directory");
        dir
    })
}

/// Splits `len` bytes off the front of `data` (what is left, if fewer).
fn take(data: &[u8], len: usize) -> (&[u8], &[u8]) {
    data.split_at(len.min(data.len()))
}

/// A little-endian `u32` at the front of `data`, and the rest.
fn length(data: &[u8]) -> Option<(usize, &[u8])> {
    let (head, rest) = data.split_first_chunk::<4>()?;
    Some((u32::from_le_bytes(*head) as usize, rest))
}

/// Empties `dir`, then writes the input's files into it.
fn write_files(dir: &Path, data: &[u8]) {
    for entry in std::fs::read_dir(dir).expect("list the checkpoint's directory") {
        let path = entry.expect("a directory entry").path();
        std::fs::remove_file(&path).expect("remove an earlier input's file");
    }
    let Some((len, rest)) = length(data) else {
        return; // no .metadata: the open fails
    };
    let (metadata, mut rest) = take(rest, len);
    std::fs::write(dir.join(".metadata"), metadata).expect("write .metadata");
    for _ in 0..MAX_FILES {
        let Some(([rank, n], after)) = rest.split_first_chunk::<2>() else {
            break;
        };
        let Some((len, after)) = length(after) else {
            break;
        };
        let (bytes, after) = take(after, len);
        let name = format!("__{rank}_{n}.distcp");
        std::fs::write(dir.join(name), bytes).expect("write a .distcp file");
        rest = after;
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    write_files(dir, data);
    if let Ok(ckpt) = Checkpoint::open_with(dir, &common::options()) {
        let keys = ckpt.keys();
        let _ = ckpt.value();
        for key in keys.iter().take(2) {
            let _ = ckpt.value_at(key);
        }
        let _ = ckpt.state_dict();
        if let Ok(lazy) = ckpt.lazy_state_dict() {
            for tensor in lazy.values() {
                let _ = tensor.read();
            }
        }
    }
});
