//! Checkpoints from distributed training: the DCP directories of
//! tests/fixtures/make_distributed.py (real torch.distributed runs on CPU with gloo: one
//! process, a file per item, 3 writer threads, zstd, 2 ranks of DTensor, FSDP2 with AdamW,
//! torchtitan step folders), each read through every entry point and compared with what
//! `dcp_to_torch_save` wrote from it (`<name>.pt`, read back by this crate, whose reading of
//! torch.save files the differential test holds to torch.load); and model directories.

mod common;

use std::path::PathBuf;

use tch::Kind;
use tch_state_dict::{
    load_checkpoint, load_state_dict, state_dict, Checkpoint, Error, Format, LazyStateDict,
    ModuleTree, StateDict, Value,
};

fn fixture(name: &str) -> PathBuf {
    common::test_file(&format!("fixtures/distributed/{name}"))
}

/// The DCP directories, and the oracle each was converted to.
const DCP: [(&str, &str); 8] = [
    ("no_dist", "no_dist.pt"),
    ("file_per_item", "file_per_item.pt"),
    ("threads3", "threads3.pt"),
    ("zstd", "zstd.pt"),
    ("dtensor", "dtensor.pt"),
    ("fsdp2", "fsdp2.pt"),
    ("torchtitan/step-10", "torchtitan/step-10.pt"),
    ("torchtitan_bytesio/step-3", "torchtitan_bytesio/step-3.pt"),
];

#[test]
fn every_layout_reads_as_dcp_to_torch_save_wrote_it() {
    for (dir, oracle) in DCP {
        let path = fixture(dir);
        let want = Value::load(fixture(oracle)).unwrap_or_else(|e| panic!("{oracle}: {e}"));
        let ckpt = Checkpoint::open(&path).unwrap_or_else(|e| panic!("{dir}: {e}"));
        assert_eq!(ckpt.format(), Format::Distributed, "{dir}");
        let got = ckpt.value().unwrap_or_else(|e| panic!("{dir}: {e}"));
        if let Some(d) = common::value_difference(&got, &want, dir) {
            panic!("{d}");
        }
        // The directory's `.metadata` opens the same checkpoint.
        let by_file = Value::load(path.join(".metadata")).unwrap();
        assert!(
            common::value_difference(&by_file, &want, dir).is_none(),
            "{dir}/.metadata"
        );
        let keys: Vec<String> = want
            .as_dict()
            .unwrap()
            .items
            .iter()
            .map(|(k, _)| k.as_str().unwrap().to_string())
            .collect();
        assert_eq!(ckpt.keys(), keys, "{dir}");
        // The value under each key, read alone, is the whole's.
        for k in &keys {
            let one = ckpt
                .value_at(k)
                .unwrap_or_else(|e| panic!("{dir}[{k}]: {e}"));
            let at = format!("{dir}[{k}]");
            if let Some(d) = common::value_difference(&one, want.get(k).unwrap(), &at) {
                panic!("{d}");
            }
        }
        let e = ckpt.value_at("no such key").unwrap_err();
        assert!(
            matches!(&e, Error::KeyNotFound { key, available, .. } if key == "no such key" && available == &keys),
            "{dir}: {e:?}"
        );
    }
}

/// Bytes this thread has read so far (`rchar` of /proc/thread-self/io).
fn read_by_this_thread() -> u64 {
    let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
    let line = io.lines().find(|l| l.starts_with("rchar:")).unwrap();
    line["rchar:".len()..].trim().parse().unwrap()
}

