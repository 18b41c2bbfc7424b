//! A restricted pickle machine.
//!
//! It runs the opcodes of pickle protocols 0 to 5 as operations on data and never imports or
//! calls anything. A `GLOBAL` (or `STACK_GLOBAL`, `INST`) becomes a value only when it names
//! one of the few callables that `torch.save` needs ([`Global`]); anything else is refused
//! with its `module.name`. `REDUCE` applies those callables as data constructors: a
//! `_rebuild_tensor_v2` call becomes a [`TensorRef`] (a description of a view into a storage,
//! checked later against the storage's real length), an `OrderedDict()` call an empty dict.
//!
//! Objects live in an arena and refer to each other by index, so that memo references share
//! objects as Python's do (a dict memoized before its `SETITEMS` is seen filled), cycles and
//! deep nesting cost no recursion while parsing, and dropping the arena is flat. Conversion
//! to values ([`Arena::convert`]) is where nesting and memo sharing could explode; it is
//! bounded by a depth limit and a budget of values proportional to the pickle.
//!
//! Why not an existing crate: `serde-pickle` executes no code but maps globals to opaque
//! values after the fact and has no limits on memo expansion or depth; candle's and burn's
//! readers are parts of those frameworks. This machine is small and answers only to the
//! rules above.

use std::collections::HashMap;

use tch::Kind;

use super::ReadLimits;
pub(crate) use crate::error::PickleError;

/// An index into the arena.
pub(crate) type Id = u32;

/// The callables and types a checkpoint's pickle may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildTensorV2,
    RebuildTensorV3,
    RebuildParameter,
    RebuildParameterWithState,
    RebuildFromTypeV2,
    /// `torch.FloatStorage` and friends; `None` for `torch.UntypedStorage`.
    StorageType(Option<Kind>),
    TorchSize,
    TorchDevice,
    CodecsEncode,
    Set,
    FrozenSet,
    TensorType,
    ParameterType,
}

impl Global {
    fn name(self) -> &'static str {
        match self {
            Global::OrderedDict => "collections.OrderedDict",
            Global::RebuildTensor => "torch._utils._rebuild_tensor",
            Global::RebuildTensorV2 => "torch._utils._rebuild_tensor_v2",
            Global::RebuildTensorV3 => "torch._utils._rebuild_tensor_v3",
            Global::RebuildParameter => "torch._utils._rebuild_parameter",
            Global::RebuildParameterWithState => "torch._utils._rebuild_parameter_with_state",
            Global::RebuildFromTypeV2 => "torch._tensor._rebuild_from_type_v2",
            Global::StorageType(_) => "a torch storage type",
            Global::TorchSize => "torch.Size",
            Global::TorchDevice => "torch.device",
            Global::CodecsEncode => "_codecs.encode",
            Global::Set => "builtins.set",
            Global::FrozenSet => "builtins.frozenset",
            Global::TensorType => "torch.Tensor",
            Global::ParameterType => "torch.nn.Parameter",
        }
    }
}

/// The result of resolving a `GLOBAL`.
enum Resolved {
    Callable(Global),
    Dtype(Kind),
}

/// The dtype a `torch.<name>` global names, with PyTorch's aliases.
pub(crate) fn dtype_from_name(name: &str) -> Option<Kind> {
    Some(match name {
        "float32" | "float" => Kind::Float,
        "float64" | "double" => Kind::Double,
        "float16" | "half" => Kind::Half,
        "bfloat16" => Kind::BFloat16,
        "int64" | "long" => Kind::Int64,
        "int32" | "int" => Kind::Int,
        "int16" | "short" => Kind::Int16,
        "int8" => Kind::Int8,
        "uint8" => Kind::Uint8,
        "bool" => Kind::Bool,
        "complex64" | "cfloat" => Kind::ComplexFloat,
        "complex128" | "cdouble" => Kind::ComplexDouble,
        "float8_e5m2" => Kind::Float8e5m2,
        "float8_e4m3fn" => Kind::Float8e4m3fn,
        "float8_e5m2fnuz" => Kind::Float8e5m2fnuz,
        "float8_e4m3fnuz" => Kind::Float8e4m3fnuz,
        _ => return None,
    })
}

/// The dtype of a legacy typed storage class (`FloatStorage` -> float32).
pub(crate) fn storage_dtype(name: &str) -> Option<Kind> {
    Some(match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        "ComplexFloatStorage" => Kind::ComplexFloat,
        "ComplexDoubleStorage" => Kind::ComplexDouble,
        _ => return None,
    })
}

/// Why a global was refused: not on the allowlist, or a torch type this crate cannot hold.
pub(crate) enum GlobalRefusal {
    Disallowed,
    UnsupportedDtype,
}

