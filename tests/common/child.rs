//! Memory measured in a child process: the test binary runs one of its own ignored tests
//! (`child`) with a path in an environment variable, and the child prints one line,
//! `budget: name=value name=value ... outcome=<the rest>`, which the parent reads back.
//! Peak RSS is per process, so each measurement has a process of its own.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tch_state_dict::Value;

/// The bytes of the tensors in `v`, each counted once per appearance, objects' arguments,
/// state and items included.
pub fn tensor_bytes(v: &Value) -> u64 {
    match v {
        Value::Tensor(t) => (t.numel() * t.kind().elt_size_in_bytes()) as u64,
        Value::List(items) | Value::Tuple(items) | Value::Set(items) => {
            items.iter().map(tensor_bytes).sum()
        }
        Value::Dict(d) => d
            .items
            .iter()
            .map(|(k, v)| tensor_bytes(k) + tensor_bytes(v))
            .sum(),
        Value::Object(o) => {
            o.args().iter().map(tensor_bytes).sum::<u64>()
                + o.state().map_or(0, tensor_bytes)
                + o.list_items().iter().map(tensor_bytes).sum::<u64>()
                + o.dict_items()
                    .iter()
                    .map(|(k, v)| tensor_bytes(k) + tensor_bytes(v))
                    .sum::<u64>()
        }
        _ => 0,
    }
}

/// The line a child printed after `budget: `.
pub struct Reported {
    path: PathBuf,
    line: String,
}

impl Reported {
    /// The value of field `name` (`name=value`, before `outcome=`).
    pub fn field(&self, name: &str) -> &str {
        let fields = self
            .line
            .split_once("outcome=")
            .map_or(&*self.line, |s| s.0);
        fields
            .split(' ')
            .find_map(|f| f.strip_prefix(name).and_then(|f| f.strip_prefix('=')))
            .unwrap_or_else(|| panic!("{}: no {name} in {}", self.path.display(), self.line))
    }

    /// Field `name` as a number.
    pub fn num<T: std::str::FromStr>(&self, name: &str) -> T {
        let value = self.field(name);
        value
            .parse()
            .unwrap_or_else(|_| panic!("{}: {name}={value} is not a number", self.path.display()))
    }

    /// What follows `outcome=`: `ok` or the error.
    pub fn outcome(&self) -> String {
        let (_, outcome) = self
            .line
            .split_once("outcome=")
            .unwrap_or_else(|| panic!("{}: no outcome in {}", self.path.display(), self.line));
        outcome.to_string()
    }
}

/// Runs this test binary's `child` test with `var` set to `path` (and `env`), kills it
/// after `hang` if given (a panic naming the path), and returns what it reported. A child
/// that fails or reports nothing fails the test with its output.
pub fn run_child(
    var: &str,
    path: &Path,
    env: &[(&str, String)],
    hang: Option<Duration>,
) -> Reported {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", "child", "--include-ignored", "--nocapture"])
        .env(var, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    // Both pipes drained as the child writes, so that a long output cannot block it.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if hang.is_some_and(|h| start.elapsed() > h) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!(
                "{}: still running after {} s",
                path.display(),
                hang.unwrap().as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().unwrap();
    let stderr = stderr.join().unwrap();
    assert!(
        status.success(),
        "{}: the child failed ({status}): {stdout}\n{stderr}",
        path.display()
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("budget: "))
        .unwrap_or_else(|| panic!("{}: no result in {stdout}", path.display()))
        .to_string();
    Reported {
        path: path.to_path_buf(),
        line,
    }
}

/// A thread that reads `pipe` to its end.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_string(&mut s);
        }
        s
    })
}

/// `measure` of each path, two children at a time (the machine's cores), each result with
/// its path, sorted by path.
pub fn two_at_a_time<T: Send>(
    paths: &[PathBuf],
    measure: impl Fn(&Path) -> T + Sync,
) -> Vec<(PathBuf, T)> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(path) = paths.get(i) else { break };
                let m = measure(path);
                results.lock().unwrap().push((path.clone(), m));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by(|a, b| a.0.cmp(&b.0));
    results
}
