//! Round trips with Python torch, both ways, compared exactly: what Rust writes,
//! `torch.load(weights_only=True)` reads and `load_state_dict` accepts; what Python writes,
//! Rust reads and writes back unchanged.

mod common;

use common::tempdir;

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use tch::{Device, Kind, Tensor};
use tch_state_dict::{Checkpoint, Error, Format, Metadata, StateDict, Value};

fn fixture(name: &str) -> PathBuf {
    common::test_file(&format!("fixtures/pytorch/{name}"))
}

fn oracle(args: &[&str]) -> String {
    common::oracle("oracle/roundtrip.py", args, "")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A state dict with every dtype, views, a non-contiguous tensor, scalars, empty tensors,
/// a tensor under two keys (tied weights) and `_metadata`.
fn rich_state_dict() -> StateDict {
    let opts = |k| (k, Device::Cpu);
    let base = Tensor::randn([6, 4], opts(Kind::Float));
    let mut sd = StateDict::new();
    sd.insert("f64", Tensor::randn([3, 2], opts(Kind::Double)));
    sd.insert("f32", base.shallow_clone());
    sd.insert(
        "f16",
        Tensor::randn([5], opts(Kind::Float)).to_kind(Kind::Half),
    );
    sd.insert(
        "bf16",
        Tensor::randn([5], opts(Kind::Float)).to_kind(Kind::BFloat16),
    );
    sd.insert("i64", Tensor::from_slice(&[i64::MIN, -1, 0, i64::MAX]));
    sd.insert("i32", Tensor::from_slice(&[i32::MIN, 7, i32::MAX]));
    sd.insert("i16", Tensor::from_slice(&[-3i16, 300]));
    sd.insert("i8", Tensor::from_slice(&[-128i8, 127]));
    sd.insert("u8", Tensor::from_slice(&[0u8, 255]));
    sd.insert("bool", Tensor::from_slice(&[true, false, true]));
    sd.insert("transposed", base.tr());
    sd.insert("slice", base.narrow(0, 2, 3));
    sd.insert("scalar", Tensor::from(1.25f64).to_kind(Kind::Float));
    sd.insert("empty", Tensor::zeros([0, 3], opts(Kind::Float)));
    sd.insert("tied", base.shallow_clone());
    sd.insert("nan", Tensor::from_slice(&[f32::NAN, -0.0, f32::INFINITY]));
    let mut metadata = Metadata::new();
    for (prefix, version) in [("", 1), ("bn", 2)] {
        let mut entry = IndexMap::new();
        entry.insert("version".to_string(), Value::Int(version));
        metadata.insert(prefix.to_string(), entry);
    }
    sd.set_metadata(Some(metadata));
    sd
}

fn assert_same(a: &StateDict, b: &StateDict) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, x) in a.iter() {
        let y = b.get(k).unwrap();
        assert_eq!(x.kind(), y.kind(), "{k}");
        assert_eq!(x.size(), y.size(), "{k}");
        assert_eq!(common::hash_tensor(x), common::hash_tensor(y), "{k}");
    }
}

#[test]
fn rust_to_python_to_rust() {
    let dir = tempdir("r2p2r");
    let original = rich_state_dict();
    let ours = dir.join("ours.pth");
    let theirs = dir.join("theirs.pth");
    original.save(&ours).unwrap();
    oracle(&["resave", s(&ours), s(&theirs)]);
    let back = StateDict::load(&theirs).unwrap();
    assert_same(&original, &back);
    let metadata = back.metadata().unwrap();
    assert_eq!(metadata["bn"]["version"].as_int(), Some(2));
    // Tied weights were written as one storage: Python kept them shared, and so do we.
    let _ = back.get("tied").unwrap().shallow_clone().fill_(3.0);
    assert_eq!(back.get("f32").unwrap().double_value(&[0, 0]), 3.0);
}

#[test]
fn python_to_rust_to_python() {
    let dir = tempdir("p2r2p");
    // protocol4.pth and protocol5.pth are left out: torch.load(weights_only=True) itself
    // refuses their opcodes (FRAME, MEMOIZE). read_pytorch.rs checks that Rust reads them.
    let names = [
        "dtypes.pth",
        "views.pth",
        "checkpoint.pth",
        "dataparallel.pth",
        "parameters.pth",
        "legacy.pth",
        "legacy_dtypes.pth",
        // A tch before 0.19 has no float8 kinds (tests/read_pytorch.rs checks its refusal).
        #[cfg(tch_float8)]
        "float8.pth",
        "big_endian.pth",
        "deflated.pth",
    ];
    // Every file written, then one call of the oracle compares them all.
    let mut pairs = Vec::new();
    for name in names {
        let value = Value::load(fixture(name)).unwrap();
        let ours = dir.join(name);
        value.save(&ours).unwrap();
        pairs.push(fixture(name).to_str().unwrap().to_string());
        pairs.push(s(&ours).to_string());
    }
    let mut args = vec!["compare"];
    args.extend(pairs.iter().map(String::as_str));
    let out = oracle(&args);
    let verdicts: Vec<&str> = out.lines().collect();
    assert_eq!(verdicts.len(), names.len(), "{out}");
    for (name, verdict) in names.iter().zip(verdicts) {
        assert_eq!(verdict, "equal", "{name}");
    }
}

