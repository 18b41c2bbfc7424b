//! The input as a safetensors file: the safetensors crate's header checks, then this
//! crate's (shapes below 2^63, strides that do not overflow, every tensor against its
//! bytes), then materialization of every tensor. Seeded with the safetensors fixtures, so
//! that mutations start from valid headers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tch_state_dict::Checkpoint;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let options = common::options();
    if let Ok(ckpt) = Checkpoint::from_bytes(data, &options) {
        let _ = ckpt.value();
        let _ = ckpt.state_dict();
    }
});
