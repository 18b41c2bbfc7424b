//! torch.distributed.checkpoint (DCP) directories: `.metadata` and the `.distcp` files it
//! names, as FSDP2, DTensor and torchtitan write them.
//!
//! # Design note
//!
//! `.metadata` is a pickle of DCP's dataclasses. It runs in the same restricted machine as
//! every pickle (DCP's classes are opaque objects, never imported), and the objects are then
//! read field by field: `state_dict_metadata` (each key's global shape, dtype and chunks, or a
//! byte item), `storage_data` (where each chunk or item lies: a file, an offset, a length,
//! transforms) and `planner_data` (each key's path in the nested dict). A field that is not
//! what DCP writes is [`Error::InvalidDistributed`] naming it; PyTorch promises no
//! compatibility for this format, so the reader checks what it uses and ignores the rest.
//!
//! Every item in a `.distcp` file is a whole `torch.save` zip (a chunk tensor, or a byte
//! item's value). Each is parsed as its own checkpoint at open, from a window of the file's
//! map, and its storage ranges are then moved to the file's offsets: a chunk becomes an
//! ordinary [`OpenFile`] of the `.distcp` file, sharing its map and descriptor, so that the
//! load reads it with the same routes as any file tensor (`pread` straight into the box of
//! the model's tensor it fills, or converting reads). Nothing of a tensor is read at open. A
//! zstd item (`stream.zstd/1`) is inflated at open into memory, within the memory budget,
//! since its bytes cannot be read in place.
//!
//! Before any chunk is read, each tensor's chunks are checked to lie inside its shape, to
//! not overlap and to cover it exactly ([`Error::ChunkLayout`]), and each chunk's own
//! dtype and shape to be the metadata's.
//!
//! # Speed, and what bounds it
//!
//! A 2-rank `Shard(0)` resnet50 opens, loads and drops in about 1.3× to 2.6× the time of the
//! same state dict as one `.pth`, the 1 GiB checkpoint in 1.2× to 1.3× (`benches/README.md`,
//! its DCP sections). Two costs are the format's own:
//!
//! * **The chunks' bytes are not 64-byte aligned.** torch.save aligns a storage within its
//!   zip, but DCP writes each item's zip wherever the last one ended, so a chunk's bytes lie
//!   at any offset mod 64, while the model's tensors are 64-byte aligned. The kernel's copy
//!   out of the page cache runs 1.1× to 1.3× slower from a misaligned source (the bench's
//!   alignment table), so the load phase alone takes 1.2× to 1.9× the `.pth`'s whole load.
//!   Copying out of a map of the file skips that copy, and was faster on one machine and
//!   slower on another (40 MiB at +13 bytes: 2.9–3.1 ms against 3.8–4.1 ms by `pread`;
//!   5.7–7.4 against 4.5–5.8 ms), but a map turns a file truncated during the load into SIGBUS and
//!   counts its pages in the RSS bound (`load/direct.rs`), so chunks are read by `pread`.
//! * **Every chunk is a `torch.save` zip of its own** (640 for resnet50, 4096 for the
//!   bench's 1 GiB checkpoint), each parsed at open, across the read threads, after the
//!   `.metadata` pickle (120 KB and 884 KB), which the `.pth` does not have.
//!
//! `.metadata` is read in place ([`Meta`]): each field DCP's reader uses is found in the
//! pickle machine's objects, and no [`Value`] of the whole pickle is made. Measured on the
//! 1 GiB checkpoint (2 threads, `perf record --call-graph dwarf` of 10 opens, CPU time an
//! open): as a value, `.metadata` took 23 ms to make and 17 ms to drop, on one thread,
//! before the items; the open took 108 ms. Read in place, the open takes 43–45 ms
//! (`examples`-style loop of 20 opens, medians), and table 5 of `benches/README.md` went from
//! 1.75× to 1.51× the `.pth` on the same machine. What remained, CPU time an open: the items'
//! zip directories 26 ms (the zip crate's search for the end record and its directory, 6 µs
//! an item), the rest of the items' parse 30 ms (their one-tensor pickles 13 ms, record
//! names 5 ms), all of it across the 2 threads; then on one thread the `.metadata` pickle
//! 11 ms and the entries 15 ms; dropping the state dict, 9 ms. Reading the directories by
//! `pread` through the zip crate, as a whole file's are read, was slower (59–73 ms an open
//! against 50–51 ms, the same loop, interleaved): its small reads and seeks cost a system
//! call each.
//!
//! The crate now reads zip directories itself ([`super::zip_dir`], for every torch.save
//! zip): 22 bytes for the end record, then the zip64 records and the directory, instead of
//! the zip crate's copy of each item's last 64 KiB and its owned, parsed record of every
//! entry. The same loop of 20 opens, the two builds interleaved three times on a quiet
//! machine: 47.6, 51.8 and 52.2 ms an open before, 41.2, 44.9 and 45.1 ms after. In a
//! profile after it, the directories' CPU time was mostly the two page faults each item
//! cost (its first and last pages in the map, each mapping the pages around it, which
//! dropping the map then unmapped: half the drop's time); advising the map as random made no
//! difference beyond the noise (38.6–46.2 ms). So each item's first and last KiB are now
//! read by `pread` ([`HELD`]), and its zip is parsed from them, reading the file only for
//! what lies between; the map is read only for a zstd item. Touching and dropping those
//! pages of the bench's two files took 15.1–15.3 ms on one thread, two 4 KiB `pread`s an
//! item 8.1–8.2 ms (a scratch loop, three runs). In the loop of opens, four interleaved runs
//! of 30: the drop went from 9.7–11.5 ms to 4.5–7.4 ms, the open stayed within the noise
//! (44.9–50.8 against 37.9–56.5 ms). What is left on one thread is the
//! `.metadata` pickle (12 ms of CPU) and the entries (about 15 ms, hashing and walking
//! `storage_data`), and across the threads the items' one-tensor pickles, whose time is
//! mostly `malloc` and `free` of a pickle machine per item. Counted by callgrind (3 opens
//! less 1, halved), an open and drop is 361.6M instructions, 39% of them in the allocator;
//! finding duplicate names without a hash set and reserving the small pickles' vectors
//! took it from 383.0M. Then a field of `.metadata` found without listing the object's
//! attributes (two vectors a lookup, ten lookups a chunk) made it 339.2M, and the walk
//! without copying each chunk's offsets or its file's path 332.9M, on the thread that runs
//! alone. Before the crate read zip directories itself, it was 419.1M.
//!
//! Timed by phase (an `Instant` at each, the loop of 30 opens, medians): the `.metadata`
//! pickle took 7.5 ms, its places 1.7 ms, the walk of its entries 3.3 ms, the items 20.8 ms
//! across the two threads (10 µs an item on each, 37 allocations an item), the tensors'
//! checks 1.6 ms. `perf` put glibc's `malloc` and `free` at 30% of the samples, and
//! `malloc_consolidate` at 4.5%: each item asked for a 2 KiB buffer and 1.4 KiB of pickle
//! objects, requests glibc serves from its large bins after consolidating the thread's
//! free small chunks. What was cut, each counted by callgrind as above: the pickle machine
//! borrows its strings' and lines' bytes instead of copying them (330.9M to 315.7M), the
//! held ends are on the stack and the small pickles' room under 1 KiB (to 298.7M), the
//! records' names are formatted only for an error (to 286.4M), what is already in memory is
//! read in place (an item's directory from its held tail, its pickle borrowed; to 256.2M),
//! the pickle machine's marks and call arguments go through one reused vector (to 251.3M),
//! and a place's path and a job's key borrow `.metadata`'s strings (245.4M; 246.3M once the
//! reused vector is kept only while small, 256 items, as memory the budget does not see
//! should be). Allocations an
//! open: 172,368 on the thread that walks `.metadata` and 176,128 on the items' threads,
//! then 127,283 and 106,496. Table 5 of `benches/README.md` run alone
//! (`--dcp-phases`): the open took 37.6–40.9 ms at 20df6a0 (three runs), 35.1–45.2 ms
//! midway (3074447, four runs) and 25.5–26.4 ms after the last cut (8de7d7d, four runs);
//! the whole load 1.36–1.42×, 1.34–1.40× and 1.20–1.25× the `.pth`.
//!
//! A value is made of part of `.metadata` only to describe it in an error. A field the
//! reader does not use is never looked at, as for `dcp.load`: 10,000 lists nested in
//! `storage_meta` read (they were [`PickleError::TooDeep`](crate::PickleError) when the
//! whole pickle became a value). What the open keeps (places, entries, chunks) is charged to
//! the budget as it is made, so that a million keys at one item are still refused within
//! the budget of the file's size (`tests/hostile_distributed.rs`).

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::budget::{heap, heap_of, Budget, FIXED_COST};
use super::crc::Crcs;
use super::detect::{detect, Format};
use super::index::{out_of_budget, OpenFile, Parsed, StorageLoc};
use super::pickle::{self, ClassRef, Flavor, Id, Obj};
use super::source::{map_file, open_regular, read_exact_at, Source};
use super::threads::on_threads;
use super::zip_dir::{Bytes, Held};
use super::{pickle_error, torch_zip, Materializer, ReadOptions};
use crate::dtype::{self, FileDtype};
use crate::error::Error;
use tch::{Kind, Tensor};

