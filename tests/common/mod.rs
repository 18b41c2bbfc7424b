//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod child;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value as Json};

use tch::{Device, Kind, Tensor};
use tch_state_dict::{ModuleTree, StateDict, Value};

/// The `Small` model of tests/fixtures/make_training.py (a bias-free conv, a BatchNorm, a
/// Linear of `classes` outputs), built the tch way in `vs`.
pub fn small_model(vs: &tch::nn::VarStore, classes: i64) {
    use tch::nn;
    let root = vs.root();
    let conv = nn::ConvConfig {
        bias: false,
        ..Default::default()
    };
    let _ = nn::conv2d(&root / "conv1", 3, 4, 3, conv);
    let _ = nn::batch_norm2d(&root / "bn1", 4, Default::default());
    let _ = nn::linear(&root / "linear", 4, classes, Default::default());
}

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

/// Runs `script` (a path under `tests/`) with `args`, feeding `stdin`, in a Python process of
/// its own; returns stdout and panics with stderr when the script fails. [`oracle`] runs the
/// same call in the test binary's one Python process, without importing torch again: use this
/// one only for a script that needs a process of its own (one that starts processes).
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

/// A fresh directory under the system's temp dir, named for the test binary and `tag`, and
/// removed with everything in it when the value is dropped: at the end of the test, and when
/// it panics. It dereferences to its [`Path`].
pub fn tempdir(tag: &str) -> TestDir {
    let exe = std::env::current_exe().ok();
    let binary = exe
        .as_ref()
        .and_then(|p| p.file_stem())
        .and_then(|s| s.to_str())
        .and_then(|s| s.split('-').next())
        .unwrap_or("test");
    let dir = tempfile::Builder::new()
        .prefix(&format!("tch-state-dict-{binary}-{tag}-"))
        .tempdir()
        .expect("create a temporary directory");
    TestDir(dir)
}

/// A temporary directory of a test, removed when dropped ([`tempdir`]).
pub struct TestDir(tempfile::TempDir);

impl std::ops::Deref for TestDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
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

/// The dtype name, shape and contiguous bytes (hex) of a tensor, as the oracles record them
/// (tests/fixtures/expected.json, tests/oracle/full_load.py).
pub fn record(t: &Tensor) -> (String, Vec<i64>, String) {
    let c = t.to_device(Device::Cpu).contiguous();
    let numel = c.numel();
    let mut bytes = vec![0u8; numel * c.kind().elt_size_in_bytes()];
    if numel > 0 {
        c.copy_data_u8(&mut bytes, numel);
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    (
        tch_state_dict::dtype_name(c.kind()).to_string(),
        c.size(),
        hex,
    )
}

/// A field of `/proc/self/status` given in kB (`VmHWM:`, `VmRSS:`), in bytes.
pub fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a number in {line:?}"));
    kb * 1024
}

/// The peak resident set of this process (`VmHWM`), in bytes.
pub fn peak_rss() -> u64 {
    status_bytes("VmHWM:")
}

/// Resets the peak resident set of this process to its current resident set, through
/// `/proc/self/clear_refs` (Linux 4.0 and later); returns the resident set it starts from, or
/// `None` when the reset is not possible here (no such file, or not writable), in which case
/// a growth measured from now would leave out what an earlier peak hides.
pub fn reset_peak_rss() -> Option<u64> {
    std::fs::write("/proc/self/clear_refs", "5").ok()?;
    Some(status_bytes("VmRSS:"))
}

/// Says that `what` was not checked, and why, on the test binary's stderr itself: seen in
/// the output of a passing test too, which captures `eprintln!`.
pub fn skipped(what: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {what}: {why}");
}

/// Why a bound on peak RSS growth is skipped where [`reset_peak_rss`] fails.
pub const NO_RESET: &str = "/proc/self/clear_refs cannot be written here, so the child could \
                            not reset its peak RSS before the read, and the growth it measured \
                            may be short of the real one";

/// The test binary's Python process for oracle calls (tests/oracle/serve.py).
struct Oracle {
    child: Child,
    requests: ChildStdin,
    replies: BufReader<ChildStdout>,
    /// What the process wrote to its stderr outside of calls (C++ output, a crash).
    stderr: Arc<Mutex<String>>,
}

