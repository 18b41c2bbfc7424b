//! Defects found by attack that need a scenario rather than a corpus file: legacy files past
//! `max_pickle_bytes` (D6), a file renamed over the path of a memory-mapped checkpoint (D8),
//! symlinks and FIFOs among shards (D10).

mod common;

use common::tempdir;

use std::path::Path;

use tch::{Device, Kind, Tensor};
use tch_state_dict::{
    Checkpoint, Error, LoadOptions, ModuleTree, ReadLimits, ReadOptions, StateDict,
};

/// `torch.save({'w': torch.arange(n)}, path)` (float32) in the legacy format.
fn legacy_arange(path: &Path, n: usize) {
    let script = format!(
        "import sys, torch\ntorch.save({{'w': torch.arange({n}.0)}}, sys.argv[1], \
         _use_new_zipfile_serialization=False)\n"
    );
    common::oracle_code(&script, &[path.to_str().unwrap()]);
}

fn arange(n: i64) -> Tensor {
    Tensor::arange(n, (Kind::Float, Device::Cpu))
}

/// D6: the storages after a legacy file's pickles are not pickle bytes.
#[test]
fn only_the_pickles_of_a_legacy_file_count_against_max_pickle_bytes() {
    let dir = tempdir("legacy-limit");
    let path = dir.join("legacy.pth");
    legacy_arange(&path, 16384); // 64 KiB of storage after about 600 bytes of pickles
    let limited = |max| {
        let mut limits = ReadLimits::default();
        limits.max_pickle_bytes = max;
        ReadOptions::new().limits(limits)
    };
    let sd = StateDict::load_with(&path, &limited(4096)).unwrap();
    assert!(sd.get("w").unwrap().equal(&arange(16384)));
    // A pickle longer than the limit is still refused.
    let e = Checkpoint::open_with(&path, &limited(64))
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::LimitExceeded {
                limit: "max_pickle_bytes",
                max: 64,
                ..
            }
        ),
        "{e:?}"
    );
}

/// The legacy file's persistent id declares its storage's size after the location `'cpu'`
/// (and a memo put) as `BININT1 4`; this makes it `BININT numel`, 3 bytes longer.
fn declare_storage_size(bytes: &mut Vec<u8>, numel: i32) {
    let cpu = bytes
        .windows(3)
        .position(|w| w == b"cpu")
        .expect("the location")
        + 3;
    let at = match bytes[cpu] {
        b'q' => cpu + 2,
        b'r' => cpu + 5,
        _ => cpu,
    };
    assert_eq!(bytes[at..at + 2], [b'K', 4], "BININT1 4 after the location");
    let binint: Vec<u8> = std::iter::once(b'J').chain(numel.to_le_bytes()).collect();
    bytes.splice(at..at + 2, binint);
}

