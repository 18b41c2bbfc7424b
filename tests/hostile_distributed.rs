//! The hostile DCP corpus (tests/fixtures/make_hostile_distributed.py): broken and malicious
//! torch.distributed.checkpoint directories, each made from one real checkpoint (`base/`),
//! are refused with the typed error that names their defect, never a panic, a hang, a read
//! outside the directory, or more memory than the budget of `ReadLimits` allows for the
//! directory's size (256 MiB + 8 bytes per byte, measured in a child process as
//! tests/budget.rs measures files).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tch::Kind;
use tch_state_dict::{Checkpoint, Error, LazyStateDict, PickleError, Value};

fn hostile(name: &str) -> PathBuf {
    common::test_file(&format!("fixtures/hostile_distributed/{name}"))
}

/// The first error reading the directory `path` gives: opening it, then reading its whole
/// value, then loading it as a lazy state dict and reading each of its tensors. `None` when
/// all of it succeeds.
fn first_error(path: &Path) -> Option<Error> {
    let ckpt = match Checkpoint::open(path) {
        Err(e) => return Some(e),
        Ok(c) => c,
    };
    if let Err(e) = ckpt.value() {
        return Some(e);
    }
    drop(ckpt);
    let lazy = match LazyStateDict::load(path) {
        Err(e) => return Some(e),
        Ok(l) => l,
    };
    let error = lazy.values().find_map(|t| t.read().err());
    error
}

/// The first error reading the case `name`; a case that reads without error fails the test.
fn refusal(name: &str) -> Error {
    first_error(&hostile(name)).unwrap_or_else(|| {
        let keys = Checkpoint::open(hostile(name)).map(|c| c.keys());
        panic!("{name} was read: {keys:?}")
    })
}

macro_rules! refused {
    ($name:ident, $dir:expr, $pattern:pat $(if $guard:expr)?) => {
        #[test]
        fn $name() {
            let e = refusal($dir);
            assert!(matches!(&e, $pattern $(if $guard)?), "{}: {e:?}", $dir);
            // Every error names a file of the directory.
            let text = e.to_string();
            assert!(text.contains(concat!("hostile_distributed/", $dir, "/")), "{}: {text}", $dir);
        }
    };
}

/// The control: the checkpoint every case is made from reads, chunks assembled.
#[test]
fn the_base_reads() {
    let path = hostile("base");
    let value = Checkpoint::open(&path).unwrap().value().unwrap();
    let rows = value.get("rows").and_then(Value::as_tensor).unwrap();
    assert_eq!((rows.kind(), rows.size()), (Kind::Float, vec![5, 3]));
    let expected = tch::Tensor::arange(15, (Kind::Float, tch::Device::Cpu)).reshape([5, 3]);
    assert!(rows.equal(&expected), "{rows}");
    let b = value.get("b").and_then(Value::as_tensor).unwrap();
    assert_eq!(Vec::<f32>::try_from(b).unwrap(), [0.5, -0.5]);
    assert_eq!(value.get("step").and_then(Value::as_int), Some(3));
    let lazy = LazyStateDict::load(&path).unwrap();
    assert_eq!(lazy.keys().collect::<Vec<_>>(), ["rows", "b"]);
    assert!(lazy.get("rows").unwrap().read().unwrap().equal(&expected));
    assert!(first_error(&path).is_none());
}

// Paths out of the directory. `outside.distcp` holds the same checkpoint's items at the same
// offsets, its tensors + 100: followed, these cases would read without error.
refused!(relative_path_parent, "relative_path_parent", Error::InvalidDistributed { field, .. } if field == "_StorageInfo.relative_path");
refused!(relative_path_absolute, "relative_path_absolute", Error::InvalidDistributed { field, .. } if field == "_StorageInfo.relative_path");
refused!(relative_path_symlink, "relative_path_symlink", Error::InvalidDistributed { field, .. } if field == "_StorageInfo.relative_path");
refused!(relative_path_symlinked_dir, "relative_path_symlinked_dir", Error::InvalidDistributed { field, .. } if field == "_StorageInfo.relative_path");