fn resolve_global(module: &str, name: &str) -> Result<Resolved, GlobalRefusal> {
    use Global::*;
    let g = match (module, name) {
        ("collections", "OrderedDict") => OrderedDict,
        ("torch._utils", "_rebuild_tensor") => RebuildTensor,
        ("torch._utils", "_rebuild_tensor_v2") => RebuildTensorV2,
        ("torch._utils", "_rebuild_tensor_v3") => RebuildTensorV3,
        ("torch._utils", "_rebuild_parameter") => RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => RebuildParameterWithState,
        ("torch._tensor", "_rebuild_from_type_v2") => RebuildFromTypeV2,
        ("torch" | "torch.storage", "UntypedStorage") => StorageType(None),
        ("torch", "Size") => TorchSize,
        ("torch", "device") => TorchDevice,
        ("_codecs", "encode") => CodecsEncode,
        ("builtins" | "__builtin__", "set") => Set,
        ("builtins" | "__builtin__", "frozenset") => FrozenSet,
        ("torch" | "torch._tensor", "Tensor") => TensorType,
        ("torch.nn.parameter" | "torch.nn", "Parameter") => ParameterType,
        ("torch", n) if n.ends_with("Storage") => match storage_dtype(n) {
            Some(kind) => StorageType(Some(kind)),
            None if is_torch_storage(n) => return Err(GlobalRefusal::UnsupportedDtype),
            None => return Err(GlobalRefusal::Disallowed),
        },
        ("torch", n) => match dtype_from_name(n) {
            Some(kind) => return Ok(Resolved::Dtype(kind)),
            None if is_torch_dtype(n) => return Err(GlobalRefusal::UnsupportedDtype),
            None => return Err(GlobalRefusal::Disallowed),
        },
        _ => return Err(GlobalRefusal::Disallowed),
    };
    Ok(Resolved::Callable(g))
}

fn is_torch_storage(name: &str) -> bool {
    matches!(
        name,
        "QInt8Storage"
            | "QUInt8Storage"
            | "QInt32Storage"
            | "QUInt4x2Storage"
            | "QUInt2x4Storage"
            | "ComplexHalfStorage"
    )
}

fn is_torch_dtype(name: &str) -> bool {
    matches!(
        name,
        "uint16"
            | "uint32"
            | "uint64"
            | "complex32"
            | "chalf"
            | "qint8"
            | "quint8"
            | "qint32"
            | "quint4x2"
            | "quint2x4"
            | "bits8"
            | "bits16"
            | "float8_e8m0fnu"
            | "float4_e2m1fn_x2"
    )
}

/// A storage named by a persistent id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StorageRef {
    /// The record key (`data/<key>` in a zip, the storage key in a legacy file).
    pub key: String,
    /// The storage's element type; `None` for an untyped (byte) storage.
    pub dtype: Option<Kind>,
    /// Where the storage was saved (`cpu`, `cuda:0`).
    pub location: String,
    /// Legacy views: the element offset into the root storage, and the view's length.
    pub view: Option<(i64, i64)>,
}

/// A tensor described by a rebuild call: a view into a storage, not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TensorRef {
    pub storage: StorageRef,
    pub dtype: Kind,
    /// In elements of `dtype`, from the start of the storage (or legacy view).
    pub offset: i64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
    pub requires_grad: bool,
}

/// An object of the machine.
#[derive(Debug)]
pub(crate) enum Obj {
    None,
    Bool(bool),
    Int(i64),
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Id>),
    Tuple(Vec<Id>),
    Set(Vec<Id>),
    Dict(DictObj),
    Global(Global),
    Storage(StorageRef),
    /// An index into [`Arena::tensors`].
    Tensor(usize),
    Device(String),
    Dtype(Kind),
}