#[test]
fn python_loads_a_rust_state_dict_into_its_model() {
    let dir = tempdir("model");
    let mut sd = StateDict::load(fixture("dataparallel.pth")).unwrap();
    sd.strip_prefix("module.");
    let path = dir.join("small.pth");
    sd.save(&path).unwrap();
    let out = oracle(&["load_small", s(&path)]);
    assert_eq!(out.trim(), "<All keys matched successfully>");
}

#[test]
fn safetensors_both_ways() {
    let dir = tempdir("st");
    // Python's file, through Rust, back to Python.
    let sd = StateDict::load(fixture("model.safetensors")).unwrap();
    let ours = dir.join("ours.safetensors");
    sd.save(&ours).unwrap();
    let out = oracle(&["st_compare", s(&fixture("model.safetensors")), s(&ours)]);
    assert_eq!(out.trim(), "equal");
    assert_eq!(
        StateDict::load(&ours).unwrap().safetensors_metadata(),
        sd.safetensors_metadata()
    );
    // Rust's file, through Python, back to Rust (safetensors keeps no order).
    let mut original = rich_state_dict();
    original.retain(|k, _| k != "tied");
    let ours = dir.join("rich.safetensors");
    let theirs = dir.join("rich_python.safetensors");
    original.save(&ours).unwrap();
    oracle(&["st_resave", s(&ours), s(&theirs)]);
    let back = StateDict::load(&theirs).unwrap();
    assert_eq!(back.len(), original.len());
    for (k, t) in original.iter() {
        let b = back.get(k).unwrap();
        assert_eq!((t.kind(), t.size()), (b.kind(), b.size()), "{k}");
        assert_eq!(common::hash_tensor(t), common::hash_tensor(b), "{k}");
    }
}

#[test]
fn a_training_checkpoint_saves_as_python_writes_it() {
    let dir = tempdir("ckpt");
    let model = StateDict::load_key(fixture("checkpoint.pth"), "model").unwrap();
    let ckpt = Value::dict([
        ("model", Value::from(model)),
        ("epoch", Value::from(240)),
        ("acc", Value::from(0.9)),
    ]);
    let path = dir.join("ckpt_epoch_240.pth");
    ckpt.save(&path).unwrap();
    let back = Checkpoint::open(&path).unwrap();
    assert_eq!(back.keys(), ["model", "epoch", "acc"]);
    let model = back.state_dict_at("model").unwrap();
    assert_eq!(
        model.metadata().unwrap()["bn1"]["version"].as_int(),
        Some(2)
    );
    assert_eq!(
        back.value().unwrap().get("acc").unwrap().as_float(),
        Some(0.9)
    );
    // Python reads it as the same checkpoint that Python wrote, minus the other entries.
    let again = dir.join("again.pth");
    Value::dict([
        (
            "model",
            Value::from(StateDict::load_key(fixture("checkpoint.pth"), "model").unwrap()),
        ),
        ("epoch", Value::from(240)),
        ("acc", Value::from(0.9)),
    ])
    .save(&again)
    .unwrap();
    assert_eq!(oracle(&["compare", s(&path), s(&again)]).trim(), "equal");
}

#[test]
fn storages_are_aligned_to_64_bytes_like_torch_save() {
    let original = rich_state_dict();
    let bytes = original.to_bytes(Format::TorchZip).unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&bytes)).unwrap();
    let names: Vec<String> = zip.file_names().map(|n| n.unwrap().into_owned()).collect();
    assert_eq!(names[0], "archive/data.pkl");
    assert!(names.contains(&"archive/version".to_string()));
    assert!(names.contains(&"archive/byteorder".to_string()));
    let mut storages = 0;
    for i in 0..zip.len() {
        let entry = zip.by_index_raw(i).unwrap();
        if entry.name().unwrap().starts_with("archive/data/") {
            storages += 1;
            assert_eq!(
                entry.data_start().unwrap() % 64,
                0,
                "{}",
                entry.name().unwrap()
            );
            assert_eq!(entry.compression(), zip::CompressionMethod::Stored);
        }
    }
    // "tied", "transposed" and "slice" share f32's storage, as torch.save writes them.
    assert_eq!(storages, original.len() - 3);
    // And the bytes read back as the state dict they were made from.
    let back = StateDict::from_bytes(&bytes).unwrap();
    assert_same(&original, &back);
    assert_eq!(
        format!("{:?}", back.metadata()),
        format!("{:?}", original.metadata())
    );
}

