//! The hostile corpus (tests/fixtures/make_hostile.py): every malformed or malicious file is
//! refused with the typed error that names its defect, never a panic, abort, hang, stack
//! overflow or outsized allocation. A file that names globals outside the allowlist opens,
//! its globals recorded as opaque objects that are never imported or called; asking it for a
//! state dict is the typed error, and with `weights_only` so is opening it.

mod common;

use std::path::PathBuf;

use tch_state_dict::{Checkpoint, Error, PickleError, ReadLimits, ReadOptions, Value};

fn hostile(name: &str) -> PathBuf {
    common::test_file(&format!("fixtures/hostile/{name}"))
}

/// The first error reading `name` gives: opening, then reading the state dict, then the
/// whole value. A file that reads without error fails the test.
fn refusal(name: &str) -> Error {
    let ckpt = match Checkpoint::open(hostile(name)) {
        Err(e) => return e,
        Ok(c) => c,
    };
    if let Err(e) = ckpt.state_dict() {
        if !matches!(e, Error::NotAStateDict { .. }) {
            return e;
        }
    }
    match ckpt.value() {
        Err(e) => e,
        Ok(v) => panic!("{name} was read: {v:?}"),
    }
}

macro_rules! refused {
    ($name:ident, $file:expr, $pattern:pat $(if $guard:expr)?) => {
        #[test]
        fn $name() {
            let e = refusal($file);
            assert!(matches!(&e, $pattern $(if $guard)?), "{}: {e:?}", $file);
            // Every error names the file.
            let text = e.to_string();
            assert!(text.contains($file), "{}: {text}", $file);
        }
    };
}

// Containers.
refused!(truncated_zip, "truncated_zip.pth", Error::Zip { .. });
refused!(missing_data_pkl, "missing_data_pkl.pth", Error::MissingRecord { record, .. } if record == "archive/data.pkl");
refused!(missing_storage, "missing_storage.pth", Error::MissingRecord { record, .. } if record == "archive/data/0");
refused!(storage_shorter_than_its_tensor, "storage_too_short.pth", Error::InvalidTensor { storage, .. } if storage == "0");
refused!(
    record_shorter_than_declared,
    "record_shorter_than_declared.pth",
    Error::StorageSizeMismatch { storage, expected, found: 24, .. } if storage == "0" && *expected == 4 << 40
);
refused!(
    record_longer_than_declared,
    "record_longer_than_declared.pth",
    Error::StorageSizeMismatch { storage, expected: 8, found: 16, .. } if storage == "0"
);
refused!(bad_byteorder, "bad_byteorder.pth", Error::InvalidRecord { record, .. } if record == "archive/byteorder");
refused!(
    entry_past_the_end_of_the_file,
    "entry_past_end.pth",
    Error::InvalidRecord { .. } | Error::Zip { .. }
);
refused!(
    deflate_bomb,
    "deflate_bomb.pth",
    Error::LimitExceeded {
        limit: "max_compression_ratio",
        ..
    }
);
// D9: a record twice (torch.load reads one or the other, by the order of the directory),
// records flagged as encrypted (torch.load refuses them too).
refused!(zip_duplicate_storage, "zip_duplicate_storage.pth", Error::InvalidRecord { record, reason, .. } if record == "archive/data/0" && reason.contains("twice"));
refused!(zip_duplicate_pickle, "zip_duplicate_pickle.pth", Error::InvalidRecord { record, reason, .. } if record == "archive/data.pkl" && reason.contains("twice"));
refused!(zip_encrypted_storage, "zip_encrypted_storage.pth", Error::InvalidRecord { record, reason, .. } if record == "archive/data/0" && reason.contains("encrypted"));
refused!(zip_encrypted_pickle, "zip_encrypted_pickle.pth", Error::InvalidRecord { record, reason, .. } if record == "archive/data.pkl" && reason.contains("encrypted"));

