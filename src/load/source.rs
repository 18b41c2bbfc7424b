//! What a load reads from. A source is a state dict in memory ([`StateDict`]) or one whose
//! tensors are still in their files ([`LazyStateDict`]); per entry it yields either a tensor
//! in memory or a tensor's place in a file (dtype, layout, byte range, byte order), and the
//! plan and commit work on that alone.

use crate::read::dcp::ChunkedTensor;
use tch::Tensor;

use crate::read::OpenFile;
use crate::state_dict::{LazyEntry, LazyStateDict, StateDict};
use crate::value::Metadata;

/// A state dict that [`load_state_dict`](crate::load_state_dict) and
/// [`check_state_dict`](crate::check_state_dict) accept: a [`StateDict`] or a
/// [`LazyStateDict`]. Sealed: the crate implements it for these two alone.
pub trait StateDictSource: sealed::Sealed {}

impl StateDictSource for StateDict {}
impl StateDictSource for LazyStateDict<'_> {}

pub(crate) mod sealed {
    /// Gives the crate the state dict behind a [`StateDictSource`](super::StateDictSource).
    pub trait Sealed {
        /// The state dict.
        fn source(&self) -> AnySource<'_>;
    }

    /// A state dict of either kind, opaque outside the crate.
    pub struct AnySource<'s>(pub(crate) super::Any<'s>);

    impl Sealed for crate::StateDict {
        fn source(&self) -> AnySource<'_> {
            AnySource(super::Any::Memory(self))
        }
    }

    impl Sealed for crate::LazyStateDict<'_> {
        fn source(&self) -> AnySource<'_> {
            AnySource(super::Any::Lazy(self))
        }
    }
}

pub(crate) enum Any<'s> {
    Memory(&'s StateDict),
    Lazy(&'s LazyStateDict<'s>),
}

/// Where an entry's values are.
pub(crate) enum Entry<'s> {
    Memory(&'s Tensor),
    /// Tensor `index` of the file's parsed index.
    File(&'s OpenFile<'s>, usize),
    /// A DCP tensor, in chunks.
    Chunked(&'s ChunkedTensor),
}

/// What `load_state_dict` needs of a state dict: keys in order, shapes, `_metadata`, and
/// where each entry's values are.
pub(crate) trait SourceDict {
    fn entry_count(&self) -> usize;
    fn key_at(&self, index: usize) -> &str;
    fn position(&self, key: &str) -> Option<usize>;
    /// The entry's shape, or `None` for a value that is not a tensor.
    fn shape_at(&self, index: usize) -> Option<Vec<i64>>;
    /// Whether the entry has `dst`'s shape; the default asks [`shape_at`](Self::shape_at).
    fn same_shape(&self, index: usize, dst: &Tensor) -> bool {
        self.shape_at(index).is_some_and(|s| s == dst.size())
    }
    fn metadata(&self) -> Option<&Metadata>;
    fn entry(&self, index: usize) -> Entry<'_>;
}

impl SourceDict for StateDict {
    fn entry_count(&self) -> usize {
        self.len()
    }

    fn key_at(&self, index: usize) -> &str {
        self.get_index(index).map_or("", |(k, _)| k)
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.get_index_of(key)
    }

    fn shape_at(&self, index: usize) -> Option<Vec<i64>> {
        let (_, t) = self.get_index(index)?;
        t.defined().then(|| t.size())
    }

    /// One call into libtorch and no allocation: matching a million keys is mostly this.
    fn same_shape(&self, index: usize, dst: &Tensor) -> bool {
        self.get_index(index)
            .is_some_and(|(_, t)| t.defined() && t.f_is_same_size(dst).unwrap_or(false))
    }

    fn metadata(&self) -> Option<&Metadata> {
        StateDict::metadata(self)
    }

    fn entry(&self, index: usize) -> Entry<'_> {
        let (_, t) = self.get_index(index).expect("planned from this state dict");
        Entry::Memory(t)
    }
}

impl SourceDict for LazyStateDict<'_> {
    fn entry_count(&self) -> usize {
        self.len()
    }

    fn key_at(&self, index: usize) -> &str {
        self.get_index(index).map_or("", |(k, _)| k)
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.get_index_of(key)
    }

    fn shape_at(&self, index: usize) -> Option<Vec<i64>> {
        let (_, t) = self.get_index(index)?;
        match t.entry() {
            LazyEntry::Memory(t) if !t.defined() => None,
            _ => Some(t.size()),
        }
    }

    fn same_shape(&self, index: usize, dst: &Tensor) -> bool {
        self.get_index(index).is_some_and(|(_, t)| match t.entry() {
            LazyEntry::File { file, index, .. } => {
                file.parsed.arena.tensors[*index].size() == dst.size()
            }
            LazyEntry::Memory(t) => t.defined() && t.f_is_same_size(dst).unwrap_or(false),
            LazyEntry::Chunked(t) => t.shape == dst.size(),
        })
    }

    fn metadata(&self) -> Option<&Metadata> {
        LazyStateDict::metadata(self)
    }

    fn entry(&self, index: usize) -> Entry<'_> {
        let (_, t) = self.get_index(index).expect("planned from this state dict");
        match t.entry() {
            LazyEntry::File { file, index, .. } => Entry::File(file, *index),
            LazyEntry::Memory(t) => Entry::Memory(t),
            LazyEntry::Chunked(t) => Entry::Chunked(t),
        }
    }
}
