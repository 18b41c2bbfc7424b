//! The machine: a stack with marks, a memo, and the opcode loop.
//!
//! [`run`] reads opcodes until `STOP`. The loop ([`Machine::execute`]) only dispatches; each
//! group of opcodes (framing and the stack, the memo, scalars, strings, bytes, containers,
//! globals, calls, and torch's objects) has its own small function. What `REDUCE` and
//! `BUILD` do with torch's callables, and what a persistent id names, is in [`super::torch`].
//!
//! Every length the pickle declares is checked against what is left of it before anything
//! is allocated, and objects, memo entries and tensors count against [`ReadLimits`]. Every
//! allocation is charged to the file's memory [`Budget`]: what the arena keeps as it is
//! made, what the run frees at its end (the stack, the marks, the memo) apart, and copies
//! that memo references make cheap to ask for before they are made (see
//! [`crate::read::budget`]).

use std::collections::HashMap;
use std::sync::Arc;

use super::object::{
    Arena, ClassRef, DictObj, Id, Obj, OpaqueObj, Span, EMPTY_TUPLE_ID, FALSE_ID, NONE_ID, SHARED,
    TRUE_ID,
};
use super::opcodes::*;
use super::torch::{resolve_global, Flavor, Resolved};
use crate::error::PickleError;
use crate::read::budget::{heap, heap_of, Budget};
use crate::read::{ReadLimits, ReadOptions};

/// A failure at a byte offset of the pickle.
#[derive(Debug)]
pub(crate) enum Failure {
    Pickle(u64, PickleError),
    Disallowed(u64, String, String),
    Limit(&'static str, u64),
}

pub(super) type Res<T> = Result<T, Failure>;

/// The state of one run. `torch.rs` gives torch's objects their meaning in its own `impl`
/// block, through the `pub(super)` fields and helpers.
pub(super) struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset of the opcode being run, for errors.
    op_pos: usize,
    /// What the run builds; its root is set at `STOP`.
    pub(super) arena: Arena,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: Memo,
    /// Objects made so far, shared ones included, for `max_objects`.
    made: u64,
    budget: &'a mut Budget,
    /// What of the budget's charges the run frees at its end.
    transient: u64,
    /// The longest the stack and the marks have been, charged.
    stack_peak: usize,
    marks_peak: usize,
    pub(super) limits: &'a ReadLimits,
    pub(super) flavor: Flavor,
    /// Refuse globals outside the allowlist, as `torch.load(weights_only=True)` does,
    /// instead of recording them as opaque classes.
    weights_only: bool,
    /// The global each `STACK_GLOBAL` of a (module, name) pair of objects made, so that a
    /// memoized pair named again and again costs one object, not a copy of its strings.
    stack_globals: HashMap<(Id, Id), Id>,
    /// The items of the last mark that were added to a container, kept so that its
    /// allocation is reused ([`Machine::take_mark`]).
    scratch: Vec<Id>,
    /// The object of each int 0 to 255, once one is made ([`UNSET`] until then).
    small_ints: [Id; 256],
}

/// The memo: a vector indexed by memo index, as picklers number their entries 0, 1, 2...,
/// and a map for indices far past its end.
#[derive(Default)]
struct Memo {
    dense: Vec<Id>,
    sparse: HashMap<u32, Id>,
    len: u64,
}

/// The most items whose scratch vector is kept between opcodes ([`Machine::give_back`]).
const SCRATCH_KEPT: usize = 256;

/// A slot of [`Memo::dense`] that holds nothing.
const UNSET: Id = Id::MAX;
/// How far past the end of [`Memo::dense`] an index may be and still extend it.
const DENSE_GAP: usize = 4096;

impl Memo {
    fn get(&self, index: u32) -> Option<Id> {
        match self.dense.get(index as usize) {
            Some(&id) if id != UNSET => Some(id),
            _ => self.sparse.get(&index).copied(),
        }
    }

    fn contains(&self, index: u32) -> bool {
        self.get(index).is_some()
    }

    /// Stores `id` at `index`; returns what that cost the budget.
    fn put(&mut self, index: u32, id: Id) -> u64 {
        let i = index as usize;
        let before = self.dense.len();
        let sparse = self.sparse.len();
        if i < before {
            if self.dense[i] == UNSET && self.sparse.remove(&index).is_none() {
                self.len += 1;
            }
            self.dense[i] = id;
        } else if i <= before + DENSE_GAP && !self.sparse.contains_key(&index) {
            self.dense.resize(i, UNSET);
            self.dense.push(id);
            self.len += 1;
        } else if self.sparse.insert(index, id).is_none() {
            self.len += 1;
        }
        // A map entry of 9 bytes, in a table at most 7/8 full that doubles as it grows.
        let new_sparse = self.sparse.len().saturating_sub(sparse) as u64;
        4 * (self.dense.len() - before) as u64 + 32 * new_sparse
    }
}

/// What an object costs in the arena's vector of them.
const OBJ_COST: u64 = std::mem::size_of::<Obj>() as u64;

