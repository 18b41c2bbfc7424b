//! CRC-32 of zip records: every record read whole is checked, large stored storages when
//! `ReadOptions::verify_crc` asks (loads into a model before their first write); zero CRCs
//! count as not recorded. `torch.load` checks none, which the tests pin.

mod common;

use common::tempdir;

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};
use tch_state_dict::{Checkpoint, Error, LoadOptions, ModuleTree, ReadOptions, StateDict};

fn fixture(name: &str) -> PathBuf {
    common::test_file(&format!("fixtures/pytorch/{name}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A copy of `src` at `dst` with record `suffix` corrupted by `mode` (`flip:N`, `crc`).
fn corrupt(src: &Path, dst: &Path, suffix: &str, mode: &str) {
    common::oracle("oracle/corrupt_zip.py", &[s(src), s(dst), suffix, mode], "");
}

/// What `torch.load(path, weights_only=True)` makes of a file: `ok <keys>` or `error <type>`.
fn torch_load(path: &Path) -> String {
    common::oracle("oracle/corrupt_zip.py", &["load", s(path)], "")
        .trim()
        .to_string()
}

fn is_crc_mismatch(e: &Error, record: &str) -> bool {
    matches!(e, Error::CrcMismatch { record: r, expected, found, .. } if r == record && expected != found)
}

#[test]
fn a_corrupt_pickle_is_refused_where_torch_load_reads_it() {
    let dir = tempdir("pickle");
    let path = dir.join("views.pth");
    // "base" becomes "basd": still a valid pickle, with another key.
    let pickle = std::fs::read(fixture("views.pth")).unwrap();
    let at = pickle.windows(4).position(|w| w == b"base").unwrap();
    let flip = format!("flip:{}:1", at + 3 - data_start_of_first_record(&pickle));
    corrupt(&fixture("views.pth"), &path, "data.pkl", &flip);
    assert!(
        torch_load(&path).starts_with("ok"),
        "torch.load checks no CRC"
    );
    let e = Checkpoint::open(&path).map(|_| ()).unwrap_err();
    assert!(is_crc_mismatch(&e, "views/data.pkl"), "{e:?}");
    assert!(e.to_string().contains("views/data.pkl"), "{e}");
}

/// Where the first record's data begins: `data.pkl` is the first record torch.save writes.
fn data_start_of_first_record(file: &[u8]) -> usize {
    let n = u16::from_le_bytes([file[26], file[27]]) as usize;
    let m = u16::from_le_bytes([file[28], file[29]]) as usize;
    30 + n + m
}

#[test]
fn a_corrupt_byteorder_is_refused() {
    let dir = tempdir("byteorder");
    let path = dir.join("views.pth");
    corrupt(&fixture("views.pth"), &path, "byteorder", "crc");
    let e = Checkpoint::open(&path).map(|_| ()).unwrap_err();
    assert!(is_crc_mismatch(&e, "views/byteorder"), "{e:?}");
}

#[test]
fn a_corrupt_small_storage_is_refused_when_it_is_read() {
    let dir = tempdir("small");
    let path = dir.join("views.pth");
    corrupt(&fixture("views.pth"), &path, "data/0", "flip:5");
    assert!(
        torch_load(&path).starts_with("ok"),
        "torch.load checks no CRC"
    );
    // Opening reads no tensor data; reading the storage checks it.
    let ckpt = Checkpoint::open(&path).unwrap();
    let e = ckpt.state_dict().unwrap_err();
    assert!(is_crc_mismatch(&e, "views/data/0"), "{e:?}");
    let e = StateDict::load(&path).unwrap_err();
    assert!(is_crc_mismatch(&e, "views/data/0"), "{e:?}");
}

#[test]
fn a_deflated_storage_is_checked_as_it_is_inflated() {
    let dir = tempdir("deflated");
    let path = dir.join("deflated.pth");
    corrupt(&fixture("deflated.pth"), &path, "data/0", "crc");
    let e = StateDict::load(&path).unwrap_err();
    assert!(is_crc_mismatch(&e, "views/data/0"), "{e:?}");
}

#[test]
fn zero_crcs_count_as_not_recorded() {
    let options = ReadOptions::new().verify_crc(true);
    let zero = StateDict::load_with(fixture("zero_crc.pth"), &options).unwrap();
    let views = StateDict::load(fixture("views.pth")).unwrap();
    assert_eq!(common::hashes(&zero), common::hashes(&views));
    let model = common::blank_model(&views, None);
    Checkpoint::open_with(fixture("zero_crc.pth"), &options)
        .unwrap()
        .load_into(&model, &LoadOptions::new())
        .unwrap();
}

/// A large stored storage is read with `pread` and checked only when `verify_crc` asks; a
/// load into a model then checks it before its first write, so the model is unchanged.
#[test]
fn a_large_stored_storage_is_checked_when_asked() {
    let dir = tempdir("large");
    let (good, bad) = (dir.join("good.pth"), dir.join("bad.pth"));
    let mut sd = StateDict::new();
    sd.insert("small", Tensor::from_slice(&[1.0f32, 2.0, 3.0]));
    // 4 MiB: above the size that is always checked.
    sd.insert("large", Tensor::ones([1 << 20], (Kind::Float, Device::Cpu)));
    sd.save(&good).unwrap();
    corrupt(&good, &bad, "data/1", "flip:2000001");
    assert!(
        torch_load(&bad).starts_with("ok"),
        "torch.load checks no CRC"
    );
    let record = "good/data/1"; // the archive keeps the root it was saved with

    // Unchecked by default: the corrupt value is read, as torch.load reads it.
    let read = StateDict::load(&bad).unwrap();
    assert_eq!(
        read.get("large")
            .unwrap()
            .ne(1.0)
            .sum(Kind::Int64)
            .int64_value(&[]),
        1
    );
    let checked = ReadOptions::new().verify_crc(true);
    let e = StateDict::load_with(&bad, &checked).unwrap_err();
    assert!(is_crc_mismatch(&e, record), "{e:?}");
    let e = Checkpoint::open_with(&bad, &checked)
        .unwrap()
        .lazy_state_dict()
        .unwrap()
        .get("large")
        .unwrap()
        .read()
        .unwrap_err();
    assert!(is_crc_mismatch(&e, record), "{e:?}");

    // A load into a model: refused before the first write, whichever route each tensor
    // takes (read straight in, converted to another dtype).
    for kind in [None, Some(Kind::Double)] {
        let mut model = ModuleTree::new("Net");
        for (k, t) in sd.iter() {
            let kind = kind.unwrap_or(t.kind());
            model
                .add_tensor(k, Tensor::zeros(t.size(), (kind, Device::Cpu)))
                .unwrap();
        }
        let e = Checkpoint::open_with(&bad, &checked)
            .unwrap()
            .load_into(&model, &LoadOptions::new())
            .unwrap_err();
        assert!(is_crc_mismatch(&e, record), "{kind:?}: {e:?}");
        for k in ["small", "large"] {
            let t = model.get(k).unwrap();
            assert_eq!(
                t.abs().sum(Kind::Double).double_value(&[]),
                0.0,
                "{k} was written"
            );
        }
        // The intact file loads with the check on.
        Checkpoint::open_with(&good, &checked)
            .unwrap()
            .load_into(&model, &LoadOptions::new())
            .unwrap();
        assert!(model
            .get("large")
            .unwrap()
            .to_kind(Kind::Float)
            .equal(sd.get("large").unwrap()));
    }
}
