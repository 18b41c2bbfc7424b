//! Checkpoints as training code writes them (tests/fixtures/make_training.py): options
//! objects, numpy values, paths, datetimes, a package the reader cannot know. Every tensor
//! and value is compared with what torch.load(weights_only=False) gives in Python
//! (tests/oracle/full_load.py); nothing of those classes is imported or run here.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::Value as Json;
use tch::nn;
use tch::{Device, Kind};
use tch_state_dict::{
    Checkpoint, Error, LazyStateDict, ReadOptions, SaveOptions, StateDict, Value,
};

fn fixture(name: &str) -> PathBuf {
    common::test_file(&format!("fixtures/training/{name}"))
}

/// The fixtures this file compares with Python.
const FIXTURES: [&str; 10] = [
    "newobj_ex.pth",
    "repdistiller.pth",
    "timm.pth.tar",
    "lightning.ckpt",
    "lightning_hydra.ckpt",
    "cycles.pth",
    "values.pth",
    "values_numpy1.pth",
    "gpu_tagged.pth",
    "gpu_tagged_legacy.pth",
];

/// What Python's torch.load(weights_only=False) gives for `name`, flattened: one call of the
/// oracle for all of `FIXTURES`, on first use.
fn python(name: &str) -> &'static Json {
    static ALL: OnceLock<Json> = OnceLock::new();
    let all = ALL.get_or_init(|| {
        let paths: Vec<String> = FIXTURES
            .iter()
            .map(|f| fixture(f).to_str().unwrap().to_string())
            .collect();
        let mut args = vec!["flatten_all"];
        args.extend(paths.iter().map(String::as_str));
        serde_json::from_str(&common::oracle("oracle/full_load.py", &args, "")).unwrap()
    });
    let flat = &all[fixture(name).to_str().unwrap()];
    assert!(flat.is_object(), "{name} is not one of FIXTURES");
    flat
}

/// Every tensor (dtype, shape, bytes) and scalar (type, Python repr) of a value, by a path
/// of keys joined with '/': what the oracle prints for Python's side.
#[derive(Default)]
struct Flat {
    tensors: BTreeMap<String, (String, Vec<i64>, String)>,
    scalars: BTreeMap<String, (String, String)>,
}

fn flatten(v: &Value, prefix: &str, out: &mut Flat) {
    flatten_in(v, prefix, out, &mut Vec::new());
}

/// `levels` holds the path of each value that encloses `v`, outermost first, as
/// `Value::Recursive` counts them (an object's state is a level of its own, at the object's
/// path): a reference back is recorded as ("recursive", the path it refers to), as the
/// oracle records a cycle.
fn flatten_in(v: &Value, prefix: &str, out: &mut Flat, levels: &mut Vec<String>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}/{k}")
        }
    };
    let mut scalar = |kind: &str, repr: String| {
        out.scalars
            .insert(prefix.to_string(), (kind.to_string(), repr));
    };
    match v {
        Value::Tensor(t) => {
            out.tensors.insert(prefix.to_string(), common::record(t));
        }
        Value::Bool(_) => scalar("bool", v.to_string()),
        Value::Int(_) | Value::BigInt(_) => scalar("int", v.to_string()),
        Value::Float(_) => scalar("float", v.to_string()),
        Value::Str(s) => scalar("str", s.clone()),
        Value::None => scalar("none", "None".into()),
        Value::Recursive { up, .. } => {
            let target = levels[levels.len() - up].clone();
            scalar("recursive", target)
        }
        Value::Dict(d) => {
            levels.push(prefix.to_string());
            for (k, item) in &d.items {
                flatten_in(item, &join(&key(k)), out, levels);
            }
            levels.pop();
        }
        Value::List(items) | Value::Tuple(items) => {
            levels.push(prefix.to_string());
            for (i, item) in items.iter().enumerate() {
                flatten_in(item, &join(&i.to_string()), out, levels);
            }
            levels.pop();
        }
        Value::Object(o) => {
            levels.push(prefix.to_string());
            for (k, item) in o.dict_items() {
                flatten_in(item, &join(&key(k)), out, levels);
            }
            // The state, a level below the object (a dict, as every fixture's is).
            levels.push(prefix.to_string());
            for (k, item) in o.attrs() {
                flatten_in(item, &join(k), out, levels);
            }
            levels.truncate(levels.len() - 2);
        }
        _ => {}
    }
}

