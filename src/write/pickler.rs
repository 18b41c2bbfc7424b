//! A pickle writer for protocol 2, as `torch.save` writes: tensors become
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
//! OrderedDict())` calls whose storage is a persistent id `('storage', torch.FloatStorage,
//! key, 'cpu', numel)`, state dicts are `collections.OrderedDict` with their `_metadata`.
//! Tensors keep their strides and share storages as they did: each storage is written once,
//! the elements its tensors span (measured in a first pass over the value, so that the
//! first tensor of a storage names its whole length), and each tensor at its offset in it.
//! Only globals that `torch.load(weights_only=True)` accepts are written, unless objects are
//! asked for ([`SaveOptions::objects`](crate::SaveOptions::objects)): then each
//! [`Object`] is written as the pickle that was read made it (its class or function, its
//! arguments by `NEWOBJ`, `NEWOBJ_EX` or `REDUCE`, its items, its `BUILD` state), and each
//! [`Value::Global`] as the global it names.
//!
//! A [`Value::Recursive`] is written as Python's pickler writes a reference back: the value
//! it refers to is memoized where it was made (a `BINPUT` put in after its opening opcode,
//! once the first reference back to it is met) and fetched again (`BINGET`). A list, dict or
//! object can be referred back to; a tuple or set, which pickle makes only after its items,
//! cannot (Python's own pickler needs tricks for a tuple, and a set cannot hold itself).

use std::collections::HashMap;

use tch::{Device, Kind, Tensor};

use crate::dtype;
use crate::read::pickle::opcodes::*;
use crate::read::view_end;
use crate::value::{Dict, Metadata, Object, Value};

/// A storage to write as `data/<key>`: a contiguous CPU tensor.
pub(crate) struct StorageOut {
    pub key: String,
    pub tensor: Tensor,
}

/// Why a value cannot be written.
pub(crate) struct Unwritable {
    pub what: String,
    pub reason: String,
}

/// A storage that tensors written share (tied weights, views of one buffer): where its
/// first element is, its dtype and its device.
#[derive(Hash, PartialEq, Eq, Clone, Copy)]
struct StorageId {
    base: usize,
    kind: Kind,
    device: Device,
}

/// The elements `lo..hi` of a storage that the tensors written of it cover: what is written
/// of it, so that a view keeps its offset and strides and shares its storage as it did,
/// while a small view of a large buffer (or an expanded tensor, stride 0) writes only what
/// it covers.
#[derive(Clone, Copy)]
struct Span {
    lo: i64,
    hi: i64,
}

pub(crate) struct Pickler {
    out: Vec<u8>,
    globals: HashMap<(&'static str, &'static str), u32>,
    next_memo: u32,
    pub storages: Vec<StorageOut>,
    /// Each storage's span, from a first pass over the value ([`finish`](Self::finish)), so
    /// that the first tensor written of a storage names its whole length.
    spans: HashMap<StorageId, Span>,
    /// Whether this is that first pass: spans are measured, nothing of a tensor is written.
    measuring: bool,
    /// The storages written, by their index in `storages`.
    written: HashMap<StorageId, usize>,
    /// How many dict keys and set items the value being written is inside: a set there was
    /// a `frozenset` in Python.
    hashable: usize,
    /// Whether objects and any globals are written ([`SaveOptions::objects`]).
    ///
    /// [`SaveOptions::objects`]: crate::SaveOptions::objects
    objects: bool,
    /// The classes, functions and globals of objects written, each memoized once.
    named_globals: HashMap<(String, String), u32>,
    /// The containers and objects that enclose the value being written, outermost first,
    /// as [`Value::Recursive`] counts them.
    enclosing: Vec<Level>,
}

/// A container or object being written, for references back to it.
struct Level {
    /// Where in the pickle its memo `BINPUT` goes: just after the opcode that made it.
    /// `None` while it is not made yet (an object's arguments, a tuple's or set's items).
    at: Option<usize>,
    /// Its memo index, once a reference back to it has been written.
    memo: Option<u32>,
}