use indexmap::IndexMap;

use super::materialize::TENSOR_COST;
use crate::value::{Dict, Value};

/// DCP's module of dataclasses.
const METADATA_MODULE: &str = "torch.distributed.checkpoint.metadata";
/// The one transform this reader applies.
const ZSTD: &str = "stream.zstd";
/// How much of each end of an item is read at once when it is parsed: a one-tensor item's
/// directory (about 600 bytes) and its local headers and pickle (about 700) fit.
const HELD: usize = 1024;

/// A DCP directory, opened: its entries in `state_dict_metadata` order.
pub(crate) struct Dcp {
    /// The `.metadata` file.
    pub path: PathBuf,
    pub entries: Vec<DcpEntry>,
    /// The checkpoint's one memory budget, for all its files together: charged with what
    /// its items keep once parsed (and inflated), then with what values read.
    budget: Mutex<Budget>,
}

/// One flattened key of a DCP checkpoint.
pub(crate) struct DcpEntry {
    /// The flattened key (`model.layer1.0.conv1.weight`).
    pub key: String,
    /// Its path in the nested dict (`('model', 'layer1.0.conv1.weight')`).
    pub path: Vec<PathElem>,
    pub item: DcpItem,
}

/// An element of a key's path: a dict key or a list index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathElem {
    Key(String),
    Index(usize),
}

/// What a key holds.
pub(crate) enum DcpItem {
    Tensor(Arc<ChunkedTensor>),
    /// A byte item: a `torch.save` of the value, opened.
    Bytes(Arc<OpenFile<'static>>),
}

/// A tensor stored as chunks: boxes of the global tensor, each a tensor of its own file.
pub(crate) struct ChunkedTensor {
    /// The `.metadata` file, for errors.
    pub path: PathBuf,
    /// The options the checkpoint was opened with.
    pub options: ReadOptions,
    pub shape: Vec<i64>,
    pub dtype: FileDtype,
    pub chunks: Vec<Chunk>,
}

/// One box of a [`ChunkedTensor`]: at `offsets`, of `sizes`, holding tensor `index` of `file`.
pub(crate) struct Chunk {
    pub offsets: Vec<i64>,
    pub sizes: Vec<i64>,
    pub file: Arc<OpenFile<'static>>,
    pub index: usize,
}

impl ChunkedTensor {
    /// [`Error::UnsupportedDtype`] naming `key` for a dtype this crate cannot hold.
    pub(crate) fn check_readable(&self, key: Option<&str>) -> Result<Kind, Error> {
        self.dtype.kind().ok_or_else(|| Error::UnsupportedDtype {
            path: self.path.clone(),
            key: key.map(str::to_string),
            dtype: format!("torch.{}", self.dtype.name()),
        })
    }

    /// The dtype a read gives: the saved one, or the cast the options ask for.
    pub(crate) fn read_kind(&self) -> Option<Kind> {
        let saved = self.dtype.kind()?;
        Some(match self.options.kind {
            Some(kind) if crate::dtype::is_floating(saved) => kind,
            _ => saved,
        })
    }

    /// The whole tensor, assembled from its chunks (placed and cast as the options ask),
    /// as `dcp_to_torch_save` gives it: one chunk read at a time into its box.
    pub(crate) fn read(&self, key: Option<&str>) -> Result<Tensor, Error> {
        self.check_readable(key)?;
        let kind = self.read_kind().expect("readable");
        let torch_error = |source| Error::Torch {
            context: format!("{}: {}", self.path.display(), key.unwrap_or("a DCP tensor")),
            source,
        };
        let out = Tensor::f_empty(self.shape.as_slice(), (kind, self.options.device))
            .map_err(torch_error)?;
        let _no_grad = tch::no_grad_guard();
        for c in &self.chunks {
            if c.sizes.contains(&0) {
                continue;
            }
            let src = Materializer::new(&c.file).tensor(c.index)?;
            let mut dst = out.shallow_clone();
            for (d, (&o, &s)) in c.offsets.iter().zip(&c.sizes).enumerate() {
                dst = dst.f_narrow(d as i64, o, s).map_err(torch_error)?;
            }
            dst.f_copy_(&src).map_err(torch_error)?;
        }
        Ok(out)
    }
}

impl Dcp {
    /// The tensors under `at` (all of them when `None`), in order, with the key under it:
    /// the flattened key, or the rest of the path under `at`, joined with dots (for a
    /// model, its state dict's keys).
    pub(crate) fn tensors_under(&self, at: Option<&str>) -> Vec<(String, Arc<ChunkedTensor>)> {
        self.entries
            .iter()
            .filter_map(|e| {
                let DcpItem::Tensor(t) = &e.item else {
                    return None;
                };
                let key = match at {
                    None => e.key.clone(),
                    Some(at) => match e.path.split_first() {
                        Some((PathElem::Key(first), rest)) if first == at && !rest.is_empty() => {
                            join(rest)
                        }
                        _ => return None,
                    },
                };
                Some((key, Arc::clone(t)))
            })
            .collect()
    }

    /// The top-level keys of the nested dict, in order.
    pub(crate) fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        for e in &self.entries {
            if let Some(PathElem::Key(k)) = e.path.first() {
                if !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
        }
        keys
    }