/// The entries of `flat` at `key` or under it.
fn under<V: Clone>(flat: &BTreeMap<String, V>, key: &str) -> BTreeMap<String, V> {
    let inside = format!("{key}/");
    flat.iter()
        .filter(|(path, _)| *path == key || path.starts_with(&inside))
        .map(|(path, v)| (path.clone(), v.clone()))
        .collect()
}

/// `value_at(key)` is the whole value's `[key]`, for every key of every fixture: every
/// tensor and scalar, and every reference back (an object, a config that refers to itself)
/// to the same place.
#[test]
fn the_value_under_each_key_is_that_of_the_whole() {
    let mut keys = 0;
    for name in FIXTURES {
        let ckpt = Checkpoint::open(fixture(name)).unwrap();
        let whole = ckpt.value().unwrap();
        let mut all = Flat::default();
        flatten(&whole, "", &mut all);
        let Value::Dict(top) = &whole else {
            continue;
        };
        for (k, _) in &top.items {
            let Value::Str(k) = k else { continue };
            let mut one = Flat::default();
            let v = ckpt
                .value_at(k)
                .unwrap_or_else(|e| panic!("{name}[{k}]: {e}"));
            flatten_in(&v, k, &mut one, &mut vec![String::new()]);
            assert_eq!(one.tensors, under(&all.tensors, k), "{name}[{k}]");
            assert_eq!(one.scalars, under(&all.scalars, k), "{name}[{k}]");
            keys += 1;
        }
    }
    assert!(keys > 20, "{keys} keys");
}