const MAX_DEPTH: usize = 1000;

/// The `torch.<name>` global of a kind; `None` for the dtypes pickles may not hold.
fn torch_name(kind: Kind) -> Option<&'static str> {
    let info = dtype::of_kind(kind);
    info.pickled.then_some(info.name)
}

/// The typed storage class torch.save names for a dtype; `None` for dtypes saved through
/// `_rebuild_tensor_v3` with an untyped storage.
fn storage_class(kind: Kind) -> Option<&'static str> {
    let info = dtype::of_kind(kind);
    info.storage_class.filter(|_| info.pickled)
}

impl Pickler {
    pub(crate) fn new() -> Self {
        Pickler {
            out: vec![PROTO, 2],
            globals: HashMap::new(),
            next_memo: 0,
            storages: Vec::new(),
            spans: HashMap::new(),
            measuring: false,
            written: HashMap::new(),
            hashable: 0,
            objects: false,
            named_globals: HashMap::new(),
            enclosing: Vec::new(),
        }
    }

    /// A pickler that writes objects and any globals as they came.
    pub(crate) fn with_objects(mut self, objects: bool) -> Self {
        self.objects = objects;
        self
    }

    /// Enters a container or object: `made` when the opcode that made it was just written
    /// (it can be referred back to from here on), not when it is made after what it holds.
    fn enter(&mut self, made: bool) {
        let at = made.then_some(self.out.len());
        self.enclosing.push(Level { at, memo: None });
    }

    /// The innermost container or object is made now: references back to it can follow.
    fn made(&mut self) {
        let at = self.out.len();
        if let Some(level) = self.enclosing.last_mut() {
            level.at = Some(at);
        }
    }

    fn leave(&mut self) {
        self.enclosing.pop();
    }

    /// A reference back to the container or object `up` levels up.
    fn back_reference(&mut self, up: usize, type_name: &str, what: &str) -> Result<(), Unwritable> {
        let fail = |reason: String| Unwritable {
            what: what.to_string(),
            reason,
        };
        let n = self.enclosing.len();
        if up == 0 || up > n {
            return Err(fail(format!(
                "a reference back {up} levels up, where there are {n} levels"
            )));
        }
        let target = n - up;
        let Some(at) = self.enclosing[target].at else {
            return Err(fail(format!(
                "a reference back to the {type_name} that holds it, made only after what it \
                 holds (a cycle pickle can rebuild only through a list, dict or object)"
            )));
        };
        let memo = match self.enclosing[target].memo {
            Some(memo) => memo,
            None => {
                let memo = self.next_memo;
                self.next_memo += 1;
                // Its BINPUT, put in where it was made; what was written since moves.
                let tail = self.out.split_off(at);
                self.put(memo);
                let grew = self.out.len() - at;
                self.out.extend_from_slice(&tail);
                for level in &mut self.enclosing[target + 1..] {
                    if let Some(a) = level.at.as_mut() {
                        *a += grew;
                    }
                }
                self.enclosing[target].memo = Some(memo);
                memo
            }
        };
        self.get(memo);
        Ok(())
    }

    /// `GLOBAL module\nname\n` of any names, memoized: an object's class, a global value.
    fn named_global(&mut self, module: &str, name: &str) -> Result<(), String> {
        if let Some(&i) = self
            .named_globals
            .get(&(module.to_string(), name.to_string()))
        {
            self.get(i);
            return Ok(());
        }
        if [module, name]
            .iter()
            .any(|s| s.is_empty() || s.contains(['\n', '\r']))
        {
            return Err(format!(
                "the global {module:?}.{name:?} has no name pickle can write"
            ));
        }
        let i = self.new_global(module, name);
        self.named_globals
            .insert((module.to_string(), name.to_string()), i);
        Ok(())
    }

