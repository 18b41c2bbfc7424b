//! Side-by-side load benchmarks: this crate, tch's `VarStore::load` and PyTorch, on the same
//! files and models in the same run, against the floor of copying the same bytes from memory.
//!
//! ```text
//! scripts/cargo bench --bench compare            # everything (a few minutes)
//! scripts/cargo bench --bench compare -- --quick # resnet18, the scale and hostile checks
//! ```
//!
//! It writes its checkpoints (torchvision resnet18, resnet50 and resnet152 in fp32, and a
//! synthetic 1 GiB one of 2048 tensors) under `target/bench-data`, as `.pth` and
//! `.safetensors`, as a DataParallel `.pth` (keys under `module.`), as an fp16 `.pth`, and
//! the synthetic one also as four safetensors shards with an index, once. Each time is the median of 15 runs after a warm-up, with the file in
//! the page cache; the floor's, of 30 runs in two blocks around this crate's loads. Python
//! runs in a subprocess with the same thread count.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{
    data_dir, dcp_from_pth, evict, floats_as, load_average, median_of, memcpy_all, nbytes,
    parallel_read, peak_rss, python,
};
use tch::{nn, Device, Kind, Tensor};
use tch_state_dict::models::{Arch, ResNet};
use tch_state_dict::{
    check_state_dict, load_checkpoint, load_state_dict, load_state_dict_with, state_dict,
    Checkpoint, LazyStateDict, LoadOptions, ModuleTree, StateDict, StateDictModule, Value,
};

const RUNS: usize = 15;