    /// The number of tensors.
    pub(crate) fn num_tensors(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e.item, DcpItem::Tensor(_)))
            .count()
    }

    /// The nested value `dcp_to_torch_save` writes: each key set at its `planner_data` path
    /// (dicts for str elements, lists padded with `None` for int ones), tensors whole, byte
    /// items as their values. With `unreadable`, a tensor of a dtype this crate cannot hold
    /// is [`Value::Unreadable`] instead of an error. Every value is charged to the
    /// checkpoint's one budget, before it is made.
    ///
    /// With `at`, only the keys under that top-level key are read, and the value there is
    /// returned: `dcp_to_torch_save`'s value `[at]` ([`Error::KeyNotFound`] when no key is
    /// under it).
    pub(crate) fn value(&self, unreadable: bool, at: Option<&str>) -> Result<Value, Error> {
        let mut budget = self
            .budget
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut root = Node::Dict(IndexMap::new());
        // A list index past every key's count is no list DCP wrote.
        let max_index = self.entries.len() + 1024;
        let under = |e: &&DcpEntry| match (at, e.path.first()) {
            (None, _) => true,
            (Some(at), Some(PathElem::Key(k))) => k == at,
            (Some(_), _) => false,
        };
        for e in self.entries.iter().filter(under) {
            let v = match &e.item {
                DcpItem::Tensor(t) if unreadable && t.dtype.kind().is_none() => Value::Unreadable {
                    dtype: t.dtype.name().to_string(),
                    shape: t.shape.clone(),
                },
                DcpItem::Tensor(t) => {
                    let numel = t
                        .shape
                        .iter()
                        .fold(1u64, |n, &d| n.saturating_mul(d as u64));
                    let bytes = numel.saturating_mul(t.dtype.elt_size() as u64);
                    budget
                        .charge(TENSOR_COST.saturating_add(bytes))
                        .map_err(out_of_budget(&self.path))?;
                    Value::Tensor(t.read(Some(&e.key))?)
                }
                DcpItem::Bytes(file) => {
                    let m = Materializer::new(file).with_budget(budget.clone());
                    let mut m = if unreadable { m.with_unreadable() } else { m };
                    let v = m
                        .value(file.parsed.arena.root)
                        .map_err(|err| err.under(|| e.key.clone()))?;
                    budget = m.budget().clone();
                    v
                }
            };
            // A key of the nested dicts: its slot, its string, an index entry.
            budget
                .charge(128 * e.path.len() as u64)
                .map_err(out_of_budget(&self.path))?;
            root.set(&e.path, v, max_index)
                .map_err(|reason| Error::InvalidDistributed {
                    path: self.path.clone(),
                    field: "planner_data".to_string(),
                    reason: format!("{}: {reason}", e.key),
                })?;
        }
        let Some(at) = at else {
            return Ok(root.into_value());
        };
        match root {
            Node::Dict(mut top) => top.swap_remove(at).map(Node::into_value),
            _ => None,
        }
        .ok_or_else(|| Error::KeyNotFound {
            path: self.path.clone(),
            key: at.to_string(),
            available: self.keys(),
        })
    }
}

/// The nested value being built: dicts by key (in a map, so that a million keys cost a
/// million lookups, not their square), lists by index, and values.
enum Node {
    Dict(IndexMap<String, Node>),
    List(Vec<Node>),
    Leaf(Value),
    /// A list's padding, `None` unless a key sets it.
    Empty,
}

impl Node {
    /// DCP's `set_element`: `value` at `path`, making dicts and lists on the way.
    fn set(&mut self, path: &[PathElem], value: Value, max_index: usize) -> Result<(), String> {
        let clash = || format!("its path {path:?} clashes with another key's");
        let Some((first, rest)) = path.split_first() else {
            return Err("an empty path".to_string());
        };
        let slot = match (first, self) {
            (PathElem::Key(k), Node::Dict(d)) => d.entry(k.clone()).or_insert(Node::Empty),
            (PathElem::Index(n), Node::List(items)) => {
                if *n > max_index {
                    return Err(format!("the list index {n} of its path"));
                }
                while items.len() <= *n {
                    items.push(Node::Empty);
                }
                &mut items[*n]
            }
            _ => return Err(clash()),
        };
        if rest.is_empty() {
            if !matches!(slot, Node::Empty) {
                return Err(clash());
            }
            *slot = Node::Leaf(value);
            return Ok(());
        }
        if matches!(slot, Node::Empty) {
            *slot = match rest[0] {
                PathElem::Index(_) => Node::List(Vec::new()),
                PathElem::Key(_) => Node::Dict(IndexMap::new()),
            };
        }
        slot.set(rest, value, max_index)
    }

    fn into_value(self) -> Value {
        match self {
            Node::Dict(d) => Value::Dict(Dict {
                items: d
                    .into_iter()
                    .map(|(k, v)| (Value::Str(k), v.into_value()))
                    .collect(),
                ordered: false,
                metadata: None,
            }),
            Node::List(items) => Value::List(items.into_iter().map(Node::into_value).collect()),
            Node::Leaf(v) => v,
            Node::Empty => Value::None,
        }
    }
}