impl Obj {
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Obj::None => "NoneType",
            Obj::Bool(_) => "bool",
            Obj::Int(_) => "int",
            Obj::BigInt(_) => "int beyond 64 bits",
            Obj::Float(_) => "float",
            Obj::Str(_) => "str",
            Obj::Bytes(_) => "bytes",
            Obj::List(_) => "list",
            Obj::Tuple(_) => "tuple",
            Obj::Set(_) => "set",
            Obj::Dict(_) => "dict",
            Obj::Global(_) => "global",
            Obj::Storage(_) => "storage",
            Obj::Tensor(_) => "Tensor",
            Obj::Device(_) => "torch.device",
            Obj::Dtype(_) => "torch.dtype",
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct DictObj {
    pub items: Vec<(Id, Id)>,
    pub ordered: bool,
    /// The `_metadata` attribute a `BUILD` gave a state dict's `OrderedDict`.
    pub metadata: Option<Id>,
}

/// The objects a pickle built, its root, and the tensors it described.
#[derive(Debug)]
pub(crate) struct Arena {
    pub objs: Vec<Obj>,
    pub root: Id,
    pub tensors: Vec<TensorRef>,
}

impl Arena {
    pub(crate) fn get(&self, id: Id) -> &Obj {
        &self.objs[id as usize]
    }
}

/// A failure at a byte offset of the pickle.
#[derive(Debug)]
pub(crate) enum Failure {
    Pickle(u64, PickleError),
    Disallowed(u64, String, String),
    UnsupportedDtype(String),
    Limit(&'static str, u64),
}

type Res<T> = Result<T, Failure>;

/// Which persistent ids the container uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// torch.save's zip format: `('storage', type, key, location, numel)`.
    Zip,
    /// The legacy format: `('storage', type, key, location, numel, view_metadata)`.
    Legacy,
    /// No persistent ids allowed (the legacy header pickles).
    Plain,
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset of the opcode being run, for errors.
    op_pos: usize,
    objs: Vec<Obj>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u32, Id>,
    tensors: Vec<TensorRef>,
    limits: &'a ReadLimits,
    flavor: Flavor,
}

/// Runs the pickle in `data` (which may be followed by other bytes: the legacy format
/// concatenates pickles). Returns the arena and the number of bytes the pickle took.
pub(crate) fn run(
    data: &[u8],
    flavor: Flavor,
    limits: &ReadLimits,
) -> Result<(Arena, usize), Failure> {
    if data.len() as u64 > limits.max_pickle_bytes {
        return Err(Failure::Limit("max_pickle_bytes", limits.max_pickle_bytes));
    }
    let mut m = Machine {
        data,
        pos: 0,
        op_pos: 0,
        objs: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        tensors: Vec::new(),
        limits,
        flavor,
    };
    let root = m.execute()?;
    let used = m.pos;
    Ok((
        Arena {
            objs: m.objs,
            root,
            tensors: m.tensors,
        },
        used,
    ))
}

impl Machine<'_> {
    fn err(&self, e: PickleError) -> Failure {
        Failure::Pickle(self.op_pos as u64, e)
    }

    fn bad(&self, callable: &'static str, reason: impl Into<String>) -> Failure {
        self.err(PickleError::BadArguments {
            callable,
            reason: reason.into(),
        })
    }

