//! The crate against `torch.load` on random checkpoints (issue 15, item 6).
//!
//! `tests/fixtures/make_random.py generate` writes a few hundred random checkpoints with real
//! `torch.save` (zip and legacy, pickle protocols 2 to 5, storage alignments 1 to 4096, CRCs
//! on and off, written to a path, under an archive name of 1 to 40 random characters, or to
//! an `io.BytesIO`), `safetensors.torch.save_file` and `torch.jit.save` (some rewritten into
//! torch 1.x's form), and a manifest holding, for each file, the canonical form of
//! `torch.load(f, weights_only=False)` (described at the top of the script). Values hold
//! shared subtrees, lists, dicts and objects that hold themselves (`Value::Recursive`),
//! objects of the generator's own classes (made by `NEWOBJ`, `NEWOBJ_EX`, `REDUCE`, with
//! items), and torch.fx GraphModules, whose canonical form is the pickle's (read by a Python
//! unpickler that makes stubs of them); a module's state dict is compared with its
//! `state_dict()`. This test reads every file through each entry point of the crate, builds
//! the same canonical form from what it got, and compares:
//!
//! - `Value::load`, and `Checkpoint::open_with(p, mmap(true))?.value()` (compared but for
//!   storage offsets, which are the file's there; tensors must share storages as in Python,
//!   at the same distances, checked from their addresses);
//! - `StateDict::load` or `StateDict::load_key(p, "model")` where the manifest has a state
//!   dict (a module's too: a GraphModule, a TorchScript archive), and `StateDict::load`
//!   failing with `NotAStateDict` where the root is none (`OpaqueObject` for an object);
//! - `LazyStateDict::load` / `load_key`: each entry's `dtype_name`, `size` and
//!   `LazyTensor::read`, then `into_state_dict` of the readable entries.
//!
//! A tensor of a dtype in [`UNSUPPORTED_DTYPES`] must be refused as that entry alone:
//! `Error::UnsupportedDtype` naming its key and dtype from `Value::load` and `StateDict::load`
//! (and the rest of the file described by `Checkpoint::value_with_unreadable`), `kind() ==
//! None` in a lazy state dict, whose other entries read. No other refusal passes.
//!
//! Then every value that was read is written back (`Value::save`, `StateDict::save`, and as
//! safetensors for safetensors files), and one run of `make_random.py canon` (for each 2000
//! files) reads all the written files with `torch.load(weights_only=True)`; each must give
//! the original's canonical form, strides included, but for where the writer places each
//! storage (offsets and storage numbering: it writes only the elements a storage's tensors
//! span); safetensors, which holds no strides, gets contiguous copies, whose strides are
//! checked. `Value::save` refuses by design, with
//! `Error::Unwritable`, what `weights_only=True` would refuse: a `Value::Global` (a dtype tch
//! has no kind for) and a set inside a dict key or a set (a frozenset in Python); only those
//! refusals pass. A value holding objects is also written with them
//! (`Value::save_with(SaveOptions::objects)`) and read back by `torch.load(weights_only=False)`
//! with the same stubs: the same canonical form. No save can write a reference back to a
//! tuple or set (pickle makes them after their items); that refusal passes too. An int of
//! 256 bytes or more may fail `weights_only=True` (torch's
//! unpickler has no LONG4, for torch.save's own files too); it is then read with
//! `weights_only=False`.
//!
//! `TCH_STATE_DICT_DIFF_SEED` and `TCH_STATE_DICT_DIFF_COUNT` choose the files (default:
//! seed [`DEFAULT_SEED`], [`DEFAULT_COUNT`] files); `TCH_STATE_DICT_DIFF_KEEP=1` keeps the
//! directory (its path is printed); `TCH_STATE_DICT_DIFF_DIR=DIR` checks the files of DIR
//! instead, described by `make_random.py describe DIR` (a minimal reproduction, or any
//! checkpoint). File `i` depends only on the seed and `i`:
//! `scripts/python tests/fixtures/make_random.py generate DIR --seed S --first i --count 1`
//! makes it again. Every disagreement is collected and reported at the end, each with the
//! file, the entry point, the path inside the value and the first difference (all of them in
//! `failures.txt` of the kept directory).

mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use tch::Tensor;
use tch_state_dict::{
    dtype_name, Checkpoint, Error, LazyStateDict, Metadata, ReadOptions, SaveOptions, StateDict,
    Value,
};

/// PyTorch's names (without `torch.`) of the dtypes this crate cannot hold: a tensor of one
/// is refused by itself, and a `torch.<name>` dtype value reads as `Value::Global`. The
/// generator is given this list (`--unsupported`), so it is the only one the test uses. With
/// a tch before 0.19, which has no float8 kinds, the float8 dtypes are among them.
const UNSUPPORTED_DTYPES: &[&str] = &[
    #[cfg(not(tch_float8))]
    "float8_e5m2",
    #[cfg(not(tch_float8))]
    "float8_e4m3fn",
    #[cfg(not(tch_float8))]
    "float8_e5m2fnuz",
    #[cfg(not(tch_float8))]
    "float8_e4m3fnuz",
    "uint16",
    "uint32",
    "uint64",
    "complex32",
    "float8_e8m0fnu",
    "float4_e2m1fn_x2",
    "bits1x8",
    "bits2x4",
    "bits4x2",
    "bits8",
    "bits16",
    "qint8",
    "quint8",
    "qint32",
    "quint4x2",
    "quint2x4",
];

const DEFAULT_SEED: u64 = 20261203;
const DEFAULT_COUNT: usize = 300;
/// Failures printed in full; the rest are counted.
const MAX_PRINTED: usize = 60;
/// Files read before their written copies are read back (one Python for each chunk).
const CHUNK: usize = 2000;

// ---------------------------------------------------------------------------------------
// The manifest.

/// One line of the manifest.
struct Entry {
    file: String,
    path: PathBuf,
    format: String,
    /// How it was saved, for messages.
    how: String,
    canon: Json,
    /// `Some("")`: the root is a state dict; `Some("model")`: root["model"] is (or a
    /// module whose state dict is `state_dict_canon`).
    state_dict: Option<String>,
    /// A module's state dict (a GraphModule's, a TorchScript archive's), as its
    /// `state_dict()` gives it in Python.
    state_dict_canon: Option<Json>,
    /// (dotted path from the root, dtype name) of each tensor of an unsupported dtype.
    unsupported: Vec<(String, String)>,
    st_metadata: Json,
}

