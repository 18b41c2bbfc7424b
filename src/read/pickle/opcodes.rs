//! The pickle opcodes, named as in CPython's `pickle.py`, grouped by the protocol that added
//! them. The machine ([`super::vm`]) dispatches on them and the writer
//! (`crate::write::pickler`) emits them.

// Protocol 0 and 1.
/// Pushes a mark on the stack.
pub(crate) const MARK: u8 = b'(';
/// Ends the pickle; the top of the stack is its value.
pub(crate) const STOP: u8 = b'.';
/// Discards the top of the stack.
pub(crate) const POP: u8 = b'0';
/// Discards the stack down to and including the last mark.
pub(crate) const POP_MARK: u8 = b'1';
/// Duplicates the top of the stack.
pub(crate) const DUP: u8 = b'2';
/// A float as decimal text.
pub(crate) const FLOAT: u8 = b'F';
/// An int as decimal text (`00` and `01` are the bools).
pub(crate) const INT: u8 = b'I';
/// A 4-byte signed int.
pub(crate) const BININT: u8 = b'J';
/// A 1-byte unsigned int.
pub(crate) const BININT1: u8 = b'K';
/// A long as decimal text, with an optional `L`.
pub(crate) const LONG: u8 = b'L';
/// A 2-byte unsigned int.
pub(crate) const BININT2: u8 = b'M';
/// `None`.
pub(crate) const NONE: u8 = b'N';
/// A persistent id as text.
pub(crate) const PERSID: u8 = b'P';
/// A persistent id taken from the stack.
pub(crate) const BINPERSID: u8 = b'Q';
/// Calls a callable with a tuple of arguments.
pub(crate) const REDUCE: u8 = b'R';
/// A Python 2 string as a quoted literal.
pub(crate) const STRING: u8 = b'S';
/// A Python 2 string with a 4-byte length.
pub(crate) const BINSTRING: u8 = b'T';
/// A Python 2 string with a 1-byte length.
pub(crate) const SHORT_BINSTRING: u8 = b'U';
/// A str as raw-unicode-escape text.
pub(crate) const UNICODE: u8 = b'V';
/// A UTF-8 str with a 4-byte length.
pub(crate) const BINUNICODE: u8 = b'X';
/// Appends the top of the stack to the list below it.
pub(crate) const APPEND: u8 = b'a';
/// Sets an object's state (`__setstate__` or its `__dict__`).
pub(crate) const BUILD: u8 = b'b';
/// Pushes `module.name`, both as text lines.
pub(crate) const GLOBAL: u8 = b'c';
/// A dict of the items above the last mark.
pub(crate) const DICT: u8 = b'd';
/// An empty dict.
pub(crate) const EMPTY_DICT: u8 = b'}';
/// Appends the items above the last mark to the list below it.
pub(crate) const APPENDS: u8 = b'e';
/// Pushes a memo entry; the index as decimal text.
pub(crate) const GET: u8 = b'g';
/// Pushes a memo entry; a 1-byte index.
pub(crate) const BINGET: u8 = b'h';
/// Builds an instance of `module.name` from the items above the last mark.
pub(crate) const INST: u8 = b'i';
/// Pushes a memo entry; a 4-byte index.
pub(crate) const LONG_BINGET: u8 = b'j';
/// A list of the items above the last mark.
pub(crate) const LIST: u8 = b'l';
/// An empty list.
pub(crate) const EMPTY_LIST: u8 = b']';
/// Builds an instance of the first item above the last mark from the others.
pub(crate) const OBJ: u8 = b'o';
/// Stores the top of the stack in the memo; the index as decimal text.
pub(crate) const PUT: u8 = b'p';
/// Stores the top of the stack in the memo; a 1-byte index.
pub(crate) const BINPUT: u8 = b'q';
/// Stores the top of the stack in the memo; a 4-byte index.
pub(crate) const LONG_BINPUT: u8 = b'r';
/// Sets one key of the dict below the key and value.
pub(crate) const SETITEM: u8 = b's';
/// A tuple of the items above the last mark.
pub(crate) const TUPLE: u8 = b't';
/// An empty tuple.
pub(crate) const EMPTY_TUPLE: u8 = b')';
/// Sets the pairs above the last mark in the dict below it.
pub(crate) const SETITEMS: u8 = b'u';
/// A big-endian 8-byte float.
pub(crate) const BINFLOAT: u8 = b'G';

// Protocol 2.
/// The protocol number.
pub(crate) const PROTO: u8 = 0x80;
/// `cls.__new__(cls, *args)`.
pub(crate) const NEWOBJ: u8 = 0x81;
/// An extension registry code, 1 byte.
pub(crate) const EXT1: u8 = 0x82;
/// An extension registry code, 2 bytes.
pub(crate) const EXT2: u8 = 0x83;
/// An extension registry code, 4 bytes.
pub(crate) const EXT4: u8 = 0x84;
/// A tuple of the top item.
pub(crate) const TUPLE1: u8 = 0x85;
/// A tuple of the top two items.
pub(crate) const TUPLE2: u8 = 0x86;
/// A tuple of the top three items.
pub(crate) const TUPLE3: u8 = 0x87;
/// `True`.
pub(crate) const NEWTRUE: u8 = 0x88;
/// `False`.
pub(crate) const NEWFALSE: u8 = 0x89;
/// A little-endian two's complement int with a 1-byte length.
pub(crate) const LONG1: u8 = 0x8a;
/// A little-endian two's complement int with a 4-byte length.
pub(crate) const LONG4: u8 = 0x8b;

// Protocol 3.
/// Bytes with a 4-byte length.
pub(crate) const BINBYTES: u8 = b'B';
/// Bytes with a 1-byte length.
pub(crate) const SHORT_BINBYTES: u8 = b'C';

// Protocol 4.
/// A UTF-8 str with a 1-byte length.
pub(crate) const SHORT_BINUNICODE: u8 = 0x8c;
/// A UTF-8 str with an 8-byte length.
pub(crate) const BINUNICODE8: u8 = 0x8d;
/// Bytes with an 8-byte length.
pub(crate) const BINBYTES8: u8 = 0x8e;
/// An empty set.
pub(crate) const EMPTY_SET: u8 = 0x8f;
/// Adds the items above the last mark to the set below it.
pub(crate) const ADDITEMS: u8 = 0x90;
/// A frozenset of the items above the last mark.
pub(crate) const FROZENSET: u8 = 0x91;
/// `cls.__new__(cls, *args, **kwargs)`.
pub(crate) const NEWOBJ_EX: u8 = 0x92;
/// Pushes `module.name`, both taken from the stack.
pub(crate) const STACK_GLOBAL: u8 = 0x93;
/// Stores the top of the stack in the memo at the next index.
pub(crate) const MEMOIZE: u8 = 0x94;
/// The length of the next frame, a hint for buffered readers.
pub(crate) const FRAME: u8 = 0x95;

// Protocol 5.
/// A bytearray with an 8-byte length.
pub(crate) const BYTEARRAY8: u8 = 0x96;
/// An out-of-band buffer.
pub(crate) const NEXT_BUFFER: u8 = 0x97;
/// Makes the buffer on top of the stack read-only.
pub(crate) const READONLY_BUFFER: u8 = 0x98;
