//! The device check: every check that needs CUDA and the CUDA bench, in one binary, for a GPU
//! machine that has no Rust (`scripts/device-check` builds it here and says how to run it
//! there).
//!
//! ```text
//! device OUT_DIR            # the checks, then the bench; OUT_DIR/report.md
//! device OUT_DIR --checks   # the checks alone
//! ```
//!
//! Its fixtures are made on that machine: the ResNets by this crate, the 4 GiB LLM-like
//! checkpoint by `benches/make_llm.py` with that machine's Python (`$TCH_STATE_DICT_PYTHON`,
//! else `/opt/torch/.venv/bin/python3`), which also runs PyTorch's side of the bench
//! (`benches/device_pytorch.py`). It exits 1 when a check fails, 2 without CUDA.

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{floats_as, llm_files, llm_model};
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
    f();
    let mut v: Vec<f64> = (0..n)
        .map(|_| {
            let start = Instant::now();
            f();
            tch::Cuda::synchronize(0);
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
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
        let (x, y) = (
            x.contiguous().view_dtype(Kind::Uint8),
            y.contiguous().view_dtype(Kind::Uint8),
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
        let b = tch::no_grad(|| g.forward_t(&x.to_device(Device::Cuda(0)), false))
            .to_device(Device::Cpu);
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
            let a = Tensor::randn([4096, 4096], (Kind::Float, Device::Cuda(0)));
            let mut busy = a.shallow_clone();
            for _ in 0..200 {
                busy = busy.matmul(&a) / 64.0;
            }
            load_checkpoint(&gpu, &path, true).map_err(|e| e.to_string())?;
            tch::Cuda::synchronize(0);
            drop(busy);
            same_values(&src, &gpu)
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

/// Pinned host memory to the device, `bytes` of it, one copy: the floor.
fn pinned_floor(bytes: usize) -> f64 {
    let host = Tensor::empty([bytes as i64], (Kind::Uint8, Device::Cpu))
        .pin_memory(Device::Cuda(0))
        .fill_(1);
    let dev = Tensor::empty([bytes as i64], (Kind::Uint8, Device::Cuda(0)));
    median(7, &mut || {
        dev.shallow_clone().copy_(&host);
    })
}

fn pytorch(spec: &str, pth: Option<&Path>, st: &Path, kind: &str) -> String {
    let out = Command::new(python())
        .arg(script("device_pytorch.py"))
        .args([
            spec,
            pth.map_or("none", |p| p.to_str().unwrap()),
            st.to_str().unwrap(),
            kind,
            "5",
        ])
        .output()
        .unwrap();
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    } else {
        format!(
            "failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )
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

fn bench(dir: &Path, report: &mut String) {
    let gb = |bytes: usize, ms: f64| bytes as f64 / ms / 1e6;
    writeln!(report, "\n| load | this crate (ms) | GB/s | pinned memcpy floor (ms) | PyTorch (ms, JSON) |\n|---|---|---|---|---|").unwrap();
    // ResNet-50, fp32 .pth and .safetensors, into a CUDA fp32 model.
    let vs = nn::VarStore::new(Device::Cuda(0));
    let model = ResNet::new(&vs, Arch::ResNet50, 1000).unwrap();
    let sd = state_dict(&model).unwrap();
    let (pth, st) = (dir.join("resnet50.pth"), dir.join("resnet50.safetensors"));
    let cpu = floats_as(&sd, Kind::Float);
    let cpu: StateDict = cpu
        .iter()
        .map(|(k, t)| (k.to_string(), t.to_device(Device::Cpu)))
        .collect();
    cpu.save(&pth).unwrap();
    cpu.save(&st).unwrap();
    let bytes = std::fs::metadata(&pth).unwrap().len() as usize;
    let ms = median(15, &mut || {
        load_checkpoint(&model, &pth, true).unwrap();
    });
    let floor = pinned_floor(bytes);
    let py = pytorch("resnet50", Some(&pth), &st, "float32");
    writeln!(
        report,
        "| ResNet-50 .pth → CUDA fp32 | {ms:.1} | {:.1} | {floor:.1} | {py} |",
        gb(bytes, ms)
    )
    .unwrap();
    drop((model, vs));
    // The 4 GiB bf16 LLM-like checkpoint into CUDA bf16 and fp32 models.
    let (layers, dim) = (32, 4096);
    let index = llm_files(dir, layers, dim, &python(), &script("make_llm.py"));
    let bytes = dir_bytes(&index);
    let floor = pinned_floor(bytes);
    for (kind, name) in [(Kind::BFloat16, "bfloat16"), (Kind::Float, "float32")] {
        let tree = llm_model(0..layers, dim, kind, Device::Cuda(0));
        let ms = median(5, &mut || {
            load_checkpoint(&tree, &index, true).unwrap();
        });
        drop(tree);
        let py = pytorch(
            &format!("llm:{layers}:{dim}"),
            None,
            index.parent().unwrap(),
            name,
        );
        writeln!(
            report,
            "| LLM 4 GiB bf16 → CUDA {name} | {ms:.1} | {:.1} | {floor:.1} | {py} |",
            gb(bytes, ms)
        )
        .unwrap();
    }
}

/// What a caught panic says: its message where it has one.
fn panicked(panic: &(dyn std::any::Any + Send)) -> String {
    let message = (panic.downcast_ref::<String>().map(String::as_str))
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("no message");
    format!("panicked: {message}")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = PathBuf::from(args.get(1).map_or("device-report", String::as_str));
    std::fs::create_dir_all(&out).unwrap();
    if !tch::Cuda::is_available() {
        eprintln!("device: no CUDA device");
        std::process::exit(2);
    }
    let dir = out.join("fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    let mut report = format!(
        "# device check\n\nCUDA devices: {}, threads: {}\n\n| check | result |\n|---|---|\n",
        tch::Cuda::device_count(),
        tch::get_num_threads()
    );
    let mut failed = 0;
    for (name, check) in CHECKS {
        let result =
            std::panic::catch_unwind(|| check(&dir)).unwrap_or_else(|p| Err(panicked(&*p)));
        let verdict = match &result {
            Ok(()) => "ok".to_string(),
            Err(e) => {
                failed += 1;
                format!("FAILED: {e}")
            }
        };
        println!("check {name}: {verdict}");
        writeln!(report, "| {name} | {verdict} |").unwrap();
    }
    if !args.iter().any(|a| a == "--checks") {
        // A panic in the bench (a fixture not made, a load failed) is reported with what
        // ran before it, rather than losing the checks' report.
        let mut table = String::new();
        let ran =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| bench(&dir, &mut table)));
        report.push_str(&table);
        if let Err(panic) = ran {
            failed += 1;
            let why = panicked(&*panic);
            writeln!(report, "\nThe bench FAILED after the rows above: {why}").unwrap();
        }
    }
    println!("{report}");
    std::fs::write(out.join("report.md"), &report).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
