//! tch's own models, measured: every model of `tch::vision` that torchvision has gets
//! torchvision's state dict (random, with non-default BatchNorm statistics), loaded with
//! `load_state_dict(&vs, &sd, true)`, and its eval logits are compared with torchvision's.
//!
//! The keys agree everywhere but in inception_v3, whose `AuxLogits` tch lacks. The logits
//! agree to float rounding (at most 2.3e-7 of the largest logit) where tch's forward is
//! torchvision's. Where it is not, a test asserts both halves of what was found: the
//! difference from torchvision, and agreement with torchvision's model changed to do what
//! tch's source does (`make_like_tch` in `tests/oracle/tch_vision.py`), so that each cause is
//! pinned and a change in tch fails here. In tch 0.24's `src/vision/`:
//!
//! - alexnet, 0.52: `alexnet.rs:18`, `conv2d(&p / "3", 64, 192, 5, 1, 2)`, is padding 1 and
//!   stride 2 (torchvision: stride 1, padding 2).
//! - densenet121 to 201, 1.7e3 to 2.3e3: pooling that sums, with a divisor override of 1, in
//!   each transition (`densenet.rs:46`, `avg_pool2d_default`, `tensor/mod.rs:208`) and at the
//!   end (`densenet.rs:78`, over the 7x7 map), where torchvision averages.
//! - efficientnet_b0 to b4 at an odd size, 9.9e-4 to 1.3e-3: BatchNorm eps 1e-3 in every
//!   variant (`efficientnet.rs:6`; torchvision: 1e-5 for b0 to b4, 1e-3 for b5 to b7).
//! - efficientnet_b0 to b7 at an even size, 5.2e-3 to 1.3e-2: `Conv2DSame`
//!   (`efficientnet.rs:99-114`) pads a stride-2 conv as TensorFlow does, after the image
//!   only (torchvision: (k - 1) / 2 on each side).
//!
//! One Python process writes the state dicts (6.5 GB of tensors in 2.2 GB of files: within a
//! family, models share the tensors that have the same shape and role) and logits, a family
//! at a time in the order of the tests' names, so that tests start while it writes; it
//! removes them when this process ends. Each test builds its model (tch's initialization is
//! most of the time for the VGGs) before it waits for its family.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};
use tch_state_dict::{
    load_state_dict, Checkpoint, Error, IncompatibleKeys, LazyStateDict, LazyTensor, LoadError,
    LoadOptions, ModuleTree, StateDict,
};

/// `tch_vision.py`'s families, one file each; a model's family is the one its name starts with.
const FAMILIES: [&str; 8] = [
    "inception",
    "mobilenet",
    "resnet",
    "squeezenet",
    "vgg",
    "alexnet",
    "densenet",
    "efficientnet",
];

fn family(arch: &str) -> usize {
    FAMILIES
        .iter()
        .position(|f| arch.starts_with(f))
        .unwrap_or_else(|| panic!("no family for {arch}"))
}

/// The families written so far; why the oracle stopped, when it did.
#[derive(Default)]
struct Progress {
    written: HashSet<String>,
    failed: Option<String>,
}

/// The Python oracle, started once for every test of this binary.
struct Oracle {
    dir: PathBuf,
    progress: Arc<(Mutex<Progress>, Condvar)>,
    /// Per family, its models' state dicts, read on first use.
    models: [OnceLock<HashMap<String, Mutex<LazyStateDict<'static>>>>; FAMILIES.len()],
    /// The oracle waits for this pipe to close (this process ending), then removes `dir`.
    _alive: Option<Mutex<ChildStdin>>,
}

/// Starts `tch_vision.py` once; `TCH_STATE_DICT_VISION_DIR=DIR` uses the files that
/// `tch_vision.py DIR` wrote instead (while it waits), to rerun the tests without it.
fn oracle() -> &'static Oracle {
    static ORACLE: OnceLock<Oracle> = OnceLock::new();
    ORACLE.get_or_init(|| {
        let progress = Arc::new((Mutex::new(Progress::default()), Condvar::new()));
        let (dir, alive) = match std::env::var_os("TCH_STATE_DICT_VISION_DIR") {
            Some(dir) => {
                let written = FAMILIES.iter().map(|f| f.to_string()).collect();
                progress.0.lock().unwrap().written = written;
                (PathBuf::from(dir), None)
            }
            None => {
                let dir = std::env::temp_dir()
                    .join(format!("tch-state-dict-vision-{}", std::process::id()));
                let alive = start_oracle(&dir, Arc::clone(&progress));
                (dir, Some(Mutex::new(alive)))
            }
        };
        Oracle {
            dir,
            progress,
            models: Default::default(),
            _alive: alive,
        }
    })
}

