//! The crate's one error type.

use crate::report::LoadError;

/// Everything that can go wrong in this crate. Each variant names the key or path it is
/// about; causes are chained with `source()`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `load_state_dict` refused the state dict: missing or unexpected keys (strict), or
    /// shapes that differ (always). The model is unchanged. Its `Display` is PyTorch's
    /// message, character for character, followed by hints.
    #[error(transparent)]
    Load(Box<LoadError>),

    /// A name that cannot be a state-dict key or module path.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key or path.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// Two keys of a state dict would get the same name.
    #[error("two keys would both be named {key:?}: {sources:?}")]
    DuplicateKey {
        /// The name they would share.
        key: String,
        /// The keys that would get it.
        sources: Vec<String>,
    },

    /// An order given for a `VarStore`'s variables does not name each of them exactly once.
    #[error(
        "the key order does not match the VarStore: not in the VarStore {unknown:?}, \
         named twice {repeated:?}, left out {left_out:?}"
    )]
    KeyOrder {
        /// Keys in the order that the VarStore lacks.
        unknown: Vec<String>,
        /// Keys the order names more than once.
        repeated: Vec<String>,
        /// Variables of the VarStore that the order leaves out.
        left_out: Vec<String>,
    },

    /// libtorch failed while copying a checked value into the model (a device fault, say).
    /// Tensors copied before this one hold their new values.
    #[error("copying {key:?} into the model failed")]
    Copy {
        /// The key being copied.
        key: String,
        /// libtorch's error.
        #[source]
        source: tch::TchError,
    },
}

impl From<LoadError> for Error {
    fn from(e: LoadError) -> Self {
        Error::Load(Box::new(e))
    }
}