    /// An object as the pickle that was read made it: its class, its arguments (`NEWOBJ`,
    /// `NEWOBJ_EX` or `REDUCE`), then what `APPENDS`, `SETITEMS` and `BUILD` gave it, in
    /// the order Python's pickler writes them.
    fn object(&mut self, o: &Object, what: &str, depth: usize) -> Result<(), Unwritable> {
        let fail = |reason: String| Unwritable {
            what: what.to_string(),
            reason,
        };
        self.named_global(&o.module, &o.name).map_err(fail)?;
        // Its level encloses its arguments, as the reader counts it, but it is not made yet.
        self.enter(false);
        self.tuple(&o.args, what, depth)?;
        if !o.kwargs.is_empty() {
            if !o.new {
                return Err(fail(format!(
                    "{} was called with keyword arguments, which REDUCE cannot pass",
                    o.qualified_name()
                )));
            }
            self.op(EMPTY_DICT);
            self.pairs(&o.kwargs, what, depth)?;
            self.op(NEWOBJ_EX);
        } else if o.new {
            self.op(NEWOBJ);
        } else {
            self.op(REDUCE);
        }
        self.made();
        if !o.list_items.is_empty() {
            self.batch(&o.list_items, APPENDS, what, depth)?;
        }
        self.pairs(&o.dict_items, what, depth)?;
        if let Some(state) = &o.state {
            self.value(state, what, depth + 1)?;
            self.op(BUILD);
        }
        self.leave();
        Ok(())
    }

    /// A tuple of `items` (`MARK ... TUPLE`), whose level is entered by the caller.
    fn tuple(&mut self, items: &[Value], what: &str, depth: usize) -> Result<(), Unwritable> {
        self.op(MARK);
        for item in items {
            self.value(item, what, depth + 1)?;
        }
        self.op(TUPLE);
        Ok(())
    }

    /// Key-value pairs in batches of 1000 (`SETITEMS`), onto the dict or object below.
    fn pairs(
        &mut self,
        items: &[(Value, Value)],
        what: &str,
        depth: usize,
    ) -> Result<(), Unwritable> {
        for chunk in items.chunks(1000) {
            self.op(MARK);
            for (k, v) in chunk {
                self.hashable += 1;
                let written = self.value(k, what, depth + 1);
                self.hashable -= 1;
                written?;
                let inner = match k {
                    Value::Str(s) => s.as_str(),
                    _ => what,
                };
                self.value(v, inner, depth + 1)?;
            }
            self.op(SETITEMS);
        }
        Ok(())
    }

    /// The pickle of `value`, ending with STOP.
    pub(crate) fn finish(
        mut self,
        value: &Value,
    ) -> Result<(Vec<u8>, Vec<StorageOut>), Unwritable> {
        // A first pass measures what each storage's tensors span; the second writes.
        let mut measure = Pickler::new().with_objects(self.objects);
        measure.measuring = true;
        measure.value(value, "the object", 0)?;
        self.spans = measure.spans;
        self.value(value, "the object", 0)?;
        self.out.push(STOP);
        Ok((self.out, self.storages))
    }

    fn op(&mut self, op: u8) {
        self.out.push(op);
    }

    /// `GLOBAL module\nname\n`, memoized so that each global is written once.
    fn global(&mut self, module: &'static str, name: &'static str) {
        if let Some(&i) = self.globals.get(&(module, name)) {
            self.get(i);
            return;
        }
        let i = self.new_global(module, name);
        self.globals.insert((module, name), i);
    }

    /// Writes `GLOBAL module\nname\n` and memoizes it: its memo index.
    fn new_global(&mut self, module: &str, name: &str) -> u32 {
        self.op(GLOBAL);
        for line in [module, name] {
            self.out.extend_from_slice(line.as_bytes());
            self.out.push(b'\n');
        }
        let i = self.next_memo;
        self.next_memo += 1;
        self.put(i);
        i
    }

    fn put(&mut self, i: u32) {
        if i < 256 {
            self.out.extend_from_slice(&[BINPUT, i as u8]);
        } else {
            self.op(LONG_BINPUT);
            self.out.extend_from_slice(&i.to_le_bytes());
        }
    }

    fn get(&mut self, i: u32) {
        if i < 256 {
            self.out.extend_from_slice(&[BINGET, i as u8]);
        } else {
            self.op(LONG_BINGET);
            self.out.extend_from_slice(&i.to_le_bytes());
        }
    }

