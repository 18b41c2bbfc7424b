//! Reading what Python writes: every fixture of tests/fixtures/make_fixtures.py (torch 2.11),
//! every value compared exactly with the bytes Python recorded in expected.json.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value as Json;
use tch::{Device, Kind, Tensor};
use tch_state_dict::{Checkpoint, Error, Format, ReadLimits, ReadOptions, StateDict, Value};

fn fixture(name: &str) -> PathBuf {
    common::test_file(&format!("fixtures/pytorch/{name}"))
}

fn expected(name: &str) -> BTreeMap<String, Json> {
    let text = std::fs::read_to_string(common::test_file("fixtures/expected.json")).unwrap();
    let all: Json = serde_json::from_str(&text).unwrap();
    all[name]
        .as_object()
        .unwrap_or_else(|| panic!("no expectations for {name}"))
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn assert_matches_python(name: &str, got: &[(String, &Tensor)]) {
    let want = expected(name);
    assert_eq!(
        got.iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .len(),
        want.len(),
        "{name}: number of tensors"
    );
    for (key, t) in got {
        let w = want
            .get(key)
            .unwrap_or_else(|| panic!("{name}: unexpected key {key}"));
        let (dtype, shape, hex) = common::record(t);
        assert_eq!(dtype, w["dtype"].as_str().unwrap(), "{name}/{key} dtype");
        let wshape: Vec<i64> = w["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_i64().unwrap())
            .collect();
        assert_eq!(shape, wshape, "{name}/{key} shape");
        assert_eq!(hex, w["hex"].as_str().unwrap(), "{name}/{key} values");
    }
}

fn check_state_dict_file(name: &str) -> StateDict {
    let sd = StateDict::load(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let got: Vec<(String, &Tensor)> = sd.iter().map(|(k, t)| (k.to_string(), t)).collect();
    assert_matches_python(name, &got);
    // The state dict's order is the file's.
    let keys: Vec<&str> = sd.keys().collect();
    let want: Vec<String> = Checkpoint::open(fixture(name)).unwrap().keys();
    assert_eq!(keys, want);
    sd
}

#[test]
fn every_dtype_reads_as_its_tch_kind() {
    let sd = check_state_dict_file("dtypes.pth");
    let kinds: Vec<Kind> = sd.values().map(Tensor::kind).collect();
    assert_eq!(
        kinds,
        [
            Kind::Double,
            Kind::Float,
            Kind::Half,
            Kind::BFloat16,
            Kind::Int64,
            Kind::Int,
            Kind::Int16,
            Kind::Int8,
            Kind::Uint8,
            Kind::Bool
        ]
    );
}

#[test]
fn views_offsets_strides_scalars_and_empty_tensors() {
    let sd = check_state_dict_file("views.pth");
    let t = |k: &str| sd.get(k).unwrap();
    assert_eq!(t("matrix_t").stride(), [1, 4]);
    assert!(!t("matrix_t").is_contiguous());
    assert_eq!(t("strided").stride(), [5]);
    assert_eq!(t("scalar").size(), Vec::<i64>::new());
    assert_eq!(t("empty_2d").size(), [2, 0, 3]);
    assert_eq!(t("other").stride(), [3, 1]);
    // Tensors that shared a storage in Python share one here.
    let _ = t("base").shallow_clone().fill_(1.5);
    assert_eq!(t("slice").double_value(&[0]), 1.5);
    assert_eq!(t("matrix_t").double_value(&[3, 2]), 1.5);
}

#[test]
fn legacy_format() {
    check_state_dict_file("legacy.pth");
    check_state_dict_file("legacy_dtypes.pth");
    assert_eq!(
        Checkpoint::open(fixture("legacy.pth")).unwrap().format(),
        Format::TorchLegacy
    );
    // Legacy views share their storage too.
    let sd = StateDict::load(fixture("legacy.pth")).unwrap();
    let _ = sd.get("base").unwrap().shallow_clone().fill_(-2.0);
    assert_eq!(sd.get("slice").unwrap().double_value(&[1]), -2.0);
}

/// Legacy files of pickle protocols 3 to 5, whose magic number follows PROTO and a FRAME.
#[test]
fn legacy_files_of_every_pickle_protocol() {
    for protocol in 3..=5 {
        let name = format!("legacy_protocol{protocol}.pth");
        check_state_dict_file(&name);
        assert_eq!(
            Checkpoint::open(fixture(&name)).unwrap().format(),
            Format::TorchLegacy
        );
    }
}

#[test]
fn pickle_protocols_4_and_5() {
    check_state_dict_file("protocol4.pth");
    check_state_dict_file("protocol5.pth");
}

#[test]
#[cfg(tch_float8)]
fn float8_through_rebuild_tensor_v3() {
    let sd = check_state_dict_file("float8.pth");
    assert_eq!(sd.get("e4m3").unwrap().kind(), Kind::Float8e4m3fn);
}

/// A tch before 0.19 has no float8 kinds: each float8 entry is refused by itself, as any
/// dtype tch lacks, and the rest of the file reads.
#[test]
#[cfg(not(tch_float8))]
fn float8_is_an_unsupported_dtype_before_tch_0_19() {
    let path = fixture("float8.pth");
    match StateDict::load(&path) {
        Err(tch_state_dict::Error::UnsupportedDtype { dtype, .. }) => {
            assert!(dtype.starts_with("torch.float8"), "{dtype}")
        }
        other => panic!("{other:?}"),
    }
    let lazy = tch_state_dict::LazyStateDict::load(&path).unwrap();
    assert_eq!(lazy.get("e4m3").unwrap().kind(), None);
    assert_eq!(lazy.get("e4m3").unwrap().dtype_name(), "float8_e4m3fn");
}

#[test]
fn archives_that_other_tools_write() {
    for name in [
        "unaligned.pth",
        "deflated.pth",
        "other_root.pth",
        "zero_crc.pth",
        "big_endian.pth",
        "complex.pth",
        "big_endian_complex.pth",
    ] {
        check_state_dict_file(name);
    }
}

/// torch.save names the archive's root after the file's stem. With 21 characters the first
/// header of the central directory is as long as the zip64 records torch.save writes after
/// the directory, and the zip crate, left to find where the archive starts, read the
/// directory 76 bytes late and refused the file (tests/fixtures/make_fixtures.py).
#[test]
fn an_archive_name_of_21_characters() {
    let name = "archive_name_21_chars.pth";
    check_state_dict_file(name);
    // From memory the directory is read through a cursor, not by positional reads.
    let bytes = std::fs::read(fixture(name)).unwrap();
    let sd = StateDict::from_bytes(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    let got: Vec<(String, &Tensor)> = sd.iter().map(|(k, t)| (k.to_string(), t)).collect();
    assert_matches_python(name, &got);
}

#[test]
fn parameters_keep_requires_grad() {
    let sd = check_state_dict_file("parameters.pth");
    assert!(sd.values().all(Tensor::requires_grad));
}

/// `requires_grad` of `nn.Parameter`s and plain tensors of every dtype that can have it,
/// complex ones included, as torch.load gives it (recorded in expected.json).
#[test]
fn requires_grad_for_every_dtype() {
    let want = expected("parameters_dtypes.pth");
    let check = |what: &str, sd: &StateDict| {
        for (k, t) in sd.iter() {
            let flag = want[k]["requires_grad"].as_bool().unwrap();
            assert_eq!(t.requires_grad(), flag, "{what} {k}");
        }
        let complex = sd.get("c64").unwrap();
        assert!(
            complex.requires_grad(),
            "{what}: a complex parameter that requires grad"
        );
    };
    let path = fixture("parameters_dtypes.pth");
    check("eager", &check_state_dict_file("parameters_dtypes.pth"));
    let lazy = tch_state_dict::LazyStateDict::load(&path).unwrap();
    check("lazy", &lazy.into_state_dict().unwrap());
    let mmap = StateDict::load_with(&path, &ReadOptions::new().mmap(true)).unwrap();
    check("mmap", &mmap);
}

#[test]
fn dataparallel_prefix_strips() {
    let mut sd = check_state_dict_file("dataparallel.pth");
    assert!(sd.keys().all(|k| k.starts_with("module.")));
    sd.strip_prefix("module.");
    assert_eq!(sd.keys().next(), Some("conv1.weight"));
    let meta = sd.metadata().unwrap();
    assert_eq!(meta["bn1"]["version"].as_int(), Some(2));
    assert_eq!(meta[""]["version"].as_int(), Some(1));
}

#[test]
fn safetensors_with_metadata() {
    let sd = check_state_dict_file("model.safetensors");
    let meta = sd.safetensors_metadata().unwrap();
    assert_eq!(meta["format"], "pt");
    assert_eq!(meta["source"], "fixtures");
    assert!(sd.metadata().is_none());
}

#[test]
fn sharded_checkpoints_read_as_one_state_dict() {
    for name in [
        "sharded/model.safetensors.index.json",
        "sharded_bin/pytorch_model.bin.index.json",
    ] {
        let sd = StateDict::load(fixture(name)).unwrap();
        let got: Vec<(String, &Tensor)> = sd.iter().map(|(k, t)| (k.to_string(), t)).collect();
        assert_matches_python(name, &got);
        let ckpt = Checkpoint::open(fixture(name)).unwrap();
        assert_eq!(ckpt.format(), Format::ShardedIndex);
        assert_eq!(sd.keys().collect::<Vec<_>>(), ckpt.keys());
    }
}

#[test]
fn a_nested_checkpoint_is_a_value_tree() {
    let ckpt = Checkpoint::open(fixture("checkpoint.pth")).unwrap();
    assert_eq!(
        ckpt.keys(),
        [
            "model",
            "epoch",
            "acc",
            "name",
            "flags",
            "big",
            "blob",
            "optimizer",
            "device",
            "dtype"
        ]
    );
    let v = ckpt.value().unwrap();
    assert_eq!(v.get("epoch").unwrap().as_int(), Some(240));
    assert_eq!(v.get("acc").unwrap().as_float(), Some(0.9));
    assert_eq!(v.get("name").unwrap().as_str(), Some("resnet50"));
    match v.get("flags").unwrap() {
        Value::Tuple(items) => {
            assert!(matches!(
                items.as_slice(),
                [Value::Bool(true), Value::None, Value::Int(-3)]
            ))
        }
        other => panic!("{other:?}"),
    }
    // 2**70, as pickle's little-endian two's complement.
    match v.get("big").unwrap() {
        Value::BigInt(b) => assert_eq!(b.as_slice(), [0, 0, 0, 0, 0, 0, 0, 0, 0x40]),
        other => panic!("{other:?}"),
    }
    assert!(matches!(v.get("blob").unwrap(), Value::Bytes(b) if b == b"\x00\xffabc"));
    assert!(matches!(v.get("device").unwrap(), Value::Device(d) if d == "cuda:0"));
    assert!(matches!(v.get("dtype").unwrap(), Value::Dtype(Kind::Half)));
    // Optimizer state is keyed by ints.
    let state = v.get("optimizer").unwrap().get("state").unwrap();
    let (k, buffer) = &state.as_dict().unwrap().items[0];
    assert!(matches!(k, Value::Int(0)));
    assert!(buffer.get("momentum_buffer").unwrap().as_tensor().is_some());
    let groups = v.get("optimizer").unwrap().get("param_groups").unwrap();
    assert_eq!(
        groups.as_list().unwrap()[0].get("lr").unwrap().as_float(),
        Some(0.1)
    );
    // The model's state dict keeps its _metadata, and converts.
    let model = v.get("model").unwrap();
    assert!(model.as_dict().unwrap().ordered);
    assert!(model.as_dict().unwrap().metadata.is_some());
    // Every tensor against Python's bytes.
    let mut tensors = Vec::new();
    collect_tensors(&v, String::new(), &mut tensors);
    let got: Vec<(String, &Tensor)> = tensors.iter().map(|(k, t)| (k.clone(), *t)).collect();
    assert_matches_python("checkpoint.pth", &got);
}

fn collect_tensors<'v>(v: &'v Value, prefix: String, out: &mut Vec<(String, &'v Tensor)>) {
    let join = |k: String| {
        if prefix.is_empty() {
            k
        } else {
            format!("{prefix}/{k}")
        }
    };
    match v {
        Value::Tensor(t) => out.push((prefix, t)),
        Value::Dict(d) => {
            for (k, v) in &d.items {
                let key = match k {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    other => panic!("{other:?}"),
                };
                collect_tensors(v, join(key), out);
            }
        }
        Value::List(items) | Value::Tuple(items) => {
            for (i, v) in items.iter().enumerate() {
                collect_tensors(v, join(i.to_string()), out);
            }
        }
        _ => {}
    }
}

#[test]
fn load_key_reads_the_model_of_a_checkpoint() {
    let sd = StateDict::load_key(fixture("checkpoint.pth"), "model").unwrap();
    assert_eq!(sd.len(), 8);
    assert_eq!(
        sd.get("bn1.num_batches_tracked").unwrap().int64_value(&[]),
        240
    );
    assert_eq!(sd.metadata().unwrap()["bn1"]["version"].as_int(), Some(2));
    let via_value = StateDict::try_from(Value::load(fixture("checkpoint.pth")).unwrap())
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(via_value, Error::NotAStateDict { .. }));
}

#[test]
fn a_wrapped_state_dict_error_lists_the_top_level_and_suggests_load_key() {
    let err = StateDict::load(fixture("checkpoint.pth")).unwrap_err();
    let text = err.to_string();
    match &err {
        Error::NotAStateDict {
            at, found, entries, ..
        } => {
            assert!(at.is_none());
            assert_eq!(found, "a dict of 10 items");
            assert_eq!(
                entries[0],
                ("'model'".into(), "a state dict of 8 tensors".into())
            );
            assert_eq!(entries[1], ("'epoch'".into(), "the int 240".into()));
            assert_eq!(entries[2], ("'acc'".into(), "the float 0.9".into()));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        text.contains("StateDict::load_key(path, \"model\")"),
        "{text}"
    );
    match StateDict::load_key(fixture("checkpoint.pth"), "modle").unwrap_err() {
        Error::KeyNotFound { key, available, .. } => {
            assert_eq!(key, "modle");
            assert_eq!(available[0], "model");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        StateDict::load_key(fixture("checkpoint.pth"), "epoch").unwrap_err(),
        Error::NotAStateDict { at: Some(k), .. } if k == "epoch"
    ));
}

#[test]
fn bytes_and_readers_read_the_same() {
    let bytes = std::fs::read(fixture("views.pth")).unwrap();
    let from_file = StateDict::load(fixture("views.pth")).unwrap();
    let from_bytes = StateDict::from_bytes(&bytes).unwrap();
    let from_reader = StateDict::from_reader(std::io::Cursor::new(&bytes)).unwrap();
    for (k, t) in from_file.iter() {
        assert!(from_bytes.get(k).unwrap().equal(t));
        assert!(from_reader.get(k).unwrap().equal(t));
    }
    let legacy = std::fs::read(fixture("legacy.pth")).unwrap();
    assert_eq!(StateDict::from_bytes(&legacy).unwrap().len(), 9);
}

#[test]
fn the_format_comes_from_the_bytes_not_the_name() {
    let dir = common::tempdir("disguised");
    let disguised = dir.join("model.safetensors");
    std::fs::copy(fixture("dtypes.pth"), &disguised).unwrap();
    let ckpt = Checkpoint::open(&disguised).unwrap();
    assert_eq!(ckpt.format(), Format::TorchZip);
    let disguised = dir.join("weights.pth");
    std::fs::copy(fixture("model.safetensors"), &disguised).unwrap();
    assert_eq!(
        Checkpoint::open(&disguised).unwrap().format(),
        Format::Safetensors
    );
}

#[test]
fn placement_casts_floating_tensors_only() {
    let options = ReadOptions::new().kind(Some(Kind::Half));
    let sd = StateDict::load_with(fixture("dtypes.pth"), &options).unwrap();
    let original = StateDict::load(fixture("dtypes.pth")).unwrap();
    for (k, t) in sd.iter() {
        let before = original.get(k).unwrap();
        if before.is_floating_point() {
            assert_eq!(t.kind(), Kind::Half, "{k}");
            assert!(t.equal(&before.to_kind(Kind::Half)), "{k}");
        } else {
            assert_eq!(t.kind(), before.kind(), "{k}");
        }
    }
}

#[test]
fn mmap_gives_the_same_values_and_never_writes_the_file() {
    let dir = common::tempdir("mmap");
    let copy = dir.join("views.pth");
    std::fs::copy(fixture("views.pth"), &copy).unwrap();
    let before = std::fs::read(&copy).unwrap();
    let options = ReadOptions::new().mmap(true);
    let sd = StateDict::load_with(&copy, &options).unwrap();
    let got: Vec<(String, &Tensor)> = sd.iter().map(|(k, t)| (k.to_string(), t)).collect();
    assert_matches_python("views.pth", &got);
    let _ = sd.get("base").unwrap().shallow_clone().fill_(9.0);
    assert_eq!(sd.get("slice").unwrap().double_value(&[0]), 9.0);
    drop(sd);
    assert_eq!(std::fs::read(&copy).unwrap(), before);
}

#[test]
#[ignore = "needs CUDA"]
fn placement_on_cuda() {
    let options = ReadOptions::new().device(Device::Cuda(0));
    let sd = StateDict::load_with(fixture("views.pth"), &options).unwrap();
    assert!(sd.values().all(|t| t.device() == Device::Cuda(0)));
    let got: Vec<(String, &Tensor)> = sd.iter().map(|(k, t)| (k.to_string(), t)).collect();
    assert_matches_python("views.pth", &got);
}

#[test]
fn a_checkpoint_is_parsed_without_reading_tensors() {
    let ckpt = Checkpoint::open(fixture("checkpoint.pth")).unwrap();
    assert_eq!(ckpt.num_tensors(), 9);
    assert_eq!(ckpt.format(), Format::TorchZip);
}

#[test]
fn a_sharded_index_in_memory_has_no_shards_to_open() {
    let bytes = std::fs::read(fixture("sharded/model.safetensors.index.json")).unwrap();
    match Checkpoint::from_bytes(&bytes, &ReadOptions::new()).map(|_| ()) {
        Err(Error::ShardIndex { reason, .. }) => {
            assert!(reason.contains("by its path"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

/// The dtypes of unsupported_dtypes.pth, as Python names them, in order; `None` where tch
/// holds them.
const UNSUPPORTED: [(&str, Option<&str>); 8] = [
    ("weight", None),
    ("u16", Some("uint16")),
    ("u32", Some("uint32")),
    ("u64", Some("uint64")),
    ("c32", Some("complex32")),
    ("e8m0", Some("float8_e8m0fnu")),
    ("f4", Some("float4_e2m1fn_x2")),
    ("bias", None),
];

/// A tensor of a dtype tch has no kind for refuses its entry, not the file: the file opens,
/// the entry is listed with PyTorch's dtype name, reading it is `UnsupportedDtype` naming
/// the key, and the rest reads as Python wrote it once the entry is dropped. In the zip and
/// legacy formats and in safetensors.
#[test]
fn an_unsupported_dtype_refuses_its_entry_not_the_file() {
    for (name, count) in [
        ("unsupported_dtypes.pth", 8),
        ("unsupported_legacy.pth", 8),
        ("unsupported.safetensors", 5),
    ] {
        let path = fixture(name);
        let want: Vec<_> = if count == 8 {
            UNSUPPORTED.to_vec()
        } else {
            UNSUPPORTED
                .iter()
                .copied()
                .filter(|(k, _)| ["weight", "u16", "u32", "u64", "bias"].contains(k))
                .collect()
        };
        assert_eq!(
            Checkpoint::open(&path).unwrap().keys().len(),
            count,
            "{name}"
        );
        let mut lazy = tch_state_dict::LazyStateDict::load(&path).unwrap();
        for (key, dtype) in &want {
            let t = lazy.get(key).unwrap();
            match dtype {
                Some(dtype) => {
                    assert_eq!((t.dtype_name(), t.kind()), (*dtype, None), "{name} {key}");
                    let e = t.read().unwrap_err();
                    assert!(
                        matches!(&e, Error::UnsupportedDtype { key: Some(k), dtype: d, .. }
                            if k == key && *d == format!("torch.{dtype}")),
                        "{name}: {e:?}"
                    );
                    assert!(e.to_string().contains(name), "{e}");
                }
                None => assert_eq!(t.kind(), Some(Kind::Float), "{name} {key}"),
            }
        }
        // Building every tensor is refused, at the first unreadable entry in the file's
        // order (safetensors sorts its entries), by its key.
        let (first_key, first_dtype) = lazy
            .iter()
            .find(|(_, t)| t.kind().is_none())
            .map(|(k, t)| (k.to_string(), format!("torch.{}", t.dtype_name())))
            .unwrap();
        let first = |e: Error| matches!(e, Error::UnsupportedDtype { key: Some(k), dtype, .. } if k == first_key && dtype == first_dtype);
        assert!(first(StateDict::load(&path).unwrap_err()), "{name}");
        assert!(first(Value::load(&path).unwrap_err()), "{name}");
        assert!(
            first(lazy.shallow_clone().into_state_dict().unwrap_err()),
            "{name}"
        );
        // Dropped, the rest reads as Python wrote it.
        lazy.retain(|_, t| t.kind().is_some());
        let sd = lazy.into_state_dict().unwrap();
        let got: Vec<(String, &Tensor)> = sd.iter().map(|(k, t)| (k.to_string(), t)).collect();
        assert_matches_python("unsupported_dtypes.pth", &got);
    }
}

/// `value_at(key)` reads the value under a key alone: the rest of the checkpoint, here a
/// state dict of dtypes this crate cannot hold, is not read.
#[test]
fn the_value_under_a_key_is_read_alone() {
    let path = fixture("unsupported_nested.pth");
    let ckpt = Checkpoint::open(&path).unwrap();
    assert!(
        ckpt.value().is_err(),
        "the whole checkpoint holds a uint16 tensor"
    );
    assert!(matches!(ckpt.value_at("epoch").unwrap(), Value::Int(_)));
    let dtype = ckpt.value_at("dtype").unwrap();
    assert!(
        matches!(&dtype, Value::Global { module, name } if module == "torch" && name == "uint16"),
        "{dtype:?}"
    );
    let e = ckpt.value_at("model").unwrap_err();
    assert!(
        matches!(&e, Error::UnsupportedDtype { key: Some(k), .. } if k == "model.u16"),
        "{e:?}"
    );
    let e = ckpt.value_at("optimizer").unwrap_err();
    assert!(
        matches!(&e, Error::KeyNotFound { key, available, .. } if key == "optimizer" && available == &["model", "dtype", "epoch"]),
        "{e:?}"
    );
}

/// `value_at(key)` charges the memory budget for the tensors under the key only: a budget
/// too small for the optimizer's state still reads the hyperparameters beside it.
#[test]
fn the_value_under_a_key_is_charged_for_its_own_tensors() {
    let dir = common::tempdir("value-at-budget");
    let path = dir.join("ckpt.pth");
    common::oracle_code(
        "import argparse, sys, torch\n\
         torch.save({'hparams': {'lr': 0.1, 'w': torch.arange(4.0)},\
         'optimizer': {'exp_avg': torch.zeros(1 << 22), 'shared': None},\
         'args': argparse.Namespace(t=(torch.zeros(1 << 22),))}, sys.argv[1])",
        &[path.to_str().unwrap()],
    );
    let mut limits = ReadLimits::default();
    limits.max_memory_base = 12 << 20;
    limits.max_memory_per_file_byte = 0;
    let ckpt = Checkpoint::open_with(&path, &ReadOptions::new().limits(limits)).unwrap();
    let over = |r: Result<Value, Error>| matches!(r, Err(Error::LimitExceeded { .. }));
    assert!(
        over(ckpt.value()),
        "16 MiB of optimizer state in a budget of 4 MiB past the fixed 8"
    );
    assert!(over(ckpt.value_at("optimizer")));
    // A tensor held in an object's state is charged too.
    assert!(over(ckpt.value_at("args")));
    let hparams = ckpt.value_at("hparams").unwrap();
    let w = hparams.get("w").unwrap().as_tensor().unwrap();
    assert_eq!(w.size(), [4]);
}

/// Nested, the error names the path from the root; `value_with_unreadable` describes the
/// tensor instead, and a dtype value tch has no kind for (`torch.uint16`) is the global that
/// names it, written back as such.
#[test]
fn an_unsupported_dtype_inside_a_checkpoint() {
    let path = fixture("unsupported_nested.pth");
    let e = Value::load(&path).unwrap_err();
    assert!(
        matches!(&e, Error::UnsupportedDtype { key: Some(k), .. } if k == "model.u16"),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("model.u16: unsupported dtype torch.uint16"),
        "{e}"
    );
    let ckpt = Checkpoint::open(&path).unwrap();
    let v = ckpt.value_with_unreadable().unwrap();
    assert!(matches!(
        v.get("model").unwrap().get("u64").unwrap(),
        Value::Unreadable { dtype, shape } if dtype == "uint64" && shape == &[2]
    ));
    assert!(v
        .get("model")
        .unwrap()
        .get("weight")
        .unwrap()
        .as_tensor()
        .is_some());
    let dtype = v.get("dtype").unwrap();
    assert!(
        matches!(dtype, Value::Global { module, name } if module == "torch" && name == "uint16"),
        "{dtype:?}"
    );
    let lazy = tch_state_dict::LazyStateDict::load_key(&path, "model").unwrap();
    assert_eq!(lazy.get("c32").unwrap().dtype_name(), "complex32");
    // The global is written back as torch.uint16.
    let dir = common::tempdir("unsupported-global");
    let out = dir.join("dtype.pth");
    Value::dict([("dtype", dtype.shallow_clone())])
        .save(&out)
        .unwrap();
    let back = Value::load(&out).unwrap();
    assert!(matches!(back.get("dtype").unwrap(), Value::Global { name, .. } if name == "uint16"));
    let text = common::oracle_code(
        "import sys, torch; print(torch.load(sys.argv[1], weights_only=True))",
        &[out.to_str().unwrap()],
    );
    assert_eq!(text.trim(), "{'dtype': torch.uint16}");
}

/// Quantized tensors (`_rebuild_qtensor`, per tensor and per channel) are entries of a dtype
/// this crate cannot hold: listed, refused when read, and the rest reads.
#[test]
fn quantized_tensors_are_listed_and_refused_when_read() {
    let path = fixture("quantized.pth");
    let mut lazy = tch_state_dict::LazyStateDict::load(&path).unwrap();
    let dtypes: Vec<(&str, &str)> = lazy.iter().map(|(k, t)| (k, t.dtype_name())).collect();
    assert_eq!(
        dtypes,
        [("weight", "float32"), ("q", "qint8"), ("qc", "quint8")]
    );
    assert_eq!(lazy.get("qc").unwrap().size(), [2, 3]);
    let e = Value::load(&path).unwrap_err();
    assert!(
        matches!(&e, Error::UnsupportedDtype { key: Some(k), dtype, .. } if k == "q" && dtype == "torch.qint8"),
        "{e:?}"
    );
    lazy.retain(|_, t| t.kind().is_some());
    let sd = lazy.into_state_dict().unwrap();
    let got: Vec<(String, &Tensor)> = sd.iter().map(|(k, t)| (k.to_string(), t)).collect();
    assert_matches_python("quantized.pth", &got);
}
