//! Raw bytes as a whole checkpoint file: format detection, then the torch zip, legacy or
//! safetensors container parser and (for torch files) the restricted pickle machine, then
//! materialization of every tensor.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tch_state_dict::Checkpoint;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let options = common::options();
    if let Ok(ckpt) = Checkpoint::from_bytes(data, &options) {
        let _ = ckpt.value();
        for key in ckpt.keys().iter().take(2) {
            let _ = ckpt.value_at(key);
        }
        let _ = ckpt.state_dict();
    }
});