impl Oracle {
    fn start() -> Oracle {
        let mut child = Command::new(python())
            .arg(test_file("oracle/serve.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start python");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Oracle {
            requests: child.stdin.take().expect("stdin"),
            replies: BufReader::new(child.stdout.take().expect("stdout")),
            child,
            stderr,
        }
    }

    /// Sends one request; the reply, or why there is none (the process is gone).
    fn call(&mut self, request: &Json) -> Result<Json, String> {
        let mut line = request.to_string();
        line.push('\n');
        self.requests
            .write_all(line.as_bytes())
            .and_then(|()| self.requests.flush())
            .map_err(|e| format!("writing the request: {e}"))?;
        let mut reply = String::new();
        match self.replies.read_line(&mut reply) {
            Ok(0) => Err(format!("no reply; {}", self.exit())),
            Ok(_) => serde_json::from_str(&reply).map_err(|e| format!("reply {reply:?}: {e}")),
            Err(e) => {
                let _ = self.child.kill();
                Err(format!("reading the reply: {e}; {}", self.exit()))
            }
        }
    }

    /// How the process ended, once it has (its stdout is closed, or it was killed).
    fn exit(&mut self) -> String {
        let status = self.child.wait().map(|s| s.to_string());
        let stderr = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        format!("python exited ({status:?}):\n{stderr}")
    }
}

/// Runs `script` (a path under `tests/`) with `args`, feeding `stdin`, as `python script args`
/// would, in the Python process this test binary shares for such calls (started on first
/// use, torch imported once); returns stdout, and panics with the traceback and stderr when
/// the script fails. Calls from tests running at once take turns.
pub fn oracle(script: &str, args: &[&str], stdin: &str) -> String {
    let request = json!({ "script": test_file(script), "args": args, "stdin": stdin });
    serve(&request, script)
}

/// [`oracle`] for a snippet: runs `code` as `python -c code args` would.
pub fn oracle_code<S: AsRef<str>>(code: &str, args: &[S]) -> String {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let request = json!({ "code": code, "args": args, "stdin": "" });
    serve(&request, "python -c")
}

fn serve(request: &Json, what: &str) -> String {
    static ORACLE: Mutex<Option<Oracle>> = Mutex::new(None);
    let reply = {
        let mut slot = ORACLE.lock().unwrap_or_else(|e| e.into_inner());
        let oracle = slot.get_or_insert_with(Oracle::start);
        let reply = oracle.call(request);
        if reply.is_err() {
            // The next call starts a new process.
            *slot = None;
        }
        reply
    };
    let reply = reply.unwrap_or_else(|e| panic!("{what}: the oracle process failed: {e}"));
    let text = |field: &str| reply[field].as_str().unwrap_or_default().to_string();
    assert!(
        reply["ok"].as_bool() == Some(true),
        "{what} failed:\n{}\n{}",
        text("error"),
        text("stderr")
    );
    text("stdout")
}

/// Where `a` and `b` differ, as values: tensors by dtype, shape and every byte; containers
/// item by item in order; anything else by Python's repr.
pub fn value_difference(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Tensor(x), Value::Tensor(y)) => {
            if x.kind() != y.kind() || x.size() != y.size() {
                return Some(format!(
                    "{at}: {:?} {:?} against {:?} {:?}",
                    x.kind(),
                    x.size(),
                    y.kind(),
                    y.size()
                ));
            }
            (hash_tensor(x) != hash_tensor(y)).then(|| format!("{at}: other values"))
        }
        (Value::Dict(x), Value::Dict(y)) => {
            if x.items.len() != y.items.len() {
                let keys = |d: &tch_state_dict::Dict| {
                    d.items
                        .iter()
                        .map(|(k, _)| k.to_string())
                        .collect::<Vec<_>>()
                };
                return Some(format!("{at}: keys {:?} against {:?}", keys(x), keys(y)));
            }
            x.items
                .iter()
                .zip(&y.items)
                .find_map(|((ka, va), (kb, vb))| {
                    if ka.to_string() != kb.to_string() {
                        return Some(format!("{at}: key {ka} against {kb}"));
                    }
                    value_difference(va, vb, &format!("{at}[{ka}]"))
                })
        }
        (Value::List(x), Value::List(y)) | (Value::Tuple(x), Value::Tuple(y)) => {
            if x.len() != y.len() {
                return Some(format!("{at}: {} items against {}", x.len(), y.len()));
            }
            x.iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (p, q))| value_difference(p, q, &format!("{at}[{i}]")))
        }
        _ => (a.to_string() != b.to_string()).then(|| format!("{at}: {a} against {b}")),
    }
}
