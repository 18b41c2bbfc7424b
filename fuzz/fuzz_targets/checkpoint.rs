//! Raw bytes as a whole checkpoint file: format detection, then the torch zip, legacy or
//! safetensors container parser and (for torch files) the restricted pickle machine, then
//! materialization of every tensor.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tch_state_dict::{Checkpoint, ReadLimits, ReadOptions};

fuzz_target!(|data: &[u8]| {
    // Modest limits so that a legitimate but big input fails fast instead of timing out.
    let mut limits = ReadLimits::default();
    limits.max_objects = 100_000;
    limits.max_values = 1_000_000;
    let options = ReadOptions::new().limits(limits);
    if let Ok(ckpt) = Checkpoint::from_bytes(data, &options) {
        let _ = ckpt.value();
        let _ = ckpt.state_dict();
    }
});