/// Starts `tch_vision.py DIR` with a thread that records each "ready FAMILY" it prints.
fn start_oracle(dir: &std::path::Path, progress: Arc<(Mutex<Progress>, Condvar)>) -> ChildStdin {
    let mut child = Command::new(common::python())
        .arg(common::test_file("oracle/tch_vision.py"))
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    let stdout = child.stdout.take().expect("stdout");
    let stdin = child.stdin.take().expect("stdin");
    std::thread::spawn(move || {
        let (lock, written) = &*progress;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(family) = line.strip_prefix("ready ") {
                lock.lock().unwrap().written.insert(family.to_string());
                written.notify_all();
            }
        }
        // Its stdout closes when it ends, which before this process ends is a failure.
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            pipe.read_to_string(&mut stderr).ok();
        }
        let status = child.wait().expect("wait for python");
        lock.lock().unwrap().failed = Some(format!("tch_vision.py ended ({status}):\n{stderr}"));
        written.notify_all();
    });
    stdin
}

/// Waits until the oracle has written `family`'s files.
fn written(family: &str) -> &'static Oracle {
    let oracle = oracle();
    let (lock, written) = &*oracle.progress;
    let mut progress = lock.lock().unwrap();
    while !progress.written.contains(family) {
        if let Some(failure) = &progress.failed {
            panic!("{failure}");
        }
        progress = written.wait(progress).unwrap();
    }
    oracle
}

/// `FAMILY.pth`'s `ARCH.KEY` entries as one state dict per `ARCH`, with keys `KEY` (the
/// `_metadata`, which a tch model has no use for, is left out). Popping from the end keeps
/// this linear.
fn split_by_model(
    mut all: LazyStateDict<'static>,
) -> HashMap<String, Mutex<LazyStateDict<'static>>> {
    let keys: Vec<String> = all.keys().map(str::to_string).collect();
    let mut by_model: HashMap<String, Vec<(String, LazyTensor<'static>)>> = HashMap::new();
    for key in keys.iter().rev() {
        let (arch, rest) = key.split_once('.').expect("ARCH.KEY");
        let entry = all.pop(key).expect("a key of the file");
        by_model
            .entry(arch.to_string())
            .or_default()
            .push((rest.to_string(), entry));
    }
    by_model
        .into_iter()
        .map(|(arch, entries)| {
            let mut sd = LazyStateDict::new();
            for (key, entry) in entries.into_iter().rev() {
                sd.insert(key, entry);
            }
            (arch, Mutex::new(sd))
        })
        .collect()
}

/// torchvision's `state_dict()` of `arch`.
fn torchvision_state_dict(arch: &str) -> LazyStateDict<'static> {
    let i = family(arch);
    let oracle = written(FAMILIES[i]);
    let models = oracle.models[i].get_or_init(|| {
        let path = oracle.dir.join(format!("{}.pth", FAMILIES[i]));
        split_by_model(LazyStateDict::load(path).unwrap())
    });
    let sd = models.get(arch).unwrap_or_else(|| panic!("no {arch}"));
    sd.lock().unwrap().shallow_clone()
}

