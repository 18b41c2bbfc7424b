//! Every load against its floor (issue 26), each ratio taken within one run:
//!
//! 1. converting loads (bf16/fp16 file → fp32 model, fp32 file → bf16 model) against
//!    libtorch's own `copy_` of the same tensors, already in memory in the file's dtype, into
//!    the same model on the same threads; and against PyTorch doing the same conversion;
//! 2. the direct route at LLM scale (bf16 file → bf16 model) against a memcpy of the same
//!    bytes on the same threads, with each side's peak memory;
//! 3. from a cold page cache, against a plain parallel read of the same file;
//! 4. DCP: a 2-rank checkpoint against PyTorch's own `dcp.load` and against the same
//!    checkpoint as one `.pth`.
//! 5. where the 1 GiB DCP load's time goes: opening, loading, dropping.
//!
//! ```text
//! scripts/cargo bench --bench floors             # ResNets, the 4 GiB LLM-like checkpoint
//! scripts/cargo bench --bench floors -- --quick  # resnet50, a 1 GiB LLM-like checkpoint
//! scripts/cargo bench --bench floors -- --cold   # table 3 alone, 4 GiB
//! scripts/cargo bench --bench floors -- --dcp-phases  # table 5 alone
//! ```
//!
//! The LLM-like checkpoint is the sharded bf16 safetensors that `save_pretrained` writes,
//! made by `benches/make_llm.py`; the DCP directories by `tests/oracle/dcp_save.py` with 2
//! ranks of real torch.distributed; everything under `target/bench-data`, once. Times are
//! medians after a warm-up, with the files in the page cache unless the table says cold.
//! PyTorch runs in a subprocess (`benches/floors_pytorch.py`) with the same thread count.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{
    blocked_read, data_dir, dcp_from_pth, evict, floats_as, llm_files, llm_model, load_average,
    median_of, memcpy_all, parallel_read, peak_rss, python, run_ok,
};
use tch::{nn, Device, Kind, Tensor};
use tch_state_dict::models::{Arch, ResNet};
use tch_state_dict::{
    check_state_dict, load_checkpoint, load_state_dict, LazyStateDict, LoadOptions, ModuleTree,
    StateDict, StateDictModule,
};

/// The median of `n` runs of `f` after a warm-up, in ms.
/// The block a converting load reads at a time (`load/convert.rs`'s `BLOCK_BYTES`), for the
/// read-alone column of table 1.
const READ_BLOCK: usize = 128 << 10;

