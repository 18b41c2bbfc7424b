//! What a load logs through the `log` facade: missing, unexpected and skipped keys at `warn`
//! (summarized when long), consumed BatchNorm counters at `info`, and each file's format,
//! size and parse time at `debug`. One logger per process, so this file has one test.

mod common;

use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};
use tch::{nn, Device, Kind, Tensor};
use tch_state_dict::{load_state_dict, LazyStateDict, LoadOptions, StateDict};

struct Capture(Mutex<Vec<(Level, String)>>);

impl Log for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        if record.target().starts_with("tch_state_dict") {
            self.0
                .lock()
                .unwrap()
                .push((record.level(), record.args().to_string()));
        }
    }

    fn flush(&self) {}
}

static LOGGER: Capture = Capture(Mutex::new(Vec::new()));

fn take() -> Vec<(Level, String)> {
    std::mem::take(&mut *LOGGER.0.lock().unwrap())
}

#[test]
fn loads_log_what_they_leave_out() {
    log::set_logger(&LOGGER).unwrap();
    log::set_max_level(LevelFilter::Debug);
    let vs = nn::VarStore::new(Device::Cpu);
    for i in 0..20 {
        let _ = nn::linear(vs.root() / format!("layer{i}"), 2, 2, Default::default());
    }
    // A state dict with half the model and keys the model lacks.
    let mut sd = StateDict::new();
    for i in 0..10 {
        sd.insert(
            format!("layer{i}.weight"),
            Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)),
        );
        sd.insert(
            format!("other{i}.weight"),
            Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)),
        );
    }
    take();
    load_state_dict(&vs, &sd, false).unwrap();
    let records = take();
    let warns: Vec<&String> = records
        .iter()
        .filter(|(l, _)| *l == Level::Warn)
        .map(|(_, m)| m)
        .collect();
    assert_eq!(warns.len(), 2, "{records:?}");
    assert!(warns[0].contains("30 key(s) of the model not in the state dict"));
    assert!(warns[0].contains("and 22 more"), "{}", warns[0]);
    assert!(warns[1].contains("10 key(s) of the state dict not used"));
    assert!(records
        .iter()
        .any(|(l, m)| *l == Level::Debug && m.contains("loaded 10 tensors")));

    // A strict load that matches logs no warning.
    let full = tch_state_dict::state_dict(&vs).unwrap();
    load_state_dict(&vs, &full, true).unwrap();
    assert!(take().iter().all(|(l, _)| *l != Level::Warn));

    // Skipped shapes are warned about; the counters a tch BatchNorm consumes are info.
    let bn_vs = nn::VarStore::new(Device::Cpu);
    let _bn = nn::batch_norm2d(bn_vs.root() / "bn", 3, Default::default());
    let mut bn_sd = tch_state_dict::state_dict(&bn_vs).unwrap();
    bn_sd.insert(
        "bn.num_batches_tracked",
        Tensor::zeros([], (Kind::Int64, Device::Cpu)),
    );
    bn_sd.insert("bn.weight", Tensor::zeros([4], (Kind::Float, Device::Cpu)));
    tch_state_dict::load_state_dict_with(&bn_vs, &bn_sd, &LoadOptions::new().skip_mismatched(true))
        .unwrap();
    let records = take();
    assert!(records.iter().any(|(l, m)| *l == Level::Warn
        && m.contains("1 key(s) skipped for their shapes")
        && m.contains("bn.weight")));
    assert!(records
        .iter()
        .any(|(l, m)| *l == Level::Info && m.contains("bn.num_batches_tracked")));

    // Opening a file logs its format, size and parse time.
    let dir = common::tempdir("log");
    let path = dir.join("m.safetensors");
    full.save(&path).unwrap();
    let _ = LazyStateDict::load(&path).unwrap();
    let records = take();
    assert!(
        records.iter().any(|(l, m)| *l == Level::Debug
            && m.contains("Safetensors")
            && m.contains("bytes")
            && m.contains("parsed in")),
        "{records:?}"
    );
}