/// `value_at("model")` reads the model's chunks, not the optimizer's: a DCP checkpoint of
/// 64 KiB of model and 512 KiB of optimizer state, written by `dcp.save` in one process.
#[test]
fn the_value_under_a_key_reads_only_its_chunks() {
    let dir = common::tempdir("dcp-value-at");
    let out = dir.join("step");
    common::oracle_code(
        "import sys, torch, torch.distributed.checkpoint as dcp\n\
         m = torch.arange(1 << 14, dtype=torch.float32)\n\
         dcp.save({'model': {'w': m}, 'optim': {'exp_avg': torch.zeros(1 << 16),\
         'exp_avg_sq': torch.ones(1 << 16), 'step': 3}}, checkpoint_id=sys.argv[1])",
        &[out.to_str().unwrap()],
    );
    let ckpt = Checkpoint::open(&out).unwrap();
    let read = |f: &dyn Fn() -> Value| {
        let before = read_by_this_thread();
        let v = f();
        (v, read_by_this_thread() - before)
    };
    let (whole, all) = read(&|| ckpt.value().unwrap());
    let (model, model_only) = read(&|| ckpt.value_at("model").unwrap());
    assert!(common::value_difference(&model, whole.get("model").unwrap(), "model").is_none());
    assert!(model_only >= 1 << 16, "{model_only}");
    assert!(
        model_only < 2 << 16,
        "{model_only}: the optimizer's chunks were read too"
    );
    assert!(all >= (1 << 16) + (1 << 19), "{all}");
}

