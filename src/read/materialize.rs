//! From a parsed file to values: tensors are read here, each storage once. Opaque objects
//! become [`Object`]s (or, for the classes of [`super::known`], plain values); state dicts
//! are found in dicts here and in module objects in [`super::module`].
//!
//! Building values is bounded twice: by a count of values proportional to the pickle
//! (`max_values`), and by what is left of the file's memory budget once its parsed form is
//! paid for. Each value is charged what it allocates: its slot in its container, its
//! string's bytes, an object's parts. A tensor of the file is made once per materializer
//! and shared by every reference to it, as Python shares it; each further reference is a
//! handle, charged.
//!
//! Tensors are charged too, all of them before libtorch makes the first
//! ([`TENSOR_COST`], [`STORAGE_COST`]): libtorch's bookkeeping of each tensor and storage,
//! and each storage's bytes (none for a view of the mapped file). Before this charge, a
//! safetensors file of a million one-element tensors (59 MB) grew peak RSS by 2.1 GB when
//! opened and read as a value and as a state dict, far past its budget; now each read is
//! refused with `LimitExceeded` before it makes its tensors (`tests/budget.rs`).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::alloc::fresh_buffer;
use super::budget::{heap, heap_of, Budget};
use super::index::{out_of_budget, OpenFile};
use super::known;
use super::pickle::{Id, Obj, PickleError, StorageRef};
use super::pread::{bytes, read_all, Read, ReadFrom};
use super::source::map_open_file;
use super::torch_zip::inflate_into;
use super::{Parsed, ReadOptions, Source, StorageLoc};
use crate::dtype::{is_floating, reverse_units, FileDtype};
use crate::error::Error;
use crate::pyfmt;
use crate::value::{Dict, Metadata, Object, Value};