/// A tensor of the oracle's `FAMILY.logits.pth`: `ARCH@SIZE.input`, `.logits` or
/// `.tch_logits`.
fn expected(key: &str) -> Option<Tensor> {
    let family = FAMILIES[family(key)];
    let path = written(family).dir.join(format!("{family}.logits.pth"));
    let sd = LazyStateDict::load(path).unwrap();
    sd.get(key).map(|t| t.read().unwrap())
}

type Build = fn(&nn::Path) -> Box<dyn ModuleT>;

/// tch's model in a new VarStore, built before anything waits for the oracle.
fn tch_model<M>(build: impl FnOnce(&nn::Path) -> M) -> (nn::VarStore, M) {
    // Batch 1 at small sizes: one thread each is fastest, and the tests run in parallel.
    tch::set_num_threads(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = build(&vs.root());
    (vs, net)
}

/// tch's model with torchvision's state dict loaded strictly: no key surgery, every
/// BatchNorm counter consumed by tch's counter-less BatchNorms.
fn strictly_loaded(arch: &str, build: Build) -> Box<dyn ModuleT> {
    let (vs, net) = tch_model(build);
    let sd = torchvision_state_dict(arch);
    let counters = sd
        .keys()
        .filter(|k| k.ends_with("num_batches_tracked"))
        .count();
    let report = load_state_dict(&vs, &sd, true).unwrap_or_else(|e| panic!("{arch}: {e}"));
    assert!(report.is_empty(), "{arch}: {report:?}");
    assert_eq!(report.dropped_keys.len(), counters, "{arch}");
    net
}

/// Float rounding, with a margin: the models that agree measure at most 6.1e-7 (tch's swish,
/// `x * sigmoid(x)`, against torch's SiLU, in the EfficientNets).
const AGREES: f64 = 1e-5;

/// `max |got - want| / max |want|`.
fn relative_difference(got: &Tensor, want: &Tensor) -> f64 {
    let err = (got - want).abs().max().double_value(&[]);
    err / want.abs().max().double_value(&[])
}

/// tch's logits for `case` against torchvision's, and against torchvision's model changed to
/// do what tch does (where the oracle has one).
struct Measured {
    case: String,
    torchvision: f64,
    like_tch: Option<f64>,
}

fn measure(net: &dyn ModuleT, arch: &str, size: i64) -> Measured {
    let case = format!("{arch}@{size}");
    let x = expected(&format!("{case}.input")).unwrap();
    let got = tch::no_grad(|| net.forward_t(&x, false));
    let want = expected(&format!("{case}.logits")).unwrap();
    let measured = Measured {
        torchvision: relative_difference(&got, &want),
        like_tch: expected(&format!("{case}.tch_logits")).map(|w| relative_difference(&got, &w)),
        case,
    };
    println!(
        "{}: max relative difference {:.2e} from torchvision{}",
        measured.case,
        measured.torchvision,
        measured.like_tch.map_or(String::new(), |d| format!(
            ", {d:.2e} from torchvision made like tch"
        ))
    );
    measured
}

/// tch's forward is torchvision's.
fn agrees(arch: &str, size: i64, build: Build) {
    let net = strictly_loaded(arch, build);
    let m = measure(&*net, arch, size);
    assert!(m.torchvision <= AGREES, "{}: {}", m.case, m.torchvision);
}

/// tch's forward differs from torchvision's by at least `at_least`, and is torchvision's model
/// changed as the oracle's `make_like_tch` says.
fn differs(m: &Measured, at_least: f64) {
    assert!(
        m.torchvision >= at_least,
        "{}: {} (tch's forward changed?)",
        m.case,
        m.torchvision
    );
    let like_tch = m.like_tch.expect("tch_logits");
    assert!(like_tch <= AGREES, "{}: {like_tch}", m.case);
}

// The names sort in the order tch_vision.py writes the families: logits_agree_*, then
// logits_differ_*, then the rest.

/// torchvision's auxiliary classifier, which tch's inception_v3 does not have.
const AUX_LOGITS: [&str; 14] = [
    "AuxLogits.conv0.conv.weight",
    "AuxLogits.conv0.bn.weight",
    "AuxLogits.conv0.bn.bias",
    "AuxLogits.conv0.bn.running_mean",
    "AuxLogits.conv0.bn.running_var",
    "AuxLogits.conv0.bn.num_batches_tracked",
    "AuxLogits.conv1.conv.weight",
    "AuxLogits.conv1.bn.weight",
    "AuxLogits.conv1.bn.bias",
    "AuxLogits.conv1.bn.running_mean",
    "AuxLogits.conv1.bn.running_var",
    "AuxLogits.conv1.bn.num_batches_tracked",
    "AuxLogits.fc.weight",
    "AuxLogits.fc.bias",
];

#[test]
fn logits_agree_inception_v3_loaded_without_aux_logits() {
    let (vs, net) = tch_model(|p| tch::vision::inception::v3(p, 1000));
    let sd = torchvision_state_dict("inception_v3");
    let report = load_state_dict(&vs, &sd, false).unwrap();
    assert!(report.missing_keys.is_empty(), "{report:?}");
    assert_eq!(report.unexpected_keys, AUX_LOGITS);
    let m = measure(&net, "inception_v3", 75);
    assert!(m.torchvision <= AGREES, "{}", m.torchvision);
}

#[test]
fn logits_agree_mobilenet_v2() {
    agrees("mobilenet_v2", 64, |p| {
        Box::new(tch::vision::mobilenet::v2(p, 1000))
    });
}

#[test]
fn logits_agree_resnet18() {
    agrees("resnet18", 64, |p| {
        Box::new(tch::vision::resnet::resnet18(p, 1000))
    });
}

#[test]
fn logits_agree_resnet34() {
    agrees("resnet34", 64, |p| {
        Box::new(tch::vision::resnet::resnet34(p, 1000))
    });
}

#[test]
fn logits_agree_resnet50() {
    agrees("resnet50", 64, |p| {
        Box::new(tch::vision::resnet::resnet50(p, 1000))
    });
}

#[test]
fn logits_agree_resnet101() {
    agrees("resnet101", 64, |p| {
        Box::new(tch::vision::resnet::resnet101(p, 1000))
    });
}

#[test]
fn logits_agree_resnet152() {
    agrees("resnet152", 64, |p| {
        Box::new(tch::vision::resnet::resnet152(p, 1000))
    });
}

#[test]
fn logits_agree_squeezenet1_0() {
    agrees("squeezenet1_0", 64, |p| {
        Box::new(tch::vision::squeezenet::v1_0(p, 1000))
    });
}

#[test]
fn logits_agree_squeezenet1_1() {
    agrees("squeezenet1_1", 64, |p| {
        Box::new(tch::vision::squeezenet::v1_1(p, 1000))
    });
}

#[test]
fn logits_agree_vgg11() {
    agrees("vgg11", 224, |p| Box::new(tch::vision::vgg::vgg11(p, 1000)));
}

#[test]
fn logits_agree_vgg11_bn() {
    agrees("vgg11_bn", 224, |p| {
        Box::new(tch::vision::vgg::vgg11_bn(p, 1000))
    });
}

#[test]
fn logits_agree_vgg13() {
    agrees("vgg13", 224, |p| Box::new(tch::vision::vgg::vgg13(p, 1000)));
}

#[test]
fn logits_agree_vgg13_bn() {
    agrees("vgg13_bn", 224, |p| {
        Box::new(tch::vision::vgg::vgg13_bn(p, 1000))
    });
}

#[test]
fn logits_agree_vgg16() {
    agrees("vgg16", 224, |p| Box::new(tch::vision::vgg::vgg16(p, 1000)));
}

#[test]
fn logits_agree_vgg16_bn() {
    agrees("vgg16_bn", 224, |p| {
        Box::new(tch::vision::vgg::vgg16_bn(p, 1000))
    });
}

#[test]
fn logits_agree_vgg19() {
    agrees("vgg19", 224, |p| Box::new(tch::vision::vgg::vgg19(p, 1000)));
}

#[test]
fn logits_agree_vgg19_bn() {
    agrees("vgg19_bn", 224, |p| {
        Box::new(tch::vision::vgg::vgg19_bn(p, 1000))
    });
}

#[test]
fn logits_differ_alexnet_in_its_second_conv() {
    let net = strictly_loaded("alexnet", |p| {
        Box::new(tch::vision::alexnet::alexnet(p, 1000))
    });
    // alexnet.rs:18, `conv2d(&p / "3", 64, 192, 5, 1, 2)`, passes padding 1 and stride 2
    // (`fn conv2d(p, c_in, c_out, ksize, padding, stride)`), where torchvision's features[3]
    // is Conv2d(64, 192, kernel_size=5, padding=2). Measured: 0.52.
    differs(&measure(&*net, "alexnet", 127), 0.1);
}

/// tch's DenseNets pool with a divisor override of 1, which sums where torchvision averages:
/// each transition's `avg_pool2d_default(2)` (densenet.rs:46; tensor/mod.rs:208,
/// `avg_pool2d([k, k], [k, k], [0, 0], false, true, 1)`; torchvision: `AvgPool2d(2, 2)`),
/// 4 times the features, and the last pooling, `avg_pool2d([7, 7], [1, 1], [0, 0], false,
/// true, 1)` (densenet.rs:78; torchvision: `adaptive_avg_pool2d(1)`), 49 times. Measured:
/// 1.7e3 to 2.3e3 (4 * 4 * 4 * 49 = 3136 with no BatchNorm in between).
fn densenet(arch: &str, build: Build) {
    let net = strictly_loaded(arch, build);
    differs(&measure(&*net, arch, 224), 100.0);
}

#[test]
fn logits_differ_densenet121_in_pooling_that_sums() {
    densenet("densenet121", |p| {
        Box::new(tch::vision::densenet::densenet121(p, 1000))
    });
}

#[test]
fn logits_differ_densenet161_in_pooling_that_sums() {
    densenet("densenet161", |p| {
        Box::new(tch::vision::densenet::densenet161(p, 1000))
    });
}

#[test]
fn logits_differ_densenet169_in_pooling_that_sums() {
    densenet("densenet169", |p| {
        Box::new(tch::vision::densenet::densenet169(p, 1000))
    });
}

#[test]
fn logits_differ_densenet201_in_pooling_that_sums() {
    densenet("densenet201", |p| {
        Box::new(tch::vision::densenet::densenet201(p, 1000))
    });
}

/// efficientnet.rs: BatchNorm eps 1e-3 in every variant (line 6), where torchvision's b0 to
/// b4 have 1e-5 (b5 to b7: 1e-3); and `Conv2DSame` (lines 99-114), TensorFlow's "same"
/// padding, which at an even size pads a stride-2 conv after the image only, where
/// torchvision pads (k - 1) / 2 on each side. At 33 pixels every stride-2 conv sees an odd
/// size (33, 17, 9, 5, 3), where the two paddings agree; at 32 none does. Measured: 5.2e-3
/// to 1.3e-2 at 32; at 33, 9.9e-4 to 1.3e-3 for b0 to b4, 5.1e-7 at most for b5 to b7.
fn efficientnet(arch: &str, torchvision_eps: bool, build: Build) {
    let net = strictly_loaded(arch, build);
    let even = measure(&*net, arch, 32);
    let odd = measure(&*net, arch, 33);
    differs(&even, 1e-3);
    if torchvision_eps {
        differs(&odd, 1e-4);
    } else {
        assert!(
            odd.torchvision <= AGREES,
            "{}: {}",
            odd.case,
            odd.torchvision
        );
    }
}

#[test]
fn logits_differ_efficientnet_b0_in_eps_and_padding() {
    efficientnet("efficientnet_b0", true, |p| {
        Box::new(tch::vision::efficientnet::b0(p, 1000))
    });
}

#[test]
fn logits_differ_efficientnet_b1_in_eps_and_padding() {
    efficientnet("efficientnet_b1", true, |p| {
        Box::new(tch::vision::efficientnet::b1(p, 1000))
    });
}

#[test]
fn logits_differ_efficientnet_b2_in_eps_and_padding() {
    efficientnet("efficientnet_b2", true, |p| {
        Box::new(tch::vision::efficientnet::b2(p, 1000))
    });
}

#[test]
fn logits_differ_efficientnet_b3_in_eps_and_padding() {
    efficientnet("efficientnet_b3", true, |p| {
        Box::new(tch::vision::efficientnet::b3(p, 1000))
    });
}

#[test]
fn logits_differ_efficientnet_b4_in_eps_and_padding() {
    efficientnet("efficientnet_b4", true, |p| {
        Box::new(tch::vision::efficientnet::b4(p, 1000))
    });
}

#[test]
fn logits_differ_efficientnet_b5_in_padding_at_even_sizes() {
    efficientnet("efficientnet_b5", false, |p| {
        Box::new(tch::vision::efficientnet::b5(p, 1000))
    });
}

#[test]
fn logits_differ_efficientnet_b6_in_padding_at_even_sizes() {
    efficientnet("efficientnet_b6", false, |p| {
        Box::new(tch::vision::efficientnet::b6(p, 1000))
    });
}

#[test]
fn logits_differ_efficientnet_b7_in_padding_at_even_sizes() {
    efficientnet("efficientnet_b7", false, |p| {
        Box::new(tch::vision::efficientnet::b7(p, 1000))
    });
}

fn load_error(result: Result<IncompatibleKeys, Error>) -> LoadError {
    match result {
        Err(Error::Load(e)) => *e,
        other => panic!("expected a LoadError, got {other:?}"),
    }
}

#[test]
fn the_hint_for_aux_logits_names_the_retain_that_drops_them() {
    let (vs, _net) = tch_model(|p| tch::vision::inception::v3(p, 1000));
    let mut sd = torchvision_state_dict("inception_v3");
    let e = load_error(load_state_dict(&vs, &sd, true));
    assert_eq!(e.unexpected_keys, AUX_LOGITS);
    assert_eq!(
        e.hints,
        [
            "the unexpected keys all lie under \"AuxLogits.\", a submodule the model does \
             not have (14 keys); if the model is not meant to have it (an auxiliary head, \
             say), drop it first: state_dict.retain(|k, _| !k.starts_with(\"AuxLogits.\"))"
        ]
    );
    // After PyTorch's text, which it leaves as it is.
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("{}\nhint: ", e.pytorch_message())),
        "{text}"
    );
    // The hint's line, as it reads.
    sd.retain(|k, _| !k.starts_with("AuxLogits."));
    let report = load_state_dict(&vs, &sd, true).unwrap();
    assert!(report.is_empty(), "{report:?}");
}

