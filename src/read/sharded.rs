//! Sharded checkpoints: `model.safetensors.index.json` or `pytorch_model.bin.index.json`,
//! whose `weight_map` names, for each key, the shard file that holds it. The shards are
//! opened (parsed, nothing read) with the index, and read as one state dict in the
//! `weight_map`'s order: each entry points into its shard, so a load reads tensor by tensor
//! from the shards straight into the model, as for a single file.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::index::OpenFile;
use super::materialize::Materializer;
use super::{open_single, Format, ReadOptions};
use crate::error::Error;

pub(crate) struct Shards {
    pub(crate) index: PathBuf,
    /// Each key and the index of the shard that holds it, in `weight_map` order.
    entries: Vec<(String, usize)>,
    pub(crate) shards: Vec<Arc<OpenFile<'static>>>,
}

pub(crate) fn parse(
    path: &Path,
    bytes: &[u8],
    from_path: bool,
    options: &ReadOptions,
) -> Result<Shards, Error> {
    let invalid = |reason: String| Error::ShardIndex {
        path: path.to_path_buf(),
        reason,
    };
    let json: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| invalid("no \"weight_map\" object".into()))?;
    let dir = match path.parent() {
        Some(dir) if from_path => dir.to_path_buf(),
        _ => {
            return Err(invalid(
                "a sharded index must be opened by its path, next to its shards".into(),
            ))
        }
    };
    let mut files: HashMap<String, usize> = HashMap::new();
    let mut names: Vec<String> = Vec::new();
    let mut entries = Vec::with_capacity(map.len());
    for (key, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| invalid(format!("the shard of {key:?} is not a string")))?;
        let relative = Path::new(file);
        let plain = relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if file.is_empty() || !plain {
            return Err(invalid(format!(
                "the shard {file:?} of {key:?} is not a plain relative path"
            )));
        }
        let next = names.len();
        let index = *files.entry(file.to_string()).or_insert_with(|| {
            names.push(file.to_string());
            next
        });
        entries.push((key.clone(), index));
    }
    let mut shards = Vec::with_capacity(names.len());
    for name in names {
        let shard_path = dir.join(&name);
        // A shard that is itself an index is refused before it is parsed, so that indexes
        // naming each other cannot recurse.
        let shard = open_single(&shard_path, options, |format| {
            (format == Format::ShardedIndex)
                .then(|| invalid(format!("the shard {name:?} is itself an index")))
        })?;
        shards.push(Arc::new(shard));
    }
    Ok(Shards {
        index: path.to_path_buf(),
        entries,
        shards,
    })
}

impl Shards {
    pub(crate) fn keys(&self) -> Vec<String> {
        self.entries.iter().map(|(k, _)| k.clone()).collect()
    }

    pub(crate) fn num_tensors(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.parsed.arena.tensors.len())
            .sum()
    }

    /// Each key of the `weight_map`, in order, with its shard and the tensor's index in that
    /// shard. A key missing from its shard, or a tensor that no entry of the map names, is an
    /// error. Nothing is read.
    pub(crate) fn resolve(&self) -> Result<Vec<(&str, usize, usize)>, Error> {
        let mut parts: Vec<HashMap<std::borrow::Cow<str>, usize>> =
            Vec::with_capacity(self.shards.len());
        for shard in &self.shards {
            let mut m = Materializer::new(shard);
            let sd = m.state_dict_entries(shard.parsed.arena.root, None)?;
            parts.push(sd.entries.into_iter().collect());
        }
        let mut out = Vec::with_capacity(self.entries.len());
        for (key, shard) in &self.entries {
            let index = parts[*shard]
                .remove(key.as_str())
                .ok_or_else(|| Error::ShardIndex {
                    path: self.index.clone(),
                    reason: format!(
                        "the weight_map puts {key:?} in {}, which lacks it",
                        self.shards[*shard].path.display()
                    ),
                })?;
            out.push((key.as_str(), *shard, index));
        }
        for (part, shard) in parts.iter().zip(&self.shards) {
            if let Some(extra) = part.keys().min() {
                return Err(Error::ShardIndex {
                    path: shard.path.clone(),
                    reason: format!(
                        "the shard holds {extra:?}, which the weight_map does not name"
                    ),
                });
            }
        }
        Ok(out)
    }
}