/// `load_key(dir, "model")` is `torch.load(converted)["model"]`, through the eager and the
/// lazy route; nothing is read when the lazy state dict is made.
#[test]
fn the_state_dict_under_a_key_is_the_converted_files() {
    for (dir, oracle, key) in [
        ("no_dist", "no_dist.pt", "model"),
        ("fsdp2", "fsdp2.pt", "model"),
        ("torchtitan/step-10", "torchtitan/step-10.pt", "model"),
        ("zstd", "zstd.pt", "model"),
    ] {
        let want = StateDict::load_key(fixture(oracle), key).unwrap();
        let eager = StateDict::load_key(fixture(dir), key).unwrap();
        let lazy = LazyStateDict::load_key(fixture(dir), key).unwrap();
        assert_eq!(
            lazy.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        for (k, t) in lazy.iter() {
            let w = want.get(k).unwrap();
            assert_eq!(
                (t.size(), t.kind()),
                (w.size(), Some(w.kind())),
                "{dir} {k}"
            );
            assert!(!t.is_in_memory());
        }
        assert_eq!(common::hashes(&eager), common::hashes(&want), "{dir}");
        assert_eq!(
            common::hashes(&lazy.into_state_dict().unwrap()),
            common::hashes(&want),
            "{dir}"
        );
    }
    // The top level of a DCP checkpoint is its flattened tensors.
    let flat = LazyStateDict::load(fixture("fsdp2")).unwrap();
    assert!(flat.contains_key("model.fc1.weight"));
    assert!(flat.contains_key("optim.state.fc1.weight.exp_avg"));
    assert!(matches!(
        StateDict::load_key(fixture("fsdp2"), "nothing"),
        Err(Error::KeyNotFound { .. })
    ));
}

/// A model whose keys and shapes are `sd`'s, zero-filled, in `kind` for floating-point ones.
fn blank(sd: &StateDict, kind: Option<Kind>) -> ModuleTree {
    common::blank_model(sd, kind)
}

/// Loading straight into a model fills each tensor chunk by chunk: `Shard(0)` rows,
/// `Shard(1)` columns, replicated and empty chunks; strictly, with the values of the
/// converted file; and into a model of another dtype, converted.
#[test]
fn a_dcp_checkpoint_loads_straight_into_a_model() {
    for (dir, oracle, key) in [
        ("dtensor", "dtensor.pt", None),
        ("fsdp2", "fsdp2.pt", Some("model")),
        ("torchtitan/step-10", "torchtitan/step-10.pt", Some("model")),
        ("zstd", "zstd.pt", Some("model")),
        ("threads3", "threads3.pt", Some("model")),
    ] {
        let want = match key {
            Some(k) => StateDict::load_key(fixture(oracle), k).unwrap(),
            None => {
                // dtensor's top level mixes tensors and an int: its tensors.
                let mut sd = LazyStateDict::load(fixture(dir)).unwrap();
                sd.retain(|_, _| true);
                let v = Value::load(fixture(oracle)).unwrap();
                let mut out = StateDict::new();
                for (k, v) in &v.as_dict().unwrap().items {
                    if let Some(t) = v.as_tensor() {
                        out.insert(k.as_str().unwrap(), t.shallow_clone());
                    }
                }
                out
            }
        };
        let sd = match key {
            Some(k) => LazyStateDict::load_key(fixture(dir), k).unwrap(),
            None => LazyStateDict::load(fixture(dir)).unwrap(),
        };
        let model = blank(&want, None);
        let report = load_state_dict(&model, &sd, true).unwrap_or_else(|e| panic!("{dir}: {e}"));
        assert!(report.missing_keys.is_empty(), "{dir}");
        assert_eq!(
            common::hashes(&state_dict(&model).unwrap()),
            common::hashes(&want),
            "{dir}"
        );
        // Into bf16: each chunk converted.
        let bf16 = blank(&want, Some(Kind::BFloat16));
        load_state_dict(&bf16, &sd, true).unwrap();
        for (k, t) in state_dict(&bf16).unwrap().iter() {
            let w = want.get(k).unwrap();
            let expected = if w.is_floating_point() {
                w.to_kind(Kind::BFloat16)
            } else {
                w.shallow_clone()
            };
            assert!(t.equal(&expected), "{dir} {k} in bf16");
        }
    }
    // load_checkpoint takes the directory of a flat DCP state dict.
    let want = {
        let v = Value::load(fixture("dtensor.pt")).unwrap();
        let mut out = StateDict::new();
        for (k, v) in &v.as_dict().unwrap().items {
            if let Some(t) = v.as_tensor() {
                out.insert(k.as_str().unwrap(), t.shallow_clone());
            }
        }
        out
    };
    let model = blank(&want, None);
    load_checkpoint(&model, fixture("dtensor"), true).unwrap();
    assert_eq!(
        common::hashes(&state_dict(&model).unwrap()),
        common::hashes(&want)
    );
}

/// A `.distcp` file cut short after the checkpoint was opened fails the load before the
/// first write, whichever rank's file it is: every file's length is checked, once for all
/// the chunks it holds.
#[test]
fn a_distcp_file_truncated_after_open_fails_before_any_write() {
    let want = StateDict::load_key(fixture("fsdp2.pt"), "model").unwrap();
    for cut in ["__0_0.distcp", "__1_0.distcp"] {
        let dir = common::tempdir("truncated");
        for name in [".metadata", "__0_0.distcp", "__1_0.distcp"] {
            std::fs::copy(fixture("fsdp2").join(name), dir.join(name)).unwrap();
        }
        let sd = LazyStateDict::load_key(&*dir, "model").unwrap();
        // Emptied: every rank's file holds chunks of the model (its optimizer state comes
        // after them, so half of the file can still hold every chunk the load reads).
        let cut_to = 0;
        std::fs::File::options()
            .write(true)
            .open(dir.join(cut))
            .unwrap()
            .set_len(cut_to)
            .unwrap();
        let model = blank(&want, None);
        let before = common::hashes(&state_dict(&model).unwrap());
        let err = load_state_dict(&model, &sd, true).unwrap_err();
        assert!(
            matches!(&err, Error::FileChanged { path, found, .. }
                if *found == cut_to && path.ends_with(cut)),
            "{cut}: {err:?}"
        );
        assert_eq!(
            common::hashes(&state_dict(&model).unwrap()),
            before,
            "{cut}"
        );
    }
}

/// A directory holding `model.safetensors`, its sharded index, or `pytorch_model.bin` opens
/// as that file, as `from_pretrained(dir)` finds it; a directory holding none is refused.
#[test]
fn model_directories_open_as_their_weights_file() {
    for (dir, file) in [
        ("model_dir", "model_dir/model.safetensors"),
        ("bin_dir", "bin_dir/pytorch_model.bin"),
        ("sharded_dir", "sharded_dir/model.safetensors.index.json"),
        ("hf", "hf/model.safetensors.index.json"),
    ] {
        let from_dir = StateDict::load(fixture(dir)).unwrap_or_else(|e| panic!("{dir}: {e}"));
        let from_file = StateDict::load(fixture(file)).unwrap();
        assert!(!from_dir.is_empty());
        // The value under a key is that entry's tensor, for one file or shards alike.
        let ckpt = Checkpoint::open(fixture(dir)).unwrap();
        let (key, want) = from_file.iter().next().unwrap();
        let got = ckpt
            .value_at(key)
            .unwrap_or_else(|e| panic!("{dir}[{key}]: {e}"));
        assert!(got.as_tensor().unwrap().equal(want), "{dir}[{key}]");
        let prefix = key.split('.').next().unwrap();
        let e = ckpt.value_at(prefix).unwrap_err();
        assert!(
            matches!(&e, Error::KeyNotFound { .. }),
            "{dir}[{prefix}]: {e:?}"
        );
        assert_eq!(
            common::hashes(&from_dir),
            common::hashes(&from_file),
            "{dir}"
        );
    }
    let empty = common::tempdir("empty-dir");
    assert!(matches!(Checkpoint::open(&empty), Err(Error::Io { .. })));
    std::fs::remove_dir_all(&empty).unwrap();
}

/// A copy of the DCP fixture `name` in a temporary directory, its `.metadata` with each
/// `(from, to)` of `replacements` made: every occurrence, `count` of them each.
fn rewritten(name: &str, replacements: &[(&[u8], &[u8], usize)]) -> common::TestDir {
    let dir = common::tempdir("rewritten");
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let mut metadata = std::fs::read(dir.join(".metadata")).unwrap();
    for &(from, to, count) in replacements {
        let mut out = Vec::with_capacity(metadata.len());
        let mut rest = metadata.as_slice();
        let mut found = 0;
        while let Some(at) = rest.windows(from.len()).position(|w| w == from) {
            out.extend_from_slice(&rest[..at]);
            out.extend_from_slice(to);
            rest = &rest[at + from.len()..];
            found += 1;
        }
        out.extend_from_slice(rest);
        assert_eq!(found, count, "{:?}", String::from_utf8_lossy(from));
        metadata = out;
    }
    std::fs::write(dir.join(".metadata"), &metadata).unwrap();
    dir
}

/// Python's unpickler on `.metadata` of `dir`, running `expr` on it (`m`); what it prints.
fn python_on_metadata(dir: &std::path::Path, expr: &str) -> String {
    let code = format!(
        "import pickle, sys, torch.distributed.checkpoint\n\
         m = pickle.load(open(sys.argv[1], 'rb'))\n\
         print({expr})"
    );
    let path = dir.join(".metadata");
    common::oracle_code(&code, &[path.to_str().unwrap()])
        .trim()
        .to_string()
}

/// A pickle may name a class by any split of its dotted path into a module and a name
/// (protocol 4 resolves `filesystem._StorageInfo` as an attribute path of the module
/// `torch.distributed.checkpoint`); `.metadata`'s `_StorageInfo` named that way reads as
/// the file DCP wrote, and Python's unpickler finds the same class.
#[test]
fn a_class_named_by_another_split_of_its_path_reads() {
    // The module loses 11 bytes and the name gains 11: the pickle's frame keeps its length.
    let dir = rewritten(
        "dtensor",
        &[
            (
                b"\x8c\x27torch.distributed.checkpoint.filesystem",
                b"\x8c\x1ctorch.distributed.checkpoint",
                1,
            ),
            (
                b"\x8c\x0c_StorageInfo",
                b"\x8c\x17filesystem._StorageInfo",
                1,
            ),
        ],
    );
    assert_eq!(
        python_on_metadata(
            &dir,
            "{type(v).__qualname__ for v in m.storage_data.values()}"
        ),
        "{'_StorageInfo'}"
    );
    let got = Checkpoint::open(&*dir).unwrap().value().unwrap();
    let want = Value::load(fixture("dtensor.pt")).unwrap();
    if let Some(d) = common::value_difference(&got, &want, "dotted") {
        panic!("{d}");
    }
}

/// A key that `.metadata`'s `state_dict_metadata` sets twice (`cols` renamed `rows`: Python's
/// dict keeps one of them) is refused as a duplicate key, not read as two entries of one key.
#[test]
fn a_key_set_twice_in_the_metadata_is_refused() {
    let dir = rewritten("dtensor", &[(b"\x8c\x04cols", b"\x8c\x04rows", 4)]);
    assert_eq!(
        python_on_metadata(&dir, "list(m.state_dict_metadata).count('rows')"),
        "1"
    );
    for e in [
        Checkpoint::open(&*dir).err(),
        LazyStateDict::load(&*dir).err(),
    ] {
        assert!(
            matches!(
                &e,
                Some(Error::Pickle {
                    kind: tch_state_dict::PickleError::DuplicateKey(k),
                    ..
                }) if k == "rows"
            ),
            "{e:?}"
        );
    }
}