/// A path's elements joined with dots, as DCP flattens keys.
fn join(path: &[PathElem]) -> String {
    path.iter()
        .map(|p| match p {
            PathElem::Key(k) => k.clone(),
            PathElem::Index(i) => i.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The `.metadata` of `path`: the file itself, or the one inside the directory `path`.
pub(crate) fn metadata_path(path: &Path) -> Option<PathBuf> {
    if path.file_name() == Some(".metadata".as_ref()) {
        return Some(path.to_path_buf());
    }
    let inside = path.join(".metadata");
    (path.is_dir() && inside.is_file()).then_some(inside)
}

/// Opens the DCP checkpoint whose `.metadata` is `path`.
pub(crate) fn open(path: &Path, options: &ReadOptions) -> Result<Dcp, Error> {
    let dir = match path.parent() {
        Some(d) if d.as_os_str().is_empty() => PathBuf::from("."),
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    };
    let metadata_file = read_metadata(path, options)?;
    let metadata = Meta::root(&metadata_file);
    let invalid = |field: &str, reason: String| Error::InvalidDistributed {
        path: path.to_path_buf(),
        field: field.to_string(),
        reason,
    };
    let root = metadata.class("Metadata").ok_or_else(|| {
        invalid(
            "Metadata",
            format!("the pickle holds {}, not a Metadata", metadata.describe()),
        )
    })?;
    let sdm_meta = root.attr("state_dict_metadata");
    let sdm = sdm_meta
        .and_then(Meta::dict)
        .ok_or_else(|| invalid("state_dict_metadata", "missing or not a dict".into()))?;
    let storage_data = root
        .attr("storage_data")
        .and_then(Meta::dict)
        .ok_or_else(|| invalid("storage_data", "missing or not a dict".into()))?;
    let planner = root.field("planner_data");
    let planner_data = planner
        .map(|p| {
            p.dict()
                .ok_or_else(|| invalid("planner_data", format!("a {}, not a dict", p.type_name())))
        })
        .transpose()?;
    // A pickle may set a key twice, which Python's dict keeps once: refused, as when the
    // whole of `.metadata` was made a value, rather than read as two entries of one key.
    for d in sdm_meta.into_iter().chain(planner) {
        if let Some(key) = d.duplicate_key() {
            return Err(Error::Pickle {
                path: path.to_path_buf(),
                entry: ".metadata".to_string(),
                offset: None,
                kind: crate::error::PickleError::DuplicateKey(key),
            });
        }
    }

    // What the open keeps, charged as it is made: read in place, `.metadata` expands only
    // into what is kept (places, entries, chunks), and a million keys at one item must stay
    // within the budget of the file's size as they did when the whole pickle was made a value.
    let mut kept = Kept {
        budget: metadata_file.parsed.budget.clone(),
        bytes: 0,
        path,
    };
    // Where each chunk and item is: (fqn, offsets or None for a byte item) -> storage.
    let mut places: Places<'_> = HashMap::with_capacity(storage_data.len());
    for (k, v) in storage_data {
        let index = k
            .class("MetadataIndex")
            .ok_or_else(|| invalid("storage_data", format!("a key {}", k.describe())))?;
        let fqn = index
            .attr("fqn")
            .and_then(Meta::as_str)
            .ok_or_else(|| invalid("MetadataIndex.fqn", "missing or not a str".into()))?;
        let offset = match index.field("offset") {
            None => None,
            Some(o) => Some(o.ints().ok_or_else(|| {
                invalid("MetadataIndex.offset", format!("{fqn}: not a torch.Size"))
            })?),
        };
        let info = v
            .class_named("torch.distributed.checkpoint.filesystem._StorageInfo")
            .ok_or_else(|| invalid("storage_data", format!("{fqn}: a value {}", v.describe())))?;
        let place = Place::of(info).map_err(|(field, reason)| {
            invalid(&format!("_StorageInfo.{field}"), format!("{fqn}: {reason}"))
        })?;
        kept.charge(place_cost(&offset, &place))?;
        places.insert((fqn, offset), place);
    }

    if let Some(p) = &planner_data {
        // Each path's slot in the map below (a hash map's worst, half full).
        let slot = std::mem::size_of::<(&str, Meta<'_>)>() + 1;
        kept.charge((p.len() as u64).saturating_mul(2 * slot as u64))?;
    }
    let paths: HashMap<&str, Meta<'_>> = planner_data
        .map(|p| p.filter_map(|(k, v)| Some((k.as_str()?, v))).collect())
        .unwrap_or_default();
    let mut files = Files::new(&dir, path, options);
    // First every entry with the items it needs (opened files, checked ranges), then the
    // items parsed, across threads, then the tensors checked against them.
    let mut pending = Vec::with_capacity(sdm.len());
    for (k, v) in sdm {
        let key_in = k
            .as_str()
            .ok_or_else(|| invalid("state_dict_metadata", format!("a key {}", k.describe())))?;
        let key = key_in.to_string();
        let elem_path = match paths.get(key.as_str()).copied() {
            None => vec![PathElem::Key(key.clone())],
            Some(p) if p.is_none() => vec![PathElem::Key(key.clone())],
            Some(p) => p.key_path().ok_or_else(|| {
                invalid(
                    "planner_data",
                    format!("{key}: {} is not a path", p.describe()),
                )
            })?,
        };
        let item = if v.class("BytesStorageMetadata").is_some() {
            let place = places.get(&(key.as_str(), None)).ok_or_else(|| {
                invalid(
                    "storage_data",
                    format!("{key}: no storage for the byte item"),
                )
            })?;
            Pending::Bytes(files.job(place, key_in)?)
        } else if let Some(o) = v.class("TensorStorageMetadata") {
            Pending::Tensor(tensor(o, key_in, &places, &mut files, &invalid)?)
        } else {
            return Err(invalid(
                "state_dict_metadata",
                format!("{key}: {}", v.describe()),
            ));
        };
        kept.charge(entry_cost(&key, &elem_path, &item))?;
        pending.push((key, elem_path, item));
    }
    let metadata_len = std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
    files.start_budget(metadata_len);
    files.charge(path, kept.bytes)?;
    let items = files.parse_all()?;
    let mut entries = Vec::with_capacity(pending.len());
    for (key, elem_path, item) in pending {
        let item = match item {
            Pending::Bytes(job) => DcpItem::Bytes(Arc::clone(&items[job])),
            Pending::Tensor(t) => {
                DcpItem::Tensor(Arc::new(t.finish(&key, &items, &files, &invalid)?))
            }
        };
        entries.push(DcpEntry {
            key,
            path: elem_path,
            item,
        });
    }
    let budget = files.budget.take().expect("started");
    Ok(Dcp {
        path: path.to_path_buf(),
        entries,
        budget,
    })
}

/// An entry before its items are parsed: a byte item's job, or a tensor's.
enum Pending {
    Bytes(usize),
    Tensor(PendingTensor),
}

/// A tensor whose chunks are jobs: `(offsets, sizes, job)`.
struct PendingTensor {
    shape: Vec<i64>,
    dtype: FileDtype,
    chunks: Vec<(Vec<i64>, Vec<i64>, usize)>,
}

impl PendingTensor {
    /// The tensor, each chunk's item checked against the metadata (a tensor of the chunk's
    /// dtype and size), and the chunks checked to tile it.
    fn finish(
        self,
        key: &str,
        items: &[Arc<OpenFile<'static>>],
        files: &Files<'_>,
        invalid: &dyn Fn(&str, String) -> Error,
    ) -> Result<ChunkedTensor, Error> {
        let dtype = self.dtype;
        let mut chunks = Vec::with_capacity(self.chunks.len());
        for (offsets, sizes, job) in self.chunks {
            let file = Arc::clone(&items[job]);
            let arena = &file.parsed.arena;
            let Obj::Tensor(index) = *arena.get(arena.root) else {
                return Err(invalid(
                    "_StorageInfo",
                    format!("{key}: the chunk at {offsets:?} holds no tensor"),
                ));
            };
            let t = &arena.tensors[index];
            if t.dtype != dtype || t.size() != sizes.as_slice() {
                return Err(invalid(
                    "ChunkStorageMetadata",
                    format!(
                        "{key}: the chunk at {offsets:?} is metadata's {} {sizes:?} but holds {} {:?}",
                        dtype.name(),
                        t.dtype.name(),
                        t.size()
                    ),
                ));
            }
            chunks.push(Chunk {
                offsets,
                sizes,
                file,
                index,
            });
        }
        let boxes: Vec<ChunkBox<'_>> = chunks
            .iter()
            .map(|c| ChunkBox {
                offsets: &c.offsets,
                sizes: &c.sizes,
            })
            .collect();
        check_tiling(&self.shape, &boxes).map_err(|reason| Error::ChunkLayout {
            path: files.metadata.to_path_buf(),
            key: key.to_string(),
            reason,
        })?;
        Ok(ChunkedTensor {
            path: files.metadata.to_path_buf(),
            options: files.options.clone(),
            shape: self.shape,
            dtype,
            chunks,
        })
    }
}

/// `.metadata` run through the pickle machine (DCP's classes as opaque objects), within the
/// file's memory budget: its objects, to be read in place ([`Meta`]).
fn read_metadata(path: &Path, options: &ReadOptions) -> Result<OpenFile<'static>, Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = open_regular(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len == 0 {
        return Err(Error::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    // SAFETY: see `map_file`: the map is only read while the pickle runs.
    let map = unsafe { map_file(&file) }.map_err(io)?;
    let mut budget = Budget::for_file(&options.limits, len);
    // DCP's own classes are data here, whatever `weights_only` says: each field is checked.
    let plain = options.clone().weights_only(false);
    let (arena, used) = pickle::run(&map, Flavor::Plain, &plain, &mut budget)
        .map_err(|f| pickle_error(path, ".metadata", f))?;
    budget.charge(used as u64).map_err(out_of_budget(path))?;
    let parsed = Parsed {
        source: Source::Owned(Vec::new()),
        format: Format::Distributed,
        arena,
        storages: HashMap::new(),
        crcs: Crcs::default(),
        big_endian: false,
        entry: ".metadata".to_string(),
        safetensors_metadata: None,
        script_classes: None,
        budget,
    };
    Ok(OpenFile::new(path.to_path_buf(), plain, parsed))
}

/// Where each chunk and item is: `(fqn, offsets)` (none for a byte item) to its storage.
type Places<'m> = HashMap<(&'m str, Option<Vec<i64>>), Place<'m>>;

/// What the open keeps, charged to `.metadata`'s budget as it is made, and the bytes
/// charged, for the checkpoint's budget once it starts.
struct Kept<'p> {
    budget: Budget,
    bytes: u64,
    path: &'p Path,
}

impl Kept<'_> {
    fn charge(&mut self, bytes: u64) -> Result<(), Error> {
        self.budget
            .charge(bytes)
            .map_err(out_of_budget(self.path))?;
        self.bytes += bytes;
        Ok(())
    }
}

/// What a place costs while the open runs: its slot in the map (a hash map's worst, half
/// full), its offsets and its path.
fn place_cost(offsets: &Option<Vec<i64>>, place: &Place<'_>) -> u64 {
    let slot = std::mem::size_of::<((&str, Option<Vec<i64>>), Place<'_>)>() + 1;
    2 * slot as u64
        + offsets.as_ref().map_or(0, |o| heap_of(o.len(), 8))
        + heap(place.relative_path.len())
}

/// What an entry keeps: itself while pending and once made, its key (twice: the entry's
/// and its path's), its path, and a tensor's chunks, each with its offsets and sizes, once
/// in the pending tensor and once in the tensor it becomes.
fn entry_cost(key: &str, path: &[PathElem], item: &Pending) -> u64 {
    let mut cost = (std::mem::size_of::<DcpEntry>()
        + std::mem::size_of::<(String, Vec<PathElem>, Pending)>()) as u64
        + 2 * heap(key.len())
        + heap_of(path.len(), std::mem::size_of::<PathElem>());
    if let Pending::Tensor(t) = item {
        cost += heap(std::mem::size_of::<ChunkedTensor>() + 16) + 2 * heap_of(t.shape.len(), 8);
        for (offsets, sizes, _) in &t.chunks {
            let each = heap_of(offsets.len(), 8) + heap_of(sizes.len(), 8);
            cost += (std::mem::size_of::<Chunk>()
                + std::mem::size_of::<(Vec<i64>, Vec<i64>, usize)>()) as u64
                + 2 * each;
        }
    }
    cost
}

/// An object of the `.metadata` pickle, read in place in the machine's arena.
///
/// `.metadata` holds an object per chunk and per item (a `MetadataIndex`, a `_StorageInfo`,
/// a `ChunkStorageMetadata`), each with its class's name and its fields. Each field is found
/// in the arena, and nothing is made but the numbers and names kept (why, measured: the
/// module's design note). Only what the reader uses is looked at: a field it ignores may
/// hold anything, as for `dcp.load`. A value is made only to describe one in an error.
#[derive(Clone, Copy)]
struct Meta<'m> {
    file: &'m OpenFile<'static>,
    id: Id,
}

impl<'m> Meta<'m> {
    fn root(file: &'m OpenFile<'static>) -> Self {
        Meta {
            file,
            id: file.parsed.arena.root,
        }
    }

    fn at(self, id: Id) -> Self {
        Meta { id, ..self }
    }

    fn obj(self) -> &'m Obj {
        self.file.parsed.arena.get(self.id)
    }

    fn is_none(self) -> bool {
        matches!(self.obj(), Obj::None)
    }

    fn as_str(self) -> Option<&'m str> {
        match self.obj() {
            Obj::Str(s) => Some(s),
            _ => None,
        }
    }

    fn as_int(self) -> Option<i64> {
        match self.obj() {
            Obj::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The items of a list or a tuple (a `torch.Size` is one).
    fn items(self) -> Option<impl Iterator<Item = Meta<'m>>> {
        let ids = self.file.parsed.arena.sequence(self.id)?;
        Some(ids.iter().map(move |&id| self.at(id)))
    }

    /// The items of a dict.
    fn dict(self) -> Option<impl ExactSizeIterator<Item = (Meta<'m>, Meta<'m>)>> {
        match self.obj() {
            Obj::Dict(d) => Some(d.items.iter().map(move |&(k, v)| (self.at(k), self.at(v)))),
            _ => None,
        }
    }

    /// The class of an object.
    fn class_ref(self) -> Option<&'m ClassRef> {
        match self.obj() {
            Obj::Object(o) => self.file.parsed.arena.class_of(o),
            _ => None,
        }
    }

    /// This, if it is an instance of the class `qualified` names (`module.name`; the split
    /// may fall at any dot, as a pickle's global may name an attribute path).
    fn class_named(self, qualified: &str) -> Option<Self> {
        let class = self.class_ref()?;
        let (module, name) = (class.module.as_str(), class.name.as_str());
        let named = qualified.len() == module.len() + 1 + name.len()
            && qualified.starts_with(module)
            && qualified[module.len()..].starts_with('.')
            && qualified.ends_with(name);
        named.then_some(self)
    }

    /// This, if it is an instance of DCP's class `name`.
    fn class(self, name: &str) -> Option<Self> {
        let class = self.class_ref()?;
        (class.module == METADATA_MODULE && class.name == name).then_some(self)
    }

    /// The field `name` of an object: an entry of its state, as `getattr` finds it (the
    /// last, where the state sets it twice, as `BUILD` would).
    fn attr(self, name: &str) -> Option<Self> {
        let Obj::Object(o) = self.obj() else {
            return None;
        };
        let id = self.file.parsed.arena.last_attribute(o, name)?;
        Some(self.at(id))
    }

    /// The field `name`, unless it is missing or `None`.
    fn field(self, name: &str) -> Option<Self> {
        self.attr(name).filter(|v| !v.is_none())
    }

    /// A str or int key that a dict holds twice, if any.
    fn duplicate_key(self) -> Option<String> {
        let Obj::Dict(d) = self.obj() else {
            return None;
        };
        let arena = &self.file.parsed.arena;
        let mut strs = std::collections::HashSet::new();
        let mut ints = std::collections::HashSet::new();
        d.items.iter().find_map(|&(k, _)| match arena.get(k) {
            Obj::Str(s) => (!strs.insert(s.as_str())).then(|| s.clone()),
            Obj::Int(i) => (!ints.insert(*i)).then(|| i.to_string()),
            _ => None,
        })
    }

    /// An object's state, as `BUILD` gave it.
    fn state(self) -> Option<Self> {
        match self.obj() {
            Obj::Object(o) => o.state.map(|id| self.at(id)),
            _ => None,
        }
    }

    /// A `torch.Size` (or tuple, or list) of ints.
    fn ints(self) -> Option<Vec<i64>> {
        self.items()?.map(Meta::as_int).collect()
    }

    /// A `planner_data` path: a tuple of str and non-negative int elements.
    fn key_path(self) -> Option<Vec<PathElem>> {
        let path: Vec<PathElem> = self
            .items()?
            .map(|e| match e.obj() {
                Obj::Str(s) => Some(PathElem::Key(s.clone())),
                Obj::Int(i) => usize::try_from(*i).ok().map(PathElem::Index),
                _ => None,
            })
            .collect::<Option<_>>()?;
        (!path.is_empty()).then_some(path)
    }

    /// A `torch.dtype`: libtorch's, or another that torch names (`torch.uint16`).
    fn dtype(self) -> Option<Result<FileDtype, String>> {
        let by_name = |module: &str, name: &str| {
            (module == "torch")
                .then(|| dtype::file_dtype_by_name(name).ok_or_else(|| format!("torch.{name}")))
        };
        match self.obj() {
            Obj::Dtype(d) => Some(Ok(*d)),
            Obj::Global(g) => {
                let (module, name) = g.module_and_name();
                by_name(module, name)
            }
            Obj::Class(c) => by_name(&c.module, &c.name),
            _ => None,
        }
    }

    /// Python's name of its type, for errors.
    fn type_name(self) -> &'static str {
        self.value().map_or("object", |v| v.type_name())
    }

    /// A short description, for errors.
    fn describe(self) -> String {
        match self.value() {
            Some(Value::Object(o)) => format!("an object of class {}", o.qualified_name()),
            Some(other) => format!("a {}", other.type_name()),
            None => "a value past the reader's limits".to_string(),
        }
    }

    /// This made into a value (within the file's limits): for errors only.
    fn value(self) -> Option<Value> {
        Materializer::new(self.file).value(self.id).ok()
    }
}

