//! The memory budget over the whole hostile corpus: opening a file of S bytes and building
//! its value grows peak RSS by at most the budget it is read with, plus the bytes of the
//! tensors it reads. The corpus is read with a fixed part of 64 MiB rather than the
//! default 256 MiB: the same accounting is checked, a fixed cost the budget does not charge
//! has less room to hide, and the bombs, which grind through unoptimized code here until the
//! budget stops them, stop four times sooner. The time each file takes is printed
//! (`report`), not asserted: this is the debug build, two children at a time, on a machine
//! that may be shared.
//!
//! Each file is read in a child process (this test binary run again on one test), which
//! resets its peak resident set (`VmHWM`, through `/proc/self/clear_refs`) just before
//! `Checkpoint::open` and reads it just after `value()`; an error from either is fine, a
//! crash or an abort is not. The child says whether the reset worked: where it cannot be
//! done, an earlier peak would hide part of the growth, and the bound is skipped, saying so,
//! rather than checked on a measurement that is short. The bounds are written here as
//! numbers rather than read from `ReadLimits`, and the default budget, 256 MiB + 8·S, is
//! checked against them, so that a change of the defaults that breaks the promise fails here.
//!
//! And the other side of the budget: the real fixtures, and a state dict of many tensors,
//! open and read within it.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use tch::{Device, Kind, Tensor};
use tch_state_dict::{Checkpoint, Error, ReadLimits, ReadOptions, StateDict, Value};

const CHILD: &str = "TCH_STATE_DICT_BUDGET_CHILD";
/// Files to measure with `measure_files`, separated by newlines.
const FILES: &str = "TCH_STATE_DICT_BUDGET_FILES";
/// The fixed part of the budget the child reads with, when set (else the default's).
const CHILD_BASE: &str = "TCH_STATE_DICT_BUDGET_BASE";
const BASE: u64 = 256 << 20;
const PER_BYTE: u64 = 8;
/// The fixed part of the budget the hostile corpus is read with.
const CORPUS_BASE: u64 = 64 << 20;

#[test]
#[ignore = "the child process of the budget tests; run by them"]
fn child() {
    let Ok(path) = std::env::var(CHILD) else {
        return;
    };
    // VmHWM reset to the current resident set; without the reset, growth is measured from
    // the peak so far, which may hide some of it (the parent then checks no bound).
    let reset = common::reset_peak_rss();
    let before = reset.unwrap_or_else(common::peak_rss);
    let start = Instant::now();
    let opened = match std::env::var(CHILD_BASE) {
        Ok(base) => {
            let mut limits = ReadLimits::default();
            limits.max_memory_base = base.parse().unwrap();
            Checkpoint::open_with(&path, &ReadOptions::new().limits(limits))
        }
        Err(_) => Checkpoint::open(&path),
    };
    let open_growth = common::peak_rss().saturating_sub(before);
    let open_secs = start.elapsed().as_secs_f64();
    let (result, state_dict) = match &opened {
        Ok(c) => {
            let value = c.value();
            let tensors = value.as_ref().map_or(0, common::child::tensor_bytes);
            let outcome = value.as_ref().map(|_| ()).map_err(|e| format!("{e:?}"));
            // The value is dropped before the state dict is made: each is a read of its own,
            // with a budget of its own.
            drop(value);
            let sd = c.state_dict();
            let sd_outcome = match &sd {
                Ok(sd) => format!("{} tensors", sd.len()),
                Err(e) => format!("{e:?}").chars().take(60).collect(),
            };
            drop(sd);
            (outcome.map(|()| tensors), sd_outcome)
        }
        Err(e) => (Err(format!("{e:?}")), String::new()),
    };
    let secs = start.elapsed().as_secs_f64();
    let growth = common::peak_rss().saturating_sub(before);
    let (tensors, outcome) = match &result {
        Ok(t) => (*t, "ok".to_string()),
        Err(e) => (0, e.chars().take(120).collect()),
    };
    println!(
        "budget: reset={} growth={growth} open_growth={open_growth} tensors={tensors} secs={secs:.3} \
         open_secs={open_secs:.3} outcome={outcome}; state_dict: {state_dict}",
        reset.is_some()
    );
}

