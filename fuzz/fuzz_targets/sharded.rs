//! The input as a sharded index (`model.safetensors.index.json`), opened by its path in a
//! directory of its own next to the two shards of `tests/fixtures/pytorch/sharded` (built
//! into the target, so it needs no file outside that directory). The index may name the
//! shards, itself, files that are not there or paths that leave the directory; every key is
//! checked against its shard, and the state dict is read (whole, then under a prefix).
//!
//! The directory is made once per process under the system's temporary directory
//! (`tch-state-dict-fuzz-sharded-<pid>`) and the index rewritten at each input.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tch_state_dict::Checkpoint;

#[path = "common.rs"]
mod common;

const SHARDS: [(&str, &[u8]); 2] = [
    (
        "model-00001-of-00002.safetensors",
        include_bytes!("../../tests/fixtures/pytorch/sharded/model-00001-of-00002.safetensors"),
    ),
    (
        "model-00002-of-00002.safetensors",
        include_bytes!("../../tests/fixtures/pytorch/sharded/model-00002-of-00002.safetensors"),
    ),
];

/// The index's path, in a directory that holds the shards.
fn index() -> &'static PathBuf {
    static INDEX: OnceLock<PathBuf> = OnceLock::new();
    INDEX.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!(
            "tch-state-dict-fuzz-sharded-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create the shards' directory");
        for (name, bytes) in SHARDS {
            std::fs::write(dir.join(name), bytes).expect("write a shard");
        }
        dir.join("model.safetensors.index.json")
    })
}

fuzz_target!(|data: &[u8]| {
    let path = index();
    std::fs::write(path, data).expect("write the index");
    if let Ok(ckpt) = Checkpoint::open_with(path, &common::options()) {
        let _ = ckpt.keys();
        let _ = ckpt.value();
        // A prefix's entries (keys `model.*` of an index that has them).
        let _ = ckpt.lazy_state_dict_at("model");
    }
});
