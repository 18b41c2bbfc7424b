//! Times `load_state_dict` on synthetic models with many small tensors: the cost of matching
//! keys, building the report and copying, without any file reading.
//!
//! Run it with `scripts/cargo bench --bench load`.

use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};
use tch_state_dict::{load_state_dict, state_dict, ModuleTree};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    println!(
        "{:>10}  {:>12}  {:>14}",
        "keys", "load (ms)", "per key (ns)"
    );
    for n in [1_000usize, 10_000, 100_000] {
        let mut tree = ModuleTree::new("Net");
        for i in 0..n {
            let key = format!("layer{}.{}.weight", i / 100, i % 100);
            tree.add_tensor(&key, Tensor::zeros([2], (Kind::Float, Device::Cpu)))
                .unwrap();
        }
        let sd = state_dict(&tree).unwrap().shallow_clone();
        let runs = (0..5)
            .map(|_| {
                let start = Instant::now();
                load_state_dict(&tree, &sd, true).unwrap();
                start.elapsed()
            })
            .collect();
        let t = median(runs);
        println!(
            "{n:>10}  {:>12.2}  {:>14.0}",
            t.as_secs_f64() * 1e3,
            t.as_nanos() as f64 / n as f64
        );
    }
}