#[test]
fn the_hint_for_legacy_densenet_keys_names_the_rename_that_makes_the_strict_load_succeed() {
    let (vs, net) = tch_model(|p| tch::vision::densenet::densenet121(p, 1000));
    let path = written("densenet").dir.join("densenet121_legacy.pth");
    let mut sd = LazyStateDict::load(path).unwrap();
    let e = load_error(load_state_dict(&vs, &sd, true));
    // 58 dense layers, each with norm1 (4 tensors), conv1, norm2 (4) and conv2.
    assert_eq!(e.unexpected_keys.len(), 580);
    assert_eq!(e.missing_keys.len(), 580);
    assert_eq!(
        e.hints,
        [
            "the checkpoint's keys use the names of torchvision's published DenseNet files (580 \
          keys, such as \"features.denseblock1.denselayer1.norm.1.weight\" for the model's \
          \"features.denseblock1.denselayer1.norm1.weight\"), which torchvision renames as it \
          loads them; rename them first: state_dict.rename(|k| k.replace(\".norm.1.\", \
          \".norm1.\").replace(\".relu.1.\", \".relu1.\").replace(\".conv.1.\", \".conv1.\")\
          .replace(\".norm.2.\", \".norm2.\").replace(\".relu.2.\", \".relu2.\")\
          .replace(\".conv.2.\", \".conv2.\"))"
        ]
    );
    // The hint's rename, as it reads.
    sd.rename(|k| {
        k.replace(".norm.1.", ".norm1.")
            .replace(".relu.1.", ".relu1.")
            .replace(".conv.1.", ".conv1.")
            .replace(".norm.2.", ".norm2.")
            .replace(".relu.2.", ".relu2.")
            .replace(".conv.2.", ".conv2.")
    })
    .unwrap();
    let report = load_state_dict(&vs, &sd, true).unwrap();
    assert!(report.is_empty(), "{report:?}");
    // densenet121's weights, so its logits (tch's, which sum where torchvision averages).
    let m = measure(&net, "densenet121", 224);
    assert!(m.like_tch.unwrap() <= AGREES, "{}", m.like_tch.unwrap());
}