/// Runs the pickle in `data` (which may be followed by other bytes: the legacy format
/// concatenates pickles) with the limits of `options` and its `weights_only` rule, charging
/// `budget`. Returns the arena and the number of bytes the pickle took; the budget keeps
/// what the arena costs.
pub(crate) fn run(
    data: &[u8],
    flavor: Flavor,
    options: &ReadOptions,
    budget: &mut Budget,
) -> Result<(Arena, usize), Failure> {
    let limits = &options.limits;
    if data.len() as u64 > limits.max_pickle_bytes {
        return Err(Failure::Limit("max_pickle_bytes", limits.max_pickle_bytes));
    }
    budget
        .charge(SHARED as u64 * OBJ_COST)
        .map_err(|e| Failure::Limit("max_memory", e.max))?;
    // Room for what a small pickle makes (a DCP item's one tensor: 23 objects, 15 tuple
    // items, a stack of 8, 2 marks and 12 memo entries from 159 bytes), so that 4096 of
    // them opened at once do not grow their vectors step by step; at most 256 objects,
    // which the charge per object made covers. The objects' room stays under 1 KiB for such an item: glibc
    // serves a larger request from its large bins, consolidating the thread's free small
    // chunks first, which took 2.6% of the open's instructions when it was one an item.
    let room = (data.len() / 6).min(256);
    let mut arena = Arena::default();
    arena.objs.reserve_exact(SHARED + room);
    arena.pool.reserve_exact(room * 3 / 4);
    arena.objs.extend([
        Obj::None,
        Obj::Bool(false),
        Obj::Bool(true),
        Obj::Tuple(Span { start: 0, len: 0 }),
    ]);
    debug_assert_eq!(arena.objs.len(), SHARED);
    let mut m = Machine {
        data,
        pos: 0,
        op_pos: 0,
        arena,
        stack: Vec::with_capacity(room / 3),
        marks: Vec::with_capacity(room / 8),
        // A DCP item's 12 entries, without growing from 4 to 8 to 16.
        memo: Memo {
            dense: Vec::with_capacity(room / 2),
            ..Memo::default()
        },
        made: 0,
        budget,
        transient: 0,
        stack_peak: 0,
        marks_peak: 0,
        limits,
        flavor,
        weights_only: options.weights_only,
        stack_globals: HashMap::new(),
        scratch: Vec::new(),
        small_ints: [UNSET; 256],
    };
    let root = m.execute()?;
    let used = m.pos;
    m.budget.release(m.transient);
    let mut arena = m.arena;
    arena.root = root;
    arena.made = m.made;
    Ok((arena, used))
}

impl<'a> Machine<'a> {
    /// Runs opcodes until `STOP` and returns the root object.
    ///
    /// Each group's function is given only the opcodes listed for it here; it answers any
    /// other as unknown, like the last arm.
    fn execute(&mut self) -> Res<Id> {
        loop {
            self.op_pos = self.pos;
            let op = self.byte()?;
            match op {
                STOP => return self.pop(),
                PROTO | FRAME | MARK | POP | POP_MARK | DUP => self.control(op)?,
                PUT | BINPUT | LONG_BINPUT | MEMOIZE | GET | BINGET | LONG_BINGET => {
                    self.memo_op(op)?
                }
                NONE | NEWTRUE | NEWFALSE | BININT1 | BININT2 | BININT | LONG1 | LONG4 | INT
                | LONG | BINFLOAT | FLOAT => self.push_scalar(op)?,
                BINUNICODE | SHORT_BINUNICODE | BINUNICODE8 | UNICODE | BINSTRING
                | SHORT_BINSTRING | STRING => self.push_str(op)?,
                BINBYTES | SHORT_BINBYTES | BINBYTES8 | BYTEARRAY8 | NEXT_BUFFER
                | READONLY_BUFFER => self.push_bytes(op)?,
                EMPTY_TUPLE | EMPTY_LIST | EMPTY_DICT | EMPTY_SET | TUPLE | TUPLE1 | TUPLE2
                | TUPLE3 | LIST | DICT | FROZENSET => self.push_container(op)?,
                APPEND | APPENDS | SETITEM | SETITEMS | ADDITEMS => self.fill_container(op)?,
                GLOBAL | STACK_GLOBAL | EXT1 | EXT2 | EXT4 => self.global_op(op)?,
                REDUCE | NEWOBJ | NEWOBJ_EX | INST | OBJ => self.call_op(op)?,
                BUILD | BINPERSID | PERSID => self.torch_op(op)?,
                other => return Err(self.unknown(other)),
            }
        }
    }

    fn unknown(&self, op: u8) -> Failure {
        self.err(PickleError::UnknownOpcode(op))
    }

    /// Protocol, framing and the stack.
    fn control(&mut self, op: u8) -> Res<()> {
        match op {
            PROTO => {
                let proto = self.byte()?;
                if proto > 5 {
                    return Err(self.err(PickleError::UnsupportedProtocol(proto)));
                }
            }
            FRAME => {
                // A hint for buffered readers; the length is not needed here.
                self.u64()?;
            }
            MARK => {
                self.marks.push(self.stack.len());
                if self.marks.len() > self.marks_peak {
                    self.marks_peak = self.marks.len();
                    self.charge_transient(std::mem::size_of::<usize>() as u64)?;
                }
            }
            POP => {
                if self.stack.len() > self.floor() {
                    self.stack.pop();
                } else {
                    self.drop_mark()?;
                }
            }
            POP_MARK => {
                self.drop_mark()?;
            }
            DUP => {
                let top = self.top()?;
                self.push_id(top)?;
            }
            _ => return Err(self.unknown(op)),
        }
        Ok(())
    }

    /// The memo: `PUT`s store the top of the stack, `GET`s push what was stored.
    fn memo_op(&mut self, op: u8) -> Res<()> {
        match op {
            PUT => {
                let i = self.decimal_index()?;
                self.memo_put(i)
            }
            BINPUT => {
                let i = self.byte()? as u32;
                self.memo_put(i)
            }
            LONG_BINPUT => {
                let i = self.u32()?;
                self.memo_put(i)
            }
            MEMOIZE => {
                // Python numbers it len(memo); more than 2^32 entries is past any limit.
                let i = u32::try_from(self.memo.len).unwrap_or(u32::MAX);
                self.memo_put(i)
            }
            GET => {
                let i = self.decimal_index()?;
                self.memo_get(i)
            }
            BINGET => {
                let i = self.byte()? as u32;
                self.memo_get(i)
            }
            LONG_BINGET => {
                let i = self.u32()?;
                self.memo_get(i)
            }
            _ => Err(self.unknown(op)),
        }
    }