/// torch.load refuses a storage whose record is not its declared size, shorter or longer, in
/// the zip format and the legacy one, as this crate does; and reads the files whose sizes
/// agree.
#[test]
fn torch_load_refuses_records_of_another_size_than_declared() {
    let script = "import sys, torch\n\
                  for p in sys.argv[1:]:\n\
                  \x20   try:\n\
                  \x20       torch.load(p, weights_only=False)\n\
                  \x20       print('ok')\n\
                  \x20   except RuntimeError as e:\n\
                  \x20       print('size' in str(e))\n";
    let files = [
        "record_shorter_than_declared.pth",
        "record_longer_than_declared.pth",
        "legacy_size_mismatch.pth",
    ];
    let paths: Vec<String> = files
        .iter()
        .map(|f| hostile(f).to_string_lossy().into_owned())
        .collect();
    let text = common::oracle_code(script, &paths);
    assert_eq!(text.lines().collect::<Vec<_>>(), ["True", "True", "True"]);
}

/// What torch.load does with the D9 files: it refuses encrypted records, as this crate does,
/// and reads duplicated ones, picking one of the two copies by the directory's order, which
/// this crate refuses as ambiguous.
#[test]
fn torch_load_on_duplicate_and_encrypted_records() {
    let script = "import sys, torch\n\
                  for p in sys.argv[1:]:\n\
                  \x20   try:\n\
                  \x20       sd = torch.load(p, weights_only=True)\n\
                  \x20       print('ok', *[f'{k}={v.tolist()}' for k, v in sd.items()])\n\
                  \x20   except RuntimeError as e:\n\
                  \x20       print('error', 'encryption' in str(e))\n";
    let files = [
        "zip_duplicate_storage.pth",
        "zip_duplicate_pickle.pth",
        "zip_encrypted_storage.pth",
        "zip_encrypted_pickle.pth",
    ];
    let paths: Vec<String> = files
        .iter()
        .map(|f| hostile(f).to_string_lossy().into_owned())
        .collect();
    let lines: Vec<String> = common::oracle_code(script, &paths)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        lines,
        [
            "ok w=[0.0, 0.0, 0.0, 0.0]",
            "ok w=[0.0, 0.0, 0.0, 0.0]",
            "error True",
            "error True"
        ]
    );
}

// Tensor geometry.
refused!(negative_size, "negative_size.pth", Error::InvalidTensor { reason, .. } if reason.contains("negative size"));
refused!(negative_stride, "negative_stride.pth", Error::InvalidTensor { reason, .. } if reason.contains("negative stride"));
refused!(negative_offset, "negative_offset.pth", Error::InvalidTensor { reason, .. } if reason.contains("negative storage offset"));
refused!(overflowing_size, "overflow_size.pth", Error::InvalidTensor { reason, .. } if reason.contains("overflow"));
refused!(
    overflowing_stride,
    "overflow_stride.pth",
    Error::InvalidTensor { .. }
);
refused!(
    overflowing_offset,
    "overflow_offset.pth",
    Error::InvalidTensor { .. }
);
refused!(
    size_beyond_64_bits,
    "huge_int_size.pth",
    Error::Pickle {
        kind: PickleError::BadArguments {
            callable: "torch._utils._rebuild_tensor_v2",
            ..
        },
        ..
    }
);
refused!(
    size_and_stride_lengths_differ,
    "size_stride_lengths.pth",
    Error::Pickle {
        kind: PickleError::BadArguments { .. },
        ..
    }
);