fn entry(dir: &Path, line: &str) -> Entry {
    let m: Json = serde_json::from_str(line).expect("a manifest line");
    let file = m["file"].as_str().unwrap().to_string();
    let how = format!(
        "{} protocol={} alignment={} crc32={} byteorder_first={} via={} archive={}",
        m["format"],
        m["protocol"],
        m["alignment"],
        m["crc32"],
        m["byteorder_first"],
        m["via"],
        m["archive"]
    );
    Entry {
        path: dir.join(&file),
        file,
        format: m["format"].as_str().unwrap().to_string(),
        how,
        canon: m["canon"].clone(),
        state_dict: m["state_dict"].as_str().map(str::to_string),
        state_dict_canon: Some(m["state_dict_canon"].clone()).filter(|j| !j.is_null()),
        unsupported: m["unsupported"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| {
                let s = |k: &str| u[k].as_str().unwrap().to_string();
                (s("path"), s("dtype"))
            })
            .collect(),
        st_metadata: m["st_metadata"].clone(),
    }
}

// ---------------------------------------------------------------------------------------
// The canonical form, built from the crate's values exactly as make_random.py builds it from
// Python's (see the top of the script).

/// Builds canonical forms, numbering storages in the order they first appear, and
/// recording where each tensor's elements are (for the memory-map check).
#[derive(Default)]
struct Canon {
    storages: HashMap<usize, usize>,
    path: Vec<String>,
    /// For each tensor, in the order of the walk: its path, the address of its first
    /// element and its element size (0 for a tensor without elements).
    placed: Vec<(String, usize, usize)>,
}

impl Canon {
    fn value(&mut self, v: &Value) -> Json {
        match v {
            Value::None => json!(["none"]),
            Value::Bool(b) => json!(["bool", b]),
            Value::Int(i) => json!(["int", i.to_string()]),
            Value::BigInt(b) => json!(["int", bigint_decimal(b)]),
            Value::Float(f) => json!(["float", format!("{:016x}", f.to_bits())]),
            Value::Str(s) => json!(["str", s]),
            Value::Bytes(b) => json!(["bytes", hex(b)]),
            Value::List(items) => json!(["list", self.items(items)]),
            Value::Tuple(items) => json!(["tuple", self.items(items)]),
            Value::Set(items) => {
                let mut items = self.items(items);
                sort_set(&mut items);
                json!(["set", items])
            }
            Value::Dict(d) => {
                let items: Vec<Json> = d
                    .items
                    .iter()
                    .map(|(k, v)| {
                        let key = self.value(k);
                        self.path.push(segment(&key));
                        let value = self.value(v);
                        self.path.pop();
                        json!([key, value])
                    })
                    .collect();
                let tag = if d.ordered { "OrderedDict" } else { "dict" };
                json!([tag, items, self.metadata(d.metadata.as_ref())])
            }
            Value::Tensor(t) => json!(["tensor", self.tensor(t)]),
            Value::Device(d) => json!(["device", d]),
            Value::Dtype(k) => json!(["dtype", dtype_name(*k)]),
            Value::Global { module, name }
                if module == "torch" && UNSUPPORTED_DTYPES.contains(&name.as_str()) =>
            {
                json!(["dtype", name])
            }
            Value::Global { module, name } => json!(["global", module, name]),
            Value::Object(o) => {
                let pairs = |this: &mut Self, items: &[(Value, Value)]| -> Vec<Json> {
                    items
                        .iter()
                        .map(|(k, v)| json!([this.value(k), this.value(v)]))
                        .collect()
                };
                json!([
                    "object",
                    o.qualified_name(),
                    o.made_by_new(),
                    self.items(o.args()),
                    pairs(self, o.kwargs()),
                    o.state().map_or(Json::Null, |s| self.value(s)),
                    self.items(o.list_items()),
                    pairs(self, o.dict_items()),
                ])
            }
            Value::Recursive { up, .. } => json!(["recursive", up]),
            Value::Unreadable { dtype, shape } => {
                json!(["unreadable", {"dtype": dtype, "shape": shape}])
            }
            other => json!(["unknown", format!("{other:?}")]),
        }
    }