    /// `None`, bools, ints and floats.
    fn push_scalar(&mut self, op: u8) -> Res<()> {
        let obj = match op {
            NONE => Obj::None,
            NEWTRUE => Obj::Bool(true),
            NEWFALSE => Obj::Bool(false),
            BININT1 => Obj::Int(self.byte()? as i64),
            BININT2 => Obj::Int(self.u16()? as i64),
            BININT => Obj::Int(self.u32()? as i32 as i64),
            LONG1 => {
                let n = self.byte()? as u64;
                long_from_le(self.counted(n)?)
            }
            LONG4 => {
                let n = self.signed_len()?;
                long_from_le(self.counted(n)?)
            }
            INT => {
                let line = self.line()?;
                match line {
                    b"00" => Obj::Bool(false),
                    b"01" => Obj::Bool(true),
                    _ => Obj::Int(self.parse_decimal(line)?),
                }
            }
            LONG => {
                let line = self.line()?;
                let line = line.strip_suffix(b"L").unwrap_or(line);
                Obj::Int(self.parse_decimal(line)?)
            }
            BINFLOAT => Obj::Float(f64::from_be_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            )),
            FLOAT => {
                let line = self.line()?;
                let v = std::str::from_utf8(line)
                    .ok()
                    .and_then(|s| s.trim().parse::<f64>().ok())
                    .ok_or_else(|| self.err(PickleError::InvalidLiteral))?;
                Obj::Float(v)
            }
            _ => return Err(self.unknown(op)),
        };
        self.push(obj)
    }

    /// Strings. Python 2's (`BINSTRING`, `SHORT_BINSTRING`, `STRING`) are decoded as UTF-8,
    /// as torch.load does.
    fn push_str(&mut self, op: u8) -> Res<()> {
        let s = match op {
            BINUNICODE => {
                let n = self.u32()? as u64;
                self.counted_str(n)?
            }
            SHORT_BINUNICODE => {
                let n = self.byte()? as u64;
                self.counted_str(n)?
            }
            BINUNICODE8 => {
                let n = self.u64()?;
                self.counted_str(n)?
            }
            UNICODE => {
                let line = self.line()?;
                decode_raw_unicode_escape(line)
                    .ok_or_else(|| self.err(PickleError::InvalidLiteral))?
            }
            BINSTRING => {
                let n = self.signed_len()?;
                self.counted_str(n)?
            }
            SHORT_BINSTRING => {
                let n = self.byte()? as u64;
                self.counted_str(n)?
            }
            STRING => {
                let line = self.line()?;
                let s = decode_string_literal(line)
                    .ok_or_else(|| self.err(PickleError::InvalidLiteral))?;
                self.utf8(&s)?
            }
            _ => return Err(self.unknown(op)),
        };
        self.push(Obj::Str(s))
    }

    /// Bytes; out-of-band buffers are refused.
    fn push_bytes(&mut self, op: u8) -> Res<()> {
        let n = match op {
            BINBYTES => self.u32()? as u64,
            SHORT_BINBYTES => self.byte()? as u64,
            BINBYTES8 | BYTEARRAY8 => self.u64()?,
            NEXT_BUFFER | READONLY_BUFFER => {
                return Err(self.err(PickleError::Unsupported("out-of-band buffers")))
            }
            _ => return Err(self.unknown(op)),
        };
        let b = self.counted(n)?.to_vec();
        self.push(Obj::Bytes(b))
    }

    /// New containers, empty or of the items on the stack.
    fn push_container(&mut self, op: u8) -> Res<()> {
        let obj = match op {
            EMPTY_TUPLE => return self.push_id(EMPTY_TUPLE_ID),
            EMPTY_LIST => Obj::List(Vec::new()),
            EMPTY_DICT => Obj::Dict(DictObj::default()),
            EMPTY_SET => Obj::Set(Vec::new()),
            TUPLE => {
                let Some(mark) = self.marks.pop() else {
                    return Err(self.err(PickleError::NoMark));
                };
                return self.push_tuple(mark);
            }
            TUPLE1 | TUPLE2 | TUPLE3 => {
                let n = (op - TUPLE1 + 1) as usize;
                if self.stack.len() < self.floor() + n {
                    return Err(self.err(PickleError::StackUnderflow));
                }
                return self.push_tuple(self.stack.len() - n);
            }
            LIST => Obj::List(self.pop_mark()?),
            DICT => {
                let items = self.take_mark()?;
                let pairs = self.pairs(&items).map(Iterator::collect);
                self.give_back(items);
                Obj::Dict(DictObj {
                    items: pairs?,
                    ordered: false,
                })
            }
            FROZENSET => Obj::Set(self.pop_mark()?),
            _ => return Err(self.unknown(op)),
        };
        self.push(obj)
    }

    /// Items added to the list, dict or set below them.
    fn fill_container(&mut self, op: u8) -> Res<()> {
        match op {
            APPEND => {
                let item = self.pop()?;
                let list = self.top()?;
                self.extend_list(list, [item])
            }
            APPENDS | ADDITEMS => {
                let items = self.take_mark()?;
                let items_in = items.iter().copied();
                let done = self.top().and_then(|to| match op {
                    APPENDS => self.extend_list(to, items_in),
                    _ => self.extend_set(to, items_in),
                });
                self.give_back(items);
                done
            }
            SETITEM => {
                let value = self.pop()?;
                let key = self.pop()?;
                let dict = self.top()?;
                self.extend_dict(dict, [(key, value)])
            }
            SETITEMS => {
                let items = self.take_mark()?;
                let done = self.pairs(&items).and_then(|pairs| {
                    let dict = self.top()?;
                    self.extend_dict(dict, pairs)
                });
                self.give_back(items);
                done
            }
            _ => Err(self.unknown(op)),
        }
    }

    /// Globals, resolved against torch's allowlist; the extension registry is refused.
    fn global_op(&mut self, op: u8) -> Res<()> {
        match op {
            GLOBAL => {
                let (module, name) = self.global_lines()?;
                self.push_global(module, name)
            }
            STACK_GLOBAL => {
                let name_id = self.pop()?;
                let module_id = self.pop()?;
                if let Some(&id) = self.stack_globals.get(&(module_id, name_id)) {
                    return self.push_id(id);
                }
                let (module, name) = match (self.get(module_id), self.get(name_id)) {
                    (Obj::Str(m), Obj::Str(n)) => {
                        self.afford(heap(m.len()) + heap(n.len()))?;
                        (m.clone(), n.clone())
                    }
                    _ => {
                        return Err(
                            self.err(PickleError::Malformed("STACK_GLOBAL needs two strings"))
                        )
                    }
                };
                self.push_global(&module, &name)?;
                let id = self.top()?;
                self.charge_transient(32)?;
                self.stack_globals.insert((module_id, name_id), id);
                Ok(())
            }
            EXT1 | EXT2 | EXT4 => Err(self.err(PickleError::Unsupported("the extension registry"))),
            _ => Err(self.unknown(op)),
        }
    }

    /// Calls: allowlisted constructors applied as data ([`Machine::call`]); a class outside
    /// the allowlist makes an opaque object that records the call.
    fn call_op(&mut self, op: u8) -> Res<()> {
        let mut kwargs = Vec::new();
        let (callable, args) = match op {
            REDUCE => {
                let args = self.pop()?;
                let callable = self.pop()?;
                (callable, self.tuple_items_scratch(args, "REDUCE")?)
            }
            NEWOBJ => {
                let args = self.pop()?;
                let cls = self.pop()?;
                (cls, self.tuple_items_scratch(args, "NEWOBJ")?)
            }
            NEWOBJ_EX => {
                let kw = self.pop()?;
                let args = self.pop()?;
                let cls = self.pop()?;
                match self.get(kw) {
                    Obj::Dict(d) => {
                        self.afford(heap_of(d.items.len(), 8))?;
                        kwargs.clone_from(&d.items);
                    }
                    _ => return Err(self.bad("NEWOBJ_EX", "keyword arguments are not a dict")),
                }
                (cls, self.tuple_items(args, "NEWOBJ_EX")?)
            }
            INST => {
                let (module, name) = self.global_lines()?;
                let args = self.pop_mark()?;
                self.push_global(module, name)?;
                (self.pop()?, args)
            }
            OBJ => {
                let mut items = self.pop_mark()?;
                if items.is_empty() {
                    return Err(self.err(PickleError::StackUnderflow));
                }
                let cls = items.remove(0);
                (cls, items)
            }
            _ => return Err(self.unknown(op)),
        };
        let new = matches!(op, NEWOBJ | NEWOBJ_EX);
        let obj = match self.get(callable) {
            Obj::Class(_) => {
                // The object keeps its arguments at their size, not the scratch's capacity
                // (which the budget would charge).
                let kept = args.as_slice().to_vec();
                self.give_back(args);
                self.opaque_call(callable, kept, kwargs, new)?
            }
            _ if !kwargs.is_empty() => {
                return Err(self.err(PickleError::Unsupported("keyword arguments")))
            }
            _ => match self.partial_new(callable, &args)? {
                Some(made) => {
                    self.give_back(args);
                    made
                }
                None => {
                    let made = self.call(callable, &args);
                    self.give_back(args);
                    made?
                }
            },
        };
        self.push_id(obj)
    }

    /// `functools.partial(cls.__new__, cls, *args, **kwargs)()`, `cls.__new__` pickled as
    /// `getattr(cls, '__new__')`: what protocols 2 and 3 write for an object that
    /// `__getnewargs_ex__` makes with keyword arguments (torch.save's default protocol is 2),
    /// where protocol 4 writes `NEWOBJ_EX`. Read as `NEWOBJ_EX` would make it: an object of
    /// `cls` made by `cls.__new__(cls, *args, **kwargs)`. `None` for any other call of an
    /// object (an error then, as before).
    fn partial_new(&mut self, callable: Id, args: &[Id]) -> Res<Option<Id>> {
        let Some((cls, call_args, keywords)) = self.partial_of_new(callable, args) else {
            return Ok(None);
        };
        // Copies of what the arena holds: charged before they are made.
        let kwargs_len = match self.get(keywords) {
            Obj::Dict(d) => d.items.len(),
            _ => 0,
        };
        self.afford(heap_of(call_args.len(), 4) + heap_of(kwargs_len, 8))?;
        let rest = self.arena.tuple(call_args)[1..].to_vec();
        let kwargs = match self.get(keywords) {
            Obj::Dict(d) => d.items.clone(),
            _ => Vec::new(),
        };
        self.opaque_call(cls, rest, kwargs, true).map(Some)
    }

    /// The class, the arguments' tuple (the class first) and the keyword arguments (a dict
    /// or None) of a [`partial_new`](Self::partial_new) call, when `callable` is exactly
    /// that partial and the call gives it no arguments.
    fn partial_of_new(&self, callable: Id, args: &[Id]) -> Option<(Id, Span, Id)> {
        let class_is = |id: Id, modules: &[&str], name: &str| {
            matches!(self.get(id), Obj::Class(c)
                if modules.contains(&c.module.as_str()) && c.name == name)
        };
        let Obj::Object(partial) = self.get(callable) else {
            return None;
        };
        if !args.is_empty() || !class_is(partial.class, &["functools"], "partial") {
            return None;
        }
        // partial's state: (func, args, keywords or None, __dict__ or None).
        let Obj::Tuple(state) = self.get(partial.state?) else {
            return None;
        };
        let &[func, call_args, keywords, dict] = self.arena.tuple(*state) else {
            return None;
        };
        let Obj::Object(getattr) = self.get(func) else {
            return None;
        };
        let &[cls, attr] = getattr.args.as_slice() else {
            return None;
        };
        let is_new = class_is(getattr.class, &["builtins", "__builtin__"], "getattr")
            && getattr.state.is_none()
            && matches!(self.get(cls), Obj::Class(_))
            && matches!(self.get(attr), Obj::Str(s) if s == "__new__");
        let Obj::Tuple(call_args) = self.get(call_args) else {
            return None;
        };
        let first = *self.arena.tuple(*call_args).first()?;
        let keywords_ok = matches!(self.get(keywords), Obj::Dict(_) | Obj::None);
        let no_dict = match self.get(dict) {
            Obj::None => true,
            Obj::Dict(d) => d.items.is_empty(),
            _ => false,
        };
        (is_new && first == cls && keywords_ok && no_dict).then_some((cls, *call_args, keywords))
    }

    /// A call of a class outside the allowlist: an opaque object that records it.
    ///
    /// `copyreg._reconstructor(cls, object, None)`, which protocols 0 and 1 write for a
    /// plain object, is recorded as an object of `cls` made by `cls.__new__(cls)`, as
    /// `NEWOBJ` of no arguments makes it. `new`: made by `NEWOBJ` or `NEWOBJ_EX`.
    fn opaque_call(
        &mut self,
        class: Id,
        args: Vec<Id>,
        kwargs: Vec<(Id, Id)>,
        new: bool,
    ) -> Res<Id> {
        let (class, args, new) = match (self.get(class), args.as_slice()) {
            (Obj::Class(c), &[cls, base, state])
                if matches!(
                    (c.module.as_str(), c.name.as_str()),
                    ("copyreg" | "copy_reg", "_reconstructor")
                ) && matches!(self.get(cls), Obj::Class(_))
                    && matches!(self.get(base), Obj::Class(b)
                        if b.name == "object" && matches!(b.module.as_str(), "builtins" | "__builtin__"))
                    && matches!(self.get(state), Obj::None) =>
            {
                (cls, Vec::new(), true)
            }
            _ => (class, args, new),
        };
        self.alloc(Obj::Object(Box::new(OpaqueObj {
            class,
            args,
            kwargs,
            state: None,
            new,
            list_items: Vec::new(),
            dict_items: Vec::new(),
        })))
    }

    /// `BUILD` and persistent ids, whose meaning for torch's objects is in [`super::torch`].
    fn torch_op(&mut self, op: u8) -> Res<()> {
        match op {
            BUILD => {
                let state = self.pop()?;
                let obj = self.top()?;
                self.build(obj, state)
            }
            BINPERSID => {
                let pid = self.pop()?;
                if let Some(class) = self.module_class(pid) {
                    return self.push_id(class);
                }
                let storage = self.storage(pid)?;
                self.push(Obj::Storage(Arc::new(storage)))
            }
            PERSID => Err(self.err(PickleError::PersistentId(
                "a text persistent id; torch.save writes tuples".into(),
            ))),
            _ => Err(self.unknown(op)),
        }
    }

    pub(super) fn err(&self, e: PickleError) -> Failure {
        Failure::Pickle(self.op_pos as u64, e)
    }

    pub(super) fn bad(&self, callable: &'static str, reason: impl Into<String>) -> Failure {
        self.err(PickleError::BadArguments {
            callable,
            reason: reason.into(),
        })
    }

    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        // An error value made before it is needed costs its drop on every call.
        let Some(end) = self.pos.checked_add(n).filter(|&e| e <= self.data.len()) else {
            return Err(self.err(PickleError::Truncated));
        };
        let data = self.data;
        let s = &data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> Res<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Res<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Res<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Res<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A length from the pickle, checked against what is left of it before anything is
    /// allocated.
    fn len(&self, n: u64) -> Res<usize> {
        let left = (self.data.len() - self.pos) as u64;
        if n > left {
            return Err(self.err(PickleError::Truncated));
        }
        Ok(n as usize)
    }

    /// A newline-terminated line (protocol 0 arguments), without the newline.
    fn line(&mut self) -> Res<&'a [u8]> {
        let data = self.data;
        let rest = &data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return Err(self.err(PickleError::Truncated));
        };
        self.pos += n + 1;
        Ok(&rest[..n])
    }

    fn utf8(&self, b: &[u8]) -> Res<String> {
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| self.err(PickleError::InvalidLiteral))
    }

    /// Charges the budget `bytes` that the arena keeps.
    pub(super) fn charge(&mut self, bytes: u64) -> Res<()> {
        self.budget
            .charge(bytes)
            .map_err(|e| Failure::Limit("max_memory", e.max))
    }

    /// Charges the budget `bytes` that the run frees at its end.
    fn charge_transient(&mut self, bytes: u64) -> Res<()> {
        self.charge(bytes)?;
        self.transient += bytes;
        Ok(())
    }

    /// Fails unless `bytes` more fit the budget: before a copy of that size is made, which
    /// is charged once it is part of an object.
    pub(super) fn afford(&self, bytes: u64) -> Res<()> {
        self.budget
            .check(bytes)
            .map_err(|e| Failure::Limit("max_memory", e.max))
    }

    /// Adds `obj` to the arena, or gives the shared object equal to it (see
    /// [`super::object::SHARED`]). The object is charged with what it holds.
    pub(super) fn alloc(&mut self, obj: Obj) -> Res<Id> {
        if self.made >= self.limits.max_objects {
            return Err(Failure::Limit("max_objects", self.limits.max_objects));
        }
        self.made += 1;
        let small = match obj {
            Obj::Int(i @ 0..=255) => Some(i as usize),
            _ => None,
        };
        let shared = match obj {
            Obj::None => Some(NONE_ID),
            Obj::Bool(false) => Some(FALSE_ID),
            Obj::Bool(true) => Some(TRUE_ID),
            Obj::Tuple(Span { len: 0, .. }) => Some(EMPTY_TUPLE_ID),
            _ => small.map(|i| self.small_ints[i]).filter(|&id| id != UNSET),
        };
        if let Some(id) = shared {
            return Ok(id);
        }
        let id = Id::try_from(self.arena.objs.len())
            .map_err(|_| Failure::Limit("max_objects", self.limits.max_objects))?;
        self.charge(OBJ_COST + obj.heap_bytes())?;
        self.arena.objs.push(obj);
        if let Some(i) = small {
            self.small_ints[i] = id;
        }
        Ok(id)
    }

    fn push(&mut self, obj: Obj) -> Res<()> {
        let id = self.alloc(obj)?;
        self.push_id(id)
    }

    fn push_id(&mut self, id: Id) -> Res<()> {
        self.stack.push(id);
        if self.stack.len() > self.stack_peak {
            self.stack_peak = self.stack.len();
            self.charge_transient(4)?;
        }
        Ok(())
    }

    /// A tuple of the items of the stack from `from` on, which leave the stack.
    fn push_tuple(&mut self, from: usize) -> Res<()> {
        let span = self.span(self.stack.len() - from)?;
        self.arena.pool.extend_from_slice(&self.stack[from..]);
        self.stack.truncate(from);
        let id = self.alloc(Obj::Tuple(span))?;
        self.push_id(id)
    }

    /// A new tuple of `items`.
    pub(super) fn tuple_of(&mut self, items: &[Id]) -> Res<Id> {
        let span = self.span(items.len())?;
        self.arena.pool.extend_from_slice(items);
        self.alloc(Obj::Tuple(span))
    }

    /// Where a tuple of `len` items goes in the pool: at its end, where they are charged.
    fn span(&mut self, len: usize) -> Res<Span> {
        let too_many = || Failure::Limit("max_objects", self.limits.max_objects);
        let start = u32::try_from(self.arena.pool.len()).map_err(|_| too_many())?;
        let n = u32::try_from(len).map_err(|_| too_many())?;
        start.checked_add(n).ok_or_else(too_many)?;
        self.charge(4 * len as u64)?;
        Ok(Span { start, len: n })
    }

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Res<Id> {
        if self.stack.len() <= self.floor() {
            return Err(self.err(PickleError::StackUnderflow));
        }
        Ok(self.stack.pop().expect("checked above"))
    }

    fn top(&self) -> Res<Id> {
        if self.stack.len() <= self.floor() {
            return Err(self.err(PickleError::StackUnderflow));
        }
        Ok(*self.stack.last().expect("checked above"))
    }

    /// The items since the last mark, taken off the stack into the reused scratch vector,
    /// which the caller gives back ([`give_back`](Self::give_back)) once it has added them
    /// to a container: `APPENDS`, `SETITEMS` and `DICT` allocated a vector each before.
    fn take_mark(&mut self) -> Res<Vec<Id>> {
        let Some(mark) = self.marks.pop() else {
            return Err(self.err(PickleError::NoMark));
        };
        let mut items = self.take_scratch();
        items.extend(self.stack.drain(mark..));
        Ok(items)
    }

    /// The scratch vector, empty, with the allocation it kept.
    fn take_scratch(&mut self) -> Vec<Id> {
        let mut items = std::mem::take(&mut self.scratch);
        items.clear();
        items
    }

    /// Keeps `items`' allocation for the next mark or call, when it is small: the scratch
    /// vector is memory the budget does not see (the items were charged on the stack), so
    /// a large one is freed at once, as the vector each opcode allocated before was.
    fn give_back(&mut self, items: Vec<Id>) {
        self.scratch = scratch_to_keep(items);
    }

    /// The items since the last mark, dropped (`POP_MARK`).
    fn drop_mark(&mut self) -> Res<()> {
        let Some(mark) = self.marks.pop() else {
            return Err(self.err(PickleError::NoMark));
        };
        self.stack.truncate(mark);
        Ok(())
    }

    fn pop_mark(&mut self) -> Res<Vec<Id>> {
        let Some(mark) = self.marks.pop() else {
            return Err(self.err(PickleError::NoMark));
        };
        Ok(self.stack.split_off(mark))
    }

    fn memo_put(&mut self, index: u32) -> Res<()> {
        let top = self.top()?;
        if self.memo.len >= self.limits.max_memo_entries && !self.memo.contains(index) {
            return Err(Failure::Limit(
                "max_memo_entries",
                self.limits.max_memo_entries,
            ));
        }
        let cost = self.memo.put(index, top);
        self.charge_transient(cost)
    }

    fn memo_get(&mut self, index: u32) -> Res<()> {
        let id = self
            .memo
            .get(index)
            .ok_or_else(|| self.err(PickleError::MemoNotFound(index)))?;
        self.push_id(id)
    }

    /// `n` bytes of the pickle, `n` checked against what is left of it first.
    fn counted(&mut self, n: u64) -> Res<&'a [u8]> {
        let n = self.len(n)?;
        self.take(n)
    }

    /// `n` bytes of the pickle as UTF-8.
    fn counted_str(&mut self, n: u64) -> Res<String> {
        let b = self.counted(n)?;
        self.utf8(b)
    }

    /// A 4-byte length that Python reads as signed (`LONG4`, `BINSTRING`).
    fn signed_len(&mut self) -> Res<u64> {
        let n = self.u32()? as i32;
        if n < 0 {
            return Err(self.err(PickleError::InvalidLiteral));
        }
        Ok(n as u64)
    }

    /// A memo index as a decimal line (`PUT`, `GET`).
    fn decimal_index(&mut self) -> Res<u32> {
        let line = self.line()?;
        let index = self.parse_decimal(line)?;
        u32::try_from(index).map_err(|_| self.err(PickleError::InvalidLiteral))
    }

    /// The module and name lines of `GLOBAL` and `INST`.
    fn global_lines(&mut self) -> Res<(&'a str, &'a str)> {
        let module = self.line()?;
        let name = self.line()?;
        let utf8 = |b| std::str::from_utf8(b).map_err(|_| self.err(PickleError::InvalidLiteral));
        Ok((utf8(module)?, utf8(name)?))
    }

    pub(super) fn get(&self, id: Id) -> &Obj {
        self.arena.get(id)
    }

    fn parse_decimal(&self, line: &[u8]) -> Res<i64> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .ok_or_else(|| self.err(PickleError::InvalidLiteral))
    }

    fn pairs<'i>(&self, items: &'i [Id]) -> Res<impl Iterator<Item = (Id, Id)> + 'i> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err(PickleError::Malformed("odd number of items for a dict")));
        }
        Ok(items.chunks(2).map(|c| (c[0], c[1])))
    }

    // Items added to a container come off the stack, where they were charged; the
    // container is charged what its allocation grows by.

    fn extend_list(&mut self, list: Id, items: impl IntoIterator<Item = Id>) -> Res<()> {
        let grown = match &mut self.arena.objs[list as usize] {
            Obj::List(v) => grow(v, items),
            Obj::Object(o) => grow(&mut o.list_items, items),
            _ => return Err(self.err(PickleError::Malformed("APPEND on a non-list"))),
        };
        self.charge(grown)
    }

    fn extend_dict(&mut self, dict: Id, pairs: impl IntoIterator<Item = (Id, Id)>) -> Res<()> {
        let grown = match &mut self.arena.objs[dict as usize] {
            Obj::Dict(d) => grow(&mut d.items, pairs),
            Obj::Object(o) => grow(&mut o.dict_items, pairs),
            _ => return Err(self.err(PickleError::Malformed("SETITEM on a non-dict"))),
        };
        self.charge(grown)
    }

    fn extend_set(&mut self, set: Id, items: impl IntoIterator<Item = Id>) -> Res<()> {
        let grown = match &mut self.arena.objs[set as usize] {
            Obj::Set(v) => grow(v, items),
            _ => return Err(self.err(PickleError::Malformed("ADDITEMS on a non-set"))),
        };
        self.charge(grown)
    }

    fn push_global(&mut self, module: &str, name: &str) -> Res<()> {
        match resolve_global(module, name) {
            Some(Resolved::Callable(g)) => self.push(Obj::Global(g)),
            Some(Resolved::Dtype(d)) => self.push(Obj::Dtype(d)),
            None if self.weights_only => Err(Failure::Disallowed(
                self.op_pos as u64,
                module.to_string(),
                name.to_string(),
            )),
            None => self.push(Obj::Class(Box::new(ClassRef {
                module: module.to_string(),
                name: name.to_string(),
            }))),
        }
    }

    /// [`tuple_items`](Self::tuple_items) into the reused scratch vector, which the caller
    /// gives back ([`give_back`](Self::give_back)): a call's arguments (`REDUCE`,
    /// `NEWOBJ`) allocated a vector each before.
    fn tuple_items_scratch(&mut self, id: Id, op: &'static str) -> Res<Vec<Id>> {
        let span = self.tuple_to_copy(id, op)?;
        let mut items = self.take_scratch();
        items.extend_from_slice(self.arena.tuple(span));
        Ok(items)
    }

    /// A copy of a tuple's items (a memoized tuple may be large: the copy must fit the
    /// budget).
    pub(super) fn tuple_items(&self, id: Id, op: &'static str) -> Res<Vec<Id>> {
        let span = self.tuple_to_copy(id, op)?;
        Ok(self.arena.tuple(span).to_vec())
    }

    /// The items of the tuple `id`, once the budget has room for a copy of them.
    fn tuple_to_copy(&self, id: Id, op: &'static str) -> Res<Span> {
        match self.get(id) {
            Obj::Tuple(t) => {
                self.afford(heap_of(t.len(), 4))?;
                Ok(*t)
            }
            _ => Err(self.bad(op, "arguments are not a tuple")),
        }
    }
}

