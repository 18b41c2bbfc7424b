//! The device check: every check that needs CUDA and the CUDA bench, in one binary, for a GPU
//! machine that has no Rust (`scripts/device-check` builds it here and says how to run it
//! there).
//!
//! ```text
//! device OUT_DIR            # the checks, then the bench; OUT_DIR/report.md
//! device OUT_DIR --checks   # the checks alone
//! device OUT_DIR --dry-run  # no checks, the bench's steps on the CPU, small: the plumbing
//! ```
//!
//! Its fixtures are made on that machine: the ResNets by this crate, the 4 GiB LLM-like
//! checkpoint by `benches/make_llm.py` with that machine's Python (`$TCH_STATE_DICT_PYTHON`,
//! else `/opt/torch/.venv/bin/python3`), which also runs PyTorch's side of the bench
//! (`benches/device_pytorch.py`). It exits 1 when a check fails, 2 without CUDA.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{floats_as, llm_files, llm_model, median_of};
use tch::{nn, Device, Kind, Tensor};
use tch_state_dict::models::{Arch, ResNet};
use tch_state_dict::{load_checkpoint, state_dict, StateDict, StateDictModule};

fn python() -> PathBuf {
    std::env::var_os("TCH_STATE_DICT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/torch/.venv/bin/python3"))
}

fn script(name: &str) -> PathBuf {
    // Beside the binary's source tree, or in benches/ under the working directory.
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("benches")
        .join(name);
    if here.exists() {
        here
    } else {
        PathBuf::from("benches").join(name)
    }
}