/// Where a chunk or item is: `length` bytes at `offset` of `relative_path`, zstd-compressed
/// when `zstd`. The path is `.metadata`'s own string, not a copy per chunk.
#[derive(Debug, Clone, Copy)]
struct Place<'m> {
    relative_path: &'m str,
    offset: u64,
    length: u64,
    zstd: bool,
}

impl<'m> Place<'m> {
    fn of(info: Meta<'m>) -> Result<Place<'m>, (&'static str, String)> {
        let relative_path = info
            .attr("relative_path")
            .and_then(Meta::as_str)
            .ok_or(("relative_path", "missing or not a str".to_string()))?;
        let offset = info
            .attr("offset")
            .and_then(Meta::as_int)
            .and_then(|o| u64::try_from(o).ok())
            .ok_or(("offset", "missing or not a non-negative int".to_string()))?;
        let length = info
            .attr("length")
            .and_then(Meta::as_int)
            .and_then(|o| u64::try_from(o).ok())
            .ok_or(("length", "missing or not a non-negative int".to_string()))?;
        let mut zstd = false;
        match info.field("transform_descriptors") {
            None => {}
            Some(v) => {
                let list = v
                    .items()
                    .ok_or(("transform_descriptors", "not a list".to_string()))?;
                for t in list {
                    let t = t.as_str().ok_or((
                        "transform_descriptors",
                        "an item that is not a str".to_string(),
                    ))?;
                    // `name[@domain]/version`; torch accepts any version of major 1.
                    let (name, version) = t.rsplit_once('/').unwrap_or((t, ""));
                    let major = version.split('.').next().unwrap_or("");
                    if name != ZSTD || major != "1" || zstd {
                        return Err((
                            "transform_descriptors",
                            format!("the transform {t:?} is not one this crate applies"),
                        ));
                    }
                    zstd = true;
                }
            }
        }
        Ok(Place {
            relative_path,
            offset,
            length,
            zstd,
        })
    }
}

/// The `.distcp` files of a checkpoint, each opened and mapped once, inside its directory.
struct Files<'o> {
    dir: PathBuf,
    metadata: &'o Path,
    options: &'o ReadOptions,
    /// The directory with symlinks resolved, once known.
    root: Option<PathBuf>,
    open: HashMap<String, OpenDistcp>,
    /// The items to parse: each place, the key it is for, and its file.
    jobs: Vec<(Place<'o>, &'o str, OpenDistcp)>,
    /// Each place's job, by file and then by (offset, length, zstd): keys that name one
    /// item share it, parsed once. By file first, so that a lookup hashes no path.
    by_place: HashMap<&'o str, HashMap<(u64, u64, bool), usize>>,
    /// The checkpoint's budget, once every file is known.
    budget: Option<Mutex<Budget>>,
}