/// `items`, where its allocation is small enough to keep between opcodes; else a vector
/// with no allocation.
fn scratch_to_keep(items: Vec<Id>) -> Vec<Id> {
    if items.capacity() > SCRATCH_KEPT {
        return Vec::new();
    }
    items
}

/// Appends `items` to `v`; returns what its allocation grew by.
fn grow<T>(v: &mut Vec<T>, items: impl IntoIterator<Item = T>) -> u64 {
    let size = std::mem::size_of::<T>();
    let before = heap_of(v.capacity(), size);
    v.extend(items);
    heap_of(v.capacity(), size) - before
}

/// A Python int from pickle's little-endian two's complement bytes.
fn long_from_le(bytes: &[u8]) -> Obj {
    if bytes.is_empty() {
        return Obj::Int(0);
    }
    if bytes.len() <= 8 {
        let negative = bytes[bytes.len() - 1] & 0x80 != 0;
        let mut buf = if negative { [0xffu8; 8] } else { [0u8; 8] };
        buf[..bytes.len()].copy_from_slice(bytes);
        return Obj::Int(i64::from_le_bytes(buf));
    }
    // Longer encodings may still fit after dropping sign-extension bytes.
    let negative = bytes[bytes.len() - 1] & 0x80 != 0;
    let fill = if negative { 0xff } else { 0x00 };
    let significant = bytes.iter().rposition(|&b| b != fill).map_or(0, |i| i + 1);
    if significant < 8 || (significant == 8 && (bytes[7] & 0x80 != 0) == negative) {
        return long_from_le(&bytes[..8]);
    }
    Obj::BigInt(bytes.to_vec())
}