fn median(n: usize, f: &mut dyn FnMut()) -> f64 {
    // Asked once, outside the timed runs (the dry run has no device to synchronize).
    let cuda = tch::Cuda::is_available();
    f();
    median_of(
        (0..n)
            .map(|_| {
                let start = Instant::now();
                f();
                if cuda {
                    tch::Cuda::synchronize(0);
                }
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

/// Every floating tensor of `model` made `kind` (`set_data`, so the model sees it).
fn make_kind(model: &dyn StateDictModule, kind: Kind) {
    let tree = model.module_tree().unwrap();
    let _guard = tch::no_grad_guard();
    for (_, t) in tree.iter() {
        if t.is_floating_point() {
            t.shallow_clone().set_data(&t.to_kind(kind));
        }
    }
}

/// Whether two models hold the same values bit for bit (compared on the CPU).
fn same_values(a: &dyn StateDictModule, b: &dyn StateDictModule) -> Result<(), String> {
    let (a, b) = (state_dict(a).unwrap(), state_dict(b).unwrap());
    for (key, x) in a.iter() {
        let y = b.get(key).ok_or(format!("{key} missing"))?;
        let (x, y) = (x.to_device(Device::Cpu), y.to_device(Device::Cpu));
        if x.kind() != y.kind() || x.size() != y.size() {
            return Err(format!(
                "{key}: {:?} {:?} against {:?} {:?}",
                x.kind(),
                x.size(),
                y.kind(),
                y.size()
            ));
        }
        // Flat first: libtorch views no 0-dim tensor (`num_batches_tracked`) as bytes.
        let (x, y) = (
            x.contiguous().reshape([-1]).view_dtype(Kind::Uint8),
            y.contiguous().reshape([-1]).view_dtype(Kind::Uint8),
        );
        if !x.equal(&y) {
            return Err(format!("{key}: values differ"));
        }
    }
    Ok(())
}

fn resnet(device: Device, arch: Arch) -> (nn::VarStore, ResNet) {
    let vs = nn::VarStore::new(device);
    let model = ResNet::new(&vs, arch, 10).unwrap();
    (vs, model)
}

type Check = (&'static str, fn(&Path) -> Result<(), String>);

/// The suite's `#[ignore = "needs CUDA"]` tests, each as a check named by its file and test,
/// then the staged route's own checks.
const CHECKS: &[Check] = &[
    ("linking: cuda_is_available_on_a_gpu_machine", |_| {
        tch::Cuda::is_available()
            .then_some(())
            .ok_or("tch::Cuda::is_available() is false".into())
    }),
    ("read_pytorch: placement_on_cuda", |dir| {
        let base = Tensor::arange(24, (Kind::Float, Device::Cpu));
        let sd: StateDict = [
            ("whole", base.shallow_clone()),
            ("view", base.narrow(0, 4, 8)),
            ("transposed", base.view([4, 6]).tr()),
        ]
        .into_iter()
        .map(|(k, t)| (k.to_string(), t))
        .collect();
        let path = dir.join("views.pth");
        sd.save(&path).unwrap();
        let options = tch_state_dict::ReadOptions::new().device(Device::Cuda(0));
        let gpu = StateDict::load_with(&path, &options).map_err(|e| e.to_string())?;
        let cpu = StateDict::load(&path).map_err(|e| e.to_string())?;
        for (k, t) in gpu.iter() {
            if t.device() != Device::Cuda(0) || !t.to_device(Device::Cpu).equal(cpu.get(k).unwrap())
            {
                return Err(k.to_string());
            }
        }
        Ok(())
    }),
    (
        "lazy: a_lazy_load_into_a_cuda_model_converts_in_chunks",
        |dir| {
            let (_, trained) = resnet(Device::Cpu, Arch::CifarResNet18);
            let path = dir.join("training.pth");
            let sd = state_dict(&trained).unwrap();
            tch_state_dict::Value::dict([
                ("model", tch_state_dict::Value::from(sd.shallow_clone())),
                ("epoch", tch_state_dict::Value::from(240)),
            ])
            .save(&path)
            .map_err(|e| e.to_string())?;
            let (_, gpu) = resnet(Device::Cuda(0), Arch::CifarResNet18);
            let mut lazy = tch_state_dict::LazyStateDict::load_key(&path, "model")
                .map_err(|e| e.to_string())?;
            lazy.pop("linear.weight");
            lazy.pop("linear.bias");
            let report =
                tch_state_dict::load_state_dict(&gpu, &lazy, false).map_err(|e| e.to_string())?;
            if report.missing_keys != ["linear.weight", "linear.bias"] {
                return Err(format!("{report}"));
            }
            let loaded = state_dict(&gpu).unwrap();
            for (k, t) in sd.iter().filter(|(k, _)| !k.starts_with("linear.")) {
                if !loaded.get(k).unwrap().to_device(Device::Cpu).equal(t) {
                    return Err(k.to_string());
                }
            }
            Ok(())
        },
    ),
    ("models: cuda_forward_matches_cpu", |_| {
        let (_, m) = resnet(Device::Cpu, Arch::CifarResNet18);
        let (_, g) = resnet(Device::Cuda(0), Arch::CifarResNet18);
        tch_state_dict::load_state_dict(&g, &state_dict(&m).unwrap(), true)
            .map_err(|e| e.to_string())?;
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let a = tch::no_grad(|| m.forward_t(&x, false));
        // cuDNN's convolutions run in TF32 by default, which differs from the CPU's fp32
        // by more than a load could; without cuDNN they go through cuBLAS in fp32.
        tch::Cuda::set_user_enabled_cudnn(false);
        let b = tch::no_grad(|| g.forward_t(&x.to_device(Device::Cuda(0)), false))
            .to_device(Device::Cpu);
        tch::Cuda::set_user_enabled_cudnn(true);
        let diff = (a - b).abs().max().double_value(&[]);
        (diff < 1e-3)
            .then_some(())
            .ok_or(format!("logits differ by {diff}"))
    }),
    (
        "training: storages_saved_on_a_gpu_load_onto_the_device_asked_for",
        |dir| {
            let options = tch_state_dict::ReadOptions::new().device(Device::Cuda(0));
            let fixtures: [(&str, &[u8]); 2] = [
                (
                    "gpu_tagged.pth",
                    include_bytes!("../tests/fixtures/training/gpu_tagged.pth"),
                ),
                (
                    "gpu_tagged_legacy.pth",
                    include_bytes!("../tests/fixtures/training/gpu_tagged_legacy.pth"),
                ),
            ];
            for (name, bytes) in fixtures {
                let path = dir.join(name);
                std::fs::write(&path, bytes).unwrap();
                let sd = StateDict::load_key_with(&path, "model", &options)
                    .map_err(|e| e.to_string())?;
                let cpu = StateDict::load_key(&path, "model").map_err(|e| e.to_string())?;
                for (k, t) in sd.iter() {
                    if t.device() != Device::Cuda(0)
                        || !t.to_device(Device::Cpu).equal(cpu.get(k).unwrap())
                    {
                        return Err(format!("{name}/{k}"));
                    }
                }
            }
            Ok(())
        },
    ),
    ("replace_head: replace_head_on_cuda", |_| {
        let vs = nn::VarStore::new(Device::Cuda(0));
        let mut model = ResNet::new(&vs, Arch::CifarResNet50, 100).unwrap();
        tch_state_dict::models::replace_head(&mut model, 7).map_err(|e| e.to_string())?;
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cuda(0)));
        let ok = model.head().ws.device() == Device::Cuda(0)
            && model.forward_t(&x, false).size() == [2, 7]
            && !vs.variables().keys().any(|k| k.contains("__"));
        ok.then_some(())
            .ok_or("the head is not on CUDA, or the logits' shape is wrong".into())
    }),
    ("load_file: a_cuda_model_loads_from_a_file", |dir| {
        let (_, cpu) = resnet(Device::Cpu, Arch::CifarResNet18);
        let path = dir.join("cifar18.pth");
        state_dict(&cpu).unwrap().save(&path).unwrap();
        let (_, gpu) = resnet(Device::Cuda(0), Arch::CifarResNet18);
        load_checkpoint(&gpu, &path, true).map_err(|e| e.to_string())?;
        same_values(&cpu, &gpu)
    }),
    (
        "bf16 and fp16 files into a CUDA fp32 model, converted on the GPU",
        |dir| {
            let (_, src) = resnet(Device::Cpu, Arch::CifarResNet18);
            let sd = state_dict(&src).unwrap();
            for kind in [Kind::BFloat16, Kind::Half] {
                let path = dir.join(format!("cifar18-{kind:?}.safetensors"));
                floats_as(&sd, kind).save(&path).unwrap();
                let (_, cpu) = resnet(Device::Cpu, Arch::CifarResNet18);
                load_checkpoint(&cpu, &path, true).map_err(|e| e.to_string())?;
                let (_, gpu) = resnet(Device::Cuda(0), Arch::CifarResNet18);
                load_checkpoint(&gpu, &path, true).map_err(|e| e.to_string())?;
                same_values(&cpu, &gpu)?;
            }
            Ok(())
        },
    ),
    (
        "an fp32 file into a CUDA bf16 model rounds as the CPU route does",
        |dir| {
            let (_, src) = resnet(Device::Cpu, Arch::CifarResNet18);
            let path = dir.join("cifar18-fp32.pth");
            state_dict(&src).unwrap().save(&path).unwrap();
            let (_, cpu) = resnet(Device::Cpu, Arch::CifarResNet18);
            make_kind(&cpu, Kind::BFloat16);
            load_checkpoint(&cpu, &path, true).map_err(|e| e.to_string())?;
            let (_, gpu) = resnet(Device::Cuda(0), Arch::CifarResNet18);
            make_kind(&gpu, Kind::BFloat16);
            load_checkpoint(&gpu, &path, true).map_err(|e| e.to_string())?;
            same_values(&cpu, &gpu)
        },
    ),
    (
        "a model over every CUDA device and the CPU loads in one pass",
        |dir| {
            let (_, src) = resnet(Device::Cpu, Arch::CifarResNet18);
            let path = dir.join("cifar18-mixed.pth");
            state_dict(&src).unwrap().save(&path).unwrap();
            let (_, model) = resnet(Device::Cpu, Arch::CifarResNet18);
            let devices: Vec<Device> = std::iter::once(Device::Cpu)
                .chain((0..tch::Cuda::device_count()).map(|i| Device::Cuda(i as usize)))
                .collect();
            let tree = model.module_tree().unwrap();
            for (i, (_, t)) in tree.iter().enumerate() {
                let device = devices[i % devices.len()];
                t.shallow_clone().set_data(&t.to_device(device));
            }
            load_checkpoint(&model, &path, true).map_err(|e| e.to_string())?;
            same_values(&src, &model)
        },
    ),
    (
        "no buffer is refilled before the copies reading it ran (copies queued behind GPU work)",
        |dir| {
            // Seconds of matrix products queued on the stream first: the load's
            // `non_blocking` copies wait behind them, so a buffer refilled before its copies
            // ran (the synchronization before a buffer goes back, left out) would be read
            // with the next buffer's bytes, and the values would differ.
            let (_, src) = resnet(Device::Cpu, Arch::CifarResNet18);
            let path = dir.join("cifar18-queued.pth");
            state_dict(&src).unwrap().save(&path).unwrap();
            let (_, gpu) = resnet(Device::Cuda(0), Arch::CifarResNet18);
            // A load first, so that the pinned buffers are in libtorch's cache and the load
            // below allocates nothing that could synchronize the device.
            load_checkpoint(&gpu, &path, true).map_err(|e| e.to_string())?;
            let (_, gpu) = resnet(Device::Cuda(0), Arch::CifarResNet18);
            let a = Tensor::randn([4096, 4096], (Kind::Float, Device::Cuda(0)));
            let queue = || {
                let mut busy = a.shallow_clone();
                for _ in 0..200 {
                    busy = busy.matmul(&a) / 64.0;
                }
                busy
            };
            tch::Cuda::synchronize(0);
            let start = Instant::now();
            drop(queue());
            tch::Cuda::synchronize(0);
            let busy_ms = start.elapsed().as_secs_f64() * 1e3;
            let busy = queue();
            let start = Instant::now();
            load_checkpoint(&gpu, &path, true).map_err(|e| e.to_string())?;
            let load_ms = start.elapsed().as_secs_f64() * 1e3;
            tch::Cuda::synchronize(0);
            drop(busy);
            same_values(&src, &gpu)?;
            // The load synchronizes before it returns, so it cannot end before the work
            // queued ahead of its copies.
            if load_ms < busy_ms / 2.0 {
                return Err(format!(
                    "the load returned after {load_ms:.0} ms, before the {busy_ms:.0} ms of work queued ahead of its copies"
                ));
            }
            Ok(())
        },
    ),
    (
        "a file cut short after the check fails the load with an I/O error",
        |dir| {
            let (_, src) = resnet(Device::Cpu, Arch::CifarResNet18);
            let path = dir.join("cifar18-cut.safetensors");
            state_dict(&src).unwrap().save(&path).unwrap();
            let checkpoint = tch_state_dict::Checkpoint::open(&path).map_err(|e| e.to_string())?;
            let len = std::fs::metadata(&path).unwrap().len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(len / 2)
                .unwrap();
            let (_, gpu) = resnet(Device::Cuda(0), Arch::CifarResNet18);
            match checkpoint.load_into(&gpu, &Default::default()) {
                Err(tch_state_dict::Error::FileChanged { .. })
                | Err(tch_state_dict::Error::Io { .. }) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    ),
];

/// The most bytes the floor pins: the caching host allocator rounds a request up to a power
/// of two and keeps it, so 4 GiB and a few headers would pin 8 GiB.
const FLOOR_CHUNK: usize = 1 << 30;

/// Pinned host memory to the device, `bytes` of it: the floor. Copied from one pinned buffer
/// of at most [`FLOOR_CHUNK`], as many times as `bytes` needs, into one device buffer.
fn pinned_floor(bytes: usize) -> f64 {
    let chunk = bytes.clamp(1, FLOOR_CHUNK);
    let host = Tensor::empty([chunk as i64], (Kind::Uint8, Device::Cpu))
        .internal_pin_memory(Device::Cuda(0))
        .fill_(1);
    let dev = Tensor::empty([chunk as i64], (Kind::Uint8, Device::Cuda(0)));
    median(5, &mut || {
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk) as i64;
            dev.narrow(0, 0, n).copy_(&host.narrow(0, 0, n));
            left -= n as usize;
        }
    })
}

/// How long PyTorch's side may take: a hung CUDA start-up would otherwise use up the run.
const PYTORCH_SECONDS: u64 = 240;

/// PyTorch's times on `on`'s device (JSON), or why there are none.
fn pytorch(spec: &str, pth: Option<&Path>, st: &Path, kind: &str, on: &Bench) -> String {
    let dir = on.dir;
    // Into files, not pipes: a child that fills a pipe nobody reads would never end.
    let (out_path, err_path) = (dir.join("pytorch.out"), dir.join("pytorch.err"));
    let child = Command::new(python())
        .arg(script("device_pytorch.py"))
        .args([
            spec,
            pth.map_or("none", |p| p.to_str().unwrap()),
            st.to_str().unwrap(),
            kind,
            "5",
            on.python_device,
        ])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => return format!("failed to start {}: {e}", python().display()),
    };
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if start.elapsed().as_secs() < PYTORCH_SECONDS => {
                std::thread::sleep(std::time::Duration::from_millis(100))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    match status {
        Some(status) if status.success() => read(&out_path).trim().to_string(),
        Some(_) => format!(
            "failed: {}",
            read(&err_path).lines().last().unwrap_or("no message")
        ),
        None => format!("timed out after {PYTORCH_SECONDS} s"),
    }
}

fn dir_bytes(index: &Path) -> usize {
    std::fs::read_dir(index.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        .map(|e| e.metadata().unwrap().len() as usize)
        .sum()
}

/// The report: each line printed and `OUT/report.md` rewritten as it comes, so that a run
/// cut short leaves what it found.
struct Report {
    path: PathBuf,
    text: String,
    failed: usize,
}

impl Report {
    fn line(&mut self, line: &str) {
        println!("{line}");
        self.text.push_str(line);
        self.text.push('\n');
        let _ = std::fs::write(&self.path, &self.text);
    }

    /// A row made by `row`, or the row's name and why it failed: a panic loses that row
    /// only.
    fn row(&mut self, name: &str, row: impl FnOnce() -> String) {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(row)) {
            Ok(line) => self.line(&line),
            Err(panic) => {
                self.failed += 1;
                self.line(&format!("| {name} | FAILED: {} |", panicked(&*panic)));
            }
        }
    }
}

/// Where the bench runs: on the GPU, or (`--dry-run`, on a machine without one) the same
/// steps on the CPU with a small LLM-like checkpoint and no floor, to try the plumbing
/// (fixtures, PyTorch's side, the report) before a GPU's one try.
struct Bench<'d> {
    dir: &'d Path,
    device: Device,
    python_device: &'static str,
    llm: (usize, i64),
}

impl Bench<'_> {
    fn floor(&self, bytes: usize) -> f64 {
        match self.device {
            Device::Cuda(_) => pinned_floor(bytes),
            _ => f64::NAN,
        }
    }
}

fn bench(on: &Bench, report: &mut Report) {
    let (dir, device) = (on.dir, on.device);
    let gb = |bytes: usize, ms: f64| bytes as f64 / ms / 1e6;
    report.line("\n| load | this crate (ms) | GB/s | pinned memcpy floor (ms) | PyTorch (ms, JSON) |\n|---|---|---|---|---|");
    // ResNet-50, fp32 .pth and .safetensors, into a CUDA fp32 model.
    let vs = nn::VarStore::new(device);
    let model = ResNet::new(&vs, Arch::ResNet50, 1000).unwrap();
    let sd = state_dict(&model).unwrap();
    let (pth, st) = (dir.join("resnet50.pth"), dir.join("resnet50.safetensors"));
    let cpu: StateDict = (floats_as(&sd, Kind::Float).iter())
        .map(|(k, t)| (k.to_string(), t.to_device(Device::Cpu)))
        .collect();
    cpu.save(&pth).unwrap();
    cpu.save(&st).unwrap();
    let bytes = std::fs::metadata(&pth).unwrap().len() as usize;
    let floor = on.floor(bytes);
    let py = pytorch("resnet50", Some(&pth), &st, "float32", on);
    for (file, name) in [(&pth, ".pth"), (&st, ".safetensors")] {
        let label = format!("ResNet-50 {name} → {device:?} fp32");
        report.row(&label, || {
            let ms = median(15, &mut || {
                load_checkpoint(&model, file, true).unwrap();
            });
            format!(
                "| {label} | {ms:.1} | {:.1} | {floor:.1} | {py} |",
                gb(bytes, ms)
            )
        });
    }
    drop((model, vs));
    // The 4 GiB bf16 LLM-like checkpoint into CUDA bf16 and fp32 models; the floor after the
    // loads, so that its pinned gigabyte is not held while they run.
    let (layers, dim) = on.llm;
    let index = llm_files(dir, layers, dim, &python(), &script("make_llm.py"));
    let bytes = dir_bytes(&index);
    let mut rows = Vec::new();
    for (kind, name) in [(Kind::BFloat16, "bfloat16"), (Kind::Float, "float32")] {
        let label = format!("LLM {layers}×{dim} bf16 → {device:?} {name}");
        let ms = std::panic::catch_unwind(|| {
            let tree = llm_model(0..layers, dim, kind, device);
            median(5, &mut || {
                load_checkpoint(&tree, &index, true).unwrap();
            })
        });
        let py = pytorch(
            &format!("llm:{layers}:{dim}"),
            None,
            index.parent().unwrap(),
            name,
            on,
        );
        rows.push((label, ms, py));
    }
    let floor = std::panic::catch_unwind(|| on.floor(bytes)).unwrap_or(f64::NAN);
    for (label, ms, py) in rows {
        report.row(&label, || {
            let ms = ms.unwrap_or_else(|p| std::panic::resume_unwind(p));
            format!(
                "| {label} | {ms:.1} | {:.1} | {floor:.1} | {py} |",
                gb(bytes, ms)
            )
        });
    }
}

/// What a caught panic says: its message where it has one.
fn panicked(panic: &(dyn std::any::Any + Send)) -> String {
    let message = (panic.downcast_ref::<String>().map(String::as_str))
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("no message");
    format!("panicked: {message}")
}

/// What the report says of the run: the commit it was built at (`scripts/device-check`
/// writes it beside the binary), the devices, the threads, and where libraries came from.
fn header() -> String {
    let commit = std::env::current_exe()
        .ok()
        .and_then(|exe| std::fs::read_to_string(exe.with_file_name("COMMIT")).ok())
        .unwrap_or_else(|| "unknown".into());
    format!(
        "# device check\n\nbuilt at {}, CUDA devices: {}, threads: {}, LD_LIBRARY_PATH: {}\n",
        commit.trim(),
        tch::Cuda::device_count(),
        tch::get_num_threads(),
        std::env::var("LD_LIBRARY_PATH").unwrap_or_default()
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = PathBuf::from(args.get(1).map_or("device-report", String::as_str));
    std::fs::create_dir_all(&out).unwrap();
    let mut report = Report {
        path: out.join("report.md"),
        text: String::new(),
        failed: 0,
    };
    report.line(&header());
    let dry = args.iter().any(|a| a == "--dry-run");
    if !tch::Cuda::is_available() && !dry {
        // What was loaded, to tell a machine without a GPU from a libtorch without CUDA.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let mut libs: Vec<&str> = (maps.lines())
            .filter_map(|l| l.split_whitespace().nth(5))
            .filter(|p| p.contains("libtorch") || p.contains("libcuda") || p.contains("libc10"))
            .collect();
        libs.dedup();
        report.line("no CUDA device. Libraries loaded:\n");
        for lib in libs {
            report.line(&format!("- {lib}"));
        }
        std::process::exit(2);
    }
    // The fixtures (4.5 GB with the LLM-like checkpoint) outside OUT, which comes back.
    let dir = std::env::temp_dir().join(format!("tch-state-dict-device-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    report.line("| check | result |\n|---|---|");
    for (name, check) in CHECKS.iter().filter(|_| !dry) {
        let result =
            std::panic::catch_unwind(|| check(&dir)).unwrap_or_else(|p| Err(panicked(&*p)));
        let verdict = match &result {
            Ok(()) => "ok".to_string(),
            Err(e) => {
                report.failed += 1;
                format!("FAILED: {e}")
            }
        };
        report.line(&format!("| {name} | {verdict} |"));
    }
    if !args.iter().any(|a| a == "--checks") {
        // A panic outside a row (a fixture not made) is reported with the rows before it.
        let on = match dry {
            false => Bench {
                dir: &dir,
                device: Device::Cuda(0),
                python_device: "cuda",
                llm: (32, 4096),
            },
            true => Bench {
                dir: &dir,
                device: Device::Cpu,
                python_device: "cpu",
                llm: (2, 1024),
            },
        };
        let ran =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| bench(&on, &mut report)));
        if let Err(panic) = ran {
            report.failed += 1;
            let why = panicked(&*panic);
            report.line(&format!("\nThe bench FAILED after the rows above: {why}"));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::process::exit(if report.failed == 0 { 0 } else { 1 });
}
