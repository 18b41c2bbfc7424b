//! Key surgery shared by [`StateDict`](super::StateDict) and
//! [`LazyStateDict`](super::LazyStateDict): both are ordered maps from key to an entry with a
//! `_metadata`, and PyTorch's key manipulations do not care what the entries are.

use indexmap::IndexMap;

use crate::error::Error;
use crate::value::Metadata;

/// An insertion-ordered map from key to entry, hashed fast: matching a million keys spends
/// its time hashing them.
pub(crate) type Map<V> = IndexMap<String, V, foldhash::fast::RandomState>;

/// `consume_prefix_in_state_dict_if_present`: see `StateDict::strip_prefix`.
pub(crate) fn strip_prefix<V>(
    map: &mut Map<V>,
    metadata: &mut Option<Metadata>,
    prefix: &str,
) -> usize {
    let prefixed: Vec<String> = map
        .keys()
        .filter(|k| k.starts_with(prefix))
        .cloned()
        .collect();
    for key in &prefixed {
        if let Some(value) = map.shift_remove(key) {
            map.insert(key[prefix.len()..].to_string(), value);
        }
    }
    if let Some(metadata) = metadata {
        let bare = prefix.replace('.', "");
        let keys: Vec<String> = metadata.keys().cloned().collect();
        for key in keys {
            // '' belongs to the wrapper (DataParallel itself); 'module' is the model's
            // root and becomes ''.
            if key.is_empty() {
                continue;
            }
            if key == bare || key.starts_with(prefix) {
                if let Some(value) = metadata.shift_remove(&key) {
                    let new_key = key.get(prefix.len()..).unwrap_or("").to_string();
                    metadata.insert(new_key, value);
                }
            }
        }
    }
    prefixed.len()
}

/// See `StateDict::add_prefix`.
pub(crate) fn add_prefix<V>(map: &mut Map<V>, metadata: &mut Option<Metadata>, prefix: &str) {
    let entries = std::mem::take(map);
    *map = entries
        .into_iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v))
        .collect();
    if let Some(old) = metadata.take() {
        let renamed = old
            .into_iter()
            .map(|(k, v)| {
                let k = if k.is_empty() {
                    prefix.strip_suffix('.').unwrap_or(prefix).to_string()
                } else {
                    format!("{prefix}{k}")
                };
                (k, v)
            })
            .collect();
        *metadata = Some(renamed);
    }
}

/// See `StateDict::rename`.
pub(crate) fn rename<V, F: FnMut(&str) -> String>(map: &mut Map<V>, mut f: F) -> Result<(), Error> {
    let mut renamed: Map<&str> = IndexMap::with_capacity_and_hasher(map.len(), Default::default());
    for key in map.keys() {
        let new_key = f(key);
        if let Some(first) = renamed.insert(new_key.clone(), key.as_str()) {
            return Err(Error::DuplicateKey {
                key: new_key,
                sources: vec![first.to_string(), key.clone()],
            });
        }
    }
    let new_keys: Vec<String> = renamed.into_keys().collect();
    let entries = std::mem::take(map);
    *map = new_keys.into_iter().zip(entries.into_values()).collect();
    Ok(())
}

/// See `StateDict::rename_prefix`.
pub(crate) fn rename_prefix<V>(
    map: &mut Map<V>,
    metadata: &mut Option<Metadata>,
    from: &str,
    to: &str,
) -> Result<usize, Error> {
    let mut changed = 0;
    rename(map, |k| match k.strip_prefix(from) {
        Some(rest) => {
            changed += 1;
            format!("{to}{rest}")
        }
        None => k.to_string(),
    })?;
    if let (Some(metadata), Some(from_path), Some(to_path)) = (
        metadata.as_mut(),
        from.strip_suffix('.'),
        to.strip_suffix('.'),
    ) {
        let renamed: Metadata = std::mem::take(metadata)
            .into_iter()
            .map(|(k, v)| {
                let k = if k == from_path {
                    to_path.to_string()
                } else if let Some(rest) = k.strip_prefix(from) {
                    format!("{to}{rest}")
                } else {
                    k
                };
                (k, v)
            })
            .collect();
        *metadata = renamed;
    }
    Ok(changed)
}

/// The table that `Display` prints for a state dict: a title, then one row per entry with
/// its columns aligned.
pub(crate) fn write_table(
    f: &mut std::fmt::Formatter<'_>,
    title: &str,
    rows: &[Vec<String>],
) -> std::fmt::Result {
    write!(f, "{title}")?;
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        write!(f, "\n ")?;
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                write!(f, " {cell}")?;
            } else {
                write!(f, " {cell:<w$} ", w = widths[i])?;
            }
        }
    }
    Ok(())
}