// The pickle machine.
refused!(
    unknown_opcode,
    "unknown_opcode.pth",
    Error::Pickle {
        kind: PickleError::UnknownOpcode(0xff),
        offset: Some(2),
        ..
    }
);
refused!(
    truncated_pickle,
    "truncated_pickle.pth",
    Error::Pickle {
        kind: PickleError::Truncated,
        ..
    }
);
refused!(
    stack_underflow,
    "stack_underflow.pth",
    Error::Pickle {
        kind: PickleError::StackUnderflow,
        ..
    }
);
refused!(
    memo_index_never_stored,
    "memo_missing.pth",
    Error::Pickle {
        kind: PickleError::MemoNotFound(7),
        ..
    }
);
refused!(
    string_longer_than_the_pickle,
    "huge_string_length.pth",
    Error::Pickle {
        kind: PickleError::Truncated,
        ..
    }
);
refused!(
    out_of_band_buffer,
    "out_of_band_buffer.pth",
    Error::Pickle {
        kind: PickleError::Unsupported(_),
        ..
    }
);
refused!(
    extension_registry,
    "extension_registry.pth",
    Error::Pickle {
        kind: PickleError::Unsupported(_),
        ..
    }
);
refused!(
    reduce_on_a_string,
    "reduce_non_callable.pth",
    Error::Pickle {
        kind: PickleError::NotCallable("str"),
        ..
    }
);
refused!(
    build_on_an_int,
    "build_on_int.pth",
    Error::Pickle {
        kind: PickleError::BadBuild("int"),
        ..
    }
);
refused!(
    setitem_on_a_list,
    "setitem_on_list.pth",
    Error::Pickle {
        kind: PickleError::Malformed(_),
        ..
    }
);
refused!(
    unsupported_protocol,
    "unsupported_protocol.pth",
    Error::Pickle {
        kind: PickleError::UnsupportedProtocol(7),
        ..
    }
);
refused!(
    memo_bomb,
    "memo_bomb.pth",
    Error::LimitExceeded {
        limit: "max_values",
        ..
    }
);
refused!(
    deep_nesting,
    "deep_nesting.pth",
    Error::Pickle {
        kind: PickleError::TooDeep(100),
        ..
    }
);

// Cycles. A value that holds itself is read, as Python rebuilds it, the cycle cut short
// where it closes (`Value::Recursive`); a graph whose paths explode is bounded by
// max_values; a cycle where PyTorch allows none is refused.

/// The files of the corpus that read (each bounded, and each tested below): cycles that
/// Python rebuilds too.
const READ: [&str; 3] = [
    "self_reference.pth",
    "cycle_metadata.pth",
    "cycle_build_state.pth",
];

#[test]
fn a_list_that_contains_itself_reads_as_python_prints_it() {
    let ckpt = Checkpoint::open(hostile("self_reference.pth")).unwrap();
    for v in [ckpt.value().unwrap(), ckpt.value_with_unreadable().unwrap()] {
        assert_eq!(v.to_string(), "[[...]]");
        let inner = v.as_list().unwrap();
        assert!(
            matches!(
                inner,
                [Value::Recursive {
                    up: 1,
                    type_name: "list"
                }]
            ),
            "{v:?}"
        );
    }
    assert!(matches!(
        ckpt.state_dict(),
        Err(Error::NotAStateDict { .. })
    ));
}

refused!(
    paths_through_cycles_that_explode,
    "cycle_bomb.pth",
    Error::LimitExceeded {
        limit: "max_values",
        ..
    }
);

#[test]
fn a_state_dict_whose_metadata_holds_the_state_dict_reads() {
    let path = hostile("cycle_metadata.pth");
    let sd = tch_state_dict::StateDict::load(&path).unwrap();
    assert_eq!(sd.keys().collect::<Vec<_>>(), ["w"]);
    let version = &sd.metadata().unwrap()[""]["version"];
    // The metadata's values are held by the state dict: one level up.
    assert!(
        matches!(
            version,
            Value::Recursive {
                up: 1,
                type_name: "OrderedDict"
            }
        ),
        "{version:?}"
    );
    let v = Checkpoint::open(&path).unwrap().value().unwrap();
    let meta = v.as_dict().unwrap().metadata.as_ref().unwrap();
    assert!(matches!(
        meta[""]["version"],
        Value::Recursive { up: 1, .. }
    ));
}

refused!(
    tensor_metadata_that_is_not_str_to_bool,
    "cycle_tensor_metadata.pth",
    Error::Pickle {
        kind: PickleError::BadArguments { callable, reason },
        ..
    } if callable.ends_with("_rebuild_tensor_v2") && reason.contains("str to bool")
);

#[test]
fn an_object_whose_state_holds_it_reads() {
    let v = Checkpoint::open(hostile("cycle_build_state.pth"))
        .unwrap()
        .value()
        .unwrap();
    let thing = v.as_list().unwrap()[0].as_object().unwrap();
    // object (2 up) <- its state (1 up) <- me; the list is 3 up.
    assert!(matches!(
        thing.get_attr("me"),
        Some(Value::Recursive {
            up: 2,
            type_name: "object"
        })
    ));
    assert!(matches!(
        thing.get_attr("outer"),
        Some(Value::Recursive {
            up: 3,
            type_name: "list"
        })
    ));
    assert_eq!(
        v.to_string(),
        "[fakepkg.Thing(me=..., outer=[...], w=tensor(size=[4], dtype=torch.float32))]"
    );
}