/// Reads the file tensors `wanted` (each a file and a tensor index in it), in order. The
/// tensors of one file are read by one [`Materializer`], so its storages are read once, in
/// one parallel pass, and tensors that shared a storage in Python share one here.
pub(crate) fn read_file_tensors(wanted: &[(&OpenFile<'_>, usize)]) -> Result<Vec<Tensor>, Error> {
    let mut groups: Vec<(&OpenFile<'_>, Vec<usize>, Vec<usize>)> = Vec::new();
    for (position, &(file, index)) in wanted.iter().enumerate() {
        match groups.iter_mut().find(|(f, _, _)| std::ptr::eq(*f, file)) {
            Some((_, indices, positions)) => {
                indices.push(index);
                positions.push(position);
            }
            None => groups.push((file, vec![index], vec![position])),
        }
    }
    let mut out: Vec<Option<Tensor>> = (0..wanted.len()).map(|_| None).collect();
    for (file, indices, positions) in groups {
        let tensors = Materializer::new(file).tensors(&indices)?;
        for (position, tensor) in positions.into_iter().zip(tensors) {
            out[position] = Some(tensor);
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// Reads the tensors and values of one opened file. Each storage is read once and cached, so
/// tensors that shared a storage in Python share one here.
pub(crate) struct Materializer<'c, 'a> {
    pub(super) path: &'c Path,
    pub(super) parsed: &'c Parsed<'a>,
    pub(super) options: &'c ReadOptions,
    /// Each storage's bytes, read once, as a 1-D uint8 tensor.
    storages: HashMap<String, (Tensor, u64)>,
    /// The whole file mapped by libtorch, for `ReadOptions::mmap`.
    mapped: Option<Option<Tensor>>,
    values: u64,
    max_values: u64,
    /// What the file's memory budget leaves for values.
    budget: Budget,
    /// Each tensor of the arena a value holds, made once and shared.
    tensor_values: HashMap<usize, Tensor>,
    /// Whether a tensor of a dtype tch cannot hold becomes [`Value::Unreadable`] rather
    /// than an error.
    unreadable: bool,
    /// The containers and objects that enclose the value being made, outermost first: one
    /// met again inside itself is a cycle, made [`Value::Recursive`].
    enclosing: Vec<Id>,
}

/// What a value costs in its container's allocation.
const VALUE: usize = std::mem::size_of::<Value>();
/// What a further handle on a tensor costs.
const TENSOR_HANDLE: u64 = heap(16);
/// What making one tensor costs beyond its bytes: libtorch's `TensorImpl` with its sizes and
/// strides, and the entry that holds it in a state dict. Measured (`tests/budget.rs`,
/// `measure_files`): a million one-element views of one storage grew peak RSS by 885 bytes
/// each as a `StateDict`.
pub(crate) const TENSOR_COST: u64 = 896;
/// What reading one storage costs beyond its bytes (charged rounded up to 64): its buffer's
/// `TensorImpl` and `StorageImpl`, and its entry in the materializer's map. Measured with
/// the above: 200,000 one-element tensors, each with a storage, grew peak RSS by 1565 bytes
/// each as a value, of which the value's own items are charged as values are.
pub(crate) const STORAGE_COST: u64 = 512;

impl<'c, 'a> Materializer<'c, 'a> {
    pub(crate) fn new(file: &'c OpenFile<'a>) -> Self {
        let (path, parsed, options) = (file.path.as_path(), &file.parsed, &file.options);
        let limits = &options.limits;
        let made = (parsed.arena.objs.len() as u64).max(parsed.arena.made);
        let proportional = made.saturating_mul(16) + 65_536;
        Materializer {
            path,
            parsed,
            options,
            storages: HashMap::new(),
            mapped: None,
            values: 0,
            max_values: limits.max_values.min(proportional),
            budget: parsed.budget.clone(),
            tensor_values: HashMap::new(),
            unreadable: false,
            enclosing: Vec::new(),
        }
    }

    /// Values with tensors this crate cannot hold described as [`Value::Unreadable`].
    pub(crate) fn with_unreadable(mut self) -> Self {
        self.unreadable = true;
        self
    }

    /// Values charged to `budget` instead of the file's own: the budget of a checkpoint of
    /// many files (a DCP directory), whose items share it.
    pub(crate) fn with_budget(mut self, budget: Budget) -> Self {
        self.budget = budget;
        self
    }

    /// The budget as values have used it so far.
    pub(crate) fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Charges `bytes` to the memory budget.
    pub(super) fn charge(&mut self, bytes: u64) -> Result<(), Error> {
        self.budget.charge(bytes).map_err(out_of_budget(self.path))
    }

    pub(super) fn pickle_error(&self, kind: PickleError) -> Error {
        Error::Pickle {
            path: self.path.to_path_buf(),
            entry: self.parsed.entry.clone(),
            offset: None,
            kind,
        }
    }

    fn torch_error(&self, what: String) -> impl FnOnce(tch::TchError) -> Error + '_ {
        move |source| Error::Torch {
            context: format!("{}: {what}", self.path.display()),
            source,
        }
    }

    /// Counts `n` values against the budget.
    pub(super) fn spend(&mut self, n: u64) -> Result<(), Error> {
        self.values = self.values.saturating_add(n);
        if self.values > self.max_values {
            return Err(Error::LimitExceeded {
                path: self.path.to_path_buf(),
                limit: "max_values",
                max: self.max_values,
            });
        }
        Ok(())
    }

    /// The object `id` as a value, with its tensors read: every tensor it holds is charged
    /// to the budget first (every tensor of the file, for the root).
    pub(crate) fn value(&mut self, id: Id) -> Result<Value, Error> {
        let arena = &self.parsed.arena;
        let tensors: Vec<usize> = if id == arena.root {
            (0..arena.tensors.len()).collect()
        } else {
            arena.tensors_reachable(id)
        };
        self.charge_tensors(&tensors)?;
        self.convert(id, 0)
    }

    /// The object `id` as a value, `depth` levels below the root. A list, dict, tuple, set
    /// or object met again inside itself is a [`Value::Recursive`]: the pickle's objects form
    /// a cycle there (an omegaconf node's `_parent`), which Python rebuilds as a cycle. One
    /// met again elsewhere (shared, not enclosing) is made again, within `max_values`.
    fn convert(&mut self, id: Id, depth: usize) -> Result<Value, Error> {
        let max_depth = self.options.limits.max_depth;
        if depth > max_depth {
            return Err(self.pickle_error(PickleError::TooDeep(max_depth)));
        }
        let arena = &self.parsed.arena;
        let obj = arena.get(id);
        let type_name = match obj {
            Obj::List(_) => "list",
            Obj::Dict(d) if d.ordered => "OrderedDict",
            Obj::Dict(_) => "dict",
            Obj::Tuple(_) => "tuple",
            Obj::Set(_) => "set",
            Obj::Object(_) => "object",
            _ => return self.convert_enclosed(id, depth),
        };
        if let Some(at) = self.enclosing.iter().rposition(|&e| e == id) {
            self.spend(1)?;
            let up = self.enclosing.len() - at;
            return Ok(Value::Recursive { up, type_name });
        }
        self.enclosing.push(id);
        let value = self.convert_enclosed(id, depth);
        self.enclosing.pop();
        value
    }

    /// [`convert`](Self::convert), once `id` is known to enclose what it holds.
    fn convert_enclosed(&mut self, id: Id, depth: usize) -> Result<Value, Error> {
        let arena = &self.parsed.arena;
        let obj = arena.get(id);
        // Strings and bytes count by length too, so that a memo reference to a large string
        // repeated many times is bounded as well.
        let weight = match obj {
            Obj::Str(s) => 1 + s.len() as u64 / 64,
            Obj::Bytes(b) | Obj::BigInt(b) => 1 + b.len() as u64 / 64,
            Obj::Class(c) => 1 + (c.module.len() + c.name.len()) as u64 / 64,
            _ => 1,
        };
        self.spend(weight)?;
        // What the value allocates besides the items it holds, which are charged as they
        // are made.
        let own = match obj {
            Obj::Str(s) | Obj::Device(s) => heap(s.len()),
            Obj::Bytes(b) | Obj::BigInt(b) => heap(b.len()),
            Obj::List(v) | Obj::Set(v) => heap_of(v.len(), VALUE),
            Obj::Tuple(t) => heap_of(t.len(), VALUE),
            Obj::Dict(d) => heap_of(d.items.len(), 2 * VALUE),
            Obj::Class(c) => heap(c.module.len()) + heap(c.name.len()),
            Obj::Global(_) => 2 * heap(32),
            Obj::Object(o) => {
                let class = arena.class_of(o);
                class.map_or(0, |c| heap(c.module.len()) + heap(c.name.len()))
                    + heap_of(o.args.len() + o.list_items.len(), VALUE)
                    + heap_of(o.kwargs.len() + o.dict_items.len(), 2 * VALUE)
                    + heap(VALUE)
            }
            _ => 0,
        };
        self.charge(own)?;
        // An unreadable tensor's error names its path from the root: each list gives it an
        // index, each dict a key.
        let list = |this: &mut Self, ids: &[Id]| -> Result<Vec<Value>, Error> {
            let mut out = Vec::with_capacity(ids.len());
            for (n, &i) in ids.iter().enumerate() {
                out.push(
                    this.convert(i, depth + 1)
                        .map_err(|e| e.under(|| n.to_string()))?,
                );
            }
            Ok(out)
        };
        Ok(match obj {
            Obj::None => Value::None,
            Obj::Bool(b) => Value::Bool(*b),
            Obj::Int(i) => Value::Int(*i),
            Obj::BigInt(b) => Value::BigInt(b.clone()),
            Obj::Float(f) => Value::Float(*f),
            Obj::Str(s) => Value::Str(s.clone()),
            Obj::Bytes(b) => Value::Bytes(b.clone()),
            Obj::List(ids) => Value::List(list(self, ids)?),
            Obj::Tuple(t) => Value::Tuple(list(self, arena.tuple(*t))?),
            Obj::Set(ids) => Value::Set(list(self, ids)?),
            Obj::Dict(d) => {
                // The sets of keys seen, freed once the dict is made.
                let seen_cost = 48 * d.items.len() as u64;
                self.charge(seen_cost)?;
                let mut items = Vec::with_capacity(d.items.len());
                let mut seen_str: HashSet<&str> = HashSet::new();
                let mut seen_int: HashSet<i64> = HashSet::new();
                for &(k, v) in &d.items {
                    let fresh = match arena.get(k) {
                        Obj::Str(s) => seen_str.insert(s),
                        Obj::Int(i) => seen_int.insert(*i),
                        _ => true,
                    };
                    if !fresh {
                        let key = match arena.get(k) {
                            Obj::Str(s) => s.clone(),
                            Obj::Int(i) => i.to_string(),
                            _ => String::new(),
                        };
                        return Err(self.pickle_error(PickleError::DuplicateKey(key)));
                    }
                    let key = self.convert(k, depth + 1)?;
                    let value = self
                        .convert(v, depth + 1)
                        .map_err(|e| e.under(|| segment(&key)))?;
                    items.push((key, value));
                }
                let metadata = match arena.metadata_of(id) {
                    Some(m) => Some(self.metadata(m, depth)?),
                    None => None,
                };
                self.budget.release(seen_cost);
                Value::Dict(Dict {
                    items,
                    ordered: d.ordered,
                    metadata,
                })
            }
            Obj::Tensor(i) => {
                let t = &arena.tensors[*i];
                if self.unreadable && t.dtype.kind().is_none() {
                    Value::Unreadable {
                        dtype: t.dtype.name().to_string(),
                        shape: t.size().to_vec(),
                    }
                } else {
                    Value::Tensor(self.tensor_value(*i)?)
                }
            }
            Obj::Device(d) => Value::Device(d.clone()),
            // A dtype tch has no kind for is the global that names it (`torch.uint16`).
            Obj::Dtype(d) => match d.kind() {
                Some(kind) => Value::Dtype(kind),
                None => Value::Global {
                    module: "torch".to_string(),
                    name: d.name().to_string(),
                },
            },
            Obj::Global(g) => {
                let (module, name) = g.module_and_name();
                Value::Global {
                    module: module.to_string(),
                    name: name.to_string(),
                }
            }
            Obj::Class(c) => Value::Global {
                module: c.module.clone(),
                name: c.name.clone(),
            },
            Obj::Object(o) => {
                let class = arena.class_of(o).cloned().unwrap_or_default();
                self.spend((class.module.len() + class.name.len()) as u64 / 64)?;
                let pairs = |this: &mut Self, items: &[(Id, Id)]| -> Result<_, Error> {
                    items
                        .iter()
                        .map(|&(k, v)| {
                            let key = this.convert(k, depth + 1)?;
                            let value = this
                                .convert(v, depth + 1)
                                .map_err(|e| e.under(|| segment(&key)))?;
                            Ok((key, value))
                        })
                        .collect::<Result<Vec<_>, Error>>()
                };
                let object = Object {
                    module: class.module,
                    name: class.name,
                    args: list(self, &o.args)?,
                    kwargs: pairs(self, &o.kwargs)?,
                    state: match o.state {
                        Some(s) => Some(Box::new(self.convert(s, depth + 1)?)),
                        None => None,
                    },
                    list_items: list(self, &o.list_items)?,
                    dict_items: pairs(self, &o.dict_items)?,
                    new: o.new,
                };
                match known::decode(object) {
                    Value::Tensor(t) => {
                        // The array's copy as a tensor: its bytes were charged as bytes.
                        let bytes = (t.numel() * t.kind().elt_size_in_bytes()) as u64;
                        self.charge(TENSOR_COST + bytes)?;
                        Value::Tensor(self.place(t, "a numpy array")?)
                    }
                    other => other,
                }
            }
            Obj::Storage(_) => {
                return Err(self.pickle_error(PickleError::Unsupported("a bare storage as a value")))
            }
        })
    }

    /// Tensor `index` of the arena for a value: made once, then shared. The first is part
    /// of the tensors the value holds; each further reference costs a handle, charged.
    fn tensor_value(&mut self, index: usize) -> Result<Tensor, Error> {
        if let Some(t) = self.tensor_values.get(&index) {
            let t = t.shallow_clone();
            self.charge(TENSOR_HANDLE)?;
            return Ok(t);
        }
        let t = self.make_tensor(index)?;
        self.tensor_values.insert(index, t.shallow_clone());
        Ok(t)
    }

    /// A state dict's `_metadata`: a dict of module prefix to a dict of attributes, of the
    /// dict `depth` levels below the root. Its values are two levels below the dict, as the
    /// pickle nests them, so that dicts whose `_metadata` hold dicts with `_metadata` stay
    /// within `max_depth`.
    fn metadata(&mut self, id: Id, depth: usize) -> Result<Metadata, Error> {
        let malformed = || PickleError::Malformed("_metadata is not a dict of dicts keyed by str");
        let arena = &self.parsed.arena;
        let Obj::Dict(d) = arena.get(id) else {
            return Err(self.pickle_error(malformed()));
        };
        let mut out = Metadata::with_capacity(d.items.len());
        for &(k, v) in &d.items {
            let (Obj::Str(prefix), Obj::Dict(attrs)) = (arena.get(k), arena.get(v)) else {
                return Err(self.pickle_error(malformed()));
            };
            // An entry of an index map: its slot, a hash, the index's table, the key.
            self.charge(64 + heap(prefix.len()) + heap_of(attrs.items.len(), 128))?;
            let mut entry = indexmap::IndexMap::with_capacity(attrs.items.len());
            for &(a, b) in &attrs.items {
                let Obj::Str(name) = arena.get(a) else {
                    return Err(self.pickle_error(malformed()));
                };
                self.charge(heap(name.len()))?;
                entry.insert(name.clone(), self.convert(b, depth + 2)?);
            }
            out.insert(prefix.clone(), entry);
        }
        Ok(out)
    }

    /// The object `id` as a state dict whose tensors are not read yet: its keys in order
    /// with each tensor's index in the arena, or an error that says what it is instead.
    pub(crate) fn state_dict_entries(
        &mut self,
        id: Id,
        at: Option<&str>,
    ) -> Result<SdEntries<'c>, Error> {
        let parsed: &'c Parsed<'a> = self.parsed;
        let arena = &parsed.arena;
        if let Obj::Object(o) = arena.get(id) {
            return match self.module_entries(o, at)? {
                Some(sd) => self.checked(sd),
                // A value of a known kind (bytes, a numpy array, a path) is no state dict.
                None if arena
                    .class_of(o)
                    .is_some_and(|c| known::is_known(&c.module, &c.name)) =>
                {
                    Err(self.not_a_state_dict(id, at))
                }
                None => {
                    let class = arena.class_of(o).cloned().unwrap_or_default();
                    Err(Error::OpaqueObject {
                        path: self.path.to_path_buf(),
                        at: at.map(str::to_string),
                        module: class.module,
                        name: class.name,
                    })
                }
            };
        }
        if let Obj::Class(c) = arena.get(id) {
            return Err(Error::OpaqueObject {
                path: self.path.to_path_buf(),
                at: at.map(str::to_string),
                module: c.module.clone(),
                name: c.name.clone(),
            });
        }
        let entries = match arena.get(id) {
            Obj::Dict(d) => d
                .items
                .iter()
                .map(|&(k, v)| match (arena.get(k), arena.get(v)) {
                    (Obj::Str(k), Obj::Tensor(t)) => Some((Cow::Borrowed(k.as_str()), *t)),
                    _ => None,
                })
                .collect::<Option<Vec<(Cow<'c, str>, usize)>>>(),
            _ => None,
        };
        let Some(entries) = entries else {
            return Err(self.not_a_state_dict(id, at));
        };
        let metadata = match arena.metadata_of(id) {
            Some(m) => {
                // Its values are held by the state dict, as in a whole value.
                self.enclosing.push(id);
                let metadata = self.metadata(m, 0);
                self.enclosing.pop();
                Some(metadata?)
            }
            None => None,
        };
        self.checked(SdEntries {
            entries,
            metadata,
            from_module: false,
        })
    }

    /// `sd`, once no key appears twice in it.
    fn checked(&self, sd: SdEntries<'c>) -> Result<SdEntries<'c>, Error> {
        let mut seen: HashSet<&str, foldhash::fast::RandomState> = HashSet::default();
        seen.reserve(sd.entries.len());
        for (key, _) in &sd.entries {
            if !seen.insert(key) {
                return Err(self.pickle_error(PickleError::DuplicateKey(key.to_string())));
            }
        }
        Ok(sd)
    }

    fn not_a_state_dict(&mut self, id: Id, at: Option<&str>) -> Error {
        let parsed: &'c Parsed<'a> = self.parsed;
        let arena = &parsed.arena;
        let entries = match arena.get(id) {
            Obj::Dict(d) => d
                .items
                .iter()
                .map(|&(k, v)| {
                    let key = match arena.get(k) {
                        Obj::Str(s) => pyfmt::repr_str(s),
                        Obj::Int(i) => i.to_string(),
                        other => format!("<{}>", other.type_name()),
                    };
                    (key, self.describe_entry(v))
                })
                .collect(),
            _ => Vec::new(),
        };
        Error::NotAStateDict {
            path: self.path.to_path_buf(),
            at: at.map(str::to_string),
            found: self.describe(id),
            entries,
        }
    }

    /// [`describe`](Self::describe), and for a module object the size of its state dict.
    fn describe_entry(&mut self, id: Id) -> String {
        let parsed: &'c Parsed<'a> = self.parsed;
        if let Obj::Object(o) = parsed.arena.get(id) {
            if let Ok(Some(sd)) = self.module_entries(o, None) {
                return format!(
                    "an nn.Module {} with a state dict of {} tensors",
                    parsed.arena.class_name(o),
                    sd.entries.len()
                );
            }
        }
        self.describe(id)
    }

    /// A short description of what an object is, for errors: `a state dict of 161 tensors`,
    /// `the int 240`.
    pub(super) fn describe(&self, id: Id) -> String {
        let arena = &self.parsed.arena;
        match arena.get(id) {
            Obj::Dict(d) => {
                let all_tensors = !d.items.is_empty()
                    && d.items.iter().all(|&(k, v)| {
                        matches!((arena.get(k), arena.get(v)), (Obj::Str(_), Obj::Tensor(_)))
                    });
                if all_tensors {
                    format!("a state dict of {} tensors", d.items.len())
                } else {
                    format!(
                        "a {} of {} items",
                        if d.ordered { "OrderedDict" } else { "dict" },
                        d.items.len()
                    )
                }
            }
            Obj::List(v) => format!("a list of {} items", v.len()),
            Obj::Tuple(v) => format!("a tuple of {} items", v.len()),
            Obj::Set(v) => format!("a set of {} items", v.len()),
            Obj::Tensor(i) => {
                let t = &arena.tensors[*i];
                format!(
                    "a tensor of shape {} ({})",
                    pyfmt::Shape(t.size()),
                    t.dtype.name()
                )
            }
            Obj::Int(i) => format!("the int {i}"),
            Obj::BigInt(_) => "a large int".to_string(),
            Obj::Float(f) => format!("the float {f}"),
            Obj::Bool(b) => format!("the bool {}", if *b { "True" } else { "False" }),
            Obj::None => "None".to_string(),
            Obj::Str(s) => {
                let short: String = s.chars().take(40).collect();
                format!("the str {}", pyfmt::repr_str(&short))
            }
            Obj::Bytes(b) => format!("{} bytes", b.len()),
            Obj::Device(d) => format!("torch.device({})", pyfmt::repr_str(d)),
            Obj::Dtype(d) => format!("torch.{}", d.name()),
            Obj::Global(g) => {
                let (module, name) = g.module_and_name();
                format!("the global {module}.{name}")
            }
            Obj::Class(c) => format!("the global {}.{}", c.module, c.name),
            Obj::Object(o) => format!("an object of class {}", arena.class_name(o)),
            Obj::Storage(_) => "a storage".to_string(),
        }
    }

    /// The tensors `indices` of the arena, as [`tensor`](Self::tensor) makes them, with the
    /// storages they need read first in one parallel pass. All of them are charged to the
    /// budget before the first is made.
    pub(crate) fn tensors(&mut self, indices: &[usize]) -> Result<Vec<Tensor>, Error> {
        self.charge_tensors(indices)?;
        self.prefetch(indices)?;
        indices.iter().map(|&i| self.make_tensor(i)).collect()
    }

    /// Charges the budget for making the tensors `indices` (each once): libtorch's
    /// bookkeeping of each tensor, and of each storage not read yet with its bytes (none for
    /// a storage viewed in the mapped file), and the copy a cast asked for makes. A file of a
    /// million tiny tensors is refused here, before libtorch makes any of them.
    fn charge_tensors(&mut self, indices: &[usize]) -> Result<(), Error> {
        let arena = &self.parsed.arena;
        let mut cost = 0u64;
        // A tensor named twice is charged twice: an upper bound.
        let mut seen_storages: HashSet<&str, foldhash::fast::RandomState> = HashSet::default();
        for &i in indices {
            let t = &arena.tensors[i];
            cost = cost.saturating_add(TENSOR_COST);
            let numel = t
                .size()
                .iter()
                .fold(1u64, |n, &d| n.saturating_mul(d as u64));
            if let (Some(kind), Some(saved)) = (self.options.kind, t.dtype.kind()) {
                if is_floating(saved) && saved != kind {
                    cost =
                        cost.saturating_add(numel.saturating_mul(kind.elt_size_in_bytes() as u64));
                }
            }
            let key = t.storage.key.as_str();
            if self.storages.contains_key(key) || !seen_storages.insert(key) {
                continue;
            }
            let Some(loc) = self.parsed.storages.get(key) else {
                continue;
            };
            let bytes = match *loc {
                StorageLoc::Range { start, .. } if self.may_map(start) => 0,
                // A big-endian storage is swapped in a copy of its own, then copied.
                StorageLoc::Range { len, .. } if self.parsed.big_endian => len.saturating_mul(2),
                _ => loc.len(),
            };
            cost = cost
                .saturating_add(STORAGE_COST)
                .saturating_add(bytes.div_ceil(64).saturating_mul(64));
        }
        self.charge(cost)
    }

    /// Whether a storage at `start` may be a view of the mapped file (`ReadOptions::mmap`).
    fn may_map(&self, start: u64) -> bool {
        self.options.mmap
            && !self.parsed.big_endian
            && start.is_multiple_of(16)
            && matches!(self.parsed.source, Source::Mapped(..))
    }

    /// Reads the stored, little-endian storages of `indices` that are not read yet, all in
    /// one call of `read_all`, so that small storages too are read across threads.
    fn prefetch(&mut self, indices: &[usize]) -> Result<(), Error> {
        if self.options.mmap || self.parsed.big_endian {
            return Ok(());
        }
        let mut wanted: Vec<(String, u64, usize)> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        for &i in indices {
            let key = self.parsed.arena.tensors[i].storage.key.as_str();
            if self.storages.contains_key(key) || !seen.insert(key) {
                continue;
            }
            if let StorageLoc::Range { start, len } = self.parsed.storages[key] {
                wanted.push((key.to_string(), start, len as usize));
            }
        }
        let mut buffers = Vec::with_capacity(wanted.len());
        for (key, _, len) in &wanted {
            let buffer = fresh_buffer(*len).map_err(self.torch_error(format!("storage {key}")))?;
            buffers.push(buffer);
        }
        let from = self.from();
        let reads: Vec<Read<'_>> = wanted
            .iter()
            .zip(&buffers)
            .map(|((_, start, len), dst)| Read {
                dst,
                dst_at: 0,
                offset: *start,
                len: *len,
                from,
            })
            .collect();
        read_all(&reads, self.options.read_threads()).map_err(|source| Error::Io {
            path: self.path.to_path_buf(),
            source,
        })?;
        let read: Vec<(&str, &[u8])> = wanted
            .iter()
            .zip(&buffers)
            // SAFETY: each buffer is a contiguous CPU uint8 tensor of `len` bytes that this
            // materializer allocated and filled, and that nothing writes while it is checked.
            .map(|((key, _, len), b)| (key.as_str(), unsafe { tensor_bytes(b, *len) }))
            .collect();
        (self.parsed.crcs).check_read(self.path, &read, self.options)?;
        for ((key, _, _), buffer) in wanted.into_iter().zip(buffers) {
            self.storages.insert(key, (buffer, 0));
        }
        Ok(())
    }

    fn from(&self) -> ReadFrom<'c> {
        self.parsed.source.read_from()
    }

    /// Tensor `index` of the arena: a view of its storage, placed and cast as asked, and
    /// charged to the budget.
    ///
    /// A tensor of a dtype tch cannot hold is [`Error::UnsupportedDtype`] with no key: the
    /// caller names the entry.
    pub(crate) fn tensor(&mut self, index: usize) -> Result<Tensor, Error> {
        self.charge_tensors(&[index])?;
        self.make_tensor(index)
    }

    /// [`tensor`](Self::tensor), charged already.
    fn make_tensor(&mut self, index: usize) -> Result<Tensor, Error> {
        let t = &self.parsed.arena.tensors[index];
        let kind = t.dtype.kind().ok_or_else(|| Error::UnsupportedDtype {
            path: self.path.to_path_buf(),
            key: None,
            dtype: format!("torch.{}", t.dtype.name()),
        })?;
        let (buffer, start) = self.storage(&t.storage, t.dtype)?;
        let what = format!("tensor of storage {}", t.storage.key);
        let elem = t.dtype.elt_size() as i64;
        let bytes = buffer.size()[0];
        let typed = buffer
            .f_narrow(0, 0, bytes / elem * elem)
            .and_then(|s| s.f_view_dtype(kind))
            .map_err(self.torch_error(what.clone()))?;
        // `start` (a multiple of 16 where non-zero) is where the storage begins in `buffer`.
        let base = start as i64 / elem + t.storage.view.map_or(0, |(offset, _)| offset);
        let out = typed
            .f_as_strided(t.size(), t.stride(), Some(base + t.offset))
            .map_err(self.torch_error(what.clone()))?;
        let out = self.place(out, &what)?;
        // Only floating-point and complex tensors can require gradients, as in PyTorch.
        let differentiable =
            is_floating(kind) || matches!(kind, Kind::ComplexFloat | Kind::ComplexDouble);
        if t.requires_grad && differentiable {
            if let Ok(with_grad) = out.f_set_requires_grad(true) {
                return Ok(with_grad);
            }
        }
        Ok(out)
    }

    /// A tensor cast and placed as the options ask.
    fn place(&self, mut out: Tensor, what: &str) -> Result<Tensor, Error> {
        let what = what.to_string();
        if let Some(kind) = self.options.kind {
            if out.is_floating_point() && out.kind() != kind {
                out = out
                    .f_to_kind(kind)
                    .map_err(self.torch_error(what.clone()))?;
            }
        }
        if self.options.device != Device::Cpu {
            out = out
                .f_to_device(self.options.device)
                .map_err(self.torch_error(what))?;
        }
        Ok(out)
    }

    /// The bytes of a storage, read once: a 1-D uint8 tensor and the offset at which the
    /// storage starts in it (0 for a copy, the file offset for a view of the mapped file).
    fn storage(&mut self, storage: &StorageRef, dtype: FileDtype) -> Result<(Tensor, u64), Error> {
        if let Some((t, start)) = self.storages.get(&storage.key) {
            return Ok((t.shallow_clone(), *start));
        }
        let loc = self.parsed.storages[&storage.key].clone();
        let what = format!("storage {}", storage.key);
        let elem = storage.dtype.unwrap_or(dtype).swap_unit();
        let (tensor, offset) = match loc {
            StorageLoc::Range { start, len } => match self.mapped_file(start) {
                Some(file) => (file, start),
                None if self.parsed.big_endian && elem > 1 => {
                    let mut owned = self.read_at(start, len as usize)?;
                    let read = [(storage.key.as_str(), owned.as_slice())];
                    (self.parsed.crcs).check_read(self.path, &read, self.options)?;
                    reverse_units(&mut owned, elem);
                    (from_bytes(&owned).map_err(self.torch_error(what))?, 0)
                }
                None => {
                    let tensor = self.read_storage(start, len as usize, &what)?;
                    // SAFETY: as in `prefetch`: a buffer of `len` bytes just filled here.
                    let read = [(storage.key.as_str(), unsafe {
                        tensor_bytes(&tensor, len as usize)
                    })];
                    (self.parsed.crcs).check_read(self.path, &read, self.options)?;
                    (tensor, 0)
                }
            },
            StorageLoc::Deflated {
                start,
                compressed,
                len,
            } => {
                let mut out = vec![0u8; len as usize];
                let src = self.read_at(start, compressed as usize)?;
                inflate_into(self.path, &src, &mut out)?;
                self.parsed.crcs.check(self.path, &storage.key, &out)?;
                if self.parsed.big_endian {
                    reverse_units(&mut out, elem);
                }
                (from_bytes(&out).map_err(self.torch_error(what))?, 0)
            }
        };
        self.storages
            .insert(storage.key.clone(), (tensor.shallow_clone(), offset));
        Ok((tensor, offset))
    }

    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, Error> {
        self.parsed
            .source
            .read_at(offset, len)
            .map_err(|source| Error::Io {
                path: self.path.to_path_buf(),
                source,
            })
    }

    /// A new uint8 tensor holding the file's bytes `start..start + len`: read from the file
    /// straight into the tensor, or copied from memory, one copy either way.
    fn read_storage(&self, start: u64, len: usize, what: &str) -> Result<Tensor, Error> {
        let tensor = fresh_buffer(len).map_err(self.torch_error(what.to_string()))?;
        let read = [Read {
            dst: &tensor,
            dst_at: 0,
            offset: start,
            len,
            from: self.from(),
        }];
        read_all(&read, self.options.read_threads()).map_err(|source| Error::Io {
            path: self.path.to_path_buf(),
            source,
        })?;
        Ok(tensor)
    }

    /// The whole file as a uint8 tensor over a private memory map that libtorch owns, when
    /// `mmap` was asked for and a storage at `start` can be viewed in it as it is.
    fn mapped_file(&mut self, start: u64) -> Option<Tensor> {
        // Misaligned starts would make dtype views fail; big-endian data must be swapped.
        if !self.options.mmap || self.parsed.big_endian || !start.is_multiple_of(16) {
            return None;
        }
        if self.mapped.is_none() {
            let file = match &self.parsed.source {
                Source::Mapped(map, file) => map_open_file(file, map.len() as u64),
                _ => None,
            };
            self.mapped = Some(file);
        }
        self.mapped.as_ref()?.as_ref().map(Tensor::shallow_clone)
    }
}

/// The first `len` bytes of `buffer`, to read.
///
/// # Safety
///
/// `buffer` must be a contiguous CPU tensor of at least `len` bytes that nothing writes
/// while the slice lives.
unsafe fn tensor_bytes(buffer: &Tensor, len: usize) -> &[u8] {
    if len == 0 {
        return &[];
    }
    // SAFETY: the caller gives a live, contiguous CPU tensor of `len` bytes that nothing
    // writes.
    unsafe { bytes(buffer.data_ptr() as *const u8, len) }
}

/// A dict key as a segment of a path to a value: a `str` as it is, anything else as
/// Python's repr.
fn segment(key: &Value) -> String {
    match key {
        Value::Str(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A 1-D uint8 tensor holding a copy of `bytes`.
fn from_bytes(bytes: &[u8]) -> Result<Tensor, tch::TchError> {
    Tensor::f_from_data_size(bytes, &[bytes.len() as i64], Kind::Uint8)
}

/// A state dict of a parsed file, its tensors not read: keys in order with each tensor's
/// index in the arena, and the `_metadata`. Keys are borrowed from the pickle, or built
/// (a module's keys join its path).
pub(crate) struct SdEntries<'c> {
    pub entries: Vec<(Cow<'c, str>, usize)>,
    pub metadata: Option<Metadata>,
    /// Whether it is a module's `state_dict()`, whose tensors PyTorch detaches: read without
    /// `requires_grad`, as `model.state_dict()` and `torch.jit.load(p).state_dict()` give
    /// them.
    pub from_module: bool,
}