/// A `.distcp` file, opened and mapped: its path, map and descriptor, shared by its jobs.
type OpenDistcp = Arc<(PathBuf, Arc<memmap2::Mmap>, Arc<std::fs::File>)>;

impl<'o> Files<'o> {
    fn new(dir: &Path, metadata: &'o Path, options: &'o ReadOptions) -> Self {
        Files {
            dir: dir.to_path_buf(),
            metadata,
            options,
            root: None,
            open: HashMap::new(),
            jobs: Vec::new(),
            by_place: HashMap::new(),
            budget: None,
        }
    }

    fn invalid(&self, field: &str, reason: String) -> Error {
        Error::InvalidDistributed {
            path: self.metadata.to_path_buf(),
            field: field.to_string(),
            reason,
        }
    }

    /// The file `name`, opened once: a plain relative path that resolves inside the
    /// directory.
    fn file(&mut self, name: &str) -> Result<OpenDistcp, Error> {
        if let Some(f) = self.open.get(name) {
            return Ok(f.clone());
        }
        let relative = Path::new(name);
        let plain = relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if name.is_empty() || !plain {
            return Err(self.invalid(
                "_StorageInfo.relative_path",
                format!("{name:?} is not a plain relative path"),
            ));
        }
        let path = self.dir.join(relative);
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        if self.root.is_none() {
            self.root = Some(
                std::fs::canonicalize(&self.dir).map_err(|source| Error::Io {
                    path: self.dir.clone(),
                    source,
                })?,
            );
        }
        let real = std::fs::canonicalize(&path).map_err(io)?;
        if !self.root.as_ref().is_some_and(|r| real.starts_with(r)) {
            return Err(self.invalid(
                "_StorageInfo.relative_path",
                format!(
                    "{name:?} is {}, outside the checkpoint's directory (through a symlink)",
                    real.display()
                ),
            ));
        }
        let file = open_regular(&path).map_err(io)?;
        // The file opened is the one checked, not a symlink swapped in since.
        if !same_file(&file, &real) {
            return Err(self.invalid(
                "_StorageInfo.relative_path",
                format!("{name:?} changed while it was opened"),
            ));
        }
        // SAFETY: see `map_file`: the map is read only to parse the items; tensors are read
        // from the file with positional reads.
        let map = unsafe { map_file(&file) }.map_err(io)?;
        let entry = Arc::new((path, Arc::new(map), Arc::new(file)));
        self.open.insert(name.to_string(), entry.clone());
        Ok(entry)
    }

    /// The item at `place`, for `key`, to parse: its file opened and its range checked
    /// against the file; the number of the job.
    fn job(&mut self, place: &Place<'o>, key: &'o str) -> Result<usize, Error> {
        let id = (place.offset, place.length, place.zstd);
        let done = (self.by_place.get(place.relative_path)).and_then(|jobs| jobs.get(&id));
        if let Some(&job) = done {
            return Ok(job);
        }
        let opened = self.file(place.relative_path)?;
        let map = &opened.1;
        place
            .offset
            .checked_add(place.length)
            .filter(|&e| e <= map.len() as u64)
            .ok_or_else(|| {
                self.invalid(
                    "_StorageInfo.offset",
                    format!(
                        "{key}: {} bytes at {} of {}, past its end ({} bytes)",
                        place.length,
                        place.offset,
                        place.relative_path,
                        map.len()
                    ),
                )
            })?;
        let job = self.jobs.len();
        self.jobs.push((*place, key, opened));
        (self.by_place.entry(place.relative_path).or_default()).insert(id, job);
        Ok(job)
    }

    /// The checkpoint's budget: for the `.metadata` and every `.distcp` file together.
    fn start_budget(&mut self, metadata_len: u64) {
        let total = self.open.values().fold(metadata_len, |n, opened| {
            let map = &opened.1;
            n.saturating_add(map.len() as u64)
        });
        self.budget = Some(Mutex::new(Budget::for_file(&self.options.limits, total)));
    }

    fn shared(&self) -> MutexGuard<'_, Budget> {
        let budget = self
            .budget
            .as_ref()
            .expect("started before the items are parsed");
        budget.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Charges the checkpoint's budget `bytes`, or `LimitExceeded` naming `path`.
    fn charge(&self, path: &Path, bytes: u64) -> Result<(), Error> {
        self.shared().charge(bytes).map_err(out_of_budget(path))
    }