// The memory budget: files of a few hundred bytes to 400 KB that would make the reader
// allocate gigabytes (tests/budget.rs measures what each costs). Each is refused while it
// is opened, with the budget of its size.

/// Asserts that `file` fails to open with `max_memory`, its budget by the default limits.
fn over_budget(file: &str) {
    let path = hostile(file);
    let len = std::fs::metadata(&path).unwrap().len();
    match Checkpoint::open(&path).map(|_| ()) {
        Err(Error::LimitExceeded {
            limit: "max_memory",
            max,
            ..
        }) => assert_eq!(max, ReadLimits::default().max_memory(len), "{file}"),
        other => panic!("{file}: {other:?}"),
    }
}

#[test]
fn none_opcodes_inflated_past_the_budget() {
    // 400 MiB of pickle in 400 KB, refused before it is inflated.
    over_budget("none_bomb.pth");
}

#[test]
fn marks_past_the_budget() {
    over_budget("marks_bomb.pth");
}

#[test]
fn memo_copies_past_the_budget() {
    for file in [
        "memo_copy_torch_size.pth",
        "memo_copy_set.pth",
        "memo_copy_ordered_dict.pth",
        "memo_copy_codecs_encode.pth",
        "memo_copy_rebuild_tensor.pth",
        "memo_copy_opaque_args.pth",
        "memo_copy_9k.pth",
    ] {
        over_budget(file);
    }
}

#[test]
fn the_budget_is_configurable() {
    // Half the budget of its size: the pickle itself no longer fits.
    let path = hostile("marks_bomb.pth");
    let mut limits = ReadLimits::default();
    limits.max_memory_base = 32 << 20;
    limits.max_memory_per_file_byte = 0;
    assert!(matches!(
        Checkpoint::open_with(&path, &ReadOptions::new().limits(limits)).map(|_| ()),
        Err(Error::LimitExceeded {
            limit: "max_memory",
            max: 33_554_432,
            ..
        })
    ));
}

// Globals outside the allowlist: read as data, never imported or called.