#[derive(Clone)]
struct Measured {
    /// Whether the child could reset its peak RSS before the read; without it, `growth` may
    /// be short of the real growth.
    reset: bool,
    growth: u64,
    open_growth: u64,
    open_secs: f64,
    tensors: u64,
    secs: f64,
    outcome: String,
}

/// Opens `path` and builds its value in a child process, with the default budget or one of
/// `base` + 8 bytes per byte.
fn measure(path: &Path, base: Option<u64>) -> Measured {
    let env: Vec<(&str, String)> = base
        .map(|b| (CHILD_BASE, b.to_string()))
        .into_iter()
        .collect();
    let r = common::child::run_child(CHILD, path, &env, None);
    Measured {
        reset: r.field("reset") == "true",
        growth: r.num("growth"),
        open_growth: r.num("open_growth"),
        open_secs: r.num("open_secs"),
        tensors: r.num("tensors"),
        secs: r.num("secs"),
        outcome: r.outcome(),
    }
}

/// Every file under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                dirs.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    files
}

/// Measures `files` as [`measure`] does, two children at a time, and returns each with its
/// size and result.
fn measure_all(files: &[PathBuf], base: Option<u64>) -> Vec<(PathBuf, u64, Measured)> {
    common::child::two_at_a_time(files, |path| {
        (std::fs::metadata(path).unwrap().len(), measure(path, base))
    })
    .into_iter()
    .map(|(path, (len, m))| (path, len, m))
    .collect()
}

fn report(results: &[(PathBuf, u64, Measured)]) {
    for (path, len, m) in results {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        eprintln!(
            "{:>10} B  open {:>8.1} MiB {:>6.2} s  value {:>8.1} MiB {:>6.2} s  {}  {}",
            len,
            mib(m.open_growth),
            m.open_secs,
            mib(m.growth),
            m.secs,
            path.display(),
            m.outcome
        );
    }
}

#[test]
fn every_hostile_file_stays_within_the_memory_budget() {
    let dir = common::test_file("fixtures/hostile");
    let files = files_under(&dir);
    assert!(files.len() >= 30, "{} files", files.len());
    let start = Instant::now();
    let results = measure_all(&files, Some(CORPUS_BASE));
    report(&results);
    eprintln!(
        "{} files in {:.1} s",
        results.len(),
        start.elapsed().as_secs_f64()
    );
    if !results.iter().all(|(_, _, m)| m.reset) {
        skip_bound("the hostile corpus");
        return;
    }
    for (path, len, m) in &results {
        let bound = CORPUS_BASE + PER_BYTE * len + m.tensors;
        assert!(
            m.growth <= bound,
            "{}: peak RSS grew by {} B, past 64 MiB + 8 × {len} B (+ {} B of tensors) = {bound} B ({})",
            path.display(),
            m.growth,
            m.tensors,
            m.outcome
        );
    }
}

/// The budget the crate promises by default, which the bounds here are written from.
#[test]
fn the_default_budget_is_256_mib_and_8_bytes_per_byte_of_the_file() {
    let limits = ReadLimits::default();
    for len in [0, 1, 1 << 20, 40 << 30] {
        assert_eq!(limits.max_memory(len), BASE + PER_BYTE * len, "{len} B");
    }
}

/// Says that the memory bound of `what` is not checked, and why (the reads themselves were
/// checked: no crash, no abort).
fn skip_bound(what: &str) {
    common::skipped(&format!("the memory bound of {what}"), common::NO_RESET);
}

/// `TCH_STATE_DICT_BUDGET_FILES=a.pth scripts/cargo test --release --test budget
/// measure_files -- --ignored --nocapture`: the same measurement of any files, printed.
#[test]
#[ignore = "measures the files named in TCH_STATE_DICT_BUDGET_FILES"]
fn measure_files() {
    let Ok(list) = std::env::var(FILES) else {
        return;
    };
    let files: Vec<PathBuf> = list.lines().map(PathBuf::from).collect();
    for path in &files {
        let len = std::fs::metadata(path).unwrap().len();
        let m = measure(path, None);
        report(&[(path.clone(), len, m)]);
    }
}