    fn take(&mut self, n: usize) -> Res<&[u8]> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(Failure::Pickle(self.op_pos as u64, PickleError::Truncated))?;
        if end > self.data.len() {
            return Err(self.err(PickleError::Truncated));
        }
        let s = &self.data[self.pos..end];
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
    fn line(&mut self) -> Res<&[u8]> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(Failure::Pickle(self.op_pos as u64, PickleError::Truncated))?;
        self.pos += n + 1;
        Ok(&rest[..n])
    }

    fn utf8(&self, b: &[u8]) -> Res<String> {
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| self.err(PickleError::InvalidLiteral))
    }

    fn alloc(&mut self, obj: Obj) -> Res<Id> {
        if self.objs.len() as u64 >= self.limits.max_objects {
            return Err(Failure::Limit("max_objects", self.limits.max_objects));
        }
        let id = self.objs.len() as Id;
        self.objs.push(obj);
        Ok(id)
    }

    fn push(&mut self, obj: Obj) -> Res<()> {
        let id = self.alloc(obj)?;
        self.stack.push(id);
        Ok(())
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

    fn pop_mark(&mut self) -> Res<Vec<Id>> {
        let mark = self
            .marks
            .pop()
            .ok_or(Failure::Pickle(self.op_pos as u64, PickleError::NoMark))?;
        Ok(self.stack.split_off(mark))
    }

    fn memo_put(&mut self, index: u32) -> Res<()> {
        let top = self.top()?;
        if self.memo.len() as u64 >= self.limits.max_memo_entries && !self.memo.contains_key(&index)
        {
            return Err(Failure::Limit(
                "max_memo_entries",
                self.limits.max_memo_entries,
            ));
        }
        self.memo.insert(index, top);
        Ok(())
    }

    fn memo_get(&mut self, index: u32) -> Res<()> {
        let id = *self
            .memo
            .get(&index)
            .ok_or_else(|| self.err(PickleError::MemoNotFound(index)))?;
        self.stack.push(id);
        Ok(())
    }

    fn execute(&mut self) -> Res<Id> {
        loop {
            self.op_pos = self.pos;
            let op = self.byte()?;
            match op {
                // Protocol and framing.
                0x80 => {
                    let proto = self.byte()?;
                    if proto > 5 {
                        return Err(self.err(PickleError::UnsupportedProtocol(proto)));
                    }
                }
                0x95 => {
                    // FRAME: a hint for buffered readers; the length is not needed here.
                    self.u64()?;
                }
                b'.' => {
                    let root = self.pop()?;
                    return Ok(root);
                }
                // Stack manipulation.
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    if self.stack.len() > self.floor() {
                        self.stack.pop();
                    } else {
                        self.pop_mark()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.top()?;
                    self.stack.push(top);
                }
                // Memo.
                b'p' => {
                    let line = self.line()?.to_vec();
                    let index = self.parse_decimal(&line)?;
                    let index =
                        u32::try_from(index).map_err(|_| self.err(PickleError::InvalidLiteral))?;
                    self.memo_put(index)?;
                }
                b'q' => {
                    let i = self.byte()? as u32;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memo_put(i)?;
                }
                b'g' => {
                    let line = self.line()?.to_vec();
                    let index = self.parse_decimal(&line)?;
                    let index =
                        u32::try_from(index).map_err(|_| self.err(PickleError::InvalidLiteral))?;
                    self.memo_get(index)?;
                }
                b'h' => {
                    let i = self.byte()? as u32;
                    self.memo_get(i)?;
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i)?;
                }
                // Constants.
                b'N' => self.push(Obj::None)?,
                0x88 => self.push(Obj::Bool(true))?,
                0x89 => self.push(Obj::Bool(false))?,
                // Integers.
                b'K' => {
                    let v = self.byte()? as i64;
                    self.push(Obj::Int(v))?;
                }
                b'M' => {
                    let v = self.u16()? as i64;
                    self.push(Obj::Int(v))?;
                }
                b'J' => {
                    let v = self.u32()? as i32 as i64;
                    self.push(Obj::Int(v))?;
                }
                0x8a => {
                    let n = self.byte()? as u64;
                    let n = self.len(n)?;
                    let bytes = self.take(n)?.to_vec();
                    self.push(long_from_le(&bytes))?;
                }
                0x8b => {
                    let n = self.u32()? as i32;
                    if n < 0 {
                        return Err(self.err(PickleError::InvalidLiteral));
                    }
                    let n = self.len(n as u64)?;
                    let bytes = self.take(n)?.to_vec();
                    self.push(long_from_le(&bytes))?;
                }
                b'I' => {
                    let line = self.line()?.to_vec();
                    let obj = match line.as_slice() {
                        b"00" => Obj::Bool(false),
                        b"01" => Obj::Bool(true),
                        _ => Obj::Int(self.parse_decimal(&line)?),
                    };
                    self.push(obj)?;
                }
                b'L' => {
                    let line = self.line()?.to_vec();
                    let line = line.strip_suffix(b"L").unwrap_or(&line).to_vec();
                    let v = self.parse_decimal(&line)?;
                    self.push(Obj::Int(v))?;
                }
                // Floats.
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes"));
                    self.push(Obj::Float(v))?;
                }
                b'F' => {
                    let line = self.line()?.to_vec();
                    let v = std::str::from_utf8(&line)
                        .ok()
                        .and_then(|s| s.trim().parse::<f64>().ok())
                        .ok_or_else(|| self.err(PickleError::InvalidLiteral))?;
                    self.push(Obj::Float(v))?;
                }
                // Strings.
                b'X' => {
                    let n = self.u32()? as u64;
                    let n = self.len(n)?;
                    let s = self.take(n)?.to_vec();
                    let s = self.utf8(&s)?;
                    self.push(Obj::Str(s))?;
                }
                0x8c => {
                    let n = self.byte()? as u64;
                    let n = self.len(n)?;
                    let s = self.take(n)?.to_vec();
                    let s = self.utf8(&s)?;
                    self.push(Obj::Str(s))?;
                }
                0x8d => {
                    let n = self.u64()?;
                    let n = self.len(n)?;
                    let s = self.take(n)?.to_vec();
                    let s = self.utf8(&s)?;
                    self.push(Obj::Str(s))?;
                }
                b'V' => {
                    let line = self.line()?.to_vec();
                    let s = decode_raw_unicode_escape(&line)
                        .ok_or_else(|| self.err(PickleError::InvalidLiteral))?;
                    self.push(Obj::Str(s))?;
                }
                // Python 2 strings, decoded as UTF-8 as torch.load does.
                b'T' => {
                    let n = self.u32()? as i32;
                    if n < 0 {
                        return Err(self.err(PickleError::InvalidLiteral));
                    }
                    let n = self.len(n as u64)?;
                    let s = self.take(n)?.to_vec();
                    let s = self.utf8(&s)?;
                    self.push(Obj::Str(s))?;
                }
                b'U' => {
                    let n = self.byte()? as u64;
                    let n = self.len(n)?;
                    let s = self.take(n)?.to_vec();
                    let s = self.utf8(&s)?;
                    self.push(Obj::Str(s))?;
                }
                b'S' => {
                    let line = self.line()?.to_vec();
                    let s = decode_string_literal(&line)
                        .ok_or_else(|| self.err(PickleError::InvalidLiteral))?;
                    let s = self.utf8(&s)?;
                    self.push(Obj::Str(s))?;
                }
                // Bytes.
                b'B' => {
                    let n = self.u32()? as u64;
                    let n = self.len(n)?;
                    let b = self.take(n)?.to_vec();
                    self.push(Obj::Bytes(b))?;
                }
                b'C' => {
                    let n = self.byte()? as u64;
                    let n = self.len(n)?;
                    let b = self.take(n)?.to_vec();
                    self.push(Obj::Bytes(b))?;
                }
                0x8e | 0x96 => {
                    let n = self.u64()?;
                    let n = self.len(n)?;
                    let b = self.take(n)?.to_vec();
                    self.push(Obj::Bytes(b))?;
                }
                0x97 | 0x98 => {
                    return Err(self.err(PickleError::Unsupported("out-of-band buffers")))
                }
                // Containers.
                b')' => self.push(Obj::Tuple(Vec::new()))?,
                b']' => self.push(Obj::List(Vec::new()))?,
                b'}' => self.push(Obj::Dict(DictObj::default()))?,
                0x8f => self.push(Obj::Set(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Obj::Tuple(items))?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < self.floor() + n {
                        return Err(self.err(PickleError::StackUnderflow));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Obj::Tuple(items))?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Obj::List(items))?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.push(Obj::Dict(DictObj {
                        items: pairs,
                        ..DictObj::default()
                    }))?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Obj::Set(items))?;
                }
                b'a' => {
                    let item = self.pop()?;
                    let list = self.top()?;
                    self.extend_list(list, vec![item])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let list = self.top()?;
                    self.extend_list(list, items)?;
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    let dict = self.top()?;
                    self.extend_dict(dict, vec![(key, value)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    let dict = self.top()?;
                    self.extend_dict(dict, pairs)?;
                }
                0x90 => {
                    let items = self.pop_mark()?;
                    let set = self.top()?;
                    match &mut self.objs[set as usize] {
                        Obj::Set(v) => v.extend(items),
                        _ => return Err(self.err(PickleError::Malformed("ADDITEMS on a non-set"))),
                    }
                }
                // Globals.
                b'c' => {
                    let module = self.line()?.to_vec();
                    let name = self.line()?.to_vec();
                    let (module, name) = (self.utf8(&module)?, self.utf8(&name)?);
                    self.push_global(&module, &name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (module, name) = match (self.get(module), self.get(name)) {
                        (Obj::Str(m), Obj::Str(n)) => (m.clone(), n.clone()),
                        _ => {
                            return Err(
                                self.err(PickleError::Malformed("STACK_GLOBAL needs two strings"))
                            )
                        }
                    };
                    self.push_global(&module, &name)?;
                }
                0x82..=0x84 => {
                    return Err(self.err(PickleError::Unsupported("the extension registry")))
                }
                // Calls: only allowlisted constructors, applied as data.
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let args = self.tuple_items(args, "REDUCE")?;
                    let obj = self.call(callable, args)?;
                    self.stack.push(obj);
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let args = self.tuple_items(args, "NEWOBJ")?;
                    let obj = self.call(cls, args)?;
                    self.stack.push(obj);
                }
                0x92 => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    match self.get(kwargs) {
                        Obj::Dict(d) if d.items.is_empty() => {}
                        _ => return Err(self.err(PickleError::Unsupported("keyword arguments"))),
                    }
                    let args = self.tuple_items(args, "NEWOBJ_EX")?;
                    let obj = self.call(cls, args)?;
                    self.stack.push(obj);
                }
                b'i' => {
                    let module = self.line()?.to_vec();
                    let name = self.line()?.to_vec();
                    let (module, name) = (self.utf8(&module)?, self.utf8(&name)?);
                    let args = self.pop_mark()?;
                    self.push_global(&module, &name)?;
                    let cls = self.pop()?;
                    let obj = self.call(cls, args)?;
                    self.stack.push(obj);
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err(self.err(PickleError::StackUnderflow));
                    }
                    let cls = items.remove(0);
                    let obj = self.call(cls, items)?;
                    self.stack.push(obj);
                }
                b'b' => {
                    let state = self.pop()?;
                    let obj = self.top()?;
                    self.build(obj, state)?;
                }
                // Persistent ids: the storages.
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = self.storage(pid)?;
                    self.push(Obj::Storage(storage))?;
                }
                b'P' => {
                    return Err(self.err(PickleError::PersistentId(
                        "a text persistent id; torch.save writes tuples".into(),
                    )))
                }
                other => return Err(self.err(PickleError::UnknownOpcode(other))),
            }
        }
    }

    fn get(&self, id: Id) -> &Obj {
        &self.objs[id as usize]
    }

    fn parse_decimal(&self, line: &[u8]) -> Res<i64> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .ok_or_else(|| self.err(PickleError::InvalidLiteral))
    }

    fn pairs(&self, items: Vec<Id>) -> Res<Vec<(Id, Id)>> {
        if items.len() % 2 != 0 {
            return Err(self.err(PickleError::Malformed("odd number of items for a dict")));
        }
        Ok(items.chunks(2).map(|c| (c[0], c[1])).collect())
    }

    fn extend_list(&mut self, list: Id, items: Vec<Id>) -> Res<()> {
        match &mut self.objs[list as usize] {
            Obj::List(v) => {
                v.extend(items);
                Ok(())
            }
            _ => Err(self.err(PickleError::Malformed("APPEND on a non-list"))),
        }
    }

    fn extend_dict(&mut self, dict: Id, pairs: Vec<(Id, Id)>) -> Res<()> {
        match &mut self.objs[dict as usize] {
            Obj::Dict(d) => {
                d.items.extend(pairs);
                Ok(())
            }
            _ => Err(self.err(PickleError::Malformed("SETITEM on a non-dict"))),
        }
    }

    fn push_global(&mut self, module: &str, name: &str) -> Res<()> {
        match resolve_global(module, name) {
            Ok(Resolved::Callable(g)) => self.push(Obj::Global(g)),
            Ok(Resolved::Dtype(kind)) => self.push(Obj::Dtype(kind)),
            Err(GlobalRefusal::Disallowed) => Err(Failure::Disallowed(
                self.op_pos as u64,
                module.to_string(),
                name.to_string(),
            )),
            Err(GlobalRefusal::UnsupportedDtype) => {
                Err(Failure::UnsupportedDtype(format!("{module}.{name}")))
            }
        }
    }

    fn tuple_items(&self, id: Id, op: &'static str) -> Res<Vec<Id>> {
        match self.get(id) {
            Obj::Tuple(items) => Ok(items.clone()),
            _ => Err(self.bad(op, "arguments are not a tuple")),
        }
    }

    fn int(&self, id: Id, callable: &'static str, what: &str) -> Res<i64> {
        match self.get(id) {
            Obj::Int(i) => Ok(*i),
            Obj::Bool(b) => Ok(i64::from(*b)),
            other => Err(self.bad(
                callable,
                format!("{what} has type {}, not int", other.type_name()),
            )),
        }
    }

    fn ints(&self, id: Id, callable: &'static str, what: &str) -> Res<Vec<i64>> {
        let items = match self.get(id) {
            Obj::Tuple(v) | Obj::List(v) => v,
            other => {
                return Err(self.bad(
                    callable,
                    format!("{what} has type {}, not tuple", other.type_name()),
                ))
            }
        };
        items.iter().map(|&i| self.int(i, callable, what)).collect()
    }

    fn boolean(&self, id: Id, callable: &'static str, what: &str) -> Res<bool> {
        match self.get(id) {
            Obj::Bool(b) => Ok(*b),
            Obj::Int(i) => Ok(*i != 0),
            other => Err(self.bad(
                callable,
                format!("{what} has type {}, not bool", other.type_name()),
            )),
        }
    }

    fn string(&self, id: Id, callable: &'static str, what: &str) -> Res<String> {
        match self.get(id) {
            Obj::Str(s) => Ok(s.clone()),
            other => Err(self.bad(
                callable,
                format!("{what} has type {}, not str", other.type_name()),
            )),
        }
    }

    /// Applies an allowlisted callable to its arguments.
    fn call(&mut self, callable: Id, args: Vec<Id>) -> Res<Id> {
        let g = match self.get(callable) {
            Obj::Global(g) => *g,
            other => return Err(self.err(PickleError::NotCallable(other.type_name()))),
        };
        let name = g.name();
        match g {
            Global::OrderedDict => {
                let items = match args.as_slice() {
                    [] => Vec::new(),
                    [pairs] => self.pair_list(*pairs, name)?,
                    _ => return Err(self.bad(name, "takes at most one argument")),
                };
                self.alloc(Obj::Dict(DictObj {
                    items,
                    ordered: true,
                    metadata: None,
                }))
            }
            Global::RebuildTensor | Global::RebuildTensorV2 | Global::RebuildTensorV3 => {
                self.rebuild_tensor(g, &args)
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                let expected = if g == Global::RebuildParameter { 3 } else { 4 };
                if args.len() != expected {
                    return Err(self.bad(
                        name,
                        format!("takes {expected} arguments, got {}", args.len()),
                    ));
                }
                let requires_grad = self.boolean(args[1], name, "requires_grad")?;
                match self.get(args[0]) {
                    Obj::Tensor(t) => {
                        let t = *t;
                        self.tensors[t].requires_grad = requires_grad;
                        Ok(args[0])
                    }
                    other => Err(self.bad(
                        name,
                        format!("data has type {}, not Tensor", other.type_name()),
                    )),
                }
            }
            Global::RebuildFromTypeV2 => {
                if args.len() != 4 {
                    return Err(self.bad(name, format!("takes 4 arguments, got {}", args.len())));
                }
                match self.get(args[1]) {
                    Obj::Global(Global::TensorType | Global::ParameterType) => {}
                    _ => {
                        return Err(
                            self.bad(name, "only torch.Tensor and nn.Parameter can be rebuilt")
                        )
                    }
                }
                match self.get(args[0]) {
                    Obj::Global(
                        Global::RebuildTensor
                        | Global::RebuildTensorV2
                        | Global::RebuildTensorV3
                        | Global::RebuildParameter
                        | Global::RebuildParameterWithState,
                    ) => {}
                    _ => return Err(self.bad(name, "the function is not a tensor rebuild")),
                }
                let inner = self.tuple_items(args[2], name)?;
                // The state (Python attributes set on the tensor) is data this crate has no
                // place for; it is dropped.
                self.call(args[0], inner)
            }
            Global::TorchSize => {
                let dims = match args.as_slice() {
                    [] => Vec::new(),
                    [d] => match self.get(*d) {
                        Obj::Tuple(v) | Obj::List(v) => v.clone(),
                        _ => return Err(self.bad(name, "takes a tuple")),
                    },
                    _ => return Err(self.bad(name, "takes one argument")),
                };
                for &d in &dims {
                    self.int(d, name, "a dimension")?;
                }
                self.alloc(Obj::Tuple(dims))
            }
            Global::TorchDevice => {
                let device = match args.as_slice() {
                    [t] => self.string(*t, name, "the device type")?,
                    [t, i] => {
                        let t = self.string(*t, name, "the device type")?;
                        let i = self.int(*i, name, "the device index")?;
                        format!("{t}:{i}")
                    }
                    _ => return Err(self.bad(name, "takes one or two arguments")),
                };
                self.alloc(Obj::Device(device))
            }
            Global::CodecsEncode => {
                let (text, encoding) = match args.as_slice() {
                    [t] => (self.string(*t, name, "the text")?, "utf-8".to_string()),
                    [t, e] => (
                        self.string(*t, name, "the text")?,
                        self.string(*e, name, "the encoding")?,
                    ),
                    _ => return Err(self.bad(name, "takes one or two arguments")),
                };
                let bytes = match encoding.to_ascii_lowercase().as_str() {
                    "latin1" | "latin-1" | "iso-8859-1" => text
                        .chars()
                        .map(|c| u8::try_from(u32::from(c)).ok())
                        .collect::<Option<Vec<u8>>>()
                        .ok_or_else(|| self.bad(name, "text outside latin-1"))?,
                    "utf-8" | "utf8" => text.into_bytes(),
                    _ => return Err(self.bad(name, format!("unsupported encoding {encoding:?}"))),
                };
                self.alloc(Obj::Bytes(bytes))
            }
            Global::Set | Global::FrozenSet => {
                let items = match args.as_slice() {
                    [] => Vec::new(),
                    [items] => match self.get(*items) {
                        Obj::List(v) | Obj::Tuple(v) | Obj::Set(v) => v.clone(),
                        _ => return Err(self.bad(name, "takes a list")),
                    },
                    _ => return Err(self.bad(name, "takes one argument")),
                };
                self.alloc(Obj::Set(items))
            }
            Global::StorageType(_) | Global::TensorType | Global::ParameterType => {
                Err(self.err(PickleError::NotCallable(name)))
            }
        }
    }

    fn pair_list(&self, id: Id, callable: &'static str) -> Res<Vec<(Id, Id)>> {
        let items = match self.get(id) {
            Obj::List(v) | Obj::Tuple(v) => v,
            _ => return Err(self.bad(callable, "takes a list of pairs")),
        };
        items
            .iter()
            .map(|&p| match self.get(p) {
                Obj::Tuple(kv) | Obj::List(kv) if kv.len() == 2 => Ok((kv[0], kv[1])),
                _ => Err(self.bad(callable, "takes a list of pairs")),
            })
            .collect()
    }

    fn rebuild_tensor(&mut self, g: Global, args: &[Id]) -> Res<Id> {
        let name = g.name();
        let (min, max) = match g {
            Global::RebuildTensor => (4, 4),
            Global::RebuildTensorV2 => (6, 7),
            _ => (7, 8),
        };
        if args.len() < min || args.len() > max {
            return Err(self.bad(
                name,
                format!("takes {min} to {max} arguments, got {}", args.len()),
            ));
        }
        let storage = match self.get(args[0]) {
            Obj::Storage(s) => s.clone(),
            other => return Err(self.bad(name, format!("storage has type {}", other.type_name()))),
        };
        let offset = self.int(args[1], name, "storage_offset")?;
        let size = self.ints(args[2], name, "size")?;
        let stride = self.ints(args[3], name, "stride")?;
        let requires_grad = if args.len() > 4 {
            self.boolean(args[4], name, "requires_grad")?
        } else {
            false
        };
        let dtype = if g == Global::RebuildTensorV3 {
            match self.get(args[6]) {
                Obj::Dtype(k) => *k,
                other => {
                    return Err(self.bad(name, format!("dtype has type {}", other.type_name())))
                }
            }
        } else {
            storage.dtype.ok_or_else(|| {
                self.bad(name, "an untyped storage needs _rebuild_tensor_v3's dtype")
            })?
        };
        if size.len() != stride.len() {
            return Err(self.bad(name, "size and stride differ in length"));
        }
        if self.tensors.len() as u64 >= self.limits.max_tensors {
            return Err(Failure::Limit("max_tensors", self.limits.max_tensors));
        }
        let index = self.tensors.len();
        self.tensors.push(TensorRef {
            storage,
            dtype,
            offset,
            size,
            stride,
            requires_grad,
        });
        self.alloc(Obj::Tensor(index))
    }

    fn storage(&self, pid: Id) -> Res<StorageRef> {
        let bad = |reason: &str| self.err(PickleError::PersistentId(reason.to_string()));
        let items = match self.get(pid) {
            Obj::Tuple(items) => items,
            other => {
                return Err(bad(&format!(
                    "a value of type {}, not a tuple",
                    other.type_name()
                )))
            }
        };
        let expected = match self.flavor {
            Flavor::Zip => 5,
            Flavor::Legacy => 6,
            Flavor::Plain => return Err(bad("persistent ids are not allowed here")),
        };
        if items.len() != expected {
            return Err(bad(&format!("{} items, expected {expected}", items.len())));
        }
        match self.get(items[0]) {
            Obj::Str(s) if s == "storage" => {}
            _ => return Err(bad("the first item is not 'storage'")),
        }
        let dtype = match self.get(items[1]) {
            Obj::Global(Global::StorageType(kind)) => *kind,
            _ => return Err(bad("the second item is not a storage type")),
        };
        let key = match self.get(items[2]) {
            Obj::Str(s) => s.clone(),
            Obj::Int(i) => i.to_string(),
            _ => return Err(bad("the key is not a str")),
        };
        let location = match self.get(items[3]) {
            Obj::Str(s) => s.clone(),
            _ => return Err(bad("the location is not a str")),
        };
        match self.get(items[4]) {
            Obj::Int(n) if *n >= 0 => {}
            _ => return Err(bad("the size is not a non-negative int")),
        }
        let view = if expected == 6 {
            match self.get(items[5]) {
                Obj::None => None,
                Obj::Tuple(v) if v.len() == 3 => {
                    let offset = match self.get(v[1]) {
                        Obj::Int(i) if *i >= 0 => *i,
                        _ => return Err(bad("a view offset that is not a non-negative int")),
                    };
                    let size = match self.get(v[2]) {
                        Obj::Int(i) if *i >= 0 => *i,
                        _ => return Err(bad("a view size that is not a non-negative int")),
                    };
                    Some((offset, size))
                }
                _ => return Err(bad("view metadata that is not None or (key, offset, size)")),
            }
        } else {
            None
        };
        Ok(StorageRef {
            key,
            dtype,
            location,
            view,
        })
    }

    fn build(&mut self, obj: Id, state: Id) -> Res<()> {
        match self.get(obj) {
            Obj::Dict(_) => {
                // OrderedDict.__reduce__ gives the instance __dict__ as state: a dict, or a
                // (dict, slots) pair. A state dict's `_metadata` lives there.
                let attrs = match self.get(state) {
                    Obj::Dict(d) => Some(d),
                    Obj::Tuple(v) if v.len() == 2 => match self.get(v[0]) {
                        Obj::Dict(d) => Some(d),
                        Obj::None => None,
                        _ => return Err(self.err(PickleError::BadBuild("dict with this state"))),
                    },
                    Obj::None => None,
                    _ => return Err(self.err(PickleError::BadBuild("dict with this state"))),
                };
                let metadata = attrs.and_then(|d| {
                    d.items.iter().find_map(|&(k, v)| match self.get(k) {
                        Obj::Str(s) if s == "_metadata" => Some(v),
                        _ => None,
                    })
                });
                if let Some(m) = metadata {
                    if let Obj::Dict(d) = &mut self.objs[obj as usize] {
                        d.metadata = Some(m);
                    }
                }
                Ok(())
            }
            // Python attributes on a tensor or parameter: nothing to keep.
            Obj::Tensor(_) => Ok(()),
            other => Err(self.err(PickleError::BadBuild(other.type_name()))),
        }
    }
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

    fn limits() -> ReadLimits {
        ReadLimits::default()
    }

    fn run_ok(data: &[u8]) -> Arena {
        run(data, Flavor::Zip, &limits()).unwrap().0
    }

    fn run_err(data: &[u8]) -> Failure {
        run(data, Flavor::Zip, &limits()).unwrap_err()
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
    fn errors_name_the_defect() {
        assert!(matches!(
            run_err(b"\x80\x02cos\nsystem\n."),
            Failure::Disallowed(2, ref m, ref n) if m == "os" && n == "system"
        ));
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
        assert!(matches!(
            run_err(b"\x80\x02ctorch\nuint16\n."),
            Failure::UnsupportedDtype(ref n) if n == "torch.uint16"
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