fn median(n: usize, f: &mut dyn FnMut()) -> f64 {
    f();
    median_of(
        (0..n)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

fn manifest(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn threads() -> usize {
    tch::get_num_threads().max(1) as usize
}

/// PyTorch's side of a row: (median ms, peak RSS growth in bytes), `None` when it failed.
type PyRow = Option<(f64, u64)>;

fn pytorch(args: &[&str]) -> PyRow {
    let out = Command::new(python())
        .arg(manifest("benches/floors_pytorch.py"))
        .args(args)
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!(
            "floors_pytorch.py {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Some((v["ms"].as_f64()?, v["peak_rss_growth"].as_u64()?))
}

/// The LLM-like checkpoint under `target/bench-data`: its index.json.
fn llm_data(layers: usize, dim: i64) -> PathBuf {
    let script = manifest("benches/make_llm.py");
    llm_files(&data_dir(), layers, dim, &python(), &script)
}

fn ms(v: PyRow) -> String {
    v.map_or("–".into(), |(ms, _)| format!("{ms:.1}"))
}

/// libtorch's `copy_` of each source tensor into the model's tensor of the same key.
fn copy_floor(model: &dyn StateDictModule, src: &StateDict) {
    let tree = model.module_tree().unwrap();
    let _guard = tch::no_grad_guard();
    for (key, dst) in tree.iter() {
        dst.shallow_clone().copy_(src.get(key).unwrap());
    }
}

/// memcpy of each source's bytes into the model's tensor of the same key, on `threads`.
fn memcpy_floor(model: &dyn StateDictModule, src: &StateDict, threads: usize) {
    let tree = model.module_tree().unwrap();
    let pairs: Vec<(Tensor, Tensor)> = tree
        .iter()
        .map(|(key, dst)| (dst.shallow_clone(), src.get(key).unwrap().shallow_clone()))
        .collect();
    memcpy_all(&pairs, threads);
}

/// A ResNet whose floating tensors are `kind`.
fn resnet_in(arch: Arch, kind: Kind) -> ModuleTree {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ResNet::new(&vs, arch, 1000).unwrap();
    let tree = model.module_tree().unwrap();
    let mut out = ModuleTree::new(arch.name());
    for (k, t) in tree.iter() {
        let t = if t.is_floating_point() {
            t.to_kind(kind)
        } else {
            t.copy()
        };
        out.add_tensor(k, t).unwrap();
    }
    out
}

const LOAD_HEADER: &str = "| checkpoint | conversion | this crate (ms) | libtorch copy_ floor (ms) | / floor | open + check, no copy (ms) | (load − check) / floor | PyTorch load_file + load_state_dict (ms) | PyTorch torch.load(mmap=True) + load_state_dict (ms) | / PyTorch's fastest | pread of the file alone, 128 KiB blocks, load's threads (ms) | load / (pread + floor) |\n|---|---|---|---|---|---|---|---|---|---|---|---|";

/// One row of table 1: `file` into `model`, against the copy_ floor and PyTorch.
fn convert_row(
    name: &str,
    conversion: &str,
    model: &dyn StateDictModule,
    file: &Path,
    pytorch_rows: (PyRow, PyRow),
    runs: usize,
) {
    let src = StateDict::load(file).unwrap();
    let load = median(runs, &mut || {
        load_checkpoint(model, file, true).unwrap();
    });
    let floor = median(runs, &mut || copy_floor(model, &src));
    let read = median(runs, &mut || blocked_read(file, threads(), READ_BLOCK));
    // What a load costs before it copies: opening the file and checking it against the model.
    let check = median(runs, &mut || {
        let sd = LazyStateDict::load(file).unwrap();
        check_state_dict(model, &sd, &LoadOptions::new()).unwrap();
    });
    let fastest = [pytorch_rows.0, pytorch_rows.1]
        .iter()
        .flatten()
        .map(|r| r.0)
        .fold(f64::INFINITY, f64::min);
    println!(
        "| {name} | {conversion} | {load:.1} | {floor:.1} | {:.2} | {check:.1} | {:.2} | {} | {} | {:.2} | {read:.1} | {:.2} |",
        load / floor,
        (load - check) / floor,
        ms(pytorch_rows.0),
        ms(pytorch_rows.1),
        load / fastest,
        load / (read + floor)
    );
}

fn resnet_rows(arch: Arch, runs: usize) {
    let dir = data_dir();
    let source = resnet_in(arch, Kind::Float);
    let sd: StateDict = source
        .iter()
        .map(|(k, t)| (k.to_string(), t.shallow_clone()))
        .collect();
    let t = threads().to_string();
    for (from, to, label) in [
        (Kind::Half, Kind::Float, "fp16 → fp32"),
        (Kind::BFloat16, Kind::Float, "bf16 → fp32"),
        (Kind::Float, Kind::BFloat16, "fp32 → bf16"),
    ] {
        let stem = dir.join(format!("floors-{}-{from:?}", arch.name()));
        let (pth, st) = (
            stem.with_extension("pth"),
            stem.with_extension("safetensors"),
        );
        if !pth.exists() || !st.exists() {
            let file = floats_as(&sd, from);
            file.save(&pth).unwrap();
            file.save(&st).unwrap();
        }
        let kind = if to == Kind::Float {
            "float32"
        } else {
            "bfloat16"
        };
        let (p, s) = (pth.to_str().unwrap(), st.to_str().unwrap());
        let py = (
            pytorch(&["load", arch.name(), kind, s, "safetensors", &t, "9"]),
            pytorch(&["load", arch.name(), kind, p, "mmap", &t, "9"]),
        );
        let model = resnet_in(arch, to);
        convert_row(arch.name(), label, &model, &pth, py, runs);
    }
}

/// Run in a child process: the peak RSS growth of loading `index` into a fresh LLM-like
/// model of `kind`, above the model.
fn rss_child(index: &Path, layers: usize, dim: i64, kind: Kind) {
    let model = llm_model(0..layers, dim, kind, Device::Cpu);
    let before = peak_rss();
    load_checkpoint(&model, index, true).unwrap();
    println!("{}", peak_rss() - before);
}

fn rss_of_load(index: &Path, layers: usize, dim: i64, kind: Kind) -> u64 {
    let out = run_ok(Command::new(std::env::current_exe().unwrap()).args([
        "--rss-child",
        index.to_str().unwrap(),
        &layers.to_string(),
        &dim.to_string(),
        &format!("{kind:?}"),
    ]));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1e6)
}

/// Tables 1 (the LLM row) and 2.
fn llm_rows(layers: usize, dim: i64, runs: usize) -> (String, String) {
    let index = llm_data(layers, dim);
    let gib = (layers * 4 * (dim * dim * 2) as usize) >> 30;
    let name = format!("LLM-like, {gib} GiB bf16, 4 shards");
    let spec = format!("llm:{layers}:{dim}");
    let t = threads().to_string();
    let shards = index.parent().unwrap().to_str().unwrap().to_string();
    // PyTorch first, while this process holds no model.
    let py_fp32 = pytorch(&["load", &spec, "float32", &shards, "safetensors", &t, "5"]);
    let py_bf16 = pytorch(&["load", &spec, "bfloat16", &shards, "safetensors", &t, "5"]);
    let rss_fp32 = rss_of_load(&index, layers, dim, Kind::Float);
    let rss_bf16 = rss_of_load(&index, layers, dim, Kind::BFloat16);
    // bf16 → fp32.
    let model = llm_model(0..layers, dim, Kind::Float, Device::Cpu);
    let load = median(runs, &mut || {
        load_checkpoint(&model, &index, true).unwrap();
    });
    let src = StateDict::load(&index).unwrap();
    let floor = median(runs, &mut || copy_floor(&model, &src));
    drop(model);
    let shards: Vec<PathBuf> = (1..=4)
        .map(|i| index.with_file_name(format!("model-{i:05}-of-00004.safetensors")))
        .collect();
    let read = median(runs, &mut || {
        for shard in &shards {
            blocked_read(shard, threads(), READ_BLOCK);
        }
    });
    let convert = format!(
        "| {name} | bf16 → fp32 | {load:.1} | {floor:.1} | {:.2} | – | – | {} | – | {:.2} | {read:.1} | {:.2} |",
        load / floor,
        ms(py_fp32),
        load / py_fp32.map_or(f64::INFINITY, |r| r.0),
        load / (read + floor)
    );
    // bf16 → bf16: the direct route.
    let model = llm_model(0..layers, dim, Kind::BFloat16, Device::Cpu);
    let memcpy = median(runs, &mut || memcpy_floor(&model, &src, threads()));
    drop(src);
    let direct = median(runs, &mut || {
        load_checkpoint(&model, &index, true).unwrap();
    });
    drop(model);
    // What the kernel's copy out of the page cache costs: each shard read whole into memory
    // that is already touched, its halves on the load's threads.
    let largest = shards.iter().map(|p| common::nbytes(p)).max().unwrap_or(0);
    let into = Tensor::ones([largest as i64], (Kind::Uint8, Device::Cpu));
    let pread = median(runs, &mut || {
        for shard in &shards {
            parallel_read(shard, &into, threads());
        }
    });
    drop(into);
    let direct_row = format!(
        "| {name} → bf16 model | {direct:.1} | {memcpy:.1} | {:.2} | {} | {:.2} | {} | {} | {pread:.1} | {:.2} |\n| {name} → fp32 model | {load:.1} | – | – | {} | {:.2} | {} | {} | – | – |",
        direct / memcpy,
        ms(py_bf16),
        direct / py_bf16.map_or(f64::INFINITY, |r| r.0),
        mb(rss_bf16),
        py_bf16.map_or("–".into(), |r| mb(r.1)),
        direct / pread,
        ms(py_fp32),
        load / py_fp32.map_or(f64::INFINITY, |r| r.0),
        mb(rss_fp32),
        py_fp32.map_or("–".into(), |r| mb(r.1)),
    );
    (convert, direct_row)
}

/// Table 3: the first shard of the LLM-like checkpoint (a quarter of its layers), evicted
/// from the page cache before each run, loaded into fp32 and bf16 models, against reading
/// the file by the load's threads and by 8.
fn cold_rows(layers: usize, dim: i64) {
    let index = llm_data(layers, dim);
    let shard = index
        .parent()
        .unwrap()
        .join(format!("model-00001-of-{:05}.safetensors", 4));
    let len = std::fs::metadata(&shard).unwrap().len();
    let buffer = Tensor::ones([len as i64], (Kind::Uint8, Device::Cpu));
    let cold = |f: &mut dyn FnMut()| {
        median_of(
            (0..7)
                .map(|_| {
                    evict(&shard);
                    let start = Instant::now();
                    f();
                    start.elapsed().as_secs_f64() * 1e3
                })
                .collect(),
        )
    };
    let read = cold(&mut || parallel_read(&shard, &buffer, threads()));
    let read8 = cold(&mut || parallel_read(&shard, &buffer, 8));
    for (kind, label) in [
        (Kind::Float, "→ fp32 model"),
        (Kind::BFloat16, "→ bf16 model"),
    ] {
        let model = llm_model(0..layers / 4, dim, kind, Device::Cpu);
        let load = cold(&mut || {
            load_checkpoint(&model, &shard, true).unwrap();
        });
        println!(
            "| {:.2} GiB bf16 shard {label} | {load:.1} | {read:.1} | {:.2} | {read8:.1} | {:.2} |",
            len as f64 / (1u64 << 30) as f64,
            load / read,
            load / read8
        );
    }
}

/// Table 4: a 2-rank DCP directory (every tensor `Shard(0)`, FSDP2's layout) of `pth`, loaded
/// by this crate, by PyTorch's `dcp.load`, and as the `.pth` by this crate.
fn dcp_row(name: &str, spec: &str, model: &dyn StateDictModule, pth: &Path, runs: usize) {
    let dir = pth.with_extension("dcp");
    dcp_from_pth(pth, &dir);
    let t = threads().to_string();
    let py = pytorch(&["dcp", spec, dir.to_str().unwrap(), &t, "5"]);
    let dcp = median(runs, &mut || {
        let sd = LazyStateDict::load_key(&dir, "model").unwrap();
        load_state_dict(model, &sd, true).unwrap();
    });
    let whole = median(runs, &mut || {
        load_checkpoint(model, pth, true).unwrap();
    });
    println!(
        "| {name} | {dcp:.1} | {} | {:.1}× | {whole:.1} | {:.2}× |",
        ms(py),
        py.map_or(f64::NAN, |r| r.0) / dcp,
        dcp / whole
    );
}

/// 2048 tensors of [128, 1024] fp32: 1 GiB.
const SYNTH: (i64, i64, i64) = (2048, 128, 1024);

/// The synthetic 1 GiB model, and its checkpoint as a `.pth` (written once).
fn synthetic() -> (ModuleTree, PathBuf) {
    let (n, rows, cols) = SYNTH;
    let mut model = ModuleTree::new("Synthetic");
    for i in 0..n {
        let t = Tensor::randn([rows, cols], (Kind::Float, Device::Cpu));
        model.add_tensor(&format!("layers.{i}.weight"), t).unwrap();
    }
    let pth = data_dir().join("floors-synthetic-1GiB.pth");
    if !pth.exists() {
        let sd = tch_state_dict::state_dict(&model).unwrap();
        sd.save(&pth).unwrap();
    }
    (model, pth)
}

/// Where the 1 GiB DCP load's time goes: opening the directory (its `.metadata` and each
/// item's zip and pickle), loading into the model, dropping the state dict, against the
/// `.pth`'s whole load, interleaved.
fn dcp_phases() {
    let (model, pth) = synthetic();
    let dir = pth.with_extension("dcp");
    dcp_from_pth(&pth, &dir);
    let (mut open, mut load, mut dropped, mut whole) = (vec![], vec![], vec![], vec![]);
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    for _ in 0..9 {
        let t = Instant::now();
        let sd = LazyStateDict::load_key(&dir, "model").unwrap();
        open.push(ms(t));
        let t = Instant::now();
        load_state_dict(&model, &sd, true).unwrap();
        load.push(ms(t));
        let t = Instant::now();
        drop(sd);
        dropped.push(ms(t));
        let t = Instant::now();
        load_checkpoint(&model, &pth, true).unwrap();
        whole.push(ms(t));
    }
    let (o, l, d) = (median_of(open), median_of(load), median_of(dropped));
    let w = median_of(whole);
    println!("\n5. Where the 1 GiB DCP load's time goes (medians of 9, interleaved)\n");
    println!("| open (ms) | load (ms) | drop (ms) | all (ms) | the .pth's load (ms) | load / .pth | all / .pth |\n|---|---|---|---|---|---|---|");
    println!(
        "| {o:.1} | {l:.1} | {d:.1} | {:.1} | {w:.1} | {:.2} | {:.2} |",
        o + l + d,
        l / w,
        (o + l + d) / w
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--rss-child") {
        let kind = if args[5] == "Float" {
            Kind::Float
        } else {
            Kind::BFloat16
        };
        rss_child(
            Path::new(&args[2]),
            args[3].parse().unwrap(),
            args[4].parse().unwrap(),
            kind,
        );
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    if args.iter().any(|a| a == "--dcp-phases") {
        dcp_phases();
        return;
    }
    if args.iter().any(|a| a == "--cold") {
        // Table 3 alone, on the full-size checkpoint.
        println!("| load | this crate (ms) | read, load's threads (ms) | / read | read, 8 threads (ms) | / read |\n|---|---|---|---|---|---|");
        cold_rows(32, 4096);
        return;
    }
    let start = Instant::now();
    println!(
        "threads: {}, load average at the start: {}",
        threads(),
        load_average()
    );
    let (layers, dim) = if quick { (8, 4096) } else { (32, 4096) };
    let (llm_convert, llm_direct) = llm_rows(layers, dim, 5);

    println!("\n1. Converting loads, against libtorch's copy_ of the same tensors in memory\n");
    println!("{LOAD_HEADER}");
    let archs: &[Arch] = if quick {
        &[Arch::ResNet50]
    } else {
        &[Arch::ResNet18, Arch::ResNet50, Arch::ResNet152]
    };
    for &arch in archs {
        resnet_rows(arch, 15);
    }
    println!("{llm_convert}");

    println!("\n2. The direct route at LLM scale, against a memcpy of the same bytes\n");
    println!("| load | this crate (ms) | memcpy floor (ms) | / floor | PyTorch load_file + load_state_dict (ms) | / PyTorch | this crate's peak RSS growth (MB) | PyTorch's (MB) | pread of each shard alone into memory, load's threads (ms) | load / pread |\n|---|---|---|---|---|---|---|---|---|---|");
    println!("{llm_direct}");

    println!("\n3. From a cold page cache, against a parallel read of the same file\n");
    println!("| load | this crate (ms) | read, load's threads (ms) | / read | read, 8 threads (ms) | / read |\n|---|---|---|---|---|---|");
    cold_rows(layers, dim);

    println!("\n4. DCP, 2 ranks, Shard(0)\n");
    println!("| checkpoint | this crate (ms) | PyTorch dcp.load + load_state_dict (ms) | PyTorch / this crate | the same as one .pth, this crate (ms) | DCP / .pth |\n|---|---|---|---|---|---|");
    let resnet50 = resnet_in(Arch::ResNet50, Kind::Float);
    let pth = data_dir().join("floors-resnet50-Float.pth");
    dcp_row("resnet50", "resnet50", &resnet50, &pth, 15);
    drop(resnet50);
    if !quick {
        let (model, pth) = synthetic();
        let (n, rows, cols) = SYNTH;
        let spec = format!("synthetic:{n}:{rows}:{cols}");
        dcp_row("synthetic 1 GiB fp32", &spec, &model, &pth, 7);
        drop(model);
        dcp_phases();
    }
    println!(
        "\nload average at the end: {}; {:.0} s in all",
        load_average(),
        start.elapsed().as_secs_f64()
    );
}