/// Every tensor of `v` (its record: dtype, shape, bytes) and every entry of a dtype this crate
/// cannot hold, by a path of indices and keys.
fn tensors(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
    let mut all = |items: &mut dyn Iterator<Item = (String, &Value)>| {
        for (k, item) in items {
            tensors(item, &format!("{at}/{k}"), out);
        }
    };
    match v {
        Value::Tensor(t) => out.push((at.to_string(), format!("{:?}", common::record(t)))),
        Value::Unreadable { dtype, shape } => {
            out.push((at.to_string(), format!("unreadable {dtype} {shape:?}")))
        }
        Value::List(items) | Value::Tuple(items) | Value::Set(items) => {
            all(&mut items.iter().enumerate().map(|(i, v)| (i.to_string(), v)))
        }
        Value::Dict(d) => all(&mut d
            .items
            .iter()
            .flat_map(|(k, v)| [(format!("{k}#"), k), (k.to_string(), v)])),
        Value::Object(o) => {
            all(&mut o
                .args()
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("arg{i}"), v)));
            all(&mut o.state().into_iter().map(|v| ("state".to_string(), v)));
            all(&mut o
                .list_items()
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("item{i}"), v)));
            all(&mut o
                .dict_items()
                .iter()
                .flat_map(|(k, v)| [(format!("{k}#"), k), (k.to_string(), v)]));
        }
        _ => {}
    }
}

/// Limits no file reaches.
fn no_limits() -> ReadLimits {
    let mut limits = ReadLimits::default();
    limits.max_memory_base = 1 << 50;
    limits.max_memory_per_file_byte = 1 << 10;
    limits.max_pickle_bytes = u64::MAX;
    limits.max_objects = u64::MAX;
    limits.max_memo_entries = u64::MAX;
    limits.max_depth = 10_000;
    limits.max_tensors = u64::MAX;
    limits.max_values = u64::MAX;
    limits.max_compression_ratio = u64::MAX;
    limits
}

/// The other side of the budget: every real fixture opens and reads within the default
/// limits, and reads whole: the same tensors (dtype, shape, bytes) as a read without limits,
/// and at least one.
#[test]
fn every_real_fixture_opens_and_reads_within_the_default_budget() {
    let mut files = files_under(&common::test_file("fixtures/pytorch"));
    files.extend(files_under(&common::test_file("fixtures/training")));
    assert!(files.len() >= 30, "{} files", files.len());
    let unlimited = ReadOptions::new().limits(no_limits());
    for path in &files {
        // Files holding dtypes this crate cannot read are described, not read.
        let read = |options: &ReadOptions| {
            let value = Checkpoint::open_with(path, options)
                .and_then(|c| c.value_with_unreadable())
                .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
            let mut found = Vec::new();
            tensors(&value, "", &mut found);
            found
        };
        let within = read(&ReadOptions::new());
        let without = read(&unlimited);
        assert!(!without.is_empty(), "{}: no tensors", path.display());
        assert_eq!(within, without, "{}", path.display());
    }
}

/// Parsing a state dict of many one-element tensors needs less than 8 bytes per byte of its
/// file; making its tensors needs more, libtorch's bookkeeping of each (about 1.4 KiB for a
/// tensor with a storage of its own) being larger than the tensor's share of the file (about
/// 200 bytes): within the default budget's 256 MiB, and refused, not made, without it.
#[test]
fn a_state_dict_of_many_tensors_parses_in_less_than_eight_bytes_per_byte_of_its_file() {
    let dir = common::tempdir("many");
    let path = dir.join("many.pth");
    let sd: StateDict = (0..20_000)
        .map(|i| {
            (
                format!("layers.{i}.weight"),
                Tensor::zeros([1], (Kind::Float, Device::Cpu)),
            )
        })
        .collect();
    sd.save(&path).unwrap();
    drop(sd);
    // No room beyond the file's 8 bytes per byte but 16 MiB for the reader's own working
    // memory: opened, and its whole value read.
    let limits = |per_byte| {
        let mut limits = ReadLimits::default();
        limits.max_memory_base = 16 << 20;
        limits.max_memory_per_file_byte = per_byte;
        ReadOptions::new().limits(limits)
    };
    let ckpt = Checkpoint::open_with(&path, &limits(8)).unwrap();
    assert_eq!(ckpt.keys().len(), 20_000);
    let refused = |r: Result<usize, Error>| {
        matches!(
            r,
            Err(Error::LimitExceeded {
                limit: "max_memory",
                ..
            })
        )
    };
    assert!(refused(
        ckpt.value().map(|v| v.as_dict().unwrap().items.len())
    ));
    assert!(refused(ckpt.state_dict().map(|sd| sd.len())));
    let ckpt = Checkpoint::open(&path).unwrap();
    assert_eq!(ckpt.value().unwrap().as_dict().unwrap().items.len(), 20_000);
    assert_eq!(ckpt.state_dict().unwrap().len(), 20_000);
    // One byte per byte is too little.
    assert!(matches!(
        Checkpoint::open_with(&path, &limits(1)).map(|_| ()),
        Err(Error::LimitExceeded {
            limit: "max_memory",
            ..
        })
    ));
}