#[test]
fn what_cannot_be_written_is_refused_by_key() {
    let mut sd = StateDict::new();
    sd.insert("ok", Tensor::zeros([1], (Kind::Float, Device::Cpu)));
    sd.insert("hole", Tensor::new());
    for format in [Format::TorchZip, Format::Safetensors] {
        match sd.to_bytes(format) {
            Err(Error::Unwritable { what, .. }) => assert_eq!(what, "hole"),
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(
        sd.to_bytes(Format::TorchLegacy),
        Err(Error::Unwritable { .. })
    ));
    // A failed save leaves no file behind.
    let dir = tempdir("unwritable");
    let path = dir.join("x.pth");
    assert!(sd.save(&path).is_err());
    assert!(!path.exists());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

#[test]
fn saving_over_a_mapped_checkpoint_keeps_its_tensors_valid() {
    let dir = tempdir("overwrite");
    let path = dir.join("views.pth");
    std::fs::copy(fixture("views.pth"), &path).unwrap();
    let options = tch_state_dict::ReadOptions::new().mmap(true);
    let sd = StateDict::load_with(&path, &options).unwrap();
    let before = common::hashes(&sd);
    let mut other = StateDict::new();
    other.insert("x", Tensor::ones([1000], (Kind::Float, Device::Cpu)));
    other.save(&path).unwrap();
    assert_eq!(common::hashes(&sd), before);
    assert_eq!(StateDict::load(&path).unwrap().len(), 1);
}

/// A set inside a dict key or a set was a frozenset in Python, which
/// `torch.load(weights_only=True)` refuses: the save is refused, naming why, and writes
/// nothing; a set as a value is written.
#[test]
fn a_frozenset_is_not_written() {
    let dir = tempdir("frozenset");
    let path = dir.join("frozen.pth");
    let key = Value::Tuple(vec![Value::Set(vec![Value::Int(1)])]);
    let frozen = Value::Dict(tch_state_dict::Dict {
        items: vec![(key, Value::Int(2))],
        ordered: false,
        metadata: None,
    });
    let e = frozen.save(&path).unwrap_err();
    assert!(
        matches!(&e, Error::Unwritable { reason, .. } if reason.contains("frozenset")),
        "{e:?}"
    );
    assert!(!path.exists());
    let nested = Value::Set(vec![Value::Set(vec![])]);
    assert!(matches!(nested.save(&path), Err(Error::Unwritable { .. })));
    let plain = Value::dict([("s", Value::Set(vec![Value::Int(1), Value::Int(2)]))]);
    plain.save(&path).unwrap();
    assert!(matches!(Value::load(&path).unwrap().get("s"), Some(Value::Set(v)) if v.len() == 2));
}

/// Views of one storage are written as `torch.save` writes them: one storage, each view at
/// its offset with its strides, so that they still share it in Python; an expanded tensor
/// (stride 0) writes its one element, and a slice of a large buffer only what it covers.
#[test]
fn views_keep_their_storage_offsets_and_strides() {
    let dir = tempdir("views");
    let base = Tensor::arange(24, (Kind::Float, Device::Cpu));
    let big = Tensor::zeros([1 << 22], (Kind::Float, Device::Cpu));
    let sd: StateDict = [
        ("base", base.shallow_clone()),
        ("slice", base.narrow(0, 2, 5)),
        ("t", base.view([4, 6]).tr()),
        (
            "e",
            Tensor::ones([1], (Kind::Float, Device::Cpu)).expand([1 << 20], false),
        ),
        ("window", big.narrow(0, 1 << 21, 8)),
    ]
    .into_iter()
    .map(|(k, t)| (k.to_string(), t))
    .collect();
    let path = dir.join("views.pth");
    sd.save(&path).unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len < 1 << 16, "{len} bytes written");
    let code = "import sys, torch\n\
        d = torch.load(sys.argv[1], weights_only=True)\n\
        b = d['base']\n\
        same = lambda k: d[k].untyped_storage().data_ptr() == b.untyped_storage().data_ptr()\n\
        print(d['slice'].storage_offset(), same('slice'), tuple(d['t'].stride()), same('t'),\n\
              bool((d['t'] == b.view(4, 6).t()).all()), tuple(d['e'].stride()), d['e'].shape[0],\n\
              float(d['e'].sum()), d['window'].storage_offset(), d['window'].untyped_storage().nbytes())";
    let out = common::oracle_code(code, &[path.to_str().unwrap()]);
    assert_eq!(
        out.trim(),
        "2 True (1, 6) True True (0,) 1048576 1048576.0 0 32"
    );
    // And this crate reads them back as the views they were.
    let back = StateDict::load(&path).unwrap();
    assert!(back.get("t").unwrap().equal(&base.view([4, 6]).tr()));
    assert_eq!(back.get("t").unwrap().stride(), [1, 6]);
}