    fn items(&mut self, items: &[Value]) -> Vec<Json> {
        items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                self.path.push(format!("[{i}]"));
                let c = self.value(v);
                self.path.pop();
                c
            })
            .collect()
    }

    fn metadata(&mut self, m: Option<&Metadata>) -> Json {
        let Some(m) = m else { return Json::Null };
        m.iter()
            .map(|(prefix, attrs)| {
                let attrs: Vec<Json> = attrs
                    .iter()
                    .map(|(name, v)| json!([name, self.value(v)]))
                    .collect();
                json!([prefix, attrs])
            })
            .collect()
    }

    /// A state dict as ["state_dict", items, metadata], the form `as_state_dict` gives a
    /// manifest's dict.
    fn state_dict(&mut self, sd: &StateDict) -> Json {
        let items: Vec<Json> = sd
            .iter()
            .map(|(k, t)| {
                self.path.push(format!("[{k:?}]"));
                let c = json!([["str", k], ["tensor", self.tensor(t)]]);
                self.path.pop();
                c
            })
            .collect();
        json!(["state_dict", items, self.metadata(sd.metadata())])
    }

    fn tensor(&mut self, t: &Tensor) -> Json {
        match self.try_tensor(t) {
            Ok(j) => j,
            Err(e) => json!({"error": e.to_string()}),
        }
    }

    fn try_tensor(&mut self, t: &Tensor) -> Result<Json, tch::TchError> {
        let requires_grad = t.requires_grad();
        let t = t.f_detach()?;
        let kind = t.f_kind()?;
        let elt = kind.elt_size_in_bytes();
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * elt];
        if numel > 0 {
            t.f_contiguous()?.f_copy_data_u8(&mut bytes, numel)?;
        }
        let (offset, storage) = if numel > 0 {
            let first = t.data_ptr() as usize;
            // A view of one element at offset 0 starts where the storage does.
            let base = t.f_as_strided([1], [1], Some(0))?.data_ptr() as usize;
            let next = self.storages.len();
            let id = *self.storages.entry(base).or_insert(next);
            self.placed.push((self.path.concat(), first, elt));
            (json!((first - base) / elt), json!(id))
        } else {
            self.placed.push((self.path.concat(), 0, 0));
            (Json::Null, Json::Null)
        };
        Ok(json!({
            "dtype": dtype_name(kind),
            "shape": t.size(),
            "stride": t.stride(),
            "offset": offset,
            "storage": storage,
            "requires_grad": requires_grad,
            "nbytes": bytes.len(),
            "crc32": format!("{:08x}", crc32fast::hash(&bytes)),
        }))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .fold(String::with_capacity(2 * b.len()), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// A path segment for a dict key's canonical form: `['key']`, `[3]`, or the form itself.
fn segment(key: &Json) -> String {
    match (key[0].as_str(), &key[1]) {
        (Some("str"), Json::String(s)) => format!("[{s:?}]"),
        (Some("int"), Json::String(s)) => format!("[{s}]"),
        _ => format!("[{key}]"),
    }
}

/// Pickle's little-endian two's complement bytes as a decimal number.
fn bigint_decimal(le: &[u8]) -> String {
    let negative = le.last().is_some_and(|b| b & 0x80 != 0);
    let mut magnitude = le.to_vec();
    if negative {
        let mut carry = 1u16;
        for b in magnitude.iter_mut() {
            let v = (!*b) as u16 + carry;
            *b = v as u8;
            carry = v >> 8;
        }
    }
    // Little-endian 32-bit limbs, divided by 10^9 until nothing is left.
    let mut limbs: Vec<u32> = magnitude
        .chunks(4)
        .map(|c| {
            let mut a = [0u8; 4];
            a[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(a)
        })
        .collect();
    let mut groups = Vec::new();
    while limbs.iter().any(|&l| l != 0) {
        let mut rem = 0u64;
        for l in limbs.iter_mut().rev() {
            let cur = (rem << 32) | *l as u64;
            *l = (cur / 1_000_000_000) as u32;
            rem = cur % 1_000_000_000;
        }
        groups.push(rem);
    }
    let Some((top, rest)) = groups.split_last() else {
        return "0".to_string();
    };
    let mut s = if negative {
        "-".to_string()
    } else {
        String::new()
    };
    let _ = write!(s, "{top}");
    for g in rest.iter().rev() {
        let _ = write!(s, "{g:09}");
    }
    s
}

fn sort_set(items: &mut [Json]) {
    items.sort_by_cached_key(|j| j.to_string());
}

// ---------------------------------------------------------------------------------------
// Normalizing, projecting and comparing canonical forms. Each walk knows the form's
// structure, so that a string that happens to read "tensor" is never taken for a tag.

/// Visits every tensor's fields (a JSON object) of a canonical value, in the order of the
/// walk; `set_items` is called on each set's items after its items were visited.
fn walk(j: &mut Json, tensor: &mut dyn FnMut(&mut serde_json::Map<String, Json>)) {
    walk_nodes(j, &mut |node| {
        if let Some(o) = node.get_mut(1).and_then(Json::as_object_mut) {
            tensor(o);
        }
    });
}

/// As [`walk`], with each tensor's whole form (`["tensor", {...}]`), to replace it.
fn walk_nodes(j: &mut Json, tensor: &mut dyn FnMut(&mut Json)) {
    let tag = j[0].as_str().unwrap_or("").to_string();
    if tag == "tensor" {
        return tensor(j);
    }
    let Some(a) = j.as_array_mut() else { return };
    match tag.as_str() {
        "list" | "tuple" | "set" => {
            if let Some(items) = a.get_mut(1).and_then(Json::as_array_mut) {
                for item in items.iter_mut() {
                    walk_nodes(item, tensor);
                }
                if tag == "set" {
                    sort_set(items);
                }
            }
        }
        // ["object", name, new, args, kwargs, state, list items, dict items], in order.
        "object" => {
            for (i, part) in a.iter_mut().enumerate().skip(3) {
                if i == 5 {
                    walk_nodes(part, tensor);
                    continue;
                }
                let Some(items) = part.as_array_mut() else {
                    continue;
                };
                for item in items.iter_mut() {
                    if i == 3 || i == 6 {
                        walk_nodes(item, tensor);
                    } else if let Some(pair) = item.as_array_mut() {
                        for x in pair.iter_mut() {
                            walk_nodes(x, tensor);
                        }
                    }
                }
            }
        }
        "dict" | "OrderedDict" | "state_dict" => {
            if let Some(items) = a.get_mut(1).and_then(Json::as_array_mut) {
                for pair in items.iter_mut().filter_map(Json::as_array_mut) {
                    for x in pair.iter_mut() {
                        walk_nodes(x, tensor);
                    }
                }
            }
            if let Some(meta) = a.get_mut(2).and_then(Json::as_array_mut) {
                for entry in meta.iter_mut() {
                    if let Some(attrs) = entry.get_mut(1).and_then(Json::as_array_mut) {
                        for attr in attrs.iter_mut() {
                            if let Some(v) = attr.get_mut(1) {
                                walk_nodes(v, tensor);
                            }
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

/// Tensors of unsupported dtypes as `Checkpoint::value_with_unreadable` describes them.
fn with_unreadable(j: &Json) -> Json {
    let mut j = j.clone();
    walk_nodes(&mut j, &mut |node| {
        let dtype = node[1]["dtype"].as_str().unwrap_or("");
        if UNSUPPORTED_DTYPES.contains(&dtype) {
            let shape = node[1]["shape"].clone();
            *node = json!(["unreadable", {"dtype": dtype, "shape": shape}]);
        }
    });
    j
}

/// Sets sorted, storages renumbered in the order they first appear in this value.
fn normalized(j: &Json) -> Json {
    let mut j = j.clone();
    let mut ids: HashMap<u64, u64> = HashMap::new();
    walk(&mut j, &mut |t| {
        if let Some(n) = t.get("storage").and_then(Json::as_u64) {
            let next = ids.len() as u64;
            t.insert("storage".into(), json!(*ids.entry(n).or_insert(next)));
        }
    });
    j
}

/// Without what a memory map places differently: offsets and storages.
fn unplaced(j: &Json) -> Json {
    let mut j = normalized(j);
    walk(&mut j, &mut |t| {
        t.insert("offset".into(), Json::Null);
        t.insert("storage".into(), Json::Null);
    });
    j
}

/// What a written file keeps: no offsets or storages, and, for `contiguous` (safetensors),
/// contiguous strides (on the original's side; the written file's must be contiguous
/// already).
fn as_written(j: &Json, contiguous: bool) -> Json {
    let mut j = unplaced(j);
    if contiguous {
        walk(&mut j, &mut |t| {
            let shape: Vec<i64> = t["shape"]
                .as_array()
                .map(|s| s.iter().filter_map(Json::as_i64).collect())
                .unwrap_or_default();
            t.insert("stride".into(), json!(contiguous_strides(&shape)));
        });
    }
    j
}

fn contiguous_strides(shape: &[i64]) -> Vec<i64> {
    let mut stride = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        stride[i] = stride[i + 1] * shape[i + 1].max(1);
    }
    stride
}

/// The (offset, storage) of every tensor of a canonical value, in the order of the walk.
fn placements(j: &Json) -> Vec<(Option<u64>, Option<u64>)> {
    let mut j = j.clone();
    let mut out = Vec::new();
    walk(&mut j, &mut |t| {
        out.push((t["offset"].as_u64(), t["storage"].as_u64()));
    });
    out
}

/// The manifest's dict `j` as ["state_dict", items, metadata], without the keys `drop`.
fn as_state_dict(j: &Json, drop: &[String]) -> Json {
    let items: Vec<Json> = j[1]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|pair| {
                    pair[0][1]
                        .as_str()
                        .is_none_or(|k| !drop.iter().any(|d| d == k))
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    json!(["state_dict", items, j.get(2).cloned().unwrap_or(Json::Null)])
}

/// The value under the str key `key` of a canonical dict.
fn dict_get<'j>(j: &'j Json, key: &str) -> Option<&'j Json> {
    j[1].as_array()?
        .iter()
        .find(|pair| pair[0][0] == "str" && pair[0][1] == key)
        .map(|pair| &pair[1])
}

fn short(j: &Json) -> String {
    let s = j.to_string();
    if s.len() > 300 {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    } else {
        s
    }
}

/// The first difference between two canonical values, with the path to it:
/// `['model']['fc.weight']: stride: expected [1, 4], got [4, 1]`.
fn first_diff(want: &Json, got: &Json, path: &str) -> Option<String> {
    if want == got {
        return None;
    }
    let here = if path.is_empty() { "the root" } else { path };
    let (Some(w), Some(g)) = (want.as_array(), got.as_array()) else {
        return Some(format!(
            "{here}: expected {}, got {}",
            short(want),
            short(got)
        ));
    };
    if w.first() != g.first() {
        return Some(format!(
            "{here}: expected {}, got {}",
            short(want),
            short(got)
        ));
    }
    let tag = w.first().and_then(Json::as_str).unwrap_or("");
    match tag {
        "tensor" => {
            let (wt, gt) = (&w[1], &g[1]);
            for field in [
                "error",
                "dtype",
                "shape",
                "stride",
                "offset",
                "storage",
                "requires_grad",
                "nbytes",
                "crc32",
            ] {
                if wt.get(field) != gt.get(field) {
                    return Some(format!(
                        "{here}: tensor {field}: expected {}, got {} (expected tensor {}, got {})",
                        wt.get(field).map_or("nothing".into(), short),
                        gt.get(field).map_or("nothing".into(), short),
                        short(wt),
                        short(gt)
                    ));
                }
            }
            None
        }
        "list" | "tuple" | "set" => {
            let (wi, gi) = (w[1].as_array()?, g[1].as_array()?);
            if wi.len() != gi.len() {
                return Some(format!(
                    "{here}: a {tag} of {} items expected, got {}: expected {}, got {}",
                    wi.len(),
                    gi.len(),
                    short(&w[1]),
                    short(&g[1])
                ));
            }
            wi.iter()
                .zip(gi)
                .enumerate()
                .find_map(|(i, (a, b))| first_diff(a, b, &format!("{path}[{i}]")))
        }
        "object" => {
            if w.get(1..3) != g.get(1..3) {
                return Some(format!(
                    "{here}: object {} (by __new__: {}) expected, got {} (by __new__: {})",
                    w[1], w[2], g[1], g[2]
                ));
            }
            let parts = [(3, "args"), (4, "kwargs"), (6, "items"), (7, "dict items")];
            for (i, part) in parts {
                let (wi, gi) = (w[i].as_array()?, g[i].as_array()?);
                if wi.len() != gi.len() {
                    return Some(format!(
                        "{here}: {part}: {} expected, got {}",
                        short(&w[i]),
                        short(&g[i])
                    ));
                }
                for (n, (a, b)) in wi.iter().zip(gi).enumerate() {
                    if let Some(d) = first_diff(a, b, &format!("{path}.{part}[{n}]")) {
                        return Some(d);
                    }
                }
            }
            first_diff(&w[5], &g[5], &format!("{path}.__dict__"))
        }
        "dict" | "OrderedDict" | "state_dict" => {
            let (wi, gi) = (w[1].as_array()?, g[1].as_array()?);
            let keys =
                |items: &[Json]| -> Vec<String> { items.iter().map(|p| segment(&p[0])).collect() };
            if keys(wi) != keys(gi) {
                return Some(format!(
                    "{here}: keys: expected {}, got {}",
                    keys(wi).join(""),
                    keys(gi).join("")
                ));
            }
            for (a, b) in wi.iter().zip(gi) {
                let at = format!("{path}{}", segment(&a[0]));
                if let Some(d) = first_diff(&a[0], &b[0], &format!("{at} (the key)")) {
                    return Some(d);
                }
                if let Some(d) = first_diff(&a[1], &b[1], &at) {
                    return Some(d);
                }
            }
            if w.get(2) != g.get(2) {
                return Some(format!(
                    "{here}: _metadata: expected {}, got {}",
                    short(&w[2]),
                    short(&g[2])
                ));
            }
            None
        }
        _ => Some(format!(
            "{here}: expected {}, got {}",
            short(want),
            short(got)
        )),
    }
}

// ---------------------------------------------------------------------------------------
// The checks of one file.

/// A file the crate wrote, and what torch.load must read from it.
struct Written {
    path: PathBuf,
    /// The canonical form (the state dict form for a state dict), as written.
    want: Json,
    /// The safetensors metadata, as `make_random.py canon` gives it (null for torch files).
    st_metadata: Json,
    /// The source and how it was written, for messages.
    what: String,
    /// Whether the value holds an int that pickle writes as LONG4.
    huge_int: bool,
    /// Whether the format keeps no order (safetensors: sorted by dtype then name, and empty
    /// tensors share an offset), so that items compare sorted by key.
    unordered: bool,
    /// Written with its objects (`SaveOptions::objects`): read back with
    /// `weights_only=False`, the objects as stubs.
    objects: bool,
}

struct Run {
    failures: Vec<String>,
    /// Files written, to be read back.
    written: Vec<Written>,
    out: PathBuf,
    values_not_written: usize,
    counts: HashMap<&'static str, usize>,
}

impl Run {
    fn fail(&mut self, e: &Entry, stage: &str, msg: impl std::fmt::Display) {
        self.failures
            .push(format!("{} ({}): {stage}: {msg}", e.file, e.how));
    }

    fn count(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }

    /// The unsupported tensors of `e` under the state dict at `key`, by their key in it.
    fn unsupported_under(e: &Entry, key: &str) -> Vec<(String, String)> {
        e.unsupported
            .iter()
            .filter_map(|(p, d)| {
                let k = if key.is_empty() {
                    Some(p.as_str())
                } else {
                    p.strip_prefix(key).and_then(|r| r.strip_prefix('.'))
                };
                k.map(|k| (k.to_string(), d.clone()))
            })
            .collect()
    }

    /// Checks a refusal: `Error::UnsupportedDtype` naming one of `allowed` (key, dtype).
    fn expect_refusal<T>(
        &mut self,
        e: &Entry,
        stage: &str,
        got: Result<T, Error>,
        allowed: &[(String, String)],
    ) {
        match got {
            Err(Error::UnsupportedDtype { key, dtype, .. }) => {
                let key = key.unwrap_or_default();
                let ok = allowed
                    .iter()
                    .any(|(p, d)| *p == key && dtype == format!("torch.{d}"));
                if ok {
                    self.count("refusals as expected");
                } else {
                    self.fail(
                        e,
                        stage,
                        format!(
                            "refused key {key:?} dtype {dtype:?}; the unsupported entries are {allowed:?}"
                        ),
                    );
                }
            }
            Err(other) => self.fail(
                e,
                stage,
                format!("expected UnsupportedDtype for one of {allowed:?}, got error: {other}"),
            ),
            Ok(_) => self.fail(
                e,
                stage,
                format!("expected UnsupportedDtype for one of {allowed:?}, got a value"),
            ),
        }
    }

    fn compare(&mut self, e: &Entry, stage: &str, want: &Json, got: &Json) -> bool {
        match first_diff(&normalized(want), &normalized(got), "") {
            None => true,
            Some(d) => {
                self.fail(e, stage, d);
                false
            }
        }
    }

    fn check_file(&mut self, e: &Entry) {
        // A TorchScript archive's value is its module objects; its state dict is compared.
        let script = e.format == "torchscript";
        let value = if script { None } else { self.check_value(e) };
        if !script {
            self.check_mmap(e);
        }
        let sd = self.check_state_dict(e);
        let lazy = self.check_lazy(e);
        // Write back what was read.
        if let Some(v) = value {
            // What Value::save refuses by design, since torch.load(weights_only=True) would:
            // a frozenset, a Global other than a torch dtype (`torch.uint16` is written), an
            // object; and a reference back to a tuple or set, which pickle makes after its
            // items.
            // A reference back to a tuple or set, which pickle makes only after its items,
            // so that no save can write it.
            let cycle = holds(
                &v,
                &|x| matches!(x, Value::Recursive { type_name, .. } if matches!(*type_name, "tuple" | "set")),
            );
            let frozen = holds_frozenset(&v, false);
            let objects = holds(&v, &|x| matches!(x, Value::Object(_)));
            let global = holds(&v, &|x| matches!(x, Value::Global { .. }));
            let refused = global || frozen || objects || cycle;
            let dst = self.out.join(format!("{}.value.pth", e.file));
            match v.save(&dst) {
                Err(Error::Unwritable { .. }) if refused => self.values_not_written += 1,
                Ok(()) => self.written.push(Written {
                    path: dst,
                    want: as_written(&e.canon, false),
                    st_metadata: Json::Null,
                    what: format!("{} (written back): Value::save", e.file),
                    // pickle writes an int of 256 bytes or more as LONG4.
                    huge_int: holds(&v, &|x| matches!(x, Value::BigInt(b) if b.len() >= 256)),
                    unordered: false,
                    objects: false,
                }),
                Err(err) => self.fail(e, "Value::save", err),
            }
            // With its objects, as they came.
            if objects {
                let dst = self.out.join(format!("{}.objects.pth", e.file));
                let options = SaveOptions::new().objects(true);
                match v.save_with(&dst, &options) {
                    Err(Error::Unwritable { .. }) if frozen || cycle => {
                        self.values_not_written += 1
                    }
                    Ok(()) => {
                        self.count("values written with their objects");
                        self.written.push(Written {
                            path: dst,
                            want: as_written(&e.canon, false),
                            st_metadata: Json::Null,
                            what: format!("{} (written back): Value::save_with(objects)", e.file),
                            huge_int: false,
                            unordered: false,
                            objects: true,
                        })
                    }
                    Err(err) => self.fail(e, "Value::save_with(objects)", err),
                }
            }
        }
        if let Some((sd, want)) = lazy.or(sd) {
            let dst = self.out.join(format!("{}.state_dict.pth", e.file));
            match sd.save(&dst) {
                Ok(()) => self.written.push(Written {
                    path: dst,
                    want: as_written(&want, false),
                    st_metadata: Json::Null,
                    what: format!("{} (written back): StateDict::save", e.file),
                    huge_int: false,
                    unordered: false,
                    objects: false,
                }),
                Err(err) => self.fail(e, "StateDict::save", err),
            }
            if e.format == "safetensors" {
                let dst = self.out.join(format!("{}.state_dict.safetensors", e.file));
                match sd.save(&dst) {
                    Ok(()) => self.written.push(Written {
                        path: dst,
                        // safetensors keeps no _metadata.
                        want: as_written(&json!(["state_dict", want[1], null]), true),
                        st_metadata: e.st_metadata.clone(),
                        what: format!("{} (written back): StateDict::save as safetensors", e.file),
                        huge_int: false,
                        unordered: true,
                        objects: false,
                    }),
                    Err(err) => self.fail(e, "StateDict::save as safetensors", err),
                }
            }
        }
    }

    /// Reads every file written so far with one run of `make_random.py canon` (names on
    /// stdin; those written with their objects in a run of `canon --objects`) and compares
    /// each with what was written; then removes them.
    fn check_written(&mut self) {
        let (objects, plain): (Vec<Written>, Vec<Written>) = std::mem::take(&mut self.written)
            .into_iter()
            .partition(|w| w.objects);
        self.check_written_by(plain, &["canon", "-"]);
        self.check_written_by(objects, &["canon", "--objects", "-"]);
    }

    fn check_written_by(&mut self, written: Vec<Written>, command: &[&str]) {
        if written.is_empty() {
            return;
        }
        let names: String = written
            .iter()
            .map(|w| format!("{}\n", w.path.display()))
            .collect();
        let canon = common::run_python("fixtures/make_random.py", command, &names);
        let lines: Vec<Json> = canon
            .lines()
            .map(|l| serde_json::from_str(l).expect("a canon line"))
            .collect();
        assert_eq!(lines.len(), written.len(), "canon's lines");
        for (w, line) in written.iter().zip(&lines) {
            let Written {
                path,
                want,
                st_metadata,
                what,
                huge_int,
                unordered,
                objects: _,
            } = w;
            assert_eq!(line["file"].as_str(), path.to_str(), "canon's order");
            if std::env::var_os("TCH_STATE_DICT_DIFF_KEEP").is_none() {
                let _ = std::fs::remove_file(path);
            }
            if let Some(err) = line.get("error") {
                // torch's weights-only unpickler has no LONG4, so it refuses an int of 256
                // bytes or more whoever wrote it (torch.save's own files too).
                let long4 = err
                    .as_str()
                    .is_some_and(|e| e.contains("Unsupported operand 139"));
                if !(long4 && *huge_int && line.get("canon").is_some()) {
                    let without = match line.get("error_without_weights_only") {
                        Some(e) => format!(", and with weights_only=False: {e}"),
                        None => String::new(),
                    };
                    self.failures.push(format!(
                        "{what}: torch.load(weights_only=True) fails: {err}{without}"
                    ));
                    continue;
                }
            }
            let got = &line["canon"];
            let got = if want[0] == "state_dict" {
                as_state_dict(got, &[])
            } else {
                got.clone()
            };
            let (mut want, mut got) = (as_written(want, false), as_written(&got, false));
            if *unordered {
                for j in [&mut want, &mut got] {
                    if let Some(items) = j[1].as_array_mut() {
                        items.sort_by_cached_key(|pair| pair[0].to_string());
                    }
                }
            }
            if let Some(d) = first_diff(&want, &got, "") {
                self.failures
                    .push(format!("{what}, read back by torch.load: {d}"));
            } else if line["st_metadata"] != *st_metadata {
                self.failures.push(format!(
                    "{what}: safetensors metadata: expected {}, got {}",
                    short(st_metadata),
                    short(&line["st_metadata"])
                ));
            }
        }
    }

    /// `Value::load`: the canonical form, or the refusal of an unsupported entry.
    fn check_value(&mut self, e: &Entry) -> Option<Value> {
        let got = Value::load(&e.path);
        if !e.unsupported.is_empty() {
            self.expect_refusal(e, "Value::load", got, &e.unsupported);
            // The rest of the file, read, with those tensors described.
            let stage = "Checkpoint::value_with_unreadable";
            match Checkpoint::open(&e.path).and_then(|c| c.value_with_unreadable()) {
                Ok(v) => {
                    let c = Canon::default().value(&v);
                    self.count("values with unreadable tensors compared");
                    self.compare(e, stage, &with_unreadable(&e.canon), &c);
                }
                Err(err) => self.fail(e, stage, format!("error: {err}")),
            }
            return None;
        }
        match got {
            Ok(v) => {
                let c = Canon::default().value(&v);
                self.count("values compared");
                self.compare(e, "Value::load", &e.canon, &c).then_some(v)
            }
            Err(err) => {
                self.fail(e, "Value::load", format!("error: {err}"));
                None
            }
        }
    }

    /// `Checkpoint::open_with(mmap(true))?.value()`: the canonical form but for where
    /// tensors are placed, then that tensors sharing a storage in Python share one here, at
    /// the same distance from each other, and tensors of different storages do not.
    fn check_mmap(&mut self, e: &Entry) {
        let stage = "Checkpoint::open_with(mmap).value";
        let got =
            Checkpoint::open_with(&e.path, &ReadOptions::new().mmap(true)).and_then(|c| c.value());
        if !e.unsupported.is_empty() {
            self.expect_refusal(e, stage, got, &e.unsupported);
            return;
        }
        let v = match got {
            Ok(v) => v,
            Err(err) => return self.fail(e, stage, format!("error: {err}")),
        };
        let mut canon = Canon::default();
        let c = canon.value(&v);
        if first_diff(&unplaced(&e.canon), &unplaced(&c), "").is_some() {
            let d = first_diff(&unplaced(&e.canon), &unplaced(&c), "").unwrap();
            return self.fail(e, stage, d);
        }
        self.count("memory-mapped values compared");
        let want = placements(&e.canon);
        if want.len() != canon.placed.len() {
            return self.fail(e, stage, "not as many tensors as expected");
        }
        // Per Python storage: where it starts here, as its tensors' elements place it.
        let mut starts: HashMap<u64, (usize, &str)> = HashMap::new();
        for ((offset, storage), (path, first, elt)) in want.iter().zip(&canon.placed) {
            let (Some(offset), Some(storage)) = (offset, storage) else {
                continue;
            };
            let start = first.wrapping_sub(*offset as usize * elt);
            match starts.get(storage) {
                None => {
                    if let Some((_, other)) = starts.values().find(|(s, _)| *s == start) {
                        let msg = format!("{path} and {other} share a storage here, not in Python");
                        return self.fail(e, stage, msg);
                    }
                    starts.insert(*storage, (start, path));
                }
                Some((s, other)) if *s != start => {
                    let msg = format!(
                        "{path} and {other} share a storage in Python, not here \
                         (or not at the same distance)"
                    );
                    return self.fail(e, stage, msg);
                }
                Some(_) => {}
            }
        }
    }

    /// `StateDict::load` / `load_key`: the state dict, or the refusal of an unsupported
    /// entry; `NotAStateDict` for a root that is none.
    fn check_state_dict(&mut self, e: &Entry) -> Option<(StateDict, Json)> {
        if e.state_dict.as_deref() != Some("") {
            match StateDict::load(&e.path) {
                Err(Error::NotAStateDict { .. }) => {}
                // An object (not a module) says its class instead.
                Err(Error::OpaqueObject { .. }) if e.canon[0] == "object" => {}
                Err(other) => self.fail(
                    e,
                    "StateDict::load",
                    format!("expected NotAStateDict, got error: {other}"),
                ),
                Ok(_) => self.fail(
                    e,
                    "StateDict::load",
                    "expected NotAStateDict, got a state dict",
                ),
            }
        }
        let key = e.state_dict.clone()?;
        let want = sd_want(e, &key);
        let (stage, got) = if key.is_empty() {
            ("StateDict::load", StateDict::load(&e.path))
        } else {
            ("StateDict::load_key", StateDict::load_key(&e.path, &key))
        };
        let unsupported = Self::unsupported_under(e, &key);
        if !unsupported.is_empty() {
            self.expect_refusal(e, stage, got, &unsupported);
            return None;
        }
        let sd = match got {
            Ok(sd) => sd,
            Err(err) => {
                self.fail(e, stage, format!("error: {err}"));
                return None;
            }
        };
        let want = as_state_dict(want, &[]);
        let c = Canon::default().state_dict(&sd);
        self.count("state dicts compared");
        if !self.compare(e, stage, &want, &c) {
            return None;
        }
        self.check_st_metadata(e, stage, sd.safetensors_metadata());
        Some((sd, want))
    }

    fn check_st_metadata(
        &mut self,
        e: &Entry,
        stage: &str,
        got: Option<&indexmap::IndexMap<String, String>>,
    ) {
        let got = got.map(|m| {
            let mut pairs: Vec<(&String, &String)> = m.iter().collect();
            pairs.sort();
            json!(pairs)
        });
        let got = got.unwrap_or(Json::Null);
        if got != e.st_metadata {
            self.fail(
                e,
                stage,
                format!(
                    "safetensors metadata: expected {}, got {}",
                    short(&e.st_metadata),
                    short(&got)
                ),
            );
        }
    }

    /// `LazyStateDict::load` / `load_key`: every entry's dtype and shape, each entry read on
    /// its own, unsupported entries refused alone, and the readable ones read together.
    fn check_lazy(&mut self, e: &Entry) -> Option<(StateDict, Json)> {
        let key = e.state_dict.clone()?;
        let want = sd_want(e, &key);
        let (stage, got) = if key.is_empty() {
            ("LazyStateDict::load", LazyStateDict::load(&e.path))
        } else {
            (
                "LazyStateDict::load_key",
                LazyStateDict::load_key(&e.path, &key),
            )
        };
        let mut lazy = match got {
            Ok(sd) => sd,
            Err(err) => {
                self.fail(e, stage, format!("error: {err}"));
                return None;
            }
        };
        let unsupported = Self::unsupported_under(e, &key);
        let items = want[1].as_array().cloned().unwrap_or_default();
        let keys: Vec<&str> = lazy.keys().collect();
        let want_keys: Vec<&str> = items.iter().filter_map(|p| p[0][1].as_str()).collect();
        if keys != want_keys {
            self.fail(
                e,
                stage,
                format!("keys: expected {want_keys:?}, got {keys:?}"),
            );
            return None;
        }
        for pair in &items {
            let k = pair[0][1].as_str().unwrap_or("");
            let t = &pair[1][1];
            let entry = lazy.get(k).expect("a key listed");
            let at = format!("{stage}: [{k:?}]");
            let dtype = t["dtype"].as_str().unwrap_or("");
            if entry.dtype_name() != dtype {
                self.fail(
                    e,
                    &at,
                    format!("dtype_name: expected {dtype}, got {}", entry.dtype_name()),
                );
            }
            let shape: Vec<i64> = t["shape"]
                .as_array()
                .map(|s| s.iter().filter_map(Json::as_i64).collect())
                .unwrap_or_default();
            if entry.size() != shape {
                self.fail(
                    e,
                    &at,
                    format!("size: expected {shape:?}, got {:?}", entry.size()),
                );
            }
            if unsupported.iter().any(|(u, _)| u == k) {
                if let Some(kind) = entry.kind() {
                    self.fail(
                        e,
                        &at,
                        format!("kind: expected None for {dtype}, got {kind:?}"),
                    );
                }
                // A lazy tensor does not know its key: the error names a key under which
                // the file holds the same tensor, maybe in another dict. Only its dtype counts.
                match entry.read() {
                    Err(Error::UnsupportedDtype { dtype: got, .. })
                        if got == format!("torch.{dtype}") =>
                    {
                        self.count("refusals as expected");
                    }
                    Err(other) => self.fail(
                        e,
                        &format!("{at}: read"),
                        format!("expected UnsupportedDtype for torch.{dtype}, got error: {other}"),
                    ),
                    Ok(_) => self.fail(
                        e,
                        &format!("{at}: read"),
                        format!("expected UnsupportedDtype for torch.{dtype}, got a tensor"),
                    ),
                }
                continue;
            }
            match entry.read() {
                Ok(tensor) => {
                    let c = json!(["tensor", Canon::default().tensor(&tensor)]);
                    self.compare(e, &format!("{at}: read"), &pair[1], &c);
                }
                Err(err) => self.fail(e, &format!("{at}: read"), format!("error: {err}")),
            }
        }
        let drop: Vec<String> = unsupported.iter().map(|(k, _)| k.clone()).collect();
        lazy.retain(|_, t| t.kind().is_some());
        let sd = match lazy.into_state_dict() {
            Ok(sd) => sd,
            Err(err) => {
                self.fail(
                    e,
                    &format!("{stage}: into_state_dict"),
                    format!("error: {err}"),
                );
                return None;
            }
        };
        let want = as_state_dict(want, &drop);
        let c = Canon::default().state_dict(&sd);
        self.count("lazy state dicts compared");
        if !self.compare(e, &format!("{stage}: into_state_dict"), &want, &c) {
            return None;
        }
        self.check_st_metadata(e, stage, sd.safetensors_metadata());
        Some((sd, want))
    }
}

/// The canonical form of the state dict of `e` at `key`: a module's, as its `state_dict()`
/// gives it, or the dict there.
fn sd_want<'e>(e: &'e Entry, key: &str) -> &'e Json {
    if let Some(sd) = &e.state_dict_canon {
        return sd;
    }
    if key.is_empty() {
        &e.canon
    } else {
        dict_get(&e.canon, key).expect("the manifest's state dict")
    }
}

/// Whether `found` holds for `v` or for any value inside it: items, dict keys and values,
/// `_metadata`, an object's arguments, state and items.
fn holds(v: &Value, found: &dyn Fn(&Value) -> bool) -> bool {
    if found(v) {
        return true;
    }
    let all = |items: &[Value]| items.iter().any(|i| holds(i, found));
    let pairs = |items: &[(Value, Value)]| {
        items
            .iter()
            .any(|(k, v)| holds(k, found) || holds(v, found))
    };
    match v {
        Value::List(items) | Value::Tuple(items) | Value::Set(items) => all(items),
        Value::Dict(d) => {
            pairs(&d.items)
                || d.metadata.as_ref().is_some_and(|m| {
                    m.values()
                        .any(|attrs| attrs.values().any(|a| holds(a, found)))
                })
        }
        Value::Object(o) => {
            all(o.args())
                || pairs(o.kwargs())
                || o.state().is_some_and(|s| holds(s, found))
                || all(o.list_items())
                || pairs(o.dict_items())
        }
        _ => false,
    }
}

/// Whether a value holds a set where Python can only have held a frozenset: inside a dict
/// key or a set (`hashable`).
fn holds_frozenset(v: &Value, hashable: bool) -> bool {
    match v {
        Value::Set(items) => hashable || items.iter().any(|i| holds_frozenset(i, true)),
        Value::List(items) | Value::Tuple(items) => {
            items.iter().any(|i| holds_frozenset(i, hashable))
        }
        Value::Dict(d) => d
            .items
            .iter()
            .any(|(k, v)| holds_frozenset(k, true) || holds_frozenset(v, hashable)),
        _ => false,
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("{name}={s:?} is not a number")),
        Err(_) => default,
    }
}

#[test]
fn random_checkpoints_read_and_write_as_torch_does() {
    let seed: u64 = env_or("TCH_STATE_DICT_DIFF_SEED", DEFAULT_SEED);
    let count: usize = env_or("TCH_STATE_DICT_DIFF_COUNT", DEFAULT_COUNT);
    let tmp = tempfile::Builder::new()
        .prefix("tch-state-dict-differential-")
        .tempdir()
        .expect("a temporary directory");
    let out = tmp.path().join("written");
    std::fs::create_dir_all(&out).unwrap();

    let start = Instant::now();
    let given = std::env::var_os("TCH_STATE_DICT_DIFF_DIR").map(PathBuf::from);
    let dir = match &given {
        // Files described by `make_random.py describe DIR`.
        Some(dir) => dir.clone(),
        None => {
            let dir = tmp.path().join("files");
            common::run_python(
                "fixtures/make_random.py",
                &[
                    "generate",
                    dir.to_str().unwrap(),
                    "--seed",
                    &seed.to_string(),
                    "--count",
                    &count.to_string(),
                    "--unsupported",
                    &UNSUPPORTED_DTYPES.join(","),
                ],
                "",
            );
            dir
        }
    };
    let generated = start.elapsed();

    let mut run = Run {
        failures: Vec::new(),
        written: Vec::new(),
        out,
        values_not_written: 0,
        counts: HashMap::new(),
    };
    let (mut read, mut written_back) = (Duration::ZERO, Duration::ZERO);
    let (mut files, mut written) = (0usize, 0usize);
    let manifest = std::fs::File::open(dir.join("manifest.jsonl")).expect("manifest.jsonl");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(manifest));
    // In chunks, so that a long run holds a chunk's canonical forms and written files only.
    loop {
        let chunk: Vec<Entry> = lines
            .by_ref()
            .take(CHUNK)
            .map(|line| entry(&dir, &line.expect("a manifest line")))
            .collect();
        if chunk.is_empty() {
            break;
        }
        files += chunk.len();
        let start = Instant::now();
        for e in &chunk {
            let result = catch_unwind(AssertUnwindSafe(|| run.check_file(e)));
            if let Err(panic) = result {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                run.fail(e, "panic", msg);
            }
        }
        read += start.elapsed();
        let start = Instant::now();
        written += run.written.len();
        run.check_written();
        written_back += start.elapsed();
    }
    if given.is_none() {
        assert_eq!(files, count, "the manifest's lines");
    }

    let mut counts: Vec<_> = run.counts.iter().collect();
    counts.sort();
    let source = match &given {
        Some(dir) => format!("the files of {}", dir.display()),
        None => format!("seed {seed}, {count} files generated in {generated:.1?}"),
    };
    eprintln!(
        "differential: {source}; read in {read:.1?}; {written} files written back and read by \
         torch.load in {written_back:.1?} ({} values refused by Value::save by design: a Global, a frozenset, an object, a reference back to a tuple or set); {counts:?}",
        run.values_not_written,
    );
    // Every failure, one a line, and how many each entry point had.
    let report = tmp.path().join("failures.txt");
    std::fs::write(&report, run.failures.join("\n")).unwrap();
    let mut stages: HashMap<&str, usize> = HashMap::new();
    for f in &run.failures {
        let stage = f.split_once("): ").map_or(f.as_str(), |(_, rest)| rest);
        let stage = stage.split(": ").next().unwrap_or(stage);
        *stages.entry(stage).or_default() += 1;
    }
    let mut stages: Vec<_> = stages.into_iter().collect();
    stages.sort();
    if std::env::var_os("TCH_STATE_DICT_DIFF_KEEP").is_some() {
        let kept = tmp.keep();
        eprintln!("differential: files kept in {}", kept.display());
    }
    if !run.failures.is_empty() {
        let mut msg = format!(
            "{} disagreements with torch.load ({source}; make file i again with \
             `scripts/python tests/fixtures/make_random.py generate DIR --seed {seed} \
             --first i --count 1`); by entry point: {stages:?}\n",
            run.failures.len()
        );
        for f in run.failures.iter().take(MAX_PRINTED) {
            msg.push_str("  ");
            msg.push_str(f);
            msg.push('\n');
        }
        if run.failures.len() > MAX_PRINTED {
            let _ = writeln!(msg, "  ... and {} more", run.failures.len() - MAX_PRINTED);
        }
        panic!("{msg}");
    }
}