    fn int(&mut self, v: i64) {
        if (0..256).contains(&v) {
            self.out.extend_from_slice(&[BININT1, v as u8]);
        } else if (0..65536).contains(&v) {
            self.op(BININT2);
            self.out.extend_from_slice(&(v as u16).to_le_bytes());
        } else if i32::try_from(v).is_ok() {
            self.op(BININT);
            self.out.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            // LONG1 with the fewest two's complement bytes.
            let bytes = v.to_le_bytes();
            let mut n = 8;
            while n > 1 {
                let top = bytes[n - 1];
                let next_sign = bytes[n - 2] & 0x80;
                if (top == 0 && next_sign == 0) || (top == 0xff && next_sign != 0) {
                    n -= 1;
                } else {
                    break;
                }
            }
            self.long(&bytes[..n]);
        }
    }

    fn long(&mut self, bytes: &[u8]) {
        if bytes.len() < 256 {
            self.out.extend_from_slice(&[LONG1, bytes.len() as u8]);
        } else {
            self.op(LONG4);
            self.out
                .extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        }
        self.out.extend_from_slice(bytes);
    }

    fn str(&mut self, s: &str) {
        self.op(BINUNICODE);
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn ints_tuple(&mut self, v: &[i64]) {
        match v.len() {
            0 => self.op(EMPTY_TUPLE),
            1..=3 => {
                for &x in v {
                    self.int(x);
                }
                self.op([TUPLE1, TUPLE2, TUPLE3][v.len() - 1]);
            }
            _ => {
                self.op(MARK);
                for &x in v {
                    self.int(x);
                }
                self.op(TUPLE);
            }
        }
    }

    fn value(&mut self, value: &Value, what: &str, depth: usize) -> Result<(), Unwritable> {
        if depth > MAX_DEPTH {
            return Err(Unwritable {
                what: what.to_string(),
                reason: format!("values nested deeper than {MAX_DEPTH}"),
            });
        }
        match value {
            Value::None => self.op(NONE),
            Value::Bool(true) => self.op(NEWTRUE),
            Value::Bool(false) => self.op(NEWFALSE),
            Value::Int(i) => self.int(*i),
            Value::BigInt(b) => self.long(b),
            Value::Float(f) => {
                self.op(BINFLOAT);
                self.out.extend_from_slice(&f.to_be_bytes());
            }
            Value::Str(s) => self.str(s),
            Value::Bytes(b) => {
                // Protocol 2 has no bytes opcode; Python writes _codecs.encode(text, 'latin1').
                self.global("_codecs", "encode");
                let text: String = b.iter().map(|&c| char::from(c)).collect();
                self.str(&text);
                self.str("latin1");
                self.op(TUPLE2);
                self.op(REDUCE);
            }
            Value::List(items) => {
                self.op(EMPTY_LIST);
                self.enter(true);
                self.batch(items, APPENDS, what, depth)?;
                self.leave();
            }
            Value::Tuple(items) => {
                self.enter(false);
                self.tuple(items, what, depth)?;
                self.leave();
            }
            // A set inside a dict key or a set was a frozenset, which
            // torch.load(weights_only=True) refuses (and a set there cannot be hashed); a
            // save with objects writes it as one, below.
            Value::Set(_) if self.hashable > 0 && !self.objects => {
                return Err(Unwritable {
                    what: what.to_string(),
                    reason: "a set inside a dict key or a set (a frozenset) cannot be \
                             written: torch.load(weights_only=True) would refuse it"
                        .to_string(),
                })
            }
            Value::Set(items) => {
                let class = if self.hashable > 0 {
                    "frozenset"
                } else {
                    "set"
                };
                self.global("builtins", class);
                self.op(EMPTY_LIST);
                self.hashable += 1;
                self.enter(false);
                let written = self.batch(items, APPENDS, what, depth);
                self.leave();
                self.hashable -= 1;
                written?;
                self.op(TUPLE1);
                self.op(REDUCE);
            }
            Value::Dict(d) => self.dict(d, what, depth)?,
            Value::Tensor(t) => self.tensor(t, what)?,
            Value::Device(d) => {
                self.global("torch", "device");
                self.str(d);
                self.op(TUPLE1);
                self.op(REDUCE);
            }
            Value::Dtype(k) => {
                let name = torch_name(*k).ok_or_else(|| Unwritable {
                    what: what.to_string(),
                    reason: format!("the dtype {k:?} has no torch name"),
                })?;
                self.global("torch", name);
            }
            Value::Object(o) if self.objects => self.object(o, what, depth)?,
            Value::Object(o) => {
                return Err(Unwritable {
                    what: what.to_string(),
                    reason: format!(
                        "an object of class {} cannot be written: torch.load(weights_only=True) \
                         would refuse it",
                        o.qualified_name()
                    ),
                })
            }
            Value::Unreadable { dtype, .. } => {
                return Err(Unwritable {
                    what: what.to_string(),
                    reason: format!(
                        "a tensor of dtype torch.{dtype}, which this crate cannot hold"
                    ),
                })
            }
            Value::Recursive { up, type_name } => self.back_reference(*up, type_name, what)?,
            Value::Global { module, name } if self.objects => self
                .named_global(module, name)
                .map_err(|reason| Unwritable {
                    what: what.to_string(),
                    reason,
                })?,
            Value::Global { module, name } => {
                // A torch dtype tch has no kind for (`torch.uint16`), which
                // torch.load(weights_only=True) allows.
                let dtype = (module == "torch")
                    .then(|| dtype::file_dtype_by_name(name))
                    .flatten();
                let Some(dtype) = dtype else {
                    return Err(Unwritable {
                        what: what.to_string(),
                        reason: format!(
                            "the global {module}.{name} cannot be written: \
                             torch.load(weights_only=True) would refuse it"
                        ),
                    });
                };
                self.global("torch", dtype.name());
            }
        }
        Ok(())
    }

    /// Items appended in batches of 1000, as Python's pickler does.
    fn batch(
        &mut self,
        items: &[Value],
        op: u8,
        what: &str,
        depth: usize,
    ) -> Result<(), Unwritable> {
        for chunk in items.chunks(1000) {
            self.op(MARK);
            for item in chunk {
                self.value(item, what, depth + 1)?;
            }
            self.op(op);
        }
        Ok(())
    }

    fn dict(&mut self, d: &Dict, what: &str, depth: usize) -> Result<(), Unwritable> {
        if d.ordered {
            self.global("collections", "OrderedDict");
            self.op(EMPTY_TUPLE);
            self.op(REDUCE);
        } else {
            self.op(EMPTY_DICT);
        }
        self.enter(true);
        let written = self.dict_items(d, what, depth);
        self.leave();
        written
    }

    fn dict_items(&mut self, d: &Dict, what: &str, depth: usize) -> Result<(), Unwritable> {
        self.pairs(&d.items, what, depth)?;
        if let Some(metadata) = &d.metadata {
            // The OrderedDict's instance attributes: {'_metadata': OrderedDict(...)}.
            self.op(EMPTY_DICT);
            self.str("_metadata");
            self.metadata(metadata, depth)?;
            self.op(SETITEM);
            self.op(BUILD);
        }
        Ok(())
    }

    fn metadata(&mut self, metadata: &Metadata, depth: usize) -> Result<(), Unwritable> {
        self.global("collections", "OrderedDict");
        self.op(EMPTY_TUPLE);
        self.op(REDUCE);
        for chunk in metadata.iter().collect::<Vec<_>>().chunks(1000) {
            self.op(MARK);
            for (prefix, attrs) in chunk {
                self.str(prefix);
                self.op(EMPTY_DICT);
                if !attrs.is_empty() {
                    self.op(MARK);
                    for (name, value) in attrs.iter() {
                        self.str(name);
                        self.value(value, "_metadata", depth + 2)?;
                    }
                    self.op(SETITEMS);
                }
            }
            self.op(SETITEMS);
        }
        Ok(())
    }

    fn tensor(&mut self, t: &Tensor, what: &str) -> Result<(), Unwritable> {
        let fail = |reason: String| Unwritable {
            what: what.to_string(),
            reason,
        };
        if !t.defined() {
            return Err(fail("the tensor is undefined".into()));
        }
        let kind = t.f_kind().map_err(|e| fail(e.to_string()))?;
        let dtype_name =
            torch_name(kind).ok_or_else(|| fail(format!("the dtype {kind:?} cannot be saved")))?;
        let numel = t.numel() as i64;
        let elt = dtype::of_kind(kind).elt_size as i64;
        // Where its storage starts (tch has no `storage_offset`): a view at offset 0.
        let base = match numel {
            0 => t.data_ptr() as usize,
            _ => t
                .f_as_strided([1], [1], Some(0))
                .map_err(|e| fail(e.to_string()))?
                .data_ptr() as usize,
        };
        let offset = ((t.data_ptr() as usize).wrapping_sub(base) / elt as usize) as i64;
        let (size, stride) = (t.size(), t.stride());
        // The elements the view covers in its storage: one past its last.
        let extent = view_end(offset as u64, &size, &stride)
            .and_then(|end| i64::try_from(end).ok())
            .ok_or_else(|| {
                fail(format!(
                    "the extent of shape {size:?}, strides {stride:?} overflows"
                ))
            })?;
        let id = StorageId {
            base,
            kind,
            device: t.device(),
        };
        if self.measuring {
            // The first pass only measures each storage's span.
            if numel > 0 {
                let span = self.spans.entry(id).or_insert(Span {
                    lo: offset,
                    hi: extent,
                });
                span.lo = span.lo.min(offset);
                span.hi = span.hi.max(extent);
            }
            return Ok(());
        }
        // An empty tensor is its own empty storage.
        let (span, written) = match numel {
            0 => (Span { lo: 0, hi: 0 }, None),
            _ => (self.spans[&id], self.written.get(&id).copied()),
        };
        let index = match written {
            Some(index) => index,
            None => {
                // The span's elements, from the view's own storage (nothing is copied of a
                // CPU tensor).
                let bytes = t
                    .f_as_strided([span.hi - span.lo], [1], Some(span.lo))
                    .and_then(|s| s.f_to_device(Device::Cpu))
                    .and_then(|c| c.f_contiguous())
                    .map_err(|e| fail(e.to_string()))?;
                let index = self.storages.len();
                self.storages.push(StorageOut {
                    key: index.to_string(),
                    tensor: bytes,
                });
                if numel > 0 {
                    self.written.insert(id, index);
                }
                index
            }
        };
        // An empty tensor keeps its strides too, at the start of its empty storage.
        let offset = if numel == 0 { 0 } else { offset - span.lo };
        let storage_len = span.hi - span.lo;
        let typed = storage_class(kind);
        self.global(
            "torch._utils",
            if typed.is_some() {
                "_rebuild_tensor_v2"
            } else {
                "_rebuild_tensor_v3"
            },
        );
        self.op(MARK);
        // The persistent id: ('storage', storage type, key, location, numel).
        self.op(MARK);
        self.str("storage");
        match typed {
            Some(class) => self.global("torch", class),
            None => self.global("torch.storage", "UntypedStorage"),
        }
        self.str(&index.to_string());
        self.str("cpu");
        let storage_numel = if typed.is_some() {
            storage_len
        } else {
            storage_len * elt
        };
        self.int(storage_numel);
        self.op(TUPLE);
        self.op(BINPERSID);
        self.int(offset);
        self.ints_tuple(&size);
        self.ints_tuple(&stride);
        self.op(if t.requires_grad() { NEWTRUE } else { NEWFALSE });
        self.global("collections", "OrderedDict");
        self.op(EMPTY_TUPLE);
        self.op(REDUCE);
        if typed.is_none() {
            self.global("torch", dtype_name);
        }
        self.op(TUPLE);
        self.op(REDUCE);
        Ok(())
    }
}