/// D6: a legacy checkpoint over 1 GiB (the default `max_pickle_bytes`) opens and loads. The
/// file is sparse: its last storage is grown to 1 GiB and 16 bytes (its size header and its
/// persistent id both say so), of which the tensor views the first 16.
#[test]
fn a_legacy_checkpoint_over_1_gib_is_read() {
    let dir = tempdir("legacy-big");
    let path = dir.join("big.pth");
    legacy_arange(&path, 4);
    let mut bytes = std::fs::read(&path).unwrap();
    declare_storage_size(&mut bytes, (1 << 28) + 4);
    let header = bytes.len() - 16 - 8;
    assert_eq!(bytes[header..header + 8], 4i64.to_le_bytes());
    let numel: i64 = (1 << 28) + 4;
    bytes[header..header + 8].copy_from_slice(&numel.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len((header + 8) as u64 + numel as u64 * 4)
        .unwrap();
    drop(file);
    assert!(std::fs::metadata(&path).unwrap().len() > 1 << 30);

    let ckpt = Checkpoint::open(&path).unwrap();
    assert_eq!(ckpt.keys(), ["w"]);
    let mut model = ModuleTree::new("Net");
    model
        .add_tensor("w", Tensor::zeros([4], (Kind::Float, Device::Cpu)))
        .unwrap();
    ckpt.load_into(&model, &LoadOptions::new()).unwrap();
    assert!(model.get("w").unwrap().equal(&arange(4)));
}

/// D4: a big-endian file's complex tensors, each half of each element swapped on its own, as
/// `torch.load` reads them: read into memory, and loaded into a model (the converting reads).
#[test]
fn big_endian_complex_tensors_match_torch_load() {
    let path = common::test_file("fixtures/pytorch/big_endian_complex.pth");
    // torch.load's values, as the hex of each tensor's little-endian bytes.
    let script = "import sys, torch\n\
                  for k, v in torch.load(sys.argv[1], weights_only=True).items():\n\
                  \x20   print(k, v.contiguous().numpy().tobytes().hex())\n";
    let out = common::oracle_code(script, &[path.to_str().unwrap()]);
    let torch: Vec<(String, String)> = out
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    assert_eq!(torch.len(), 3);
    let hex = |t: &Tensor| {
        let t = t.contiguous();
        let mut bytes = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
        t.copy_data_u8(&mut bytes, t.numel());
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let sd = StateDict::load(&path).unwrap();
    assert_eq!(sd.get("c64").unwrap().kind(), Kind::ComplexFloat);
    assert_eq!(sd.get("c128").unwrap().kind(), Kind::ComplexDouble);
    let mut model = ModuleTree::new("Net");
    for (k, t) in sd.iter() {
        model
            .add_tensor(k, Tensor::zeros(t.size(), (t.kind(), Device::Cpu)))
            .unwrap();
    }
    Checkpoint::open(&path)
        .unwrap()
        .load_into(&model, &LoadOptions::new())
        .unwrap();
    for (key, want) in &torch {
        assert_eq!(&hex(sd.get(key).unwrap()), want, "{key}, read into memory");
        assert_eq!(
            &hex(model.get(key).unwrap()),
            want,
            "{key}, loaded into a model"
        );
    }
}

/// D8: with `mmap(true)`, the tensors are views of the file that was opened, even when
/// another file has been renamed over its path since; and they are views (a memory map),
/// not copies.
#[test]
fn mmap_reads_the_file_opened_not_one_renamed_over_its_path() {
    let dir = tempdir("mmap-rename");
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::create_dir_all(dir.join("b")).unwrap();
    // One name in two directories: the same layout, the same offsets, other values.
    let (path, other) = (dir.join("a/model.pth"), dir.join("b/model.pth"));
    for (p, value) in [(&path, 1.0), (&other, 2.0)] {
        let mut sd = StateDict::new();
        sd.insert("w", Tensor::full([4096], value, (Kind::Float, Device::Cpu)));
        sd.save(p).unwrap();
    }
    let options = ReadOptions::new().mmap(true);
    let ckpt = Checkpoint::open_with(&path, &options).unwrap();
    let lazy = ckpt.lazy_state_dict().unwrap();
    std::fs::rename(&other, &path).unwrap();
    let all_ones = |t: &Tensor| t.eq(1.0).all().int64_value(&[]) == 1;
    let sd = ckpt.state_dict().unwrap();
    assert!(
        all_ones(sd.get("w").unwrap()),
        "read the file renamed over the path"
    );
    let w = lazy.get("w").unwrap().read().unwrap();
    assert!(all_ones(&w));
    // The tensor lies in a mapping of the file that was opened, now unlinked.
    #[cfg(target_os = "linux")]
    {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let ptr = w.data_ptr() as usize;
        let line = maps
            .lines()
            .find(|l| {
                let range = l.split_whitespace().next().unwrap();
                let (lo, hi) = range.split_once('-').unwrap();
                let lo = usize::from_str_radix(lo, 16).unwrap();
                let hi = usize::from_str_radix(hi, 16).unwrap();
                (lo..hi).contains(&ptr)
            })
            .expect("the tensor's memory is mapped");
        assert!(
            line.contains(path.to_str().unwrap()) && line.ends_with("(deleted)"),
            "{line}"
        );
    }
}

/// A safetensors file of one tensor `name` of 2 floats, each `value`.
fn safetensors_file(path: &Path, name: &str, value: f64) {
    let mut sd = StateDict::new();
    sd.insert(name, Tensor::full([2], value, (Kind::Float, Device::Cpu)));
    sd.save(path).unwrap();
}

fn write_index(path: &Path, entries: &[(&str, &str)]) {
    let map: Vec<String> = entries
        .iter()
        .map(|(k, f)| format!("{k:?}: {f:?}"))
        .collect();
    std::fs::write(path, format!("{{\"weight_map\": {{{}}}}}", map.join(", "))).unwrap();
}

/// D10: a shard reached through a symlink (the shard, or a directory on its path) must lie
/// inside the index's directory once the symlinks are resolved.
#[cfg(unix)]
#[test]
fn symlinks_cannot_take_a_sharded_index_outside_its_directory() {
    use std::os::unix::fs::symlink;
    let dir = tempdir("shard-symlinks");
    let (model, outside) = (dir.join("model"), dir.join("outside"));
    std::fs::create_dir_all(&model).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    safetensors_file(&outside.join("secret.safetensors"), "w", 7.0);
    let index = model.join("model.safetensors.index.json");
    let refused = |what: &str| {
        let e = Checkpoint::open(&index).map(|_| ()).unwrap_err();
        assert!(
            matches!(&e, Error::ShardIndex { reason, .. } if reason.contains("outside the index's directory")),
            "{what}: {e:?}"
        );
    };

    // A symlinked shard.
    symlink("../outside/secret.safetensors", model.join("a.safetensors")).unwrap();
    write_index(&index, &[("w", "a.safetensors")]);
    refused("a symlinked shard");
    // A symlinked directory.
    symlink("../outside", model.join("sub")).unwrap();
    write_index(&index, &[("w", "sub/secret.safetensors")]);
    refused("a symlinked directory");
    // An absolute symlink.
    symlink(
        outside.join("secret.safetensors"),
        model.join("b.safetensors"),
    )
    .unwrap();
    write_index(&index, &[("w", "b.safetensors")]);
    refused("an absolute symlink");

    // A symlink that stays inside is fine.
    std::fs::create_dir_all(model.join("real")).unwrap();
    safetensors_file(&model.join("real/shard.safetensors"), "w", 3.0);
    symlink("real/shard.safetensors", model.join("c.safetensors")).unwrap();
    write_index(&index, &[("w", "c.safetensors")]);
    let sd = StateDict::load(&index).unwrap();
    assert_eq!(sd.get("w").unwrap().double_value(&[0]), 3.0);
}

/// The Hugging Face hub cache keeps a snapshot's files as symlinks into the repository's
/// `blobs`: that layout still loads.
#[cfg(unix)]
#[test]
fn a_sharded_checkpoint_in_the_hugging_face_cache_loads() {
    use std::os::unix::fs::symlink;
    let dir = tempdir("hf-cache");
    let repo = dir.join("models--org--name");
    let (blobs, snapshot) = (repo.join("blobs"), repo.join("snapshots/0123abcd"));
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    safetensors_file(&blobs.join("1111"), "a", 1.0);
    safetensors_file(&blobs.join("2222"), "b", 2.0);
    write_index(
        &blobs.join("3333"),
        &[("a", "model-1.safetensors"), ("b", "model-2.safetensors")],
    );
    symlink("../../blobs/1111", snapshot.join("model-1.safetensors")).unwrap();
    symlink("../../blobs/2222", snapshot.join("model-2.safetensors")).unwrap();
    let index = snapshot.join("model.safetensors.index.json");
    symlink("../../blobs/3333", &index).unwrap();
    let sd = StateDict::load(&index).unwrap();
    assert_eq!(sd.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(sd.get("b").unwrap().double_value(&[1]), 2.0);
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Runs `open` on another thread and fails if it does not return within 10 s; a FIFO that
/// it blocks on is then opened for writing, to let it go.
fn within_10_s(fifo: &Path, open: impl FnOnce() -> Result<(), Error> + Send + 'static) -> Error {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(open()).unwrap());
    match rx.recv_timeout(std::time::Duration::from_secs(10)) {
        Ok(result) => result.unwrap_err(),
        Err(_) => {
            let _ = std::fs::OpenOptions::new().write(true).open(fifo);
            panic!("opening blocked on the FIFO {}", fifo.display());
        }
    }
}

/// D10: a FIFO given as a checkpoint or as a shard is refused at once, not waited on.
#[cfg(unix)]
#[test]
fn a_fifo_is_refused_without_blocking() {
    let dir = tempdir("fifo");
    let fifo = dir.join("model.pth");
    mkfifo(&fifo);
    let path = fifo.clone();
    let e = within_10_s(&fifo, move || Checkpoint::open(&path).map(|_| ()));
    assert!(
        matches!(&e, Error::Io { path, source } if *path == fifo && source.kind() == std::io::ErrorKind::InvalidInput),
        "{e:?}"
    );
    assert!(e.to_string().contains("FIFO"), "{e}");

    let shard = dir.join("shard.safetensors");
    mkfifo(&shard);
    let index = dir.join("model.safetensors.index.json");
    write_index(&index, &[("w", "shard.safetensors")]);
    let e = within_10_s(&shard, move || Checkpoint::open(&index).map(|_| ()));
    assert!(
        matches!(&e, Error::Io { path, source } if *path == shard && source.kind() == std::io::ErrorKind::InvalidInput),
        "{e:?}"
    );
    // A directory is no checkpoint either.
    let e = Checkpoint::open(&dir).map(|_| ()).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
}

/// D10: an unknown format is described, never quoted: the path may name any file.
#[test]
fn an_unknown_format_does_not_print_the_file() {
    let dir = tempdir("unknown");
    let passwd = dir.join("passwd");
    std::fs::write(
        &passwd,
        "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n",
    )
    .unwrap();
    let binary = dir.join("key.bin");
    std::fs::write(
        &binary,
        [0x13u8, 0x37, 0xc0, 0xde, 0xfa, 0xce, 0x00, 0x01, 0x02],
    )
    .unwrap();
    for (path, found) in [
        (&passwd, "text of 80 bytes"),
        (&binary, "binary data of 9 bytes"),
    ] {
        let e = Checkpoint::open(path).map(|_| ()).unwrap_err();
        assert!(
            matches!(&e, Error::UnknownFormat { found: f, .. } if f == found),
            "{e:?}"
        );
        let text = e.to_string();
        for leak in ["root", "72 6f 6f 74", "726f6f74", "13 37", "1337", "c0de"] {
            assert!(!text.contains(leak), "{leak:?} in {text}");
        }
    }
}