/// A safetensors file of `n` one-element float32 tensors `t0`, `t1`, ..., written directly.
fn tiny_tensors_safetensors(path: &Path, n: usize) {
    let mut header = String::from("{");
    for i in 0..n {
        if i > 0 {
            header.push(',');
        }
        header.push_str(&format!(
            "\"t{i}\":{{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[{},{}]}}",
            4 * i,
            4 * i + 4
        ));
    }
    header.push('}');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.resize(bytes.len() + 4 * n, 0);
    std::fs::write(path, bytes).unwrap();
}

/// Materializing tensors is charged, libtorch's bookkeeping included: a file of a million
/// one-element tensors, opened, then read as a value, then as a state dict in one process
/// (the child), stays within 256 MiB + 8 bytes per byte of peak RSS growth; each step either
/// succeeds or is `LimitExceeded`, and fails before libtorch makes the tensors. (Its time is
/// printed, not asserted: see benches/README.md for the release build's.)
#[test]
fn a_million_tiny_tensors_stay_within_the_budget() {
    let dir = common::tempdir("million");
    let path = dir.join("million.safetensors");
    tiny_tensors_safetensors(&path, 1_000_000);
    let len = std::fs::metadata(&path).unwrap().len();
    let m = measure(&path, None);
    report(&[(path.clone(), len, m.clone())]);
    let bound = BASE + PER_BYTE * len;
    if m.reset {
        assert!(
            m.growth <= bound,
            "peak RSS grew by {} B, past 256 MiB + 8 × {len} B = {bound} B",
            m.growth
        );
    } else {
        skip_bound("a million tiny tensors");
    }
    let allowed = |outcome: &str| outcome.starts_with("ok") || outcome.contains("LimitExceeded");
    assert!(allowed(&m.outcome), "value: {}", m.outcome);
    let state_dict = m.outcome.split_once("; state_dict: ").unwrap().1;
    assert!(
        state_dict.ends_with("1000000 tensors") || state_dict.contains("LimitExceeded"),
        "state dict: {state_dict}"
    );
}

/// And the other side: a state dict of 100,000 tensors of real sizes (1 KiB each, 100 MB)
/// opens, reads as a state dict and loads into a model within the default budget.
#[test]
fn a_hundred_thousand_real_sized_tensors_open_and_load() {
    let dir = common::tempdir("hundred-thousand");
    let path = dir.join("many.pth");
    let sd: StateDict = (0..100_000)
        .map(|i| {
            (
                format!("blocks.{i}.weight"),
                Tensor::full([16, 16], i as f64, (Kind::Float, Device::Cpu)),
            )
        })
        .collect();
    sd.save(&path).unwrap();
    let model = common::blank_model(&sd, None);
    drop(sd);
    let ckpt = Checkpoint::open(&path).unwrap();
    let read = ckpt.state_dict().unwrap();
    assert_eq!(read.len(), 100_000);
    assert_eq!(
        read.get("blocks.99999.weight")
            .unwrap()
            .double_value(&[15, 15]),
        99_999.0
    );
    drop(read);
    let report = tch_state_dict::load_checkpoint(&model, &path, true).unwrap();
    assert!(report.missing_keys.is_empty() && report.unexpected_keys.is_empty());
    assert_eq!(
        model.get("blocks.7.weight").unwrap().double_value(&[3, 4]),
        7.0
    );
}
