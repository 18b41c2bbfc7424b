//! Sharded checkpoints: `model.safetensors.index.json` or `pytorch_model.bin.index.json`,
//! whose `weight_map` names, for each key, the shard file that holds it. The shards are
//! opened (parsed, nothing read) with the index, and read as one state dict in the
//! `weight_map`'s order: each entry points into its shard, so a load reads tensor by tensor
//! from the shards straight into the model, as for a single file.
//!
//! A shard is a plain relative path in the index's directory, and stays there with symlinks
//! resolved: a symlinked shard or subdirectory that leads elsewhere is refused (but for the
//! Hugging Face hub cache's `snapshots/<revision>` → `blobs` links). A shard that is not a
//! regular file (a FIFO) is refused without blocking, and one that is itself an index before
//! it is parsed.

use std::collections::HashMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;
use serde::de::{DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::index::OpenFile;
use super::materialize::Materializer;
use super::{open_single, Format, ReadOptions, Source};
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
    let map = weight_map(bytes)
        .map_err(|e| invalid(format!("not JSON: {e}")))?
        .ok_or_else(|| invalid("no \"weight_map\" object".into()))?;
    let dir = match path.parent() {
        Some(dir) if from_path && dir.as_os_str().is_empty() => PathBuf::from("."),
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
    for (key, file) in &map {
        let file = file
            .as_deref()
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
    let roots = allowed_roots(&dir).map_err(|source| Error::Io {
        path: dir.clone(),
        source,
    })?;
    let mut shards = Vec::with_capacity(names.len());
    for name in names {
        let shard_path = dir.join(&name);
        let real = std::fs::canonicalize(&shard_path).map_err(|source| Error::Io {
            path: shard_path.clone(),
            source,
        })?;
        if !roots.iter().any(|root| real.starts_with(root)) {
            return Err(invalid(format!(
                "the shard {name:?} is {}, outside the index's directory (through a symlink)",
                real.display()
            )));
        }
        // A shard that is itself an index is refused before it is parsed, so that indexes
        // naming each other cannot recurse.
        let shard = open_single(&shard_path, options, |format| {
            (format == Format::ShardedIndex)
                .then(|| invalid(format!("the shard {name:?} is itself an index")))
        })?;
        // The file opened is the one checked, not a symlink swapped in since.
        if !same_file(&shard, &real) {
            return Err(invalid(format!(
                "the shard {name:?} changed while it was opened"
            )));
        }
        shards.push(Arc::new(shard));
    }
    Ok(Shards {
        index: path.to_path_buf(),
        entries,
        shards,
    })
}

/// An index's `weight_map`: each key and its shard's name (`None` for a value that is not
/// a string), in order, a key given twice keeping its first place and its last value, as
/// `serde_json`'s map keeps them; `None` when there is no `weight_map` object.
///
/// The JSON is read without building a tree of it: everything but the `weight_map`'s keys
/// and names is skipped as it is read, so that an index costs about what its keys and
/// names do, whatever else it holds (a tree of `[0,0,0,...]` costs 40 bytes per byte).
type WeightMap = IndexMap<String, Option<String>>;

fn weight_map(bytes: &[u8]) -> Result<Option<WeightMap>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let map = de.deserialize_any(Part::Index)?;
    de.end()?;
    Ok(map.and_then(Found::into_map))
}

/// Which part of an index a value is read as: any other JSON value there is skipped, and
/// reads as nothing.
#[derive(Clone, Copy)]
enum Part {
    /// The top level: an object, whose `weight_map` is kept.
    Index,
    /// The `weight_map`: an object of keys and shard names.
    Map,
    /// A shard's name: a string.
    Name,
}

/// What a [`Part`] found.
enum Found {
    Map(WeightMap),
    Name(String),
}

impl Found {
    fn into_map(self) -> Option<WeightMap> {
        match self {
            Found::Map(m) => Some(m),
            Found::Name(_) => None,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Part {
    type Value = Option<Found>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Part {
    type Value = Option<Found>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        match self {
            Part::Index => {
                let mut found = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "weight_map" {
                        found = map.next_value_seed(Part::Map)?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(found)
            }
            Part::Map => {
                let mut out = WeightMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    let name = match map.next_value_seed(Part::Name)? {
                        Some(Found::Name(name)) => Some(name),
                        _ => None,
                    };
                    out.insert(key, name);
                }
                Ok(Some(Found::Map(out)))
            }
            Part::Name => {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(None)
            }
        }
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(matches!(self, Part::Name).then(|| Found::Name(v.to_string())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// The directories a shard may lie in, symlinks resolved: the index's own directory, and
/// where that is a snapshot of the Hugging Face hub cache (`<repo>/snapshots/<revision>`,
/// whose files are symlinks into `<repo>/blobs`), that repository's `blobs`.
fn allowed_roots(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let root = std::fs::canonicalize(dir)?;
    let mut roots = vec![root.clone()];
    let snapshots = root
        .parent()
        .filter(|p| p.file_name() == Some("snapshots".as_ref()));
    if let Some(repo) = snapshots.and_then(Path::parent) {
        if let Ok(blobs) = std::fs::canonicalize(repo.join("blobs")) {
            if blobs.starts_with(repo) {
                roots.push(blobs);
            }
        }
    }
    Ok(roots)
}

/// Whether `shard` was opened from the file at `real`: the same device and inode.
fn same_file(shard: &OpenFile<'_>, real: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let Source::Mapped(_, file) = &shard.parsed.source else {
            return false;
        };
        match (file.metadata(), std::fs::metadata(real)) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (shard, real);
        true
    }
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

#[cfg(test)]
mod weight_map_tests {
    use super::*;

    /// What reading the index as a `serde_json::Value` gives: the reader's reference.
    fn reference(bytes: &[u8]) -> Result<Option<WeightMap>, ()> {
        let json: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| ())?;
        Ok(json.get("weight_map").and_then(|m| m.as_object()).map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string)))
                .collect()
        }))
    }

    #[test]
    fn the_weight_map_reads_as_a_json_value_would() {
        for text in [
            r#"{"weight_map": {"b": "s1", "a": "s2"}, "metadata": {"total_size": 8}}"#,
            r#"{"metadata": [0, 0, {"x": [1, 2.5, null, true]}], "weight_map": {"a": "s"}}"#,
            r#"{"weight_map": {"a": "s1", "b": "s2", "a": "s3"}}"#,
            r#"{"weight_map": {"a": 1, "b": ["s"], "c": {"d": "s"}, "e": null, "f": "s"}}"#,
            r#"{"weight_map": "s"}"#,
            r#"{"weight_map": {"a": "s"}, "weight_map": [1]}"#,
            r#"{"weight_map": [1], "weight_map": {"a": "s"}}"#,
            r#"{"metadata": {}}"#,
            r#"[{"weight_map": {"a": "s"}}]"#,
            r#""weight_map""#,
            "1",
            "null",
            r#"{"weight_map": {"a": "s"}} x"#,
            r#"{"weight_map": {"a": "s"}"#,
            r#"{"weight_map": {"a": "\u00e9\n"}}"#,
        ] {
            let ours = weight_map(text.as_bytes()).map_err(|_| ());
            assert_eq!(ours, reference(text.as_bytes()), "{text}");
        }
    }
}
