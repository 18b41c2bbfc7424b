//! The input as `data.pkl` of a well-formed torch.save zip, so that every input reaches the
//! restricted pickle machine (random bytes rarely get through the zip parser). The zip also
//! holds `byteorder` = "little" and storages `data/0` .. `data/3` of 64 bytes each, which
//! the pickle's persistent ids may name.
#![no_main]

use std::io::{Cursor, Write};

use libfuzzer_sys::fuzz_target;
use tch_state_dict::Checkpoint;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

#[path = "common.rs"]
mod common;

fn wrap(pickle: &[u8]) -> Vec<u8> {
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    let mut add = |name: &str, bytes: &[u8]| {
        zip.start_file(name, stored).expect("start_file");
        zip.write_all(bytes).expect("write");
    };
    add("archive/data.pkl", pickle);
    add("archive/byteorder", b"little");
    for key in 0..4u8 {
        // Distinct, non-trivial contents: every dtype sees varied bit patterns.
        let storage: Vec<u8> = (0..64u8)
            .map(|i| i.wrapping_mul(37).wrapping_add(key))
            .collect();
        add(&format!("archive/data/{key}"), &storage);
    }
    zip.finish().expect("finish").into_inner()
}

fuzz_target!(|data: &[u8]| {
    let bytes = wrap(data);
    let options = common::options();
    if let Ok(ckpt) = Checkpoint::from_bytes(&bytes, &options) {
        let _ = ckpt.value();
        let _ = ckpt.state_dict();
    }
});