/// Checks a file whose root is a call of `module.name` (or the bare global when `called` is
/// false): it opens, its value records the call, asking for a state dict names the class,
/// and `weights_only` refuses it as PyTorch does.
fn assert_opaque(file: &str, module: &str, name: &str, called: bool) -> Value {
    let ckpt = Checkpoint::open(hostile(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let value = ckpt.value().unwrap();
    match (&value, called) {
        (Value::Object(o), true) => {
            assert_eq!((o.module(), o.name()), (module, name), "{file}");
        }
        (Value::Global { module: m, name: n }, false) => {
            assert_eq!((m.as_str(), n.as_str()), (module, name), "{file}");
        }
        (other, _) => panic!("{file}: {other:?}"),
    }
    match ckpt.state_dict().map(|_| ()).unwrap_err() {
        Error::OpaqueObject {
            at: None,
            module: m,
            name: n,
            ..
        } => assert_eq!((m.as_str(), n.as_str()), (module, name), "{file}"),
        other => panic!("{file}: {other:?}"),
    }
    let weights_only = ReadOptions::new().weights_only(true);
    match Checkpoint::open_with(hostile(file), &weights_only).map(|_| ()) {
        Err(Error::DisallowedGlobal {
            module: m, name: n, ..
        }) => assert_eq!((m.as_str(), n.as_str()), (module, name), "{file}"),
        other => panic!("{file}: {other:?}"),
    }
    value
}

#[test]
fn os_system() {
    let v = assert_opaque("os_system.pth", "os", "system", true);
    assert_eq!(v.to_string(), "os.system('echo pwned')");
}

#[test]
fn builtins_eval() {
    let v = assert_opaque("builtins_eval.pth", "builtins", "eval", true);
    assert_eq!(v.as_object().unwrap().args()[0].as_str(), Some("1+1"));
}

#[test]
fn posix_system_through_stack_global() {
    assert_opaque("posix_system_stack_global.pth", "posix", "system", true);
}

#[test]
fn torch_functions_are_not_allowed() {
    assert_opaque("torch_load_global.pth", "torch", "load", false);
}

#[test]
fn inst_opcode_goes_through_the_allowlist() {
    let v = assert_opaque("inst_opcode.pth", "os", "system", true);
    assert_eq!(v.to_string(), "os.system('id')");
}

#[test]
fn payloads_are_never_run() {
    let marker = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tch_state_dict_pwned");
    let _ = std::fs::remove_file(&marker);
    let ckpt = Checkpoint::open(hostile("payload_marker.pth")).unwrap();
    let value = ckpt.value().unwrap();
    let system = value.as_object().unwrap();
    assert_eq!(system.qualified_name(), "os.system");
    assert_eq!(
        system
            .get_attr("exec")
            .unwrap()
            .as_object()
            .unwrap()
            .qualified_name(),
        "builtins.exec"
    );
    assert_eq!(
        value
            .attr("posix")
            .unwrap()
            .as_object()
            .unwrap()
            .qualified_name(),
        "posix.system"
    );
    assert!(matches!(
        ckpt.state_dict().map(|_| ()),
        Err(Error::OpaqueObject { module, name, .. }) if module == "os" && name == "system"
    ));
    assert!(ckpt.lazy_state_dict().is_err());
    let _ = format!("{value} {value:?}");
    assert!(!marker.exists(), "a payload ran");
    assert!(matches!(
        Checkpoint::open_with(
            hostile("payload_marker.pth"),
            &ReadOptions::new().weights_only(true)
        )
        .map(|_| ()),
        Err(Error::DisallowedGlobal { module, .. }) if module == "os"
    ));
}

// Opaque objects: bounded however they are nested, shared or called.

/// `Checkpoint::open` succeeds; reading the whole value gives the error.
fn value_error(file: &str) -> Error {
    let ckpt = Checkpoint::open(hostile(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    ckpt.value().map(|_| ()).unwrap_err()
}

#[test]
fn opaque_objects_nested_deeply() {
    let e = value_error("opaque_deep_nesting.pth");
    assert!(
        matches!(
            e,
            Error::Pickle {
                kind: PickleError::TooDeep(100),
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("opaque_deep_nesting.pth"));
}

#[test]
fn an_opaque_object_with_a_huge_argument_list_is_a_bounded_result() {
    let v = Checkpoint::open(hostile("opaque_huge_args.pth"))
        .unwrap()
        .value()
        .unwrap();
    let o = v.as_object().unwrap();
    assert_eq!(o.qualified_name(), "fakepkg.Thing");
    assert_eq!(o.args().len(), 50_000);
    // With fewer objects allowed, it is refused when parsed.
    let mut limits = ReadLimits::default();
    limits.max_objects = 10_000;
    assert!(matches!(
        Checkpoint::open_with(
            hostile("opaque_huge_args.pth"),
            &ReadOptions::new().limits(limits)
        )
        .map(|_| ()),
        Err(Error::LimitExceeded {
            limit: "max_objects",
            ..
        })
    ));
}

#[test]
fn opaque_arguments_shared_through_the_memo() {
    assert!(matches!(
        value_error("opaque_args_memo_bomb.pth"),
        Error::LimitExceeded {
            limit: "max_values",
            ..
        }
    ));
}

#[test]
fn opaque_state_shared_through_the_memo() {
    assert!(matches!(
        value_error("opaque_shared_state.pth"),
        Error::LimitExceeded {
            limit: "max_values",
            ..
        }
    ));
}

refused!(
    an_opaque_object_with_state_as_a_tensor_storage,
    "opaque_as_storage.pth",
    Error::Pickle {
        kind: PickleError::BadArguments {
            callable: "torch._utils._rebuild_tensor_v2",
            reason,
        },
        ..
    } if reason.contains("object")
);
refused!(
    an_opaque_object_as_a_persistent_id,
    "opaque_persistent_id.pth",
    Error::Pickle {
        kind: PickleError::PersistentId(_),
        ..
    }
);
refused!(
    build_twice_on_an_opaque_object,
    "opaque_build_twice.pth",
    Error::Pickle {
        kind: PickleError::Malformed(_),
        ..
    }
);
refused!(
    calling_an_opaque_object,
    "opaque_called.pth",
    Error::Pickle {
        kind: PickleError::NotCallable("object"),
        ..
    }
);
refused!(
    modules_that_share_children,
    "module_shared_children.pth",
    Error::LimitExceeded {
        limit: "max_values",
        ..
    }
);
refused!(
    a_module_that_is_its_own_child,
    "module_cycle.pth",
    Error::Pickle {
        kind: PickleError::Cycle(what),
        ..
    } if what.contains("`self`")
);

refused!(
    torchscript_declared_parameter_that_is_not_a_tensor,
    "torchscript_param_not_tensor.pt",
    Error::InvalidModule { module, reason, .. }
        if module.is_empty() && reason.contains("__torch__.M") && reason.contains("os.system")
);

#[test]
fn weights_only_refuses_torchscript_archives() {
    let options = ReadOptions::new().weights_only(true);
    assert!(matches!(
        Checkpoint::open_with(hostile("torchscript_param_not_tensor.pt"), &options).map(|_| ()),
        Err(Error::TorchScript { .. })
    ));
}

// Persistent ids and keys.
refused!(
    persistent_id_of_the_wrong_shape,
    "pid_wrong_shape.pth",
    Error::Pickle {
        kind: PickleError::PersistentId(_),
        ..
    }
);
refused!(
    torchscript_persistent_id_of_four_items,
    "torchscript_pid_four_items.pt",
    Error::Pickle {
        kind: PickleError::PersistentId(reason),
        ..
    } if reason == "4 items, expected 5 or more"
);
refused!(
    torchscript_of_torch_1_0_with_model_json,
    "torchscript_model_json.pt",
    Error::InvalidRecord { record, reason, .. }
        if record == "archive/model.json" && reason.contains("torch 1.0 to 1.2")
);
refused!(
    torch_save_persistent_id_of_six_items,
    "pid_six_items.pth",
    Error::Pickle {
        kind: PickleError::PersistentId(reason),
        ..
    } if reason == "6 items, expected 5"
);
refused!(
    persistent_id_not_a_tuple,
    "pid_not_tuple.pth",
    Error::Pickle {
        kind: PickleError::PersistentId(_),
        ..
    }
);
refused!(
    text_persistent_id,
    "pid_text.pth",
    Error::Pickle {
        kind: PickleError::PersistentId(_),
        ..
    }
);
refused!(duplicate_keys, "duplicate_keys.pth", Error::Pickle { kind: PickleError::DuplicateKey(k), .. } if k == "w");
// A quantized storage opens (the entry is listed); reading it is refused, naming its key.
refused!(quantized_storage, "qint8_storage.pth", Error::UnsupportedDtype { key: Some(key), dtype, .. } if dtype == "torch.qint8" && key == "w");

#[test]
fn a_quantized_storage_is_listed_before_it_is_refused() {
    let sd = tch_state_dict::LazyStateDict::load(hostile("qint8_storage.pth")).unwrap();
    let t = sd.get("w").unwrap();
    assert_eq!(
        (t.dtype_name(), t.kind(), t.size()),
        ("qint8", None, vec![16])
    );
    assert!(matches!(t.read(), Err(Error::UnsupportedDtype { key: Some(k), .. }) if k == "w"));
}

// Legacy format.
refused!(
    legacy_truncated,
    "legacy_truncated.pth",
    Error::InvalidRecord { .. }
);
refused!(legacy_view_out_of_bounds, "legacy_view_out_of_bounds.pth", Error::InvalidTensor { storage, .. } if storage == "k");
refused!(
    legacy_size_mismatch,
    "legacy_size_mismatch.pth",
    Error::StorageSizeMismatch { storage, expected: 16, found: 24, .. } if storage == "k"
);

// Not checkpoints.
refused!(empty_file, "empty.pth", Error::EmptyFile { .. });
refused!(git_lfs_pointer, "lfs_pointer.pth", Error::LfsPointer { .. });
refused!(plain_pickle, "plain_pickle.pkl", Error::UnknownFormat { found, .. } if found.contains("pickle"));
refused!(html_page, "html_page.pth", Error::UnknownFormat { found, .. } if found.contains("HTML"));

// safetensors.
refused!(
    safetensors_overlapping_offsets,
    "st_overlap.safetensors",
    Error::Safetensors { .. }
);
refused!(
    safetensors_header_too_large,
    "st_header_too_large.safetensors",
    Error::Safetensors { .. }
);
refused!(
    safetensors_trailing_bytes,
    "st_trailing.safetensors",
    Error::Safetensors { .. }
);
refused!(
    safetensors_bad_json,
    "st_bad_json.safetensors",
    Error::Safetensors { .. }
);
refused!(
    safetensors_shape_and_offsets_disagree,
    "st_shape_mismatch.safetensors",
    Error::Safetensors { .. }
);
refused!(safetensors_dimension_past_i64, "st_huge_dim.safetensors", Error::InvalidTensor { storage, reason, .. } if storage == "a" && reason.contains("2^63"));
refused!(safetensors_strides_overflow, "st_stride_overflow.safetensors", Error::InvalidTensor { storage, reason, .. } if storage == "a" && reason.contains("overflow"));

// Sharded indexes.
refused!(sharded_path_traversal, "sharded_traversal/model.safetensors.index.json", Error::ShardIndex { reason, .. } if reason.contains("plain relative path"));
refused!(sharded_key_missing_from_its_shard, "sharded_missing_key/model.safetensors.index.json", Error::ShardIndex { reason, .. } if reason.contains("\"b\""));
refused!(sharded_index_naming_itself, "sharded_self/model.safetensors.index.json", Error::ShardIndex { reason, .. } if reason.contains("is itself an index"));
refused!(sharded_indexes_naming_each_other_a, "sharded_mutual/a.index.json", Error::ShardIndex { reason, .. } if reason.contains("\"b.index.json\" is itself an index"));
refused!(sharded_indexes_naming_each_other_b, "sharded_mutual/b.index.json", Error::ShardIndex { reason, .. } if reason.contains("\"a.index.json\" is itself an index"));
refused!(
    sharded_without_weight_map,
    "sharded_no_weight_map.index.json",
    Error::ShardIndex { .. }
);

#[test]
fn the_corpus_has_at_least_30_files_and_every_one_is_tested() {
    let dir = common::test_file("fixtures/hostile");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            for inner in std::fs::read_dir(entry.path()).unwrap() {
                let inner = inner.unwrap().path();
                if inner.to_string_lossy().ends_with(".index.json") {
                    files.push(inner);
                }
            }
        } else {
            files.push(entry.path());
        }
    }
    assert!(files.len() >= 30, "{} files", files.len());
    let source = std::fs::read_to_string(common::test_file("hostile.rs")).unwrap();
    for f in &files {
        let rel = f.strip_prefix(&dir).unwrap().to_string_lossy().into_owned();
        assert!(source.contains(&format!("\"{rel}\"")), "{rel} has no test");
        // And every file is refused, whatever its test expects, but those that read.
        if READ.contains(&rel.as_str()) {
            Checkpoint::open(f).unwrap().value().unwrap();
        } else {
            let _ = refusal(&rel);
        }
    }
}

#[test]
fn limits_are_configurable() {
    let mut limits = ReadLimits::default();
    limits.max_tensors = 1;
    let options = ReadOptions::new().limits(limits);
    let path = common::test_file("fixtures/pytorch/dtypes.pth");
    assert!(matches!(
        Checkpoint::open_with(&path, &options).map(|_| ()),
        Err(Error::LimitExceeded {
            limit: "max_tensors",
            max: 1,
            ..
        })
    ));
    let mut limits = ReadLimits::default();
    limits.max_pickle_bytes = 16;
    assert!(matches!(
        Checkpoint::open_with(&path, &ReadOptions::new().limits(limits)).map(|_| ()),
        Err(Error::LimitExceeded {
            limit: "max_pickle_bytes",
            ..
        })
    ));
}