/// What the symlink of `relative_path_symlink` points at would read, with its own values
/// (the base's + 100), in a directory of its own: the symlink case is refused for where its
/// file is, not for what it holds. And the case's directory, opened whichever way, shows
/// none of those values.
#[test]
fn the_symlinks_target_is_a_valid_file_that_is_never_read() {
    let dir = common::tempdir("outside");
    std::fs::copy(
        hostile("relative_path_symlink/.metadata"),
        dir.join(".metadata"),
    )
    .unwrap();
    std::fs::copy(hostile("outside.distcp"), dir.join("__0_0.distcp")).unwrap();
    let value = Checkpoint::open(&dir).unwrap().value().unwrap();
    let b = value.get("b").and_then(Value::as_tensor).unwrap();
    assert_eq!(Vec::<f32>::try_from(b).unwrap(), [100.5, 99.5]);
    std::fs::remove_dir_all(&dir).unwrap();

    for case in [
        "relative_path_symlink",
        "relative_path_symlinked_dir",
        "relative_path_parent",
    ] {
        let path = hostile(case);
        assert!(Checkpoint::open(&path).is_err(), "{case} opened");
        assert!(LazyStateDict::load(&path).is_err(), "{case} loaded");
        assert!(
            Checkpoint::open(path.join(".metadata")).is_err(),
            "{case} opened"
        );
    }
}

// Chunks that do not tile their tensor.
refused!(chunk_offset_outside, "chunk_offset_outside", Error::ChunkLayout { key, .. } if key == "rows");
refused!(chunk_size_outside, "chunk_size_outside", Error::ChunkLayout { key, .. } if key == "rows");
refused!(chunk_offset_negative, "chunk_offset_negative", Error::ChunkLayout { key, .. } if key == "rows");
refused!(chunk_offset_overflow, "chunk_offset_overflow", Error::ChunkLayout { key, .. } if key == "rows");
refused!(chunk_rank_mismatch, "chunk_rank_mismatch", Error::ChunkLayout { key, .. } if key == "rows");
refused!(chunks_overlap, "chunks_overlap", Error::ChunkLayout { key, .. } if key == "rows");
refused!(chunks_gap, "chunks_gap", Error::ChunkLayout { key, .. } if key == "rows");
refused!(chunk_without_storage, "chunk_without_storage", Error::InvalidDistributed { field, .. } if field == "storage_data");
refused!(chunk_holds_no_tensor, "chunk_holds_no_tensor", Error::InvalidDistributed { field, .. } if field == "_StorageInfo");

// Storage ranges.
refused!(storage_past_end, "storage_past_end", Error::InvalidDistributed { field, .. } if field == "_StorageInfo.offset");
refused!(storage_offset_huge, "storage_offset_huge", Error::InvalidDistributed { field, .. } if field == "_StorageInfo.offset");
refused!(storage_offset_negative, "storage_offset_negative", Error::InvalidDistributed { field, .. } if field == "_StorageInfo.offset");
refused!(storage_length_negative, "storage_length_negative", Error::InvalidDistributed { field, .. } if field == "_StorageInfo.length");
refused!(
    missing_distcp,
    "missing_distcp",
    Error::Io { path, source } if path.ends_with("missing_distcp/__0_0.distcp")
        && source.kind() == std::io::ErrorKind::NotFound
);

// The pickle of .metadata.
/// 10,000 nested lists in `storage_meta`, a field the reader never looks at: read, as
/// `dcp.load` reads it. `.metadata` is read in place, field by field, so no depth is walked;
/// the value is the base's. (When `.metadata` was made a value whole, this was `TooDeep`.)
#[test]
fn deep_nesting() {
    let deep = Checkpoint::open(hostile("deep_nesting"))
        .unwrap()
        .value()
        .unwrap();
    let base = Checkpoint::open(hostile("base")).unwrap().value().unwrap();
    assert_eq!(deep.to_string(), base.to_string());
    assert!(first_error(&hostile("deep_nesting")).is_none());
}
refused!(
    self_reference,
    "self_reference",
    Error::InvalidDistributed { field, reason, .. } if field == "planner_data" && reason.contains("not a path")
);

// planner_data: found when the nested value is built.
refused!(planner_data_clash, "planner_data_clash", Error::InvalidDistributed { field, .. } if field == "planner_data");
refused!(planner_data_huge_index, "planner_data_huge_index", Error::InvalidDistributed { field, .. } if field == "planner_data");

#[test]
fn planner_data_clash_is_found_when_the_value_is_built() {
    let ckpt = Checkpoint::open(hostile("planner_data_clash")).unwrap();
    assert!(matches!(
        ckpt.value().map(|_| ()),
        Err(Error::InvalidDistributed { field, .. }) if field == "planner_data"
    ));
}