/// The times of `RUNS` runs of `f` after a warm-up, in ms.
fn runs(f: &mut dyn FnMut()) -> Vec<f64> {
    f();
    (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

/// A model to load into: its module tree, its VarStore (for tch's own loader), and what
/// Python builds for the same keys.
struct Subject {
    name: String,
    python_spec: String,
    vs: nn::VarStore,
    model: Box<dyn StateDictModule>,
    /// The keys the seed's fix pops: the classifier head.
    head: Vec<String>,
}

fn resnet(arch: Arch) -> Subject {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ResNet::new(&vs, arch, 1000).unwrap();
    Subject {
        name: arch.name().to_string(),
        python_spec: arch.name().to_string(),
        vs,
        model: Box::new(model),
        head: vec!["fc.weight".to_string(), "fc.bias".to_string()],
    }
}

const SYNTH: (usize, i64, i64) = (2048, 128, 1024); // 2048 × 512 KiB = 1 GiB of fp32

fn synthetic() -> Subject {
    let (n, rows, cols) = SYNTH;
    let vs = nn::VarStore::new(Device::Cpu);
    let layers = vs.root() / "layers";
    let mut keys = Vec::with_capacity(n);
    for i in 0..n {
        let _ = (&layers / i).zeros("weight", &[rows, cols]);
        keys.push(format!("layers.{i}.weight"));
    }
    let tree = ModuleTree::from_var_store_ordered(&vs, &keys)
        .unwrap()
        .with_type_name("Synthetic");
    Subject {
        name: "synthetic-1GiB".to_string(),
        python_spec: format!("synthetic:{n}:{rows}:{cols}"),
        vs,
        model: Box::new(tree),
        head: vec![format!("layers.{}.weight", n - 1)],
    }
}

struct Files {
    pth: PathBuf,
    st: PathBuf,
    /// The same state dict under `module.`, as DataParallel saves it.
    dataparallel: PathBuf,
    /// The same values in fp16.
    half: PathBuf,
    /// The same values in bf16.
    bf16: PathBuf,
}

/// Writes the subject's checkpoint (random values) in each form, once.
fn files(subject: &Subject) -> Files {
    let dir = data_dir();
    let at = |suffix: &str| dir.join(format!("{}{suffix}", subject.name));
    let f = Files {
        pth: at(".pth"),
        st: at(".safetensors"),
        dataparallel: at("-dataparallel.pth"),
        half: at("-fp16.pth"),
        bf16: at("-bf16.pth"),
    };
    if [&f.pth, &f.st, &f.dataparallel, &f.half, &f.bf16]
        .iter()
        .any(|p| !p.exists())
    {
        tch::manual_seed(0);
        let mut sd = state_dict(subject.model.as_ref()).unwrap();
        tch::no_grad(|| {
            for (_, t) in sd.iter() {
                if t.is_floating_point() {
                    let _ = t.shallow_clone().normal_(0.0, 0.02);
                }
            }
        });
        sd.save(&f.pth).unwrap();
        sd.save(&f.st).unwrap();
        floats_as(&sd, Kind::Half).save(&f.half).unwrap();
        floats_as(&sd, Kind::BFloat16).save(&f.bf16).unwrap();
        sd.add_prefix("module.");
        sd.save(&f.dataparallel).unwrap();
    }
    f
}

/// The synthetic checkpoint as four safetensors shards and an index, once.
fn sharded_files(subject: &Subject) -> PathBuf {
    let dir = data_dir().join(format!("{}-sharded", subject.name));
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        return index;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let sd = StateDict::load(files(subject).pth).unwrap();
    let keys: Vec<String> = sd.keys().map(str::to_string).collect();
    let mut map = serde_json::Map::new();
    for (n, chunk) in keys.chunks(keys.len().div_ceil(4)).enumerate() {
        let shard: StateDict = chunk
            .iter()
            .map(|k| (k.clone(), sd.get(k).unwrap().shallow_clone()))
            .collect();
        let name = format!("model-{:05}-of-00004.safetensors", n + 1);
        shard.save(dir.join(&name)).unwrap();
        for k in chunk {
            map.insert(k.clone(), serde_json::Value::String(name.clone()));
        }
    }
    let json = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(&index, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    index
}

/// The subject's checkpoint as a DCP directory `{'model': sd}` written by 2 ranks of real
/// torch.distributed, every tensor `Shard(0)` (FSDP2's layout), once.
fn dcp_files(subject: &Subject) -> PathBuf {
    let dir = data_dir().join(format!("{}-dcp", subject.name));
    if dir.join(".metadata").exists() {
        return dir;
    }
    dcp_from_pth(&files(subject).pth, &dir);
    dir
}

/// A model with the subject's keys and shapes whose floating-point tensors are bf16.
fn bf16_model(tree: &ModuleTree) -> ModuleTree {
    let mut out = ModuleTree::new("Bf16");
    for (k, t) in tree.iter() {
        let kind = if t.is_floating_point() {
            Kind::BFloat16
        } else {
            t.kind()
        };
        out.add_tensor(k, Tensor::zeros(t.size(), (kind, Device::Cpu)))
            .unwrap();
    }
    out
}

struct Row {
    name: String,
    mb: f64,
    floor: f64,
    copy_: f64,
    ours_pth: f64,
    ours_st: f64,
    ours_two_step: f64,
    /// The seed's fix on a lazy state dict: open, pop the head, load non-strictly.
    lazy_pop: f64,
    /// A DataParallel file: open, strip `module.`, load strictly.
    lazy_strip: f64,
    /// The fp16 file into the fp32 model.
    fp16_into_fp32: f64,
    /// The fp32 file into a bf16 model, and that model's memcpy floor.
    fp32_into_bf16: f64,
    floor_bf16: f64,
    /// The synthetic checkpoint's shards, loaded through their index.
    sharded: Option<f64>,
    /// The same checkpoint as a 2-rank DCP directory (ResNets only), `load_key("model")`.
    dcp: Option<f64>,
    /// The bf16 file into the fp32 model.
    bf16_into_fp32: f64,
    /// In-memory paths: `Value::load`; `LazyStateDict::into_state_dict`; `LazyTensor::read`
    /// of every entry; `assign(true)` from the file.
    value_load: f64,
    into_state_dict: f64,
    read_each: f64,
    assign: f64,
    /// With the file evicted from the page cache before each run: the direct load, and a
    /// plain parallel read of the whole file into touched memory.
    cold_direct: f64,
    cold_read: f64,
    tch: f64,
    torch_default: f64,
    torch_mmap: f64,
    torch_st: f64,
}

fn measure(subject: &mut Subject) -> Row {
    let Files {
        pth,
        st,
        dataparallel,
        half,
        bf16: bf16_file,
    } = files(subject);
    let sharded_index = subject
        .name
        .starts_with("synthetic")
        .then(|| sharded_files(subject));
    let dcp_dir = (!subject.name.starts_with("synthetic")).then(|| dcp_files(subject));
    let model = &subject.model;
    // The floor: the same bytes, already in memory, copied into the model's tensors with
    // memcpy on as many threads as the loaders use; and libtorch's copy_ of the same.
    let in_memory = StateDict::load(&pth).unwrap();
    let tree = model.module_tree().unwrap();
    let pairs: Vec<(Tensor, Tensor)> = tree
        .iter()
        .map(|(k, t)| (t.shallow_clone(), in_memory.get(k).unwrap().contiguous()))
        .collect();
    let threads = tch::get_num_threads().max(1) as usize;
    let vs = &mut subject.vs;
    // Each contestant runs its rounds in a block. The floor runs before and after this
    // crate's loads, and its time is the median of both blocks, so that a machine whose
    // speed drifts (a shared VM) drifts for both alike. (Interleaving contestants round by
    // round was tried and is worse here: the ones that free a gigabyte, or leave libtorch's
    // OpenMP workers spinning, slow down whoever runs next.)
    let mut floor_runs = runs(&mut || memcpy_all(&pairs, threads));
    let ours_pth = median_of(runs(&mut || {
        load_checkpoint(model.as_ref(), &pth, true).unwrap();
    }));
    let ours_st = median_of(runs(&mut || {
        load_checkpoint(model.as_ref(), &st, true).unwrap();
    }));
    let lazy_pop = median_of(runs(&mut || {
        let mut sd = LazyStateDict::load(&pth).unwrap();
        for key in &subject.head {
            sd.pop(key);
        }
        load_state_dict(model.as_ref(), &sd, false).unwrap();
    }));
    let lazy_strip = median_of(runs(&mut || {
        let mut sd = LazyStateDict::load(&dataparallel).unwrap();
        sd.strip_prefix("module.");
        load_state_dict(model.as_ref(), &sd, true).unwrap();
    }));
    let fp16_into_fp32 = median_of(runs(&mut || {
        load_checkpoint(model.as_ref(), &half, true).unwrap();
    }));
    let bf16_into_fp32 = median_of(runs(&mut || {
        load_checkpoint(model.as_ref(), &bf16_file, true).unwrap();
    }));
    let value_load = median_of(runs(&mut || {
        drop(Value::load(&pth).unwrap());
    }));
    let into_state_dict = median_of(runs(&mut || {
        drop(
            LazyStateDict::load(&pth)
                .unwrap()
                .into_state_dict()
                .unwrap(),
        );
    }));
    let read_each = median_of(runs(&mut || {
        let sd = LazyStateDict::load(&pth).unwrap();
        let tensors: Vec<Tensor> = sd.values().map(|t| t.read().unwrap()).collect();
        drop(tensors);
    }));
    let cold_direct = median_of(cold_runs(&pth, &mut || {
        load_checkpoint(model.as_ref(), &pth, true).unwrap();
    }));
    let whole = Tensor::zeros([nbytes(&pth) as i64], (Kind::Uint8, Device::Cpu));
    let cold_read = median_of(cold_runs(&pth, &mut || {
        parallel_read(&pth, &whole, threads)
    }));
    drop(whole);
    let sharded = sharded_index.as_ref().map(|index| {
        median_of(runs(&mut || {
            load_state_dict(model.as_ref(), &LazyStateDict::load(index).unwrap(), true).unwrap();
        }))
    });
    let dcp = dcp_dir.as_ref().map(|dir| {
        median_of(runs(&mut || {
            let sd = LazyStateDict::load_key(dir, "model").unwrap();
            load_state_dict(model.as_ref(), &sd, true).unwrap();
        }))
    });
    floor_runs.extend(runs(&mut || memcpy_all(&pairs, threads)));
    let floor = median_of(floor_runs);
    let copy_ = median_of(runs(&mut || {
        tch::no_grad(|| {
            for (dst, src) in &pairs {
                dst.shallow_clone().copy_(src);
            }
        })
    }));
    drop(pairs);
    let bf16 = bf16_model(&tree);
    let bf16_pairs: Vec<(Tensor, Tensor)> = bf16
        .iter()
        .map(|(k, t)| {
            (
                t.shallow_clone(),
                in_memory.get(k).unwrap().to_kind(t.kind()),
            )
        })
        .collect();
    let floor_bf16 = median_of(runs(&mut || memcpy_all(&bf16_pairs, threads)));
    drop(bf16_pairs);
    drop(in_memory);
    let fp32_into_bf16 = median_of(runs(&mut || {
        load_checkpoint(&bf16, &pth, true).unwrap();
    }));
    drop(bf16);
    let ours_two_step = median_of(runs(&mut || {
        load_state_dict(model.as_ref(), &StateDict::load(&pth).unwrap(), true).unwrap();
    }));
    // Last of this crate's: assign replaces the model's tensors with the checkpoint's.
    let assign = median_of(runs(&mut || {
        let sd = LazyStateDict::load(&pth).unwrap();
        load_state_dict_with(model.as_ref(), &sd, &LoadOptions::new().assign(true)).unwrap();
    }));
    let tch = median_of(runs(&mut || {
        vs.load(&st).unwrap();
    }));
    let threads = tch::get_num_threads();
    let out = Command::new(python())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/pytorch_load.py"))
        .args([
            &subject.python_spec,
            pth.to_str().unwrap(),
            st.to_str().unwrap(),
        ])
        .args([threads.to_string(), RUNS.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let py: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(py["threads"].as_i64(), Some(threads as i64));
    Row {
        name: subject.name.clone(),
        mb: nbytes(&pth) as f64 / 1e6,
        floor,
        copy_,
        ours_pth,
        ours_st,
        ours_two_step,
        lazy_pop,
        lazy_strip,
        fp16_into_fp32,
        fp32_into_bf16,
        floor_bf16,
        sharded,
        dcp,
        bf16_into_fp32,
        value_load,
        into_state_dict,
        read_each,
        assign,
        cold_direct,
        cold_read,
        tch,
        torch_default: py["default"].as_f64().unwrap(),
        torch_mmap: py["mmap"].as_f64().unwrap(),
        torch_st: py["safetensors"].as_f64().unwrap(),
    }
}

/// `runs`, with `path` evicted from the page cache before each.
fn cold_runs(path: &Path, f: &mut dyn FnMut()) -> Vec<f64> {
    (0..RUNS.min(7))
        .map(|_| {
            evict(path);
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

/// One row of the alignment table: 40 MiB of `path` read by `pread` (4 MiB at a time, on
/// one thread) into a 64-byte-aligned buffer, from offset 4096 and from offset 4109, the
/// runs of the two interleaved so that a drifting machine drifts for both.
fn alignment(path: &Path) {
    use std::os::unix::fs::FileExt;
    const LEN: usize = 40 << 20;
    let file = std::fs::File::open(path).unwrap();
    assert!(nbytes(path) as usize >= LEN + 4096 + 64);
    let buffer = Tensor::zeros([LEN as i64], (Kind::Uint8, Device::Cpu));
    let base = buffer.data_ptr() as usize;
    assert_eq!(base % 64, 0, "libtorch aligns its allocations to 64 bytes");
    // SAFETY: the buffer's LEN bytes, alive and used by nothing else until the end.
    let buf = unsafe { std::slice::from_raw_parts_mut(base as *mut u8, LEN) };
    let mut read_from = |start: u64| {
        let t = Instant::now();
        for (i, piece) in buf.chunks_mut(4 << 20).enumerate() {
            file.read_exact_at(piece, start + (i << 22) as u64).unwrap();
        }
        t.elapsed().as_secs_f64() * 1e3
    };
    let (mut aligned, mut shifted) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        aligned.push(read_from(4096));
        shifted.push(read_from(4096 + 13));
    }
    let (a, b) = (median_of(aligned), median_of(shifted));
    println!(
        "| {} | {a:.2} | {b:.2} | {:.2} |",
        path.file_name().unwrap().to_string_lossy(),
        b / a
    );
    drop(buffer);
}

/// One row of the DCP table: the load of `dir` split into its phases (the lazy open of
/// `model`, the load into the model, the drop of the lazy state dict), each a median of
/// `RUNS`, with the direct load of the same state dict as one `.pth` run between them so
/// that a drifting machine drifts for both.
fn dcp_phases(arch: Arch, dir: &Path, pth: &Path) {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ResNet::new(&vs, arch, 1000).unwrap();
    let (mut open, mut load, mut dropped, mut whole) = (vec![], vec![], vec![], vec![]);
    load_checkpoint(&model, pth, true).unwrap();
    for _ in 0..RUNS {
        let t = Instant::now();
        let sd = LazyStateDict::load_key(dir, "model").unwrap();
        open.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        load_state_dict(&model, &sd, true).unwrap();
        load.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        drop(sd);
        dropped.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        load_checkpoint(&model, pth, true).unwrap();
        whole.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (o, l, d, p) = (
        median_of(open),
        median_of(load),
        median_of(dropped),
        median_of(whole),
    );
    println!(
        "| {} | {o:.2} | {l:.2} | {d:.2} | {:.2} | {p:.2} | {:.2}× | {:.2}× |",
        arch.name(),
        o + l + d,
        (o + l + d) / p,
        l / p
    );
}

/// Run in a child process: peak memory of loading the synthetic checkpoint (a file, or a
/// sharded index), above the model.
fn rss_child(path: &Path) {
    let subject = synthetic();
    let before = peak_rss();
    let sd = LazyStateDict::load(path).unwrap();
    load_state_dict(subject.model.as_ref(), &sd, true).unwrap();
    let after = peak_rss();
    println!("{before} {after}");
}

fn peak_memory_growth(sharded: bool) -> (u64, u64, u64) {
    let subject = synthetic();
    let pth = files(&subject).pth;
    let path = if sharded {
        sharded_files(&subject)
    } else {
        pth.clone()
    };
    drop(subject);
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--rss-child", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut it = text.split_whitespace().map(|x| x.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap(), nbytes(&pth))
}

/// Where a load's time goes, for one file: parsing it, and the bare copies it is made of:
/// the whole file read with `pread` into memory, and `memcpy`'d from memory, on `threads`
/// threads each.
fn profile(path: &Path, threads: usize) {
    use std::os::unix::fs::FileExt;
    let parse = median_of(runs(&mut || {
        Checkpoint::open(path).unwrap();
    }));
    let file = std::fs::File::open(path).unwrap();
    let src = std::fs::read(path).unwrap();
    let mut dst = vec![1u8; src.len()];
    let share = src.len().div_ceil(threads);
    let pread = median_of(runs(&mut || {
        std::thread::scope(|scope| {
            for (i, chunk) in dst.chunks_mut(share).enumerate() {
                let file = &file;
                scope.spawn(move || file.read_exact_at(chunk, (i * share) as u64).unwrap());
            }
        })
    }));
    let memcpy = median_of(runs(&mut || {
        std::thread::scope(|scope| {
            for (chunk, from) in dst.chunks_mut(share).zip(src.chunks(share)) {
                scope.spawn(move || chunk.copy_from_slice(from));
            }
        })
    }));
    println!(
        "| {} | {parse:.2} | {pread:.1} | {memcpy:.1} | {:.2} |",
        path.file_name().unwrap().to_string_lossy(),
        pread / memcpy
    );
}

fn scale() {
    println!("\nload_state_dict's matching and report (check_state_dict, strict), tiny tensors:");
    println!("{:>10}  {:>10}  {:>12}", "keys", "ms", "ns per key");
    for n in [10_000usize, 100_000, 1_000_000] {
        let mut tree = ModuleTree::new("Net");
        let mut sd = StateDict::with_capacity(n);
        for i in 0..n {
            let key = format!("blocks.{}.layer{}.weight", i / 100, i % 100);
            tree.add_tensor(&key, Tensor::zeros([2], (Kind::Float, Device::Cpu)))
                .unwrap();
            sd.insert(key, Tensor::zeros([2], (Kind::Float, Device::Cpu)));
        }
        let options = LoadOptions::new();
        let ms = median_of(runs(&mut || {
            check_state_dict(&tree, &sd, &options).unwrap();
        }));
        println!("{n:>10}  {ms:>10.1}  {:>12.0}", ms * 1e6 / n as f64);
    }

    let path = data_dir().join("10k-tensors.pth");
    if !path.exists() {
        let sd: StateDict = (0..10_000)
            .map(|i| {
                (
                    format!("t{i}"),
                    Tensor::zeros([4], (Kind::Float, Device::Cpu)),
                )
            })
            .collect();
        sd.save(&path).unwrap();
    }
    let ms = median_of(runs(&mut || {
        let ckpt = Checkpoint::open(&path).unwrap();
        assert_eq!(ckpt.num_tensors(), 10_000);
    }));
    println!("\nreading the metadata of a 10,000-tensor .pth (Checkpoint::open): {ms:.1} ms");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--rss-child") {
        rss_child(Path::new(&args[i + 1]));
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    println!(
        "tch-state-dict load benchmarks: {} intra-op threads, median of {RUNS} runs, times in ms; load average {}",
        tch::get_num_threads(),
        load_average()
    );
    let mut subjects = vec![resnet(Arch::ResNet18)];
    if !quick {
        subjects.push(resnet(Arch::ResNet50));
        subjects.push(resnet(Arch::ResNet152));
        subjects.push(synthetic());
    }
    let mut rows = Vec::new();
    for s in &mut subjects {
        rows.push(measure(s));
    }
    drop(subjects);
    println!(
        "\n| checkpoint | MB | floor (memcpy) | libtorch copy_ | .pth → model | .safetensors → model | StateDict::load + load_state_dict | tch VarStore::load | torch.load + load_state_dict | same, mmap=True | safetensors load_file + load_state_dict |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.name,
            r.mb,
            r.floor,
            r.copy_,
            r.ours_pth,
            r.ours_st,
            r.ours_two_step,
            r.tch,
            r.torch_default,
            r.torch_mmap,
            r.torch_st
        );
    }
    println!("\n| checkpoint | .pth / floor | PyTorch default / .pth | PyTorch mmap / .pth | tch / .pth | PyTorch safetensors / .safetensors |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.name,
            r.ours_pth / r.floor,
            r.torch_default / r.ours_pth,
            r.torch_mmap / r.ours_pth,
            r.tch / r.ours_pth,
            r.torch_st / r.ours_st
        );
    }
    println!(
        "\nthe paths users write, against the direct load (.pth → model), in ms and as a ratio"
    );
    println!(
        "\n| checkpoint | direct | lazy: pop head, load non-strict | lazy: strip module., load | eager: StateDict::load + load_state_dict | PyTorch mmap=True | fp16 file → fp32 model | / fp32 floor | fp32 file → bf16 model | / bf16 floor | sharded (4 safetensors) | DCP, 2 ranks, Shard(0) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.1} | {:.1} ({:.2}×) | {:.1} ({:.2}×) | {:.1} ({:.2}×) | {:.1} ({:.2}×) | {:.1} | {:.2}× | {:.1} | {:.2}× | {} | {} |",
            r.name,
            r.ours_pth,
            r.lazy_pop,
            r.lazy_pop / r.ours_pth,
            r.lazy_strip,
            r.lazy_strip / r.ours_pth,
            r.ours_two_step,
            r.ours_two_step / r.ours_pth,
            r.torch_mmap,
            r.torch_mmap / r.ours_pth,
            r.fp16_into_fp32,
            r.fp16_into_fp32 / r.floor,
            r.fp32_into_bf16,
            r.fp32_into_bf16 / r.floor_bf16,
            r.sharded
                .map_or("–".to_string(), |t| format!("{t:.1} ({:.2}×)", t / r.ours_st)),
            r.dcp
                .map_or("–".to_string(), |t| format!("{t:.1} ({:.2}×)", t / r.ours_pth)),
        );
    }
    println!("\nthe paths that hold a checkpoint in memory, and the converting and cold-cache loads, against the direct load and PyTorch's mmap route (ms and ratios)");
    println!(
        "\n| checkpoint | direct | eager: StateDict::load + load_state_dict | Value::load | LazyStateDict::into_state_dict | LazyTensor::read of every entry | assign(true) from the file | PyTorch mmap=True | bf16 file → fp32 model / floor | fp16 → fp32 / floor | fp32 → bf16 / bf16 floor | cold cache: direct | cold cache: parallel read of the file |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let both = |t: f64| {
            format!(
                "{t:.1} ({:.2}× direct, {:.2}× mmap)",
                t / r.ours_pth,
                t / r.torch_mmap
            )
        };
        println!(
            "| {} | {:.1} | {} | {} | {} | {} | {} | {:.1} | {:.2}× | {:.2}× | {:.2}× | {:.1} | {:.1} |",
            r.name,
            r.ours_pth,
            both(r.ours_two_step),
            both(r.value_load),
            both(r.into_state_dict),
            both(r.read_each),
            both(r.assign),
            r.torch_mmap,
            r.bf16_into_fp32 / r.floor,
            r.fp16_into_fp32 / r.floor,
            r.fp32_into_bf16 / r.floor_bf16,
            r.cold_direct,
            r.cold_read,
        );
    }
    let threads = tch::get_num_threads().max(1) as usize;
    println!("\nwhere the time goes: parsing (Checkpoint::open), and the whole file copied by pread and by memcpy on {threads} threads (ms)");
    println!("\n| file | parse | pread | memcpy | pread / memcpy |");
    println!("|---|---|---|---|---|");
    for name in ["resnet18", "resnet50", "resnet152", "synthetic-1GiB"] {
        let path = data_dir().join(format!("{name}.pth"));
        if path.exists() && (!quick || name == "resnet18") {
            profile(&path, threads);
        }
    }
    println!("\nthe kernel's copy against the source's alignment: 40 MiB of the file read by pread on one thread into one 64-byte-aligned buffer, from a 64-byte-aligned offset and from one 13 bytes past it (ms). A .pth's storages are 64-byte aligned; a DCP chunk's bytes lie wherever its item's zip starts in the .distcp file, at any offset mod 64");
    println!("\n| file | source aligned | source at +13 | +13 / aligned |");
    println!("|---|---|---|---|");
    for name in ["resnet18", "resnet50"] {
        let path = data_dir().join(format!("{name}.pth"));
        if path.exists() && (!quick || name == "resnet18") {
            alignment(&path);
        }
    }
    println!("\na DCP load's phases: the 2-rank Shard(0) directory opened by LazyStateDict::load_key(dir, \"model\"), loaded into the model, and dropped, against load_checkpoint of the same state dict as one .pth (ms, medians of {RUNS} runs interleaved)");
    println!("\n| checkpoint | open | load | drop | sum | .pth load_checkpoint | sum / .pth | load / .pth |");
    println!("|---|---|---|---|---|---|---|---|");
    for arch in [Arch::ResNet18, Arch::ResNet50, Arch::ResNet152] {
        let dir = data_dir().join(format!("{}-dcp", arch.name()));
        let pth = data_dir().join(format!("{}.pth", arch.name()));
        if dir.join(".metadata").exists() && pth.exists() && (!quick || arch == Arch::ResNet18) {
            dcp_phases(arch, &dir, &pth);
        }
    }
    if !quick {
        for (sharded, what) in [
            (false, ".pth"),
            (true, "checkpoint in 4 safetensors shards"),
        ] {
            let (before, after, size) = peak_memory_growth(sharded);
            println!(
                "\npeak memory loading the {:.0} MB synthetic {what}: {:.0} MB after building the model, {:.0} MB after loading: +{:.1} MB ({:.1}% of the checkpoint)",
                size as f64 / 1e6,
                before as f64 / 1e6,
                after as f64 / 1e6,
                (after - before) as f64 / 1e6,
                100.0 * (after - before) as f64 / size as f64
            );
        }
    }
    scale();
    hostile_times();
    let load = load_average();
    println!("\nload average at the end: {load}");
    if !quick {
        let chart = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/compare.svg");
        std::fs::write(&chart, chart_svg(&rows, &load)).unwrap();
        println!("chart of the main table: {}", chart.display());
    }
}

/// The main table as an SVG bar chart: for each checkpoint, the load time of each path,
/// this crate's first, then tch's and PyTorch's, each panel on its own scale (the
/// checkpoints span 45 MB to 1 GB), with the memcpy floor drawn as a line across it.
fn chart_svg(rows: &[Row], load: &str) -> String {
    use std::fmt::Write;
    let bars = |r: &Row| -> Vec<(&'static str, f64, &'static str)> {
        vec![
            (".pth → model (this crate)", r.ours_pth, "#1f77b4"),
            (".safetensors → model (this crate)", r.ours_st, "#1f77b4"),
            (
                "StateDict::load + load_state_dict",
                r.ours_two_step,
                "#6baed6",
            ),
            ("tch VarStore::load (.safetensors)", r.tch, "#ff7f0e"),
            ("torch.load + load_state_dict", r.torch_default, "#d62728"),
            (
                "torch.load(mmap=True) + load_state_dict",
                r.torch_mmap,
                "#d62728",
            ),
            (
                "safetensors load_file + load_state_dict",
                r.torch_st,
                "#d62728",
            ),
        ]
    };
    let (label_w, bar_w, bar_h, gap) = (300.0, 420.0, 16.0, 4.0);
    let panel_h = |n: usize| 28.0 + n as f64 * (bar_h + gap) + 14.0;
    let height: f64 = 56.0 + rows.iter().map(|r| panel_h(bars(r).len())).sum::<f64>() + 24.0;
    let width = label_w + bar_w + 90.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="10" y="22" font-size="15" font-weight="bold">Loading a checkpoint into a model: median time (ms), lower is better</text>"#
    );
    let _ = writeln!(
        svg,
        r##"<text x="10" y="40" fill="#555">{} threads, page cache warm; the grey line is a memcpy of the same bytes; load average {load}</text>"##,
        tch::get_num_threads()
    );
    let mut y = 56.0;
    for r in rows {
        let bars = bars(r);
        let max = bars.iter().map(|b| b.1).fold(r.floor, f64::max);
        let x_of = |ms: f64| label_w + bar_w * ms / max;
        let _ = writeln!(
            svg,
            r#"<text x="10" y="{}" font-weight="bold">{} ({:.0} MB)</text>"#,
            y + 16.0,
            r.name,
            r.mb
        );
        let top = y + 24.0;
        for (i, (label, ms, color)) in bars.iter().enumerate() {
            let by = top + i as f64 * (bar_h + gap);
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}" text-anchor="end">{label}</text><rect x="{label_w}" y="{by}" width="{:.1}" height="{bar_h}" fill="{color}"/><text x="{:.1}" y="{}">{ms:.1}</text>"#,
                label_w - 8.0,
                by + 12.0,
                bar_w * ms / max,
                x_of(*ms) + 4.0,
                by + 12.0,
            );
        }
        let floor_x = x_of(r.floor);
        let bottom = top + bars.len() as f64 * (bar_h + gap);
        let _ = writeln!(
            svg,
            r##"<line x1="{floor_x:.1}" y1="{}" x2="{floor_x:.1}" y2="{bottom}" stroke="#777" stroke-dasharray="3,2"/><text x="{floor_x:.1}" y="{}" fill="#777" font-size="10" text-anchor="middle">floor {:.1}</text>"##,
            top - 2.0,
            bottom + 10.0,
            r.floor
        );
        y += panel_h(bars.len());
    }
    let _ = writeln!(
        svg,
        r##"<text x="10" y="{}" fill="#555">blue: this crate; orange: tch; red: PyTorch (torch 2.11, same threads). Written by benches/compare.rs.</text>"##,
        y + 10.0
    );
    svg.push_str("</svg>\n");
    svg
}

/// How long a hostile file may take to be refused or read, in this release build: the
/// bound the debug-build tests print but do not assert (a shared machine's debug build is no
/// clock).
const HOSTILE_BOUND_MS: f64 = 2000.0;

/// Each file of the hostile corpora (`tests/fixtures/hostile`, and each directory of
/// `tests/fixtures/hostile_distributed`) opened and read as a value with the default limits,
/// once: the slowest, and a check that none takes longer than [`HOSTILE_BOUND_MS`].
fn hostile_times() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut cases: Vec<PathBuf> = Vec::new();
    for corpus in ["hostile", "hostile_distributed"] {
        let Ok(dir) = std::fs::read_dir(fixtures.join(corpus)) else {
            continue;
        };
        cases.extend(dir.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    cases.sort();
    let mut times: Vec<(f64, String, String)> = cases
        .iter()
        .map(|path| {
            let start = Instant::now();
            let outcome = Checkpoint::open(path).and_then(|c| c.value().map(drop));
            let ms = start.elapsed().as_secs_f64() * 1e3;
            let outcome = match outcome {
                Ok(()) => "read".to_string(),
                // The error without the path it starts with.
                Err(e) => {
                    let text = e.to_string();
                    let under = fixtures.to_string_lossy();
                    let text = match text.split_once(": ") {
                        Some((at, rest)) if at.starts_with(&*under) => rest,
                        _ => &text,
                    };
                    text.chars().take(70).collect()
                }
            };
            let name = path.strip_prefix(&fixtures).unwrap_or(path);
            (ms, name.display().to_string(), outcome)
        })
        .collect();
    times.sort_by(|a, b| b.0.total_cmp(&a.0));
    let total: f64 = times.iter().map(|t| t.0).sum();
    println!(
        "\nthe hostile corpora: {} files and directories opened and read as values in {total:.0} ms; the slowest:",
        times.len()
    );
    for (ms, name, outcome) in times.iter().take(5) {
        println!("{ms:>10.1} ms  {name}  ({outcome})");
    }
    let slow: Vec<_> = times.iter().filter(|t| t.0 > HOSTILE_BOUND_MS).collect();
    assert!(
        slow.is_empty(),
        "hostile files past {HOSTILE_BOUND_MS} ms in a release build: {slow:?}"
    );
}