/// Protocol 0's `S` literal: a Python repr of a byte string, quoted.
fn decode_string_literal(line: &[u8]) -> Option<Vec<u8>> {
    let q = *line.first()?;
    if (q != b'\'' && q != b'"') || line.len() < 2 || *line.last()? != q {
        return None;
    }
    let body = &line[1..line.len() - 1];
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = *body.get(i + 1)?;
        i += 2;
        match e {
            b'\\' => out.push(b'\\'),
            b'\'' => out.push(b'\''),
            b'"' => out.push(b'"'),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'x' => {
                let hex = std::str::from_utf8(body.get(i..i + 2)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Protocol 0's `V` literal: raw-unicode-escape (`\uXXXX`, `\UXXXXXXXX`, other bytes as
/// latin-1).
fn decode_raw_unicode_escape(line: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        if line[i] == b'\\' && i + 1 < line.len() && (line[i + 1] == b'u' || line[i + 1] == b'U') {
            let n = if line[i + 1] == b'u' { 4 } else { 8 };
            let hex = std::str::from_utf8(line.get(i + 2..i + 2 + n)?).ok()?;
            out.push(char::from_u32(u32::from_str_radix(hex, 16).ok()?)?);
            i += 2 + n;
        } else {
            out.push(char::from(line[i]));
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(data: &[u8], limits: ReadLimits) -> Result<Arena, Failure> {
        let options = ReadOptions::new().limits(limits);
        let mut budget = Budget::for_file(&options.limits, data.len() as u64);
        run(data, Flavor::Zip, &options, &mut budget).map(|(arena, _)| arena)
    }

    fn run_ok(data: &[u8]) -> Arena {
        run_with(data, ReadLimits::default()).unwrap()
    }

    fn run_err(data: &[u8]) -> Failure {
        run_with(data, ReadLimits::default()).unwrap_err()
    }

    #[test]
    fn only_a_small_scratch_vector_is_kept_between_opcodes() {
        let small: Vec<Id> = Vec::with_capacity(SCRATCH_KEPT);
        assert_eq!(scratch_to_keep(small).capacity(), SCRATCH_KEPT);
        let large: Vec<Id> = (0..10_000).collect();
        assert_eq!(scratch_to_keep(large).capacity(), 0);
        // A pickle that appends 10,000 items through one mark reads as before.
        let mut data = b"\x80\x02](".to_vec();
        for _ in 0..10_000 {
            data.extend_from_slice(b"K\x07");
        }
        data.extend_from_slice(b"e.");
        let arena = run_ok(&data);
        match arena.get(arena.root) {
            Obj::List(v) => assert_eq!(v.len(), 10_000),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn memo_shares_a_dict_filled_after_it_was_memoized() {
        // }q\x00 ( X\x01\x00\x00\x00a K\x01 u 0 h\x00 .   -> the memoized dict, filled
        let data = b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x01u0h\x00.";
        let arena = run_ok(data);
        match arena.get(arena.root) {
            Obj::Dict(d) => assert_eq!(d.items.len(), 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_memo_keeps_indices_near_and_far() {
        let mut memo = Memo::default();
        // Far past the end, then the indices before it, then past it.
        memo.put(10_000, 7);
        for i in 0..10_002 {
            if i != 10_000 {
                memo.put(i, i);
            }
        }
        assert_eq!(memo.get(10_000), Some(7));
        assert_eq!(memo.get(10_001), Some(10_001));
        assert_eq!(memo.len, 10_002);
        memo.put(10_000, 8);
        assert_eq!((memo.get(10_000), memo.len), (Some(8), 10_002));
        assert_eq!(memo.get(20_000), None);
    }

    #[test]
    fn shared_objects_are_not_copied() {
        // (None, False, 1, ()) twice: the same four objects, the int made once, and two
        // tuples in the pool.
        let data = b"\x80\x02(N\x89K\x01)t(N\x89K\x01)t\x86.";
        let arena = run_ok(data);
        assert_eq!(arena.objs.len(), SHARED + 4);
        assert_eq!(arena.pool.len(), 4 + 4 + 2);
        let items = arena.sequence(arena.root).unwrap();
        assert_eq!(arena.sequence(items[0]), arena.sequence(items[1]));
        assert_eq!(
            arena.sequence(items[0]).unwrap(),
            [NONE_ID, FALSE_ID, SHARED as Id, EMPTY_TUPLE_ID]
        );
        assert!(matches!(arena.objs[SHARED], Obj::Int(1)));
    }

    #[test]
    fn the_stack_marks_and_memo_are_charged_then_released() {
        // 10,000 marks, then 10,000 memoized Nones on the stack: 80 KB of marks, 40 KB of
        // stack, 40 KB of memo, and no objects.
        let mut data = b"\x80\x02".to_vec();
        data.extend(b"(".repeat(10_000));
        data.extend(b"N\x94".repeat(10_000));
        data.push(b'.');
        let options = ReadOptions::new();
        let mut budget = Budget::for_file(&options.limits, 0);
        let before = budget.used();
        let (arena, _) = run(&data, Flavor::Zip, &options, &mut budget).unwrap();
        assert_eq!(arena.objs.len(), SHARED);
        // The run keeps only what the arena holds.
        assert_eq!(budget.used() - before, SHARED as u64 * OBJ_COST);
        let limits = ReadLimits {
            max_memory_base: crate::read::budget::FIXED_COST + 100_000,
            max_memory_per_file_byte: 0,
            ..ReadLimits::default()
        };
        assert!(matches!(
            run_with(&data, limits),
            Err(Failure::Limit("max_memory", _))
        ));
    }

    #[test]
    fn longs_decode_like_python() {
        assert!(matches!(long_from_le(&[]), Obj::Int(0)));
        assert!(matches!(long_from_le(&[0xff]), Obj::Int(-1)));
        assert!(matches!(long_from_le(&[0x00, 0x01]), Obj::Int(256)));
        assert!(matches!(long_from_le(&[0x00, 0x80]), Obj::Int(-32768)));
        // 2**63 needs 9 bytes and does not fit.
        assert!(matches!(
            long_from_le(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0]),
            Obj::BigInt(_)
        ));
        // -1 written with redundant sign bytes fits.
        assert!(matches!(long_from_le(&[0xff; 12]), Obj::Int(-1)));
    }

    #[test]
    fn opcode_errors_name_the_defect() {
        assert!(matches!(
            run_err(b"\x80\x02\xff"),
            Failure::Pickle(2, PickleError::UnknownOpcode(0xff))
        ));
        assert!(matches!(
            run_err(b"\x80\x02N"),
            Failure::Pickle(_, PickleError::Truncated)
        ));
        assert!(matches!(
            run_err(b"\x80\x02a."),
            Failure::Pickle(_, PickleError::StackUnderflow)
        ));
        assert!(matches!(
            run_err(b"\x80\x02h\x05."),
            Failure::Pickle(_, PickleError::MemoNotFound(5))
        ));
        assert!(matches!(
            run_err(b"\x80\x09."),
            Failure::Pickle(_, PickleError::UnsupportedProtocol(9))
        ));
        assert!(matches!(
            run_err(b"\x80\x02X\xff\xff\xff\x7f."),
            Failure::Pickle(_, PickleError::Truncated)
        ));
    }

    #[test]
    fn a_mark_hides_what_is_below_it() {
        // N ( a : APPEND inside an empty mark region underflows, as in Python.
        assert!(matches!(
            run_err(b"\x80\x02]N(a."),
            Failure::Pickle(_, PickleError::StackUnderflow)
        ));
    }

    #[test]
    fn text_literals_decode() {
        assert_eq!(decode_string_literal(b"'a\\x41\\n'").unwrap(), b"aA\n");
        assert_eq!(
            decode_raw_unicode_escape(b"caf\\u00e9").unwrap(),
            "caf\u{e9}"
        );
        assert!(decode_string_literal(b"'unterminated").is_none());
    }
}