/// A planner_data path that is a call of `os.system`: read as data, never run, refused as no
/// path.
#[test]
fn planner_data_payload_is_never_run() {
    let marker = "tch_state_dict_pwned_dcp";
    let places = [
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(marker),
        std::env::current_dir().unwrap().join(marker),
    ];
    for p in &places {
        let _ = std::fs::remove_file(p);
    }
    let e = refusal("planner_data_payload");
    assert!(
        matches!(&e, Error::InvalidDistributed { field, .. } if field == "planner_data"),
        "{e:?}"
    );
    for p in &places {
        assert!(!p.exists(), "a payload ran");
    }
}

// Items that are not what .metadata says.
refused!(slice_not_a_zip, "slice_not_a_zip", Error::InvalidDistributed { field, .. } if field == "_StorageInfo");
refused!(
    slice_truncated_zip,
    "slice_truncated_zip",
    Error::Zip { path, .. } if path.ends_with("slice_truncated_zip/__0_0.distcp")
);
refused!(dtype_mismatch, "dtype_mismatch", Error::InvalidDistributed { field, .. } if field == "ChunkStorageMetadata");
refused!(shape_mismatch, "shape_mismatch", Error::InvalidDistributed { field, .. } if field == "ChunkStorageMetadata");

// Transforms, and items past the budget.
refused!(unknown_transform, "unknown_transform", Error::InvalidDistributed { field, .. } if field == "_StorageInfo.transform_descriptors");
refused!(
    zstd_bomb,
    "zstd_bomb",
    Error::LimitExceeded {
        limit: "max_memory",
        ..
    }
);
refused!(
    zstd_items_past_the_budget_together,
    "zstd_items_past_the_budget_together",
    Error::LimitExceeded {
        limit: "max_memory",
        ..
    }
);
refused!(
    items_past_the_budget_together,
    "items_past_the_budget_together",
    Error::LimitExceeded {
        limit: "max_memory",
        ..
    }
);

// .metadata that is no DCP Metadata.
refused!(metadata_not_metadata, "metadata_not_metadata", Error::InvalidDistributed { field, .. } if field == "Metadata");
refused!(metadata_empty, "metadata_empty", Error::EmptyFile { .. });
refused!(
    metadata_truncated,
    "metadata_truncated",
    Error::Pickle {
        kind: PickleError::Truncated,
        ..
    }
);
refused!(metadata_without_storage_data, "metadata_without_storage_data", Error::InvalidDistributed { field, .. } if field == "storage_data");

/// The cases, sorted: every directory of the corpus.
fn cases() -> Vec<String> {
    let dir = common::test_file("fixtures/hostile_distributed");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().unwrap().is_dir() {
            names.push(name);
        } else {
            // Beside the cases, only the target of those that point out of their directory.
            assert_eq!(name, "outside.distcp", "a file that is no case");
        }
    }
    names.sort();
    names
}

/// The cases that read: the base, and what no reader of the fields DCP uses would refuse.
const READ: [&str; 2] = ["base", "deep_nesting"];

#[test]
fn the_corpus_has_at_least_30_cases_and_every_one_is_tested() {
    let cases = cases();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let source = std::fs::read_to_string(common::test_file("hostile_distributed.rs")).unwrap();
    for name in &cases {
        assert!(
            source.contains(&format!("\"{name}\"")),
            "{name} has no test"
        );
        if !READ.contains(&name.as_str()) {
            // And every case is refused, whatever its test expects.
            let _ = refusal(name);
        }
    }
}

// The memory budget, measured in a child process (tests/common/child.rs).

const CHILD: &str = "TCH_STATE_DICT_HOSTILE_DCP_CHILD";
const BASE: u64 = 256 << 20;
const PER_BYTE: u64 = 8;
/// A child that runs this long is killed, and its case fails as a hang (the time of each case
/// is printed, not asserted: this is a debug build on a shared machine).
const HANG_SECS: u64 = 120;

/// Held by each test that measures children, so that their children do not compete for the
/// machine's cores and memory with each other's.
static MEASURING: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
#[ignore = "the child process of the budget tests; run by them"]
fn child() {
    let Ok(path) = std::env::var(CHILD) else {
        return;
    };
    let before = common::reset_peak_rss().unwrap_or_else(common::peak_rss);
    let start = Instant::now();
    let mut tensors = 0;
    let outcome = (|| {
        let ckpt = Checkpoint::open(&path)?;
        let value = ckpt.value()?;
        tensors = common::child::tensor_bytes(&value);
        drop(value);
        let lazy = ckpt.lazy_state_dict()?;
        for t in lazy.values() {
            drop(t.read()?);
        }
        Ok::<(), Error>(())
    })();
    let secs = start.elapsed().as_secs_f64();
    let growth = common::peak_rss().saturating_sub(before);
    let outcome = match outcome {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("{e:?}").chars().take(160).collect(),
    };
    println!("budget: growth={growth} tensors={tensors} secs={secs:.3} outcome={outcome}");
}

