//! The `tch-state-dict` tool, run as a person runs it: the built binary, its stdout, stderr
//! and exit code, for each command and its failures.

mod common;

use common::tempdir;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value as Json};

use tch::{nn, Device, Kind, Tensor};
use tch_state_dict::models::{Arch, ResNet};
use tch_state_dict::{load_state_dict, state_dict, StateDict, Value};

use common::{hashes, test_file};

/// What a run of the binary gave.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_tch-state-dict"))
        .args(args)
        .output()
        .expect("start tch-state-dict");
    Run {
        code: out.status.code().expect("an exit code, not a signal"),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// What Python's `load_state_dict` did in one case: raised (the error's text) or returned
/// (the report's repr).
#[derive(Debug, PartialEq)]
enum Said {
    Error(String),
    Report(String),
}

/// What PyTorch says for each case `(name, checkpoint, key, classes, strict)`: the Python
/// resnet8 of `classes` classes (tests/oracle/resnets.py) loading the checkpoint's state dict
/// (under `key`). One call of the oracle for all of them.
fn pytorch_says(cases: &[(&str, &Path, Option<&str>, i64, bool)]) -> HashMap<String, Said> {
    let input: Json = cases
        .iter()
        .map(|(name, path, key, classes, strict)| {
            json!({ "name": name, "arch": "resnet8", "classes": classes, "path": path,
                    "key": key, "strict": strict })
        })
        .collect();
    let out = common::oracle("oracle/resnets.py", &["load_messages"], &input.to_string());
    let out: Json = serde_json::from_str(&out).expect("JSON from the oracle");
    cases
        .iter()
        .map(|(name, ..)| {
            let r = &out[*name];
            let said = match (r["error"].as_str(), r["report"].as_str()) {
                (Some(e), None) => Said::Error(e.to_string()),
                (None, Some(report)) => Said::Report(report.to_string()),
                _ => panic!("{name}: {r}"),
            };
            (name.to_string(), said)
        })
        .collect()
}

/// PyTorch's error text in `said`.
fn error_text(said: &Said) -> &str {
    match said {
        Said::Error(e) => e,
        other => panic!("PyTorch raised no error: {other:?}"),
    }
}

/// A resnet8 training checkpoint `{'model': state_dict, 'epoch': 240}` with `classes`
/// classes, written under `dir`.
fn resnet8_checkpoint(dir: &Path, classes: i64) -> PathBuf {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ResNet::new(&vs, Arch::ResNet8, classes).expect("resnet8");
    let sd = state_dict(&model).expect("state dict");
    let path = dir.join(format!("resnet8_{classes}.pth"));
    Value::dict([("model", Value::from(sd)), ("epoch", Value::from(240))])
        .save(&path)
        .expect("save checkpoint");
    path
}

fn tensor(values: &[f32], shape: &[i64]) -> Tensor {
    Tensor::from_slice(values).reshape(shape)
}

#[test]
fn help_and_version() {
    let r = run(&["--help"]);
    assert_eq!(r.code, 0);
    for command in ["inspect", "convert", "check", "diff"] {
        assert!(r.stdout.contains(command), "{}", r.stdout);
    }
    let r = run(&["--version"]);
    assert_eq!(r.code, 0);
    assert_eq!(
        r.stdout,
        format!("tch-state-dict {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn usage_errors_exit_2() {
    let r = run(&[]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("Usage: tch-state-dict"), "{}", r.stderr);
    let ckpt = test_file("fixtures/pytorch/checkpoint.pth");
    let r = run(&["check", s(&ckpt), "--arch", "resnet9", "--classes", "10"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("no architecture \"resnet9\"; one of resnet18, resnet34"),
        "{}",
        r.stderr
    );
    let r = run(&["check", s(&ckpt), "--arch", "resnet8", "--classes", "0"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--classes"), "{}", r.stderr);
}

#[test]
fn inspect_prints_the_tree() {
    let ckpt = test_file("fixtures/pytorch/checkpoint.pth");
    let r = run(&["inspect", s(&ckpt)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stderr, "");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines[0],
        format!("{} (TorchZip, 9 tensors)", ckpt.display())
    );
    assert_eq!(lines[1], "dict of 10 items");
    assert_eq!(
        lines[2],
        "  \"model\"      OrderedDict of 8 items, 8 tensors, 2504 bytes, _metadata for 4 modules"
    );
    assert_eq!(
        lines[3],
        "    \"conv1.weight\"             tensor torch.Size([4, 3, 3, 3]) float32 (432 bytes)"
    );
    assert!(
        r.stdout.contains("\n  \"epoch\"      240\n"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("\n  \"name\"       \"resnet50\"\n"));

    let r = run(&["inspect", s(&ckpt), "--key", "model"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines[1],
        "[\"model\"]  OrderedDict of 8 items, 8 tensors, 2504 bytes, _metadata for 4 modules"
    );
    assert_eq!(lines.len(), 10);

    let st = test_file("fixtures/pytorch/model.safetensors");
    let r = run(&["inspect", s(&st)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("__metadata__: {\"format\": \"pt\", \"source\": \"fixtures\"}"),
        "{}",
        r.stdout
    );
}

/// A tensor of a dtype this crate cannot read is listed with PyTorch's dtype name, not
/// refused; converting the file names the entry that cannot be written.
#[test]
fn inspect_lists_a_dtype_it_cannot_read() {
    let path = test_file("fixtures/pytorch/unsupported_nested.pth");
    let r = run(&["inspect", s(&path)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for line in [
        "\"u64\"     tensor torch.Size([2]) uint64 (a dtype this crate cannot read)",
        "\"c32\"     tensor torch.Size([2]) complex32 (a dtype this crate cannot read)",
        "\"weight\"  tensor torch.Size([2, 3]) float32 (24 bytes)",
    ] {
        assert!(r.stdout.contains(line), "{line}\n{}", r.stdout);
    }
    let dir = tempdir("unsupported");
    let r = run(&[
        "convert",
        s(&path),
        s(&dir.join("out.safetensors")),
        "--key",
        "model",
    ]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(
        r.stderr.contains("u16: unsupported dtype torch.uint16"),
        "{}",
        r.stderr
    );
}

#[test]
fn inspect_errors_are_displayed_and_exit_2() {
    let missing = test_file("fixtures/pytorch/no_such_file.pth");
    let r = run(&["inspect", s(&missing)]);
    assert_eq!(r.code, 2);
    assert_eq!(r.stdout, "");
    assert_eq!(
        r.stderr,
        format!(
            "error: {}: No such file or directory (os error 2)\n",
            missing.display()
        )
    );

    // A file PyTorch refuses too: a Git LFS pointer.
    let lfs = test_file("fixtures/hostile/lfs_pointer.pth");
    let r = run(&["inspect", s(&lfs)]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.starts_with(&format!(
            "error: {}: this is a Git LFS pointer",
            lfs.display()
        )),
        "{}",
        r.stderr
    );
    // Display, not Debug.
    assert!(!r.stderr.contains("LfsPointer"), "{}", r.stderr);

    let ckpt = test_file("fixtures/pytorch/checkpoint.pth");
    let r = run(&["inspect", s(&ckpt), "--key", "modle"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("no key \"modle\" at the top level; its keys are [\"model\","),
        "{}",
        r.stderr
    );
}

#[test]
fn convert_between_pth_and_safetensors() {
    let dir = tempdir("convert");
    let ckpt = test_file("fixtures/pytorch/checkpoint.pth");
    let expected = StateDict::load_key(&ckpt, "model").expect("fixture");

    let st = dir.join("model.safetensors");
    let r = run(&["convert", s(&ckpt), s(&st), "--key", "model"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        format!(
            "wrote 8 tensors (2.45 KiB) to {} (safetensors)\n",
            st.display()
        )
    );
    assert_eq!(r.stderr, "");
    let mut got = hashes(&StateDict::load(&st).expect("read back"));
    let mut want = hashes(&expected);
    got.sort();
    want.sort();
    assert_eq!(got, want);

    // And back: a torch.save file with the same tensors, in safetensors' order.
    let pth = dir.join("back.pth");
    let r = run(&["convert", s(&st), s(&pth)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        format!(
            "wrote 8 tensors (2.45 KiB) to {} (torch.save)\n",
            pth.display()
        )
    );
    let back = StateDict::load(&pth).expect("read back");
    assert_eq!(
        hashes(&back),
        hashes(&StateDict::load(&st).expect("safetensors"))
    );
}

#[test]
fn convert_to_ot_loads_into_a_var_store() {
    let dir = tempdir("ot");
    let mut sd = StateDict::new();
    sd.insert("fc.weight", common::arange(&[3, 4], 0.0));
    sd.insert("fc.bias", common::arange(&[3], 100.0));
    let pth = dir.join("fc.pth");
    sd.save(&pth).expect("save");

    let ot = dir.join("fc.ot");
    let r = run(&["convert", s(&pth), s(&ot)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        format!(
            "wrote 2 tensors (60 B) to {} (tch VarStore)\n",
            ot.display()
        )
    );

    // tch's own reader gives the names back with dots, and VarStore::load takes the file.
    let named = Tensor::load_multi(&ot).expect("tch reads the .ot");
    let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["fc.weight", "fc.bias"]);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let fc = nn::linear(vs.root() / "fc", 4, 3, Default::default());
    vs.load(&ot).expect("VarStore::load");
    assert!(fc.ws.equal(sd.get("fc.weight").unwrap()));
    assert!(fc.bs.unwrap().equal(sd.get("fc.bias").unwrap()));
    // No temporary file is left beside it.
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["fc.ot", "fc.pth"]);
}

#[test]
fn convert_refuses_an_unknown_extension_and_unreadable_input() {
    let dir = tempdir("convert-errors");
    let ckpt = test_file("fixtures/pytorch/checkpoint.pth");
    let out = dir.join("model.npz");
    let r = run(&["convert", s(&ckpt), s(&out), "--key", "model"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.starts_with(&format!(
            "error: {}: cannot tell the format to write from the extension",
            out.display()
        )),
        "{}",
        r.stderr
    );
    assert!(!out.exists());

    // The top level of a training checkpoint is not a state dict: say which key is.
    let out = dir.join("model.pth");
    let r = run(&["convert", s(&ckpt), s(&out)]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("the top-level object is not a state dict"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.ends_with("\nhint: pass --key model\n"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
    // A state dict under an integer key: no hint says to pass what --key cannot name.
    let int_keyed = dir.join("int_keyed.pth");
    common::oracle_code(
        "import collections, sys, torch\n\
         torch.save({0: collections.OrderedDict(w=torch.ones(1)), '1': 2}, sys.argv[1])",
        &[s(&int_keyed)],
    );
    let r = run(&["convert", s(&int_keyed), s(&out)]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.ends_with(
            "\nhint: the state dict is under the key 0, which is no string and which --key \
             cannot name; convert --objects writes the whole checkpoint\n"
        ),
        "{}",
        r.stderr
    );
    assert!(!out.exists());

    let truncated = test_file("fixtures/hostile/truncated_zip.pth");
    let r = run(&["convert", s(&truncated), s(&out)]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .starts_with(&format!("error: {}: ", truncated.display())),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
}

#[test]
fn convert_over_64_mib_reads_tensor_by_tensor() {
    let dir = tempdir("convert-large");
    let mut sd = StateDict::new();
    // 72 MiB in two tensors, and a small one between them.
    sd.insert("a", Tensor::randn([9 << 20], (Kind::Float, Device::Cpu)));
    sd.insert("b", tensor(&[1.0, 2.0], &[2]));
    sd.insert("c", Tensor::randn([9 << 20], (Kind::Float, Device::Cpu)));
    let st = dir.join("large.safetensors");
    sd.save(&st).expect("save");
    let pth = dir.join("large.pth");
    let r = run(&["convert", s(&st), s(&pth)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        format!(
            "wrote 3 tensors (72.00 MiB) to {} (torch.save)\n",
            pth.display()
        )
    );
    // The bar draws on a terminal only.
    assert_eq!(r.stderr, "");
    let mut got = hashes(&StateDict::load(&pth).expect("read back"));
    let mut want = hashes(&sd);
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn check_prints_what_load_state_dict_would() {
    let dir = tempdir("check");
    let ckpt = resnet8_checkpoint(&dir, 100);
    let python = pytorch_says(&[
        ("fits", &ckpt, Some("model"), 100, true),
        ("strict", &ckpt, Some("model"), 10, true),
        ("not strict", &ckpt, Some("model"), 10, false),
    ]);

    let r = run(&[
        "check",
        s(&ckpt),
        "--key",
        "model",
        "--arch",
        "resnet8",
        "--classes",
        "100",
    ]);
    let Said::Report(fits) = &python["fits"] else {
        panic!("{:?}", python["fits"])
    };
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (0, format!("{fits}\n").as_str(), "")
    );

    // A 10-class model: PyTorch's message and the hints, exactly as load_state_dict's error
    // prints them, and exit 1. --no-strict does not help: shapes are checked either way.
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ResNet::new(&vs, Arch::ResNet8, 10).expect("resnet8");
    let sd = StateDict::load_key(&ckpt, "model").expect("state dict");
    let expected = load_state_dict(&model, &sd, false).unwrap_err().to_string();
    for (strictness, case) in [("--strict", "strict"), ("--no-strict", "not strict")] {
        let pytorch = error_text(&python[case]);
        assert!(pytorch.contains("size mismatch for fc.weight"), "{pytorch}");
        assert_hints_follow(&expected, pytorch);
        let r = run(&[
            "check",
            s(&ckpt),
            "--key",
            "model",
            "--arch",
            "resnet8",
            "--classes",
            "10",
            strictness,
        ]);
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert_eq!(r.stdout, format!("{expected}\n"));
        assert_eq!(r.stderr, "");
    }
}

/// `text` is PyTorch's `pytorch` text, then nothing but this crate's hints.
fn assert_hints_follow(text: &str, pytorch: &str) {
    let rest = text
        .strip_prefix(pytorch)
        .unwrap_or_else(|| panic!("PyTorch says\n{pytorch}\nthe tool\n{text}"));
    assert!(
        rest.lines()
            .all(|l| l.is_empty() || l.starts_with("hint: ")),
        "after PyTorch's text: {rest:?}"
    );
}

#[test]
fn check_strict_and_not() {
    let dir = tempdir("check-strict");
    let full = resnet8_checkpoint(&dir, 10);
    // The head popped, as for fine-tuning.
    let mut sd = StateDict::load_key(&full, "model").expect("state dict");
    sd.pop("fc.weight");
    sd.pop("fc.bias");
    let headless = dir.join("headless.safetensors");
    sd.save(&headless).expect("save");
    let python = pytorch_says(&[
        ("not strict", &headless, None, 7, false),
        ("strict", &headless, None, 7, true),
    ]);

    let r = run(&[
        "check",
        s(&headless),
        "--arch",
        "resnet8",
        "--classes",
        "7",
        "--no-strict",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let Said::Report(report) = &python["not strict"] else {
        panic!("{:?}", python["not strict"])
    };
    assert!(
        report.contains("missing_keys=['fc.weight', 'fc.bias']"),
        "{report}"
    );
    assert_eq!(r.stdout, format!("{report}\n"));
    let pytorch = error_text(&python["strict"]);
    assert!(
        pytorch.contains("Missing key(s) in state_dict"),
        "{pytorch}"
    );
    // Strict is the default, as in PyTorch; the last of --strict and --no-strict wins.
    for args in [&[][..], &["--strict"][..], &["--no-strict", "--strict"][..]] {
        let mut all = vec!["check", s(&headless), "--arch", "resnet8", "--classes", "7"];
        all.extend_from_slice(args);
        let r = run(&all);
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert_hints_follow(&r.stdout, pytorch);
    }

    // Unreadable input is an error (2), not a "no" (1).
    let r = run(&[
        "check",
        s(&dir.join("gone.pth")),
        "--arch",
        "resnet8",
        "--classes",
        "7",
    ]);
    assert_eq!(r.code, 2);
    assert_eq!(r.stdout, "");
    assert!(r.stderr.starts_with("error: "), "{}", r.stderr);
    let r = run(&["check", s(&full), "--arch", "resnet8", "--classes", "10"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.ends_with("\nhint: pass --key model\n"),
        "{}",
        r.stderr
    );
}

#[test]
fn diff_identical_files_exit_0() {
    let dir = tempdir("diff-same");
    let ckpt = test_file("fixtures/pytorch/checkpoint.pth");
    let st = dir.join("model.safetensors");
    assert_eq!(
        run(&["convert", s(&ckpt), s(&st), "--key", "model"]).code,
        0
    );
    let r = run(&["diff", s(&ckpt), s(&st), "--key-a", "model"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        r.stdout,
        format!(
            "a: {}[\"model\"]: 8 tensors, 2.45 KiB\nb: {}: 8 tensors, 2.45 KiB\n8 of 8 common \
             tensors equal (keys in another order)\n",
            ckpt.display(),
            st.display()
        )
    );
    // --key applies to both files.
    let r = run(&["diff", s(&ckpt), s(&ckpt), "--key", "model"]);
    assert_eq!(r.code, 0);
    assert!(
        r.stdout.ends_with("\n8 of 8 common tensors equal\n"),
        "{}",
        r.stdout
    );
}

#[test]
fn diff_lists_every_difference_and_exits_1() {
    let dir = tempdir("diff");
    let nan = f32::NAN;
    let mut a = StateDict::new();
    a.insert("same", tensor(&[1.0, nan, f32::INFINITY], &[3]));
    a.insert("weight", tensor(&[0.0, 1.0, 2.0, 3.0], &[2, 2]));
    a.insert("only_a", tensor(&[1.0], &[1]));
    a.insert("half", tensor(&[0.5, 1.5], &[2]));
    a.insert("reshaped", tensor(&[1.0, 2.0, 3.0, 4.0], &[4]));
    a.insert("counter", Tensor::from(240i64));
    let mut b = StateDict::new();
    b.insert("same", tensor(&[1.0, nan, f32::INFINITY], &[3]));
    b.insert("weight", tensor(&[0.0, 1.0, 2.25, 3.0], &[2, 2]));
    b.insert("half", tensor(&[0.5, 1.5], &[2]).to_kind(Kind::Half));
    b.insert("reshaped", tensor(&[1.0, 2.0, 3.0, 4.0], &[2, 2]));
    b.insert("counter", Tensor::from(250i64));
    b.insert("only_b.weight", tensor(&[1.0, 2.0], &[1, 2]));
    let (pa, pb) = (dir.join("a.pth"), dir.join("b.pth"));
    a.save(&pa).expect("save a");
    b.save(&pb).expect("save b");

    let r = run(&["diff", s(&pa), s(&pb)]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.stderr, "");
    assert_eq!(
        r.stdout,
        format!(
            "a: {}: 6 tensors, 64 B\n\
             b: {}: 6 tensors, 64 B\n\
             only in a (1):\n  \
               only_a  [1] float32\n\
             only in b (1):\n  \
               only_b.weight  [1, 2] float32\n\
             shape differs (1):\n  \
               reshaped  [4] float32 in a, [2, 2] float32 in b\n\
             dtype differs (1):\n  \
               half  float32 in a, float16 in b, max |a - b| = 0\n\
             values differ (2):\n  \
               weight   max |a - b| = 2.500e-1\n  \
               counter  max |a - b| = 10\n\
             1 of 5 common tensors equal\n",
            pa.display(),
            pb.display()
        )
    );

    // NaN against a number is a difference, shown as NaN.
    let mut c = StateDict::new();
    c.insert("x", tensor(&[1.0, 2.0], &[2]));
    let mut d = StateDict::new();
    d.insert("x", tensor(&[1.0, nan], &[2]));
    let (pc, pd) = (dir.join("c.safetensors"), dir.join("d.safetensors"));
    c.save(&pc).expect("save c");
    d.save(&pd).expect("save d");
    let r = run(&["diff", s(&pc), s(&pd)]);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.contains("\n  x  max |a - b| = NaN\n"),
        "{}",
        r.stdout
    );

    let r = run(&["diff", s(&pa), s(&dir.join("missing.pth"))]);
    assert_eq!(r.code, 2);
    assert_eq!(r.stdout, "");
    assert!(r.stderr.starts_with("error: "), "{}", r.stderr);
}

/// The tool takes DCP directories wherever it takes a checkpoint: inspect prints the nested
/// value, convert writes the state dict under a key, diff compares it with what
/// `dcp_to_torch_save` wrote, and check loads it into nothing it does not fit.
#[test]
fn the_tool_reads_dcp_directories() {
    let dcp = test_file("fixtures/distributed/fsdp2");
    let converted = test_file("fixtures/distributed/fsdp2.pt");
    let r = run(&["inspect", s(&dcp)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .starts_with(&format!("{} (Distributed, ", dcp.display())),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("\"fc1.weight\""), "{}", r.stdout);
    let dir = tempdir("dcp");
    let out = dir.join("model.safetensors");
    let r = run(&["convert", s(&dcp), s(&out), "--key", "model"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(&["diff", s(&out), s(&converted), "--key-b", "model"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let r = run(&[
        "diff",
        s(&dcp.join(".metadata")),
        s(&converted),
        "--key",
        "model",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.ends_with("5 of 5 common tensors equal\n"),
        "{}",
        r.stdout
    );
}

#[test]
fn inspect_reads_values_that_refer_to_themselves() {
    // A Lightning checkpoint whose hyper_parameters are omegaconf configs: each node's
    // `_parent` refers back to the node that holds it.
    let path = common::test_file("fixtures/training/lightning_hydra.ckpt");
    for args in [
        vec!["inspect", s(&path)],
        vec!["inspect", s(&path), "--key", "hyper_parameters"],
    ] {
        let r = run(&args);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        assert!(
            r.stdout.contains("object omegaconf.dictconfig.DictConfig"),
            "{}",
            r.stdout
        );
        assert!(r.stdout.contains("._parent  ..."), "{}", r.stdout);
    }
    let r = run(&[
        "inspect",
        s(&common::test_file("fixtures/training/cycles.pth")),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("\"self\"  {...}"), "{}", r.stdout);
    assert!(r.stdout.contains("[2]  [...]"), "{}", r.stdout);
}

#[test]
fn check_and_convert_take_a_torch_fx_graph_module() {
    let dir = tempdir("fx");
    let path = dir.join("resnet18_fx.pth");
    common::oracle(
        "oracle/full_load.py",
        &["save_model", "resnet18", "10", s(&path), "", "fx"],
        "",
    );
    let r = run(&["check", s(&path), "--arch", "resnet18", "--classes", "10"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let out = dir.join("resnet18.safetensors");
    let r = run(&["convert", s(&path), s(&out)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let converted = StateDict::load(&out).unwrap();
    let read = StateDict::load(&path).unwrap();
    assert_eq!(converted.len(), read.len());
    for (k, t) in read.iter() {
        assert!(converted.get(k).unwrap().equal(t), "{k}");
    }
}

#[test]
fn convert_with_objects_writes_a_training_checkpoint_back_as_it_came() {
    let dir = tempdir("objects");
    let input = common::test_file("fixtures/training/lightning_hydra.ckpt");
    let out = dir.join("resumed.ckpt");
    let r = run(&["convert", s(&input), s(&out), "--objects"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("with its objects"), "{}", r.stdout);
    // Python reads the same tensors, scalars and cycles from both.
    let flat: Json = serde_json::from_str(&common::oracle(
        "oracle/full_load.py",
        &["flatten_all", s(&input), s(&out)],
        "",
    ))
    .unwrap();
    assert_eq!(flat[s(&input)], flat[s(&out)]);
    // Under a key: the value there, whole.
    let hp = dir.join("hparams.pth");
    let r = run(&[
        "convert",
        s(&input),
        s(&hp),
        "--objects",
        "--key",
        "hyper_parameters",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = Value::load(&hp).unwrap();
    assert_eq!(
        v.as_object().unwrap().qualified_name(),
        "fakepkg.AttributeDict"
    );
    // Under a key, only that value is read: the rest of this file holds dtypes this crate
    // cannot read.
    let nested = test_file("fixtures/pytorch/unsupported_nested.pth");
    let epoch = dir.join("epoch.pth");
    let args = ["--objects", "--key", "epoch"];
    let r = run(&[&["convert", s(&nested), s(&epoch)][..], &args].concat());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(matches!(Value::load(&epoch).unwrap(), Value::Int(_)));
    // Objects have no place in safetensors; without --objects, they are refused.
    let r = run(&[
        "convert",
        s(&input),
        s(&dir.join("x.safetensors")),
        "--objects",
    ]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("--objects writes torch.save's format only"),
        "{}",
        r.stderr
    );
    let r = run(&["convert", s(&input), s(&dir.join("x.pth"))]);
    assert_eq!(r.code, 2, "{}", r.stdout);
}
