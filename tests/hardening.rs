//! Defects found by attack that need a scenario rather than a corpus file: legacy files past
//! `max_pickle_bytes` (D6), a file renamed over the path of a memory-mapped checkpoint (D8),
//! symlinks and FIFOs among shards (D10).

mod common;

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};
use tch_state_dict::{
    Checkpoint, Error, LoadOptions, ModuleTree, ReadLimits, ReadOptions, StateDict,
};

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tch-state-dict-hardening-{tag}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `torch.save({'w': torch.arange(n)}, path)` (float32) in the legacy format.
fn legacy_arange(path: &Path, n: usize) {
    let script = format!(
        "import torch\ntorch.save({{'w': torch.arange({n}.0)}}, {path:?}, \
         _use_new_zipfile_serialization=False)\n"
    );
    let out = std::process::Command::new(common::python())
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    std::fs::remove_dir_all(&dir).unwrap();
}

/// D6: a legacy checkpoint over 1 GiB (the default `max_pickle_bytes`) opens and loads. The
/// file is sparse: its last storage is grown to 1 GiB and 16 bytes, of which the tensor
/// views the first 16.
#[test]
fn a_legacy_checkpoint_over_1_gib_is_read() {
    let dir = tempdir("legacy-big");
    let path = dir.join("big.pth");
    legacy_arange(&path, 4);
    let mut bytes = std::fs::read(&path).unwrap();
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
    std::fs::remove_dir_all(&dir).unwrap();
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
    let out = std::process::Command::new(common::python())
        .args(["-c", script, path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let torch: Vec<(String, String)> = String::from_utf8(out.stdout)
        .unwrap()
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
    std::fs::remove_dir_all(&dir).unwrap();
}