struct Measured {
    growth: u64,
    tensors: u64,
    secs: f64,
    outcome: String,
}

/// Opens and reads `path` in a child process, killed after [`HANG_SECS`].
fn measure(path: &Path) -> Measured {
    let r = common::child::run_child(CHILD, path, &[], Some(Duration::from_secs(HANG_SECS)));
    Measured {
        growth: r.num("growth"),
        tensors: r.num("tensors"),
        secs: r.num("secs"),
        outcome: r.outcome(),
    }
}

/// The bytes of the regular files in `dir`, recursively; symlinks count nothing.
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let t = entry.file_type().unwrap();
        if t.is_dir() {
            total += dir_size(&entry.path());
        } else if t.is_file() {
            total += entry.metadata().unwrap().len();
        }
    }
    total
}

/// Measures `dirs`, two children at a time; returns each with its size and result, sorted.
fn measure_all(dirs: &[PathBuf]) -> Vec<(PathBuf, u64, Measured)> {
    common::child::two_at_a_time(dirs, |path| (dir_size(path), measure(path)))
        .into_iter()
        .map(|(path, (len, m))| (path, len, m))
        .collect()
}

/// Prints each result, then asserts that each stayed within the budget of its size (and the
/// bytes of the tensors it read).
fn assert_within_budget(results: &[(PathBuf, u64, Measured)]) {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    for (path, len, m) in results {
        eprintln!(
            "{:>10} B  {:>8.1} MiB {:>6.2} s  {}  {}",
            len,
            mib(m.growth),
            m.secs,
            path.display(),
            m.outcome
        );
    }
    let mut failures = Vec::new();
    for (path, len, m) in results {
        let bound = BASE + PER_BYTE * len + m.tensors;
        if m.growth > bound {
            failures.push(format!(
                "{}: peak RSS grew by {} B, past 256 MiB + 8 × {len} B (+ {} B of tensors) = \
                 {bound} B ({})",
                path.display(),
                m.growth,
                m.tensors,
                m.outcome
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_case_stays_within_the_memory_budget() {
    if common::reset_peak_rss().is_none() {
        common::skipped("the memory bounds", common::NO_RESET);
        return;
    }
    let dirs: Vec<PathBuf> = cases().iter().map(|c| hostile(c)).collect();
    let _measuring = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let start = Instant::now();
    let results = measure_all(&dirs);
    eprintln!(
        "{} cases in {:.1} s",
        results.len(),
        start.elapsed().as_secs_f64()
    );
    assert_within_budget(&results);
}

/// Many byte-item keys, each in state_dict_metadata, planner_data and storage_data, all at
/// one item (made in a temporary directory by the corpus's script, 58 bytes of .metadata a
/// key): a million (58 MB), and 40,000 (2.3 MB), whose .metadata alone is well within its
/// budget. Each reads within the budget of its directory's size, or is refused with
/// `max_memory`, quickly; measured one after the other, so that neither slows the other.
#[test]
fn many_keys_at_one_item_read_within_the_budget_or_are_refused() {
    if common::reset_peak_rss().is_none() {
        common::skipped("the memory bounds", common::NO_RESET);
        return;
    }
    let tmp = common::tempdir("many-keys");
    let dirs: Vec<PathBuf> = [1_000_000, 40_000]
        .iter()
        .map(|n| {
            let dir = tmp.join(format!("many_keys_{n}"));
            let out = Command::new(common::python())
                .arg(common::test_file("fixtures/make_hostile_distributed.py"))
                .args(["--many-keys", dir.to_str().unwrap(), &n.to_string()])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            dir
        })
        .collect();
    let _measuring = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let results: Vec<(PathBuf, u64, Measured)> = dirs
        .iter()
        .map(|d| (d.clone(), dir_size(d), measure(d)))
        .collect();
    std::fs::remove_dir_all(&tmp).unwrap();
    assert_within_budget(&results);
    for (path, _, m) in &results {
        let outcome = &m.outcome;
        assert!(
            outcome == "ok"
                || (outcome.starts_with("LimitExceeded") && outcome.contains("\"max_memory\"")),
            "{}: {outcome}",
            path.display()
        );
    }
}
