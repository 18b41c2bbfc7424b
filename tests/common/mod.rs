//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use tch::{Device, Kind, Tensor};
use tch_state_dict::{ModuleTree, StateDict};

/// The Python interpreter of the PyTorch environment that `scripts/cargo` sets up. Tests that
/// compare with PyTorch need it; they fail, rather than skip, without it.
pub fn python() -> PathBuf {
    match std::env::var_os("TCH_STATE_DICT_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "TCH_STATE_DICT_PYTHON is not set: run the tests with `scripts/cargo test`, which \
             installs torch==2.11.0 and points this variable at its python"
        ),
    }
}

/// A file under `tests/`.
pub fn test_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(rel)
}

/// Runs `script` (a path under `tests/`) with `args`, feeding `stdin`; returns stdout and
/// panics with stderr when the script fails.
pub fn run_python(script: &str, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(python())
        .arg(test_file(script))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write to python");
    let out = child.wait_with_output().expect("wait for python");
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 from python")
}

/// A hash of a tensor's bytes, shape, dtype and device.
pub fn hash_tensor(t: &Tensor) -> u64 {
    let t = t.to_device(tch::Device::Cpu).contiguous();
    let numel = t.numel();
    let bytes = numel * t.kind().elt_size_in_bytes();
    let mut buf = vec![0u8; bytes];
    t.copy_data_u8(&mut buf, numel);
    let mut h = DefaultHasher::new();
    buf.hash(&mut h);
    t.size().hash(&mut h);
    format!("{:?}", t.kind()).hash(&mut h);
    h.finish()
}

/// Every tensor of a state dict, hashed, in order.
pub fn hashes(sd: &StateDict) -> Vec<(String, u64)> {
    sd.iter()
        .map(|(k, t)| (k.to_string(), hash_tensor(t)))
        .collect()
}

/// A float tensor with distinct values, for tests that check which values landed where.
pub fn arange(shape: &[i64], start: f64) -> Tensor {
    let n: i64 = shape.iter().product();
    (Tensor::arange(n, (Kind::Double, tch::Device::Cpu)) + start)
        .reshape(shape)
        .to_kind(Kind::Float)
}

/// A fixture made by `tests/fixtures/make_fixtures.py`.
pub fn fixture(name: &str) -> PathBuf {
    test_file(&format!("fixtures/pytorch/{name}"))
}

/// A fresh directory under the system's temp dir, named for the test binary and `tag`.
pub fn tempdir(tag: &str) -> PathBuf {
    let exe = std::env::current_exe().ok();
    let binary = exe
        .as_ref()
        .and_then(|p| p.file_stem())
        .and_then(|s| s.to_str())
        .unwrap_or("test");
    let dir = std::env::temp_dir().join(format!(
        "tch-state-dict-{binary}-{tag}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A model with the keys and shapes of `sd`, zero-filled, in `kind` for floating-point
/// entries (or each entry's own dtype).
pub fn blank_model(sd: &StateDict, kind: Option<Kind>) -> ModuleTree {
    let mut tree = ModuleTree::new("Net");
    for (k, t) in sd.iter() {
        let kind = kind.filter(|_| t.is_floating_point()).unwrap_or(t.kind());
        tree.add_tensor(k, Tensor::zeros(t.size(), (kind, Device::Cpu)))
            .unwrap();
    }
    tree
}

/// A state dict of 1-D random float tensors `t0`, `t1`, ... of the given lengths.
pub fn random_vectors(lengths: &[i64]) -> StateDict {
    lengths
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            (
                format!("t{i}"),
                Tensor::randn([n], (Kind::Float, Device::Cpu)),
            )
        })
        .collect()
}

/// Cuts the file at `path` to half its length (a file truncated after it was opened);
/// returns the new length.
pub fn truncate_to_half(path: &std::path::Path) -> u64 {
    let len = std::fs::metadata(path).unwrap().len() / 2;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
    len
}