fn key(k: &Value) -> String {
    match k {
        Value::Str(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Reads `name` whole and requires every tensor and scalar to be Python's.
fn assert_matches_python(name: &str) -> (Value, &'static Json) {
    let value = Value::load(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let want = python(name);
    let mut got = Flat::default();
    flatten(&value, "", &mut got);
    let want_tensors: BTreeMap<String, (String, Vec<i64>, String)> = want["tensors"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, r)| {
            let shape = r["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_i64().unwrap())
                .collect();
            (
                k.clone(),
                (
                    r["dtype"].as_str().unwrap().to_string(),
                    shape,
                    r["hex"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect();
    assert_eq!(
        got.tensors.keys().collect::<Vec<_>>(),
        want_tensors.keys().collect::<Vec<_>>(),
        "{name}: tensors"
    );
    for (k, w) in &want_tensors {
        assert_eq!(&got.tensors[k], w, "{name}/{k}");
    }
    let want_scalars: BTreeMap<String, (String, String)> = want["scalars"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, s)| {
            (
                k.clone(),
                (
                    s["type"].as_str().unwrap().to_string(),
                    s["repr"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect();
    assert_eq!(got.scalars, want_scalars, "{name}: scalars");
    (value, want)
}

#[test]
fn repdistiller_checkpoint_with_an_argparse_namespace() {
    let name = "repdistiller.pth";
    let (value, python) = assert_matches_python(name);
    // The options object: attributes readable, printed as Python's repr.
    let opt = value.get("opt").and_then(Value::as_object).unwrap();
    assert_eq!((opt.module(), opt.name()), ("argparse", "Namespace"));
    assert_eq!(
        opt.get_attr("model").and_then(Value::as_str),
        Some("resnet8")
    );
    assert!(value.attr("epochs").is_none());
    assert_eq!(
        value
            .get("opt")
            .unwrap()
            .attr("learning_rate")
            .unwrap()
            .as_float(),
        Some(0.05)
    );
    assert_eq!(
        opt.to_string(),
        format!("argparse.{}", python["reprs"]["opt"].as_str().unwrap())
    );

    // The model's state dict, straight into a model; the options object is never touched.
    // (tch's batch_norm has no num_batches_tracked: it is popped first.)
    let vs = nn::VarStore::new(Device::Cpu);
    common::small_model(&vs, 100);
    let ckpt = Checkpoint::open(fixture(name)).unwrap();
    let mut lazy = ckpt.lazy_state_dict_at("model").unwrap();
    lazy.pop("bn1.num_batches_tracked");
    tch_state_dict::load_state_dict(&vs, &lazy, true).unwrap();
    let sd = StateDict::load_key(fixture(name), "model").unwrap();
    for (k, t) in tch_state_dict::state_dict(&vs).unwrap().iter() {
        assert!(t.equal(sd.get(k).unwrap()), "{k}");
    }

    // Asking the options object for a state dict names its class and key.
    match ckpt.state_dict_at("opt").map(|_| ()).unwrap_err() {
        Error::OpaqueObject {
            at, module, name, ..
        } => {
            assert_eq!(at.as_deref(), Some("opt"));
            assert_eq!((module.as_str(), name.as_str()), ("argparse", "Namespace"));
        }
        other => panic!("{other:?}"),
    }
    // The top level is not a state dict, and the error says where one is.
    let err = StateDict::load(fixture(name)).unwrap_err();
    assert!(matches!(err, Error::NotAStateDict { .. }));
    assert!(
        err.to_string()
            .contains("StateDict::load_key(path, \"model\")"),
        "{err}"
    );
    // weights_only refuses the file, as PyTorch does.
    match Checkpoint::open_with(fixture(name), &ReadOptions::new().weights_only(true))
        .map(|_| ())
        .unwrap_err()
    {
        Error::DisallowedGlobal { module, name, .. } => {
            assert_eq!((module.as_str(), name.as_str()), ("argparse", "Namespace"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn timm_checkpoint_with_a_numpy_metric() {
    let name = "timm.pth.tar";
    let (value, python) = assert_matches_python(name);
    assert_eq!(value.get("metric").and_then(Value::as_float), Some(79.7));
    assert_eq!(value.get("arch").and_then(Value::as_str), Some("resnet18"));
    let args = value.get("args").and_then(Value::as_object).unwrap();
    assert_eq!(args.get_attr("opt").and_then(Value::as_str), Some("adamw"));
    assert_eq!(
        args.to_string(),
        format!("argparse.{}", python["reprs"]["args"].as_str().unwrap())
    );
    let sd = StateDict::load_key(fixture(name), "state_dict").unwrap();
    assert_eq!(sd.len(), 8);
    assert_eq!(sd.metadata().unwrap()["bn1"]["version"].as_int(), Some(2));
}

#[test]
fn lightning_checkpoint_with_a_class_from_an_unknown_package() {
    let name = "lightning.ckpt";
    let (value, python) = assert_matches_python(name);
    let hparams = value
        .get("hyper_parameters")
        .and_then(Value::as_object)
        .unwrap();
    assert_eq!(hparams.qualified_name(), "fakepkg.AttributeDict");
    let lr = hparams
        .dict_items()
        .iter()
        .find(|(k, _)| k.as_str() == Some("lr"))
        .map(|(_, v)| v.as_float());
    assert_eq!(lr, Some(Some(1e-3)));
    assert_eq!(
        hparams.to_string(),
        python["reprs"]["hyper_parameters"].as_str().unwrap()
    );

    // Lightning's 'model.' prefix, stripped, and a strict load into the model.
    let mut sd = Checkpoint::open(fixture(name))
        .unwrap()
        .lazy_state_dict_at("state_dict")
        .unwrap();
    assert!(sd.keys().all(|k| k.starts_with("model.")));
    sd.strip_prefix("model.");
    sd.pop("bn1.num_batches_tracked");
    let vs = nn::VarStore::new(Device::Cpu);
    common::small_model(&vs, 10);
    tch_state_dict::load_state_dict(&vs, &sd, true).unwrap();
    assert_eq!(tch_state_dict::state_dict(&vs).unwrap().len(), 7);

    match Checkpoint::open_with(fixture(name), &ReadOptions::new().weights_only(true))
        .map(|_| ())
        .unwrap_err()
    {
        Error::DisallowedGlobal { module, name, .. } => {
            assert_eq!(
                (module.as_str(), name.as_str()),
                ("fakepkg", "AttributeDict")
            )
        }
        other => panic!("{other:?}"),
    }
}

/// The `_content` entry `key` of an omegaconf node's value.
fn content<'v>(node: &'v Value, key: &str) -> &'v Value {
    node.attr("_content").and_then(|c| c.get(key)).unwrap()
}

#[test]
fn lightning_checkpoint_with_omegaconf_configs_that_refer_to_themselves() {
    let name = "lightning_hydra.ckpt";
    let path = fixture(name);
    // Every tensor and scalar, and where each cycle leads, as Python rebuilds them.
    let (value, python) = assert_matches_python(name);
    assert!(
        python["scalars"]["hyper_parameters/cfg/_content/model/_parent"]["type"] == "recursive",
        "the oracle saw no cycle"
    );
    let hparams = value.get("hyper_parameters").unwrap().as_object().unwrap();
    let cfg = &hparams.dict_items()[0].1;
    assert_eq!(
        cfg.as_object().unwrap().qualified_name(),
        "omegaconf.dictconfig.DictConfig"
    );
    let model = content(cfg, "model");
    // model's state (1 up) <- model (2) <- cfg._content (3) <- cfg's state (4) <- cfg (5).
    assert!(matches!(
        model.attr("_parent"),
        Some(Value::Recursive {
            up: 5,
            type_name: "object"
        })
    ));
    let t_max = content(content(content(cfg, "optim"), "scheduler"), "t_max");
    assert_eq!(
        t_max.attr("_val").and_then(Value::as_str),
        Some("${trainer.max_epochs}")
    );
    assert!(value.to_string().contains("_parent=..."));

    // The same through every other entry point.
    let ckpt = Checkpoint::open(&path).unwrap();
    let v = ckpt.value().unwrap();
    assert_eq!(v.to_string(), value.to_string());
    assert_eq!(
        ckpt.value_with_unreadable().unwrap().to_string(),
        value.to_string()
    );
    let mut sd = StateDict::load_key(&path, "state_dict").unwrap();
    assert_eq!(sd.len(), 8);
    sd.strip_prefix("model.");
    sd.pop("bn1.num_batches_tracked");
    let vs = nn::VarStore::new(Device::Cpu);
    common::small_model(&vs, 10);
    tch_state_dict::load_state_dict(&vs, &sd, true).unwrap();
    // A key that holds no state dict says what it holds.
    match StateDict::load_key(&path, "hyper_parameters").unwrap_err() {
        Error::OpaqueObject { name, .. } => assert_eq!(name, "AttributeDict"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn values_that_hold_themselves_and_shared_subtrees() {
    let (value, _) = assert_matches_python("cycles.pth");
    assert_eq!(
        value.get("list").unwrap().to_string(),
        "[1, 'a', [...], ([[...]],)]"
    );
    assert_eq!(
        value.get("dict").unwrap().to_string(),
        "{'x': 1.5, 'self': {...}}"
    );
    // A subtree under two keys is no cycle: two equal values, sharing the tensor.
    let (a, b) = (value.get("a").unwrap(), value.get("b").unwrap());
    assert_eq!(a.to_string(), b.to_string());
    let (ta, tb) = (
        a.get("w").unwrap().as_tensor().unwrap(),
        b.get("w").unwrap().as_tensor().unwrap(),
    );
    assert_eq!(ta.data_ptr(), tb.data_ptr());
}

#[test]
fn numpy_values_paths_and_datetimes_are_plain_values() {
    for name in ["values.pth", "values_numpy1.pth"] {
        let (v, _) = assert_matches_python(name);
        assert!(
            matches!(v.get("f64"), Some(Value::Float(x)) if *x == 79.7),
            "{name}"
        );
        assert!(matches!(v.get("i64"), Some(Value::Int(-7))), "{name}");
        assert!(matches!(v.get("bool"), Some(Value::Bool(true))), "{name}");
        assert!(matches!(v.get("u64"), Some(Value::BigInt(_))), "{name}");
        let t = |k: &str| v.get(k).and_then(Value::as_tensor).unwrap();
        assert_eq!(t("array_f32").kind(), Kind::Float);
        assert_eq!(t("array_big_endian").kind(), Kind::Double);
        assert!(t("array_fortran").equal(t("array_f32")));
        assert_eq!(t("array_0d").size(), Vec::<i64>::new());
        assert_eq!(
            v.get("path").and_then(Value::as_str),
            Some("/data/runs/exp1/ckpt.pth")
        );
        assert_eq!(
            v.get("saved_at_tz").and_then(Value::as_str),
            Some("2026-11-28T10:59:01-05:30")
        );
        // A timedelta stays an object, its arguments readable.
        let took = v.get("took").and_then(Value::as_object).unwrap();
        assert_eq!(took.qualified_name(), "datetime.timedelta");
        assert_eq!(took.args()[0].as_int(), Some(1));
    }
    // numpy arrays are placed and cast as the options ask, like every tensor.
    let options = ReadOptions::new().kind(Some(Kind::Half));
    let v = Checkpoint::open_with(fixture("values.pth"), &options)
        .unwrap()
        .value()
        .unwrap();
    let t = v.get("array_f32").and_then(Value::as_tensor).unwrap();
    assert_eq!(t.kind(), Kind::Half);
}

#[test]
fn a_value_holding_an_object_is_not_written() {
    let value = Value::load(fixture("repdistiller.pth")).unwrap();
    let dir = common::tempdir("resave");
    let out = dir.join("resaved.pth");
    match value.save(&out).unwrap_err() {
        Error::Unwritable { reason, .. } => assert!(reason.contains("argparse.Namespace")),
        other => panic!("{other:?}"),
    }
    assert!(!out.exists());
}

#[test]
fn storages_saved_on_a_gpu_load_on_the_cpu_by_default() {
    for name in ["gpu_tagged.pth", "gpu_tagged_legacy.pth"] {
        // The file says its storages are on cuda:0 ...
        let bytes = std::fs::read(fixture(name)).unwrap();
        assert!(bytes.windows(6).any(|w| w == b"cuda:0"), "{name}");
        // ... and they load where ReadOptions::device says: the CPU by default, with
        // Python's values (torch.load(map_location='cpu')).
        let (value, _) = assert_matches_python(name);
        let t = value.get("ema").unwrap().get("shadow").unwrap();
        assert_eq!(t.as_tensor().unwrap().device(), Device::Cpu);
        let sd = StateDict::load_key(fixture(name), "model").unwrap();
        assert!(sd.values().all(|t| t.device() == Device::Cpu), "{name}");
        let vs = nn::VarStore::new(Device::Cpu);
        common::small_model(&vs, 10);
        let mut lazy = LazyStateDict::load_key(fixture(name), "model").unwrap();
        lazy.pop("bn1.num_batches_tracked");
        tch_state_dict::load_state_dict(&vs, &lazy, true).unwrap();
        for (k, t) in tch_state_dict::state_dict(&vs).unwrap().iter() {
            assert!(t.equal(sd.get(k).unwrap()), "{name}/{k}");
        }
    }
}

#[test]
#[ignore = "needs CUDA"]
fn storages_saved_on_a_gpu_load_onto_the_device_asked_for() {
    let options = ReadOptions::new().device(Device::Cuda(0));
    for name in ["gpu_tagged.pth", "gpu_tagged_legacy.pth"] {
        let sd = StateDict::load_key_with(fixture(name), "model", &options).unwrap();
        let cpu = StateDict::load_key(fixture(name), "model").unwrap();
        for (k, t) in sd.iter() {
            assert_eq!(t.device(), Device::Cuda(0), "{name}/{k}");
            assert!(
                t.to_device(Device::Cpu).equal(cpu.get(k).unwrap()),
                "{name}/{k}"
            );
        }
    }
}

/// What Python's torch.load(weights_only=False) gives for `path`, flattened (any file).
fn python_flat(path: &std::path::Path) -> Json {
    let p = path.to_str().unwrap();
    let all: Json = serde_json::from_str(&common::oracle(
        "oracle/full_load.py",
        &["flatten_all", p],
        "",
    ))
    .unwrap();
    all[p].clone()
}

#[test]
fn a_faithful_save_gives_python_the_same_objects_back() {
    let dir = common::tempdir("faithful");
    let objects = SaveOptions::new().objects(true);
    // argparse, a Lightning AttributeDict of a package Python imports (fakepkg, which the
    // oracle registers), omegaconf configs with their cycles.
    for name in [
        "repdistiller.pth",
        "lightning.ckpt",
        "lightning_hydra.ckpt",
        "newobj_ex.pth",
    ] {
        let value = Value::load(fixture(name)).unwrap();
        // By default objects are refused, as weights_only=True would refuse them.
        assert!(
            matches!(value.save(dir.join(name)), Err(Error::Unwritable { .. })),
            "{name}"
        );
        let out = dir.join(name);
        value.save_with(&out, &objects).unwrap();
        assert_eq!(python_flat(&out), *python(name), "{name}");
        // And this crate reads back what it wrote.
        assert_eq!(Value::load(&out).unwrap().to_string(), value.to_string());
    }
    // The omegaconf configs work in Python: interpolations resolve through `_parent`, and
    // every node's parent is the node that holds it.
    let out = dir.join("lightning_hydra.ckpt");
    let configs: Json = serde_json::from_str(&common::oracle(
        "oracle/full_load.py",
        &["omegaconf", out.to_str().unwrap()],
        "",
    ))
    .unwrap();
    assert_eq!(configs["cfg"]["parents_ok"], Json::Bool(true));
    assert_eq!(configs["labels"]["parents_ok"], Json::Bool(true));
    assert_eq!(
        configs["cfg"]["resolved"]["optim"]["scheduler"]["t_max"],
        30
    );
    assert_eq!(configs["cfg"]["resolved"]["data"], "???");
}

#[test]
fn an_object_made_with_keyword_arguments() {
    let (value, _) = assert_matches_python("newobj_ex.pth");
    let keyed = value.get("keyed").and_then(Value::as_object).unwrap();
    assert!(keyed.made_by_new());
    assert_eq!(keyed.args().len(), 1);
    assert_eq!(keyed.kwargs()[0].0.as_str(), Some("b"));
    assert_eq!(keyed.kwargs()[0].1.as_int(), Some(4));
    // REDUCE, as a call: not made by __new__.
    let (value, _) = assert_matches_python("lightning_hydra.ckpt");
    let hp = value
        .get("hyper_parameters")
        .and_then(Value::as_object)
        .unwrap();
    let cache = hp.dict_items()[0]
        .1
        .attr("_metadata")
        .and_then(|m| m.attr("resolver_cache"))
        .and_then(Value::as_object)
        .unwrap();
    assert_eq!(cache.qualified_name(), "collections.defaultdict");
    assert!(!cache.made_by_new());
}

/// torch.save's default protocol (2) has no `NEWOBJ_EX`: an object that
/// `__getnewargs_ex__` makes with keyword arguments is pickled as
/// `functools.partial(getattr(cls, '__new__'), cls, *args, **kwargs)()`. It reads as the
/// same object protocol 4 makes, and is written back as Python reads it.
#[test]
fn an_object_made_with_keyword_arguments_under_protocol_2() {
    let dir = common::tempdir("partial-new");
    let (path, out) = (dir.join("p2.pth"), dir.join("p2.out.pth"));
    // A module of its own: the oracle's Python process is shared by this binary's tests,
    // and `fakepkg` there is the stubs' module, which the others load classes from.
    let class = "import sys, types, torch\n\
        mod = types.ModuleType('partialpkg'); sys.modules['partialpkg'] = mod\n\
        class Keyed:\n\
        \x20   def __new__(cls, a, *, b=0):\n\
        \x20       self = super().__new__(cls); self.a, self.b = a, b; return self\n\
        \x20   def __getnewargs_ex__(self):\n\
        \x20       return (self.a,), {'b': self.b}\n\
        Keyed.__module__ = Keyed.__new__.__module__ = 'partialpkg'\n\
        Keyed.__qualname__ = 'Keyed'; Keyed.__new__.__qualname__ = 'Keyed.__new__'\n\
        mod.Keyed = Keyed\n";
    let save = format!(
        "{class}k = Keyed(1, b=2); k.c = 3\n\
         torch.save({{'k': k, 'w': torch.ones(2)}}, sys.argv[1])"
    );
    common::oracle_code(&save, &[path.to_str().unwrap()]);
    let value = Value::load(&path).unwrap();
    let keyed = value.get("k").and_then(Value::as_object).unwrap();
    assert_eq!(keyed.qualified_name(), "partialpkg.Keyed");
    assert!(keyed.made_by_new());
    assert_eq!(keyed.args().len(), 1);
    assert_eq!(keyed.args()[0].as_int(), Some(1));
    assert_eq!(keyed.kwargs()[0].0.as_str(), Some("b"));
    assert_eq!(keyed.kwargs()[0].1.as_int(), Some(2));
    let c = value.get("k").and_then(|k| k.attr("c"));
    assert_eq!(c.and_then(Value::as_int), Some(3));
    value
        .save_with(&out, &SaveOptions::new().objects(true))
        .unwrap();
    let load = format!(
        "{class}d = torch.load(sys.argv[1], weights_only=False)\n\
         k = d['k']; print(type(k).__name__, k.a, k.b, k.c, d['w'].tolist())"
    );
    let got = common::oracle_code(&load, &[out.to_str().unwrap()]);
    assert_eq!(got.trim(), "Keyed 1 2 3 [1.0, 1.0]");
}

#[test]
fn an_edited_lightning_checkpoint_resumes_in_python() {
    // The weights edited in Rust (a new 3-class head), everything else as it came.
    let dir = common::tempdir("edited");
    let path = fixture("lightning_hydra.ckpt");
    let mut value = Value::load(&path).unwrap();
    let Value::Dict(top) = &mut value else {
        panic!("not a dict")
    };
    let sd = top
        .items
        .iter_mut()
        .find(|(k, _)| k.as_str() == Some("state_dict"))
        .unwrap();
    let Value::Dict(sd) = &mut sd.1 else {
        panic!("not a state dict")
    };
    for (k, v) in sd.items.iter_mut() {
        match k.as_str() {
            Some("model.linear.weight") => {
                *v = Value::Tensor(tch::Tensor::ones([3, 4], (Kind::Float, Device::Cpu)))
            }
            Some("model.linear.bias") => {
                *v = Value::Tensor(tch::Tensor::zeros([3], (Kind::Float, Device::Cpu)))
            }
            _ => {}
        }
    }
    let out = dir.join("edited.ckpt");
    value
        .save_with(&out, &SaveOptions::new().objects(true))
        .unwrap();
    let got = python_flat(&out);
    let want = python("lightning_hydra.ckpt");
    // The head is the new one; every other tensor and every scalar is as it was.
    assert_eq!(
        got["tensors"]["state_dict/model.linear.weight"]["shape"],
        serde_json::json!([3, 4])
    );
    assert_eq!(got["scalars"], want["scalars"]);
    let others = |j: &Json| -> Vec<(String, Json)> {
        j["tensors"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| !k.starts_with("state_dict/model.linear"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    assert_eq!(others(&got), others(want));
    let configs: Json = serde_json::from_str(&common::oracle(
        "oracle/full_load.py",
        &["omegaconf", out.to_str().unwrap()],
        "",
    ))
    .unwrap();
    assert_eq!(configs["cfg"]["resolved"]["model"]["classes"], 10);
}

#[test]
fn cycles_of_lists_and_dicts_save_as_weights_only_reads_them() {
    let dir = common::tempdir("cycles-save");
    let value = Value::load(fixture("cycles.pth")).unwrap();
    let out = dir.join("cycles.pth");
    value.save(&out).unwrap();
    let got: Json = serde_json::from_str(&common::oracle(
        "oracle/full_load.py",
        &["flatten_weights_only", out.to_str().unwrap()],
        "",
    ))
    .unwrap();
    let want = python("cycles.pth");
    assert_eq!(got["scalars"]["dict/self"]["type"], "recursive");
    assert_eq!(got["scalars"], want["scalars"]);
    assert_eq!(got["tensors"], want["tensors"]);
    assert_eq!(Value::load(&out).unwrap().to_string(), value.to_string());

    // A reference back to a tuple (which pickle makes after its items), or past the root,
    // cannot be written.
    let back = |up| Value::Recursive {
        up,
        type_name: "tuple",
    };
    let in_tuple = Value::Tuple(vec![Value::List(vec![back(2)])]);
    let past_root = Value::List(vec![back(2)]);
    for bad in [in_tuple, past_root] {
        match bad.save(dir.join("bad.pth")) {
            Err(Error::Unwritable { reason, .. }) => assert!(reason.contains("back"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}
