//! Helpers shared by the benches: medians, where their files go, the Python oracle, the page
//! cache, the floors (memcpy, parallel reads) and the machine's state.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};
use tch_state_dict::StateDict;

pub fn median_of(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `target/bench-data`, where the benches write their checkpoints once.
pub fn data_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The oracle's interpreter, which `scripts/cargo` sets.
pub fn python() -> PathBuf {
    std::env::var_os("TCH_STATE_DICT_PYTHON")
        .map(PathBuf::from)
        .expect("run through scripts/cargo, which sets TCH_STATE_DICT_PYTHON")
}

pub fn nbytes(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// Drops `path` from the page cache.
pub fn evict(path: &Path) {
    use std::os::unix::io::AsRawFd;
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: a valid descriptor of a file this function opened; advice only.
    unsafe {
        libc::fdatasync(file.as_raw_fd());
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

/// The whole file read into `into` (touched already) by `threads` threads, each a range.
pub fn parallel_read(path: &Path, into: &Tensor, threads: usize) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).unwrap();
    let len = nbytes(path) as usize;
    let base = into.data_ptr() as usize;
    let per = len.div_ceil(threads.max(1));
    std::thread::scope(|s| {
        for t in 0..threads.max(1) {
            let file = &file;
            s.spawn(move || {
                let start = (t * per).min(len);
                let end = (start + per).min(len);
                // SAFETY: disjoint ranges of a buffer of `len` bytes that outlives the scope.
                let buf = unsafe {
                    std::slice::from_raw_parts_mut((base + start) as *mut u8, end - start)
                };
                file.read_exact_at(buf, start as u64).unwrap();
            });
        }
    });
}

/// The whole file read by `threads` threads, each its range, `block` bytes at a time into
/// a buffer of its own: what reading a file costs a converting load, which reads it in
/// blocks that stay in L2 (the read alone, nothing converted or kept).
pub fn blocked_read(path: &Path, threads: usize, block: usize) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).unwrap();
    let len = nbytes(path) as usize;
    let per = len.div_ceil(threads.max(1));
    std::thread::scope(|s| {
        for t in 0..threads.max(1) {
            let file = &file;
            s.spawn(move || {
                let (start, end) = ((t * per).min(len), ((t + 1) * per).min(len));
                let mut buf = vec![0u8; block];
                let mut at = start;
                while at < end {
                    let n = block.min(end - at);
                    file.read_exact_at(&mut buf[..n], at as u64).unwrap();
                    at += n;
                }
            });
        }
    });
}

/// Copies each source's bytes into its destination with memcpy, the tensors split across
/// `threads` by size (largest first, each to the least loaded thread).
pub fn memcpy_all(pairs: &[(Tensor, Tensor)], threads: usize) {
    /// Destination address, source address, length.
    type Job = (usize, usize, usize);
    let mut jobs: Vec<Job> = pairs
        .iter()
        .map(|(dst, src)| {
            let len = src.numel() * src.kind().elt_size_in_bytes();
            (dst.data_ptr() as usize, src.data_ptr() as usize, len)
        })
        .filter(|j| j.2 > 0)
        .collect();
    jobs.sort_by_key(|j| std::cmp::Reverse(j.2));
    let mut buckets: Vec<(usize, Vec<Job>)> = vec![(0, Vec::new()); threads.max(1)];
    for job in jobs {
        let b = buckets.iter_mut().min_by_key(|b| b.0).unwrap();
        b.0 += job.2;
        b.1.push(job);
    }
    std::thread::scope(|scope| {
        for (_, bucket) in buckets {
            scope.spawn(move || {
                for (dst, src, len) in bucket {
                    // SAFETY: both are contiguous CPU tensors of `len` bytes that outlive the
                    // scope; each destination is written by one thread.
                    unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, len) };
                }
            });
        }
    });
}

/// This process's peak RSS (VmHWM), in bytes.
pub fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The first three fields of /proc/loadavg: how busy the machine was.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_string())
}

/// `sd` with its floating-point tensors in `kind`.
pub fn floats_as(sd: &StateDict, kind: Kind) -> StateDict {
    sd.iter()
        .map(|(k, t)| {
            let t = if t.is_floating_point() {
                t.to_kind(kind)
            } else {
                t.shallow_clone()
            };
            (k.to_string(), t)
        })
        .collect()
}

/// Runs `command` and returns its output, failing with its stderr when it fails.
pub fn run_ok(command: &mut std::process::Command) -> std::process::Output {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        command,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `pth`'s state dict as a DCP directory `{'model': sd}` at `dir`, written by 2 ranks of real
/// torch.distributed with every tensor `Shard(0)` (FSDP2's layout), once.
pub fn dcp_from_pth(pth: &Path, dir: &Path) {
    if dir.join(".metadata").exists() {
        return;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/dcp_save.py");
    run_ok(std::process::Command::new(python()).arg(script).args([
        "from",
        pth.to_str().unwrap(),
        "",
        dir.to_str().unwrap(),
    ]));
}

/// The LLM-like checkpoint of `layers` layers of four [dim, dim] bf16 projections in 4
/// shards, under `dir`, written once by `script` (`benches/make_llm.py`) run by `python`:
/// its index.json.
pub fn llm_files(dir: &Path, layers: usize, dim: i64, python: &Path, script: &Path) -> PathBuf {
    let out = dir.join(format!("llm-{layers}x{dim}"));
    let index = out.join("model.safetensors.index.json");
    if !index.exists() {
        run_ok(
            std::process::Command::new(python)
                .arg(script)
                .arg(&out)
                .args([layers.to_string(), dim.to_string(), "4".to_string()]),
        );
    }
    index
}

/// A model with the LLM-like checkpoint's keys (all of them, or those of layers `layers`),
/// made in `kind` on `device`, its memory touched.
pub fn llm_model(
    layers: std::ops::Range<usize>,
    dim: i64,
    kind: Kind,
    device: tch::Device,
) -> tch_state_dict::ModuleTree {
    let mut tree = tch_state_dict::ModuleTree::new("Llm");
    for i in layers {
        for p in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            let key = format!("model.layers.{i}.self_attn.{p}.weight");
            tree.add_tensor(&key, Tensor::zeros([dim, dim], (kind, device)))
                .unwrap();
        }
    }
    tree
}
