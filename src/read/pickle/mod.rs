//! A restricted pickle machine.
//!
//! It runs the opcodes of pickle protocols 0 to 5 as operations on data and never imports or
//! calls anything. A `GLOBAL` (or `STACK_GLOBAL`, `INST`) that names one of the few callables
//! `torch.save` needs ([`Global`](torch::Global)) is applied as a data constructor by
//! `REDUCE`: a `_rebuild_tensor_v2` call becomes a [`TensorRef`] (a description of a view into
//! a storage, checked later against the storage's real length), an `OrderedDict()` call an
//! empty dict. Only these make tensors, storages and the containers this crate understands.
//!
//! Any other global becomes an opaque class ([`Obj::Class`]): calling it (`REDUCE`, `NEWOBJ`,
//! `NEWOBJ_EX`, `INST`, `OBJ`) makes an [`OpaqueObj`] that records the arguments, and
//! `BUILD`, `APPENDS` and `SETITEMS` on it record its state and items. That is how
//! `argparse.Namespace`, a pickled `nn.Module` or a hostile `os.system('...')` are read: as
//! data, never run. With `weights_only`, such a global is refused with its `module.name`, as
//! `torch.load(weights_only=True)` refuses it. Protocols 2 and 3, which have no `NEWOBJ_EX`,
//! write `cls.__new__(cls, *args, **kwargs)` as a call of
//! `functools.partial(getattr(cls, '__new__'), cls, *args, **kwargs)`; that call is read as
//! the object `NEWOBJ_EX` makes ([`vm`]'s `partial_new`), and nothing else calls an object.
//!
//! Objects live in an arena and refer to each other by index, so that memo references share
//! objects as Python's do (a dict memoized before its `SETITEMS` is seen filled), cycles and
//! deep nesting cost no recursion while parsing, and dropping the arena is flat. Conversion
//! to values (`read::materialize`) is where nesting and memo sharing could explode; it is
//! bounded by a depth limit and a budget of values proportional to the pickle.
//!
//! Why not an existing crate: `serde-pickle` executes no code but maps globals to opaque
//! values after the fact and has no limits on memo expansion or depth; candle's and burn's
//! readers are parts of those frameworks. This machine is small and answers only to the
//! rules above.
//!
//! # Layout
//!
//! - [`opcodes`]: the opcode bytes, named as in CPython's `pickle.py`; the writer
//!   (`crate::write::pickler`) uses them too.
//! - [`vm`]: the machine (stack, marks, memo) and the opcode loop, one function per group of
//!   opcodes.
//! - [`object`]: what the machine builds ([`Obj`] in an [`Arena`], [`TensorRef`],
//!   [`StorageRef`]).
//! - [`torch`]: torch's rebuild semantics (tensors, parameters, storages named by persistent
//!   ids, `BUILD` on a state dict) and the allowlist of globals.

mod object;
pub(crate) mod opcodes;
mod torch;
mod vm;

pub(crate) use crate::error::PickleError;
pub(crate) use object::{
    graph_module_body, Arena, ClassRef, DictObj, Id, Obj, OpaqueObj, StorageRef, TensorRef,
};
pub(crate) use torch::Flavor;
pub(crate) use vm::{run, Failure};