    /// Every job's item parsed, across the read threads.
    fn parse_all(&self) -> Result<Vec<Arc<OpenFile<'static>>>, Error> {
        let threads = self.options.read_threads().min(self.jobs.len()).max(1);
        if threads == 1 {
            return self.jobs.iter().map(|j| self.parse(j)).collect();
        }
        let per = self.jobs.len().div_ceil(threads);
        let runs = self.jobs.chunks(per).map(|c| c.iter().collect()).collect();
        let parsed: Vec<Result<Vec<_>, Error>> = on_threads(runs, |jobs: Vec<_>| {
            jobs.into_iter().map(|j| self.parse(j)).collect()
        })
        .into_iter()
        .map(|r| r.unwrap_or_else(|p| std::panic::resume_unwind(p)))
        .collect();
        let mut out = Vec::with_capacity(self.jobs.len());
        for part in parsed {
            out.extend(part?);
        }
        Ok(out)
    }

    /// The item of a job: its `torch.save` zip parsed, its storages at their offsets in the
    /// file (or, inflated, in memory).
    fn parse(
        &self,
        job: &(Place<'o>, &'o str, OpenDistcp),
    ) -> Result<Arc<OpenFile<'static>>, Error> {
        let (place, key, opened) = job;
        let (path, map, file) = &**opened;
        let (path, file) = (path.clone(), Arc::clone(file));
        let end = place.offset + place.length;
        let not_a_zip = |reason: String| {
            self.invalid(
                "_StorageInfo",
                format!(
                    "{key}: the bytes at {} of {} are not a torch.save zip: {reason}",
                    place.offset, place.relative_path
                ),
            )
        };
        let options = self.options;
        if place.zstd {
            // Inflated one at a time, each within what the checkpoint's budget leaves, and
            // charged before the next. The map is read for this item only: its bytes are
            // all needed.
            let window = &map[place.offset as usize..end as usize];
            let mut shared = self.shared();
            let bytes = inflate_zstd(window, &shared).map_err(|e| match e {
                Inflate::Budget => Error::LimitExceeded {
                    path: path.clone(),
                    limit: "max_memory",
                    max: shared.max(),
                },
                Inflate::Io(e) => not_a_zip(format!("zstd: {e}")),
            })?;
            shared
                .charge(bytes.len() as u64)
                .map_err(out_of_budget(&path))?;
            drop(shared);
            match detect(&path, &bytes) {
                Ok(Format::TorchZip) => {}
                _ => return Err(not_a_zip("not a zip once inflated".into())),
            }
            let len = bytes.len() as u64;
            let parsed = torch_zip::parse(
                &path,
                Source::Owned(bytes),
                options,
                Budget::for_file(&options.limits, len),
            )?;
            self.charge(&path, kept(&parsed.budget))?;
            return Ok(Arc::new(OpenFile::new(path, options.clone(), parsed)));
        }
        // The item's first and last bytes, read by `pread`: its zip's directory, the local
        // headers and the pickle of a one-tensor item lie in them. Through the map, they
        // cost two page faults an item, each mapping the pages around it, and unmapping
        // them when the map is dropped (the design note above has the measurement).
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        // On the stack: a heap buffer of this size is a large request for glibc, which
        // consolidates the thread's free small chunks first, once an item.
        let mut held = [0u8; 2 * HELD];
        let held = &mut held[..(2 * HELD).min(place.length as usize)];
        let head_len = held.len().min(HELD);
        let (head, tail) = held.split_at_mut(head_len);
        read_exact_at(&file, head, place.offset).map_err(io)?;
        read_exact_at(&file, tail, end - tail.len() as u64).map_err(io)?;
        match detect(&path, head) {
            Ok(Format::TorchZip) => {}
            _ => return Err(not_a_zip("no zip signature".into())),
        }
        let bytes = Bytes::File {
            file: &file,
            base: place.offset,
            len: place.length,
            held: Held { head, tail },
        };
        let budget = Budget::for_file(&options.limits, place.length);
        let mut zip = torch_zip::read(&path, bytes, options, budget)?;
        self.charge(&path, kept(&zip.budget))?;
        // The storages at their places in the file, read through its shared descriptor.
        for loc in zip.storages.values_mut() {
            match loc {
                StorageLoc::Range { start, .. } | StorageLoc::Deflated { start, .. } => {
                    *start += place.offset
                }
            }
        }
        let parsed = zip.with_source(Source::Mapped(Arc::clone(map), file));
        Ok(Arc::new(OpenFile::new(path, options.clone(), parsed)))
    }
}

/// Whether `file` is the file at `real`: the same device and inode.
fn same_file(file: &std::fs::File, real: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), std::fs::metadata(real)) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, real);
        true
    }
}

/// What a parsed item keeps of its own budget, beyond the fixed cost every file is charged.
fn kept(budget: &Budget) -> u64 {
    budget.used().saturating_sub(FIXED_COST)
}

enum Inflate {
    Budget,
    Io(std::io::Error),
}

/// What inflating costs besides the bytes inflated: the read buffer, zstd's decoder context
/// and block buffers (about 100 KiB and twice a 128 KiB block), rounded up.
const INFLATE_OVERHEAD: u64 = PIECE as u64 + (512 << 10);
/// Inflated bytes are read this many at a time.
const PIECE: usize = 256 << 10;

/// The window a zstd frame's header declares (RFC 8878, 3.1.1.1): the history the streaming
/// decoder allocates and writes through as it inflates, so memory the inflate touches beside
/// its output. `None` where the header is not a zstd frame's (the decoder then refuses it).
fn zstd_window(frame: &[u8]) -> Option<u64> {
    if frame.get(..4)? != [0x28, 0xb5, 0x2f, 0xfd] {
        return None;
    }
    let descriptor = *frame.get(4)?;
    if descriptor & 0x20 == 0 {
        let w = *frame.get(5)?;
        let base = 1u64 << (10 + u32::from(w >> 3));
        return Some(base + base / 8 * u64::from(w & 7));
    }
    // A single segment: the window is the content size, given right after the dictionary id.
    let dict_len = [0, 1, 2, 4][usize::from(descriptor & 3)];
    let size_len = [1, 2, 4, 8][usize::from(descriptor >> 6)];
    let at = 5 + dict_len;
    let bytes = frame.get(at..at + size_len)?;
    let mut size = bytes
        .iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    if size_len == 2 {
        size += 256;
    }
    Some(size)
}

/// A zstd frame inflated, within what `budget` leaves (the frame does not say its size),
/// less what the inflate needs beside its output: its buffers and the frame's window.
fn inflate_zstd(compressed: &[u8], budget: &Budget) -> Result<Vec<u8>, Inflate> {
    let window = zstd_window(compressed).unwrap_or(0);
    let max = budget
        .max()
        .saturating_sub(budget.used())
        .checked_sub(INFLATE_OVERHEAD.saturating_add(window))
        .ok_or(Inflate::Budget)?;
    let mut decoder = zstd::stream::read::Decoder::with_buffer(compressed)
        .map_err(Inflate::Io)?
        .single_frame();
    // Read a piece at a time and appended, so that memory grows with the bytes inflated
    // (`read_to_end` would zero the spare capacity it doubles into, touching up to twice
    // what the budget allows).
    let mut out = Vec::new();
    let mut piece = vec![0u8; PIECE];
    loop {
        let n = match decoder.read(&mut piece) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Inflate::Io(e)),
        };
        if (out.len() + n) as u64 > max {
            return Err(Inflate::Budget);
        }
        out.extend_from_slice(&piece[..n]);
    }
    Ok(out)
}

/// A `TensorStorageMetadata`: its shape, dtype and chunks, each chunk's item opened and
/// checked against the metadata, and the chunks checked to tile the tensor.
fn tensor<'m>(
    o: Meta<'_>,
    key: &'m str,
    places: &Places<'m>,
    files: &mut Files<'m>,
    invalid: &dyn Fn(&str, String) -> Error,
) -> Result<PendingTensor, Error> {
    let shape = o
        .attr("size")
        .and_then(Meta::ints)
        .filter(|s| s.iter().all(|&d| d >= 0))
        .ok_or_else(|| {
            invalid(
                "TensorStorageMetadata.size",
                format!("{key}: not a torch.Size"),
            )
        })?;
    let properties = o
        .attr("properties")
        .and_then(|p| p.class("TensorProperties"))
        .ok_or_else(|| {
            invalid(
                "TensorStorageMetadata.properties",
                format!("{key}: missing or not a TensorProperties"),
            )
        })?;
    // BUILD of a tuple: (dtype, layout, requires_grad, memory_format, pin_memory); older
    // files give a dict with `dtype`.
    let dtype_value = match properties.state() {
        Some(state) if matches!(state.obj(), Obj::Tuple(_)) => {
            state.items().and_then(|mut t| t.next())
        }
        _ => properties.attr("dtype"),
    };
    let dtype = match dtype_value.and_then(Meta::dtype) {
        Some(Ok(dtype)) => dtype,
        Some(Err(name)) => return Err(invalid("TensorProperties.dtype", format!("{key}: {name}"))),
        None => {
            return Err(invalid(
                "TensorProperties.dtype",
                format!("{key}: missing or not a torch.dtype"),
            ))
        }
    };
    let chunk_values = o
        .attr("chunks")
        .and_then(Meta::items)
        .ok_or_else(|| invalid("TensorStorageMetadata.chunks", format!("{key}: not a list")))?;
    let mut chunks = Vec::with_capacity(chunk_values.size_hint().0);
    for c in chunk_values {
        let c = c.class("ChunkStorageMetadata").ok_or_else(|| {
            invalid(
                "TensorStorageMetadata.chunks",
                format!("{key}: an item {}", c.describe()),
            )
        })?;
        let offsets = c.attr("offsets").and_then(Meta::ints);
        let sizes = c.attr("sizes").and_then(Meta::ints);
        let (Some(offsets), Some(sizes)) = (offsets, sizes) else {
            return Err(invalid(
                "ChunkStorageMetadata",
                format!("{key}: offsets or sizes missing or not a torch.Size"),
            ));
        };
        // Looked up by a key that owns the offsets, which are then taken back: no copy.
        let lookup = (key, Some(offsets));
        let place = places.get(&lookup);
        let offsets = lookup.1.expect("set above");
        let place = place.ok_or_else(|| {
            invalid(
                "storage_data",
                format!("{key}: no storage for the chunk at {offsets:?}"),
            )
        })?;
        let job = files.job(place, key)?;
        chunks.push((offsets, sizes, job));
    }
    Ok(PendingTensor {
        shape,
        dtype,
        chunks,
    })
}