#[test]
fn the_counter_rule_needs_both_running_statistics_and_is_off_for_pytorch_models() {
    use tch::Kind;
    let t = |shape: &[i64]| Tensor::zeros(shape, (Kind::Float, Device::Cpu));
    let counter = || Tensor::zeros([], (Kind::Int64, Device::Cpu));
    let sd: StateDict = [
        ("bn.running_mean", t(&[4])),
        ("bn.running_var", t(&[4])),
        ("bn.num_batches_tracked", counter()),
        ("ln.weight", t(&[4])),
        ("ln.num_batches_tracked", counter()),
    ]
    .into_iter()
    .collect();
    let build = |drops: bool| {
        let mut tree = ModuleTree::new("Net").drop_batch_norm_counters(drops);
        tree.add_tensor("bn.running_mean", t(&[4])).unwrap();
        tree.add_tensor("bn.running_var", t(&[4])).unwrap();
        tree.add_tensor("ln.weight", t(&[4])).unwrap();
        tree
    };
    // On: bn's counter is consumed; ln has no running statistics, so its counter is
    // unexpected.
    let report = load_state_dict(&build(true), &sd, false).unwrap();
    assert_eq!(report.dropped_keys, ["bn.num_batches_tracked"]);
    assert_eq!(report.unexpected_keys, ["ln.num_batches_tracked"]);
    // Off (a tree describing a PyTorch model): PyTorch's semantics, both unexpected.
    let err = load_state_dict(&build(false), &sd, true).unwrap_err();
    match err {
        Error::Load(e) => assert_eq!(
            e.unexpected_keys,
            ["bn.num_batches_tracked", "ln.num_batches_tracked"]
        ),
        other => panic!("{other:?}"),
    }
    // A bare VarStore as the target has it on; a tree built from it is off unless asked.
    let vs = nn::VarStore::new(Device::Cpu);
    let _bn = nn::batch_norm2d(vs.root() / "bn", 4, Default::default());
    assert!(!ModuleTree::from_var_store(&vs)
        .unwrap()
        .drops_batch_norm_counters());
    let bn_only: StateDict = sd
        .iter()
        .filter(|(k, _)| k.starts_with("bn."))
        .map(|(k, t)| (k.to_string(), t.shallow_clone()))
        .collect();
    let mut with_affine = bn_only.shallow_clone();
    with_affine.insert("bn.weight", t(&[4]));
    with_affine.insert("bn.bias", t(&[4]));
    let report = Checkpoint::from_bytes(
        &with_affine
            .to_bytes(tch_state_dict::Format::TorchZip)
            .unwrap(),
        &Default::default(),
    )
    .unwrap()
    .load_into(&vs, &LoadOptions::new())
    .unwrap();
    assert_eq!(report.dropped_keys, ["bn.num_batches_tracked"]);
}
