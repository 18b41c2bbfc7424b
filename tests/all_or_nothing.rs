//! All or nothing for everything that can be found before the first write (issue: a corrupt
//! deflated storage used to fail after earlier tensors were written). Tensors that must be
//! materialized (deflated storages) are read before anything is written, and a file that
//! changed since it was opened is refused; see also tests/lazy.rs and tests/assign.rs.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use common::blank_model;
use tch::Kind;
use tch_state_dict::{
    load_state_dict, state_dict, Checkpoint, Error, LazyStateDict, LoadOptions, StateDict,
};

/// The mixed zip of tests/oracle/mixed_zip.py, written under `dir`.
fn mixed_zip(dir: &Path) -> PathBuf {
    let path = dir.join("mixed.pth");
    common::oracle("oracle/mixed_zip.py", &[path.to_str().unwrap()], "");
    path
}

/// Overwrites the start of the deflated `data/2` with bytes no deflate stream starts with.
fn corrupt_last_storage(path: &PathBuf) {
    let start = {
        let file = std::fs::File::open(path).unwrap();
        let mut zip = zip::ZipArchive::new(file).unwrap();
        let name = (0..zip.len())
            .map(|i| zip.by_index(i).unwrap().name().unwrap().to_string())
            .find(|n| n.ends_with("data/2"))
            .unwrap();
        let entry = zip.by_name(&name).unwrap();
        assert_eq!(entry.compression(), zip::CompressionMethod::Deflated);
        entry.data_start().unwrap()
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    file.seek(SeekFrom::Start(start)).unwrap();
    // BTYPE 11 is reserved: inflating fails at the first block.
    file.write_all(&[0xff; 4]).unwrap();
}

#[test]
fn a_corrupt_deflated_storage_fails_before_the_stored_ones_are_written() {
    let dir = common::tempdir("corrupt");
    let path = mixed_zip(&dir);
    let sd = StateDict::load(&path).unwrap();
    // Unharmed, the mixed file loads every value.
    let model = blank_model(&sd, None);
    load_state_dict(&model, &LazyStateDict::load(&path).unwrap(), true).unwrap();
    assert_eq!(
        common::hashes(&state_dict(&model).unwrap()),
        common::hashes(&sd)
    );

    corrupt_last_storage(&path);
    for (how, kind) in [
        ("lazy", None),
        ("lazy", Some(Kind::Double)),
        ("load_into", None),
        ("load_into", Some(Kind::Double)),
    ] {
        let model = blank_model(&sd, kind);
        let before = common::hashes(&state_dict(&model).unwrap());
        let err = match how {
            "lazy" => {
                load_state_dict(&model, &LazyStateDict::load(&path).unwrap(), true).unwrap_err()
            }
            _ => Checkpoint::open(&path)
                .unwrap()
                .load_into(&model, &LoadOptions::new())
                .unwrap_err(),
        };
        assert!(
            !matches!(err, Error::Load(_)),
            "{how}: a read error, not a refusal: {err:?}"
        );
        // "a" and "b" are stored and would be read straight into the model; nothing was.
        assert_eq!(
            common::hashes(&state_dict(&model).unwrap()),
            before,
            "{how}"
        );
    }
}