/// A chunk's box: its offsets and sizes.
struct ChunkBox<'c> {
    offsets: &'c [i64],
    sizes: &'c [i64],
}

/// Whether `chunks` tile `shape`: each inside it, none overlapping another, and their
/// volumes adding up to the tensor's, so that together they cover it exactly.
fn check_tiling(shape: &[i64], chunks: &[ChunkBox<'_>]) -> Result<(), String> {
    let mut volume = 0u128;
    for c in chunks {
        if c.offsets.len() != shape.len() || c.sizes.len() != shape.len() {
            return Err(format!(
                "the chunk at {:?} of size {:?} has not the tensor's {} dimensions",
                c.offsets,
                c.sizes,
                shape.len()
            ));
        }
        let inside = c
            .offsets
            .iter()
            .zip(c.sizes)
            .zip(shape)
            .all(|((&o, &s), &d)| o >= 0 && s >= 0 && o.checked_add(s).is_some_and(|e| e <= d));
        if !inside {
            return Err(format!(
                "the chunk at {:?} of size {:?} is outside the shape {shape:?}",
                c.offsets, c.sizes
            ));
        }
        volume += c.sizes.iter().map(|&s| s as u128).product::<u128>();
    }
    // Two boxes overlap when their ranges overlap in every dimension; empty boxes never do.
    // Sorted by their offset in the dimension they are split along most (a `Shard(1)`
    // tensor's columns), a box is compared only with those that start before it ends in
    // that dimension: about n log n for one-dimensional sharding, whatever the dimension.
    let mut order: Vec<&ChunkBox<'_>> = chunks
        .iter()
        .filter(|c| c.sizes.iter().all(|&s| s > 0))
        .collect();
    let sweep = (0..shape.len())
        .max_by_key(|&d| {
            let mut offsets: Vec<i64> = order.iter().map(|c| c.offsets[d]).collect();
            offsets.sort_unstable();
            offsets.dedup();
            offsets.len()
        })
        .unwrap_or(0);
    order.sort_by_key(|c| c.offsets.get(sweep).copied().unwrap_or(0));
    for (i, a) in order.iter().enumerate() {
        for b in &order[i + 1..] {
            if let (Some(&a0), Some(&s0), Some(&b0)) = (
                a.offsets.get(sweep),
                a.sizes.get(sweep),
                b.offsets.get(sweep),
            ) {
                if b0 >= a0 + s0 {
                    break;
                }
            }
            let overlap = (0..shape.len()).all(|d| {
                a.offsets[d] < b.offsets[d] + b.sizes[d] && b.offsets[d] < a.offsets[d] + a.sizes[d]
            });
            if overlap {
                return Err(format!(
                    "the chunks at {:?} and {:?} overlap",
                    a.offsets, b.offsets
                ));
            }
        }
    }
    let numel: u128 = shape.iter().map(|&d| d as u128).product();
    if volume != numel {
        return Err(format!(
            "the chunks hold {volume} of the tensor's {numel} elements: a gap"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiles(shape: &[i64], boxes: &[(&[i64], &[i64])]) -> Result<(), String> {
        let boxes: Vec<ChunkBox<'_>> = boxes
            .iter()
            .map(|&(offsets, sizes)| ChunkBox { offsets, sizes })
            .collect();
        check_tiling(shape, &boxes)
    }

    /// The window read from frames zstd itself writes: a small frame is a single segment,
    /// whose window is its content size; a larger one, or a streamed one (content size
    /// unknown), declares its level's window (2 MiB at level 3); anything else is no frame.
    #[test]
    fn the_window_is_read_from_the_frame_header() {
        for (len, window) in [(0usize, 0u64), (10, 10), (300, 300), (70_000, 70_000)]
            .into_iter()
            .chain([(3 << 20, 2 << 20)])
        {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let frame = zstd::bulk::compress(&data, 3).unwrap();
            assert_eq!(zstd_window(&frame), Some(window), "{len}");
        }
        let mut streamed = Vec::new();
        let mut encoder = zstd::stream::write::Encoder::new(&mut streamed, 3).unwrap();
        std::io::Write::write_all(&mut encoder, &vec![1u8; 8 << 20]).unwrap();
        encoder.finish().unwrap();
        assert_eq!(zstd_window(&streamed), Some(2 << 20));
        assert_eq!(zstd_window(b"PK\x03\x04rest"), None);
        assert_eq!(zstd_window(&[0x28, 0xb5, 0x2f]), None);
    }

    #[test]
    fn chunks_must_tile_the_tensor() {
        // Shard(0) and Shard(1) over two ranks, uneven; an empty chunk; a 0-dim tensor.
        assert!(tiles(&[5, 3], &[(&[0, 0], &[3, 3]), (&[3, 0], &[2, 3])]).is_ok());
        assert!(tiles(&[4, 5], &[(&[0, 0], &[4, 3]), (&[0, 3], &[4, 2])]).is_ok());
        assert!(tiles(&[1, 3], &[(&[0, 0], &[1, 3]), (&[1, 0], &[0, 3])]).is_ok());
        assert!(tiles(&[], &[(&[], &[])]).is_ok());
        // Outside, overlapping (columns, so not found along the first dimension), a gap, a
        // 0-dim tensor stored twice.
        let err = |r: Result<(), String>| r.unwrap_err();
        assert!(err(tiles(&[4, 5], &[(&[0, 3], &[4, 3])])).contains("outside"));
        let overlap = tiles(&[4, 5], &[(&[0, 0], &[4, 3]), (&[0, 2], &[4, 3])]);
        assert!(err(overlap).contains("overlap"));
        assert!(err(tiles(&[4, 5], &[(&[0, 0], &[4, 3])])).contains("gap"));
        assert!(err(tiles(&[], &[(&[], &[]), (&[], &[])])).contains("overlap"));
    }

    #[test]
    fn many_column_chunks_are_swept_along_the_columns() {
        // 100,000 one-column chunks: 5e9 comparisons pairwise (minutes), one each swept
        // along the columns (milliseconds).
        let n = 100_000i64;
        let offsets: Vec<[i64; 2]> = (0..n).map(|c| [0, c]).collect();
        let boxes: Vec<(&[i64], &[i64])> =
            offsets.iter().map(|o| (&o[..], &[8i64, 1][..])).collect();
        assert!(tiles(&[8, n], &boxes).is_ok());
    }
}
