//! Sharded checkpoints: `model.safetensors.index.json` or `pytorch_model.bin.index.json`,
//! whose `weight_map` names, for each key, the shard file that holds it. The shards are read
//! as one state dict in the `weight_map`'s order.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use super::{Checkpoint, Format, ReadOptions};
use crate::error::Error;
use crate::state_dict::StateDict;

pub(crate) struct Shards {
    index: PathBuf,
    /// Each key and the index of the shard that holds it, in `weight_map` order.
    entries: Vec<(String, usize)>,
    shards: Vec<(PathBuf, Checkpoint<'static>)>,
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
        let shard = Checkpoint::open_with(&shard_path, options)?;
        if shard.format() == Format::ShardedIndex {
            return Err(invalid(format!("the shard {name:?} is itself an index")));
        }
        shards.push((shard_path, shard));
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
        self.shards.iter().map(|(_, s)| s.num_tensors()).sum()
    }

    /// Every shard's state dict, merged in `weight_map` order. A key missing from its shard,
    /// or a tensor no entry of the map names, is an error.
    pub(crate) fn state_dict(&self) -> Result<StateDict, Error> {
        let mut parts: Vec<HashMap<String, tch::Tensor>> = self
            .shards
            .iter()
            .map(|(_, s)| s.state_dict().map(|sd| sd.into_iter().collect()))
            .collect::<Result<_, _>>()?;
        let mut sd = StateDict::with_capacity(self.entries.len());
        for (key, shard) in &self.entries {
            let tensor = parts[*shard].remove(key).ok_or_else(|| Error::ShardIndex {
                path: self.index.clone(),
                reason: format!(
                    "the weight_map puts {key:?} in {}, which lacks it",
                    self.shards[*shard].0.display()
                ),
            })?;
            sd.insert(key.clone(), tensor);
        }
        for (part, (path, _)) in parts.iter().zip(&self.shards) {
            if let Some(extra) = part.keys().min() {
                return Err(Error::ShardIndex {
                    path: path.clone(),
                    reason: format!(
                        "the shard holds {extra:?}, which the weight_map does not name"
                    ),
                });
            }
        }
        Ok(sd)
    }
}
