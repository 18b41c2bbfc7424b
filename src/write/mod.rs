//! Writing checkpoints that Python reads: torch.save's zip format and safetensors.
//!
//! Files are written to a new temporary file beside the target and renamed into place
//! ([`atomic`]), so a failed or concurrent save never leaves a half-written checkpoint, and
//! tensors memory-mapped from the old file stay valid.

mod atomic;
mod pickler;

use std::collections::HashMap;
use std::io::{Cursor, Seek, Write};
use std::path::Path;

use safetensors::tensor::{Dtype, View};
use tch::Tensor;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use self::atomic::write_atomically;
use crate::dtype;
use crate::error::Error;
use crate::read::Format;
use crate::state_dict::StateDict;
use crate::value::Value;

/// torch.save's storage alignment: each `data/<key>` record starts at a multiple of 64.
const ALIGNMENT: u16 = 64;

/// How [`Value::save_with`] writes.
///
/// By default a save is what `torch.load(path, weights_only=True)` accepts: tensors and
/// plain values, and objects refused ([`Error::Unwritable`]). A checkpoint that holds
/// objects (an `argparse.Namespace` of options, omegaconf configs, a Lightning
/// `AttributeDict`) can be written back as it came with [`objects`](Self::objects), so that
/// a training script resumes from a checkpoint edited in Rust:
///
/// ```no_run
/// # fn main() -> Result<(), tch_state_dict::Error> {
/// use tch_state_dict::{SaveOptions, Value};
///
/// let ckpt = Value::load("last.ckpt")?;
/// // ... edit it: a new head, a stripped prefix ...
/// ckpt.save_with("edited.ckpt", &SaveOptions::new().objects(true))?;
/// // Python: torch.load("edited.ckpt", weights_only=False), where the classes import.
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SaveOptions {
    pub(crate) objects: bool,
}

impl SaveOptions {
    /// The default: what `torch.load(weights_only=True)` accepts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes each [`Object`](crate::Object) as the pickle that was read made it (default:
    /// `false`, objects refused): its class or function as a global, its arguments by
    /// `NEWOBJ` (`cls.__new__(cls, *args)`), `NEWOBJ_EX` (with keyword arguments) or
    /// `REDUCE` (a call), as it was made ([`Object::made_by_new`](crate::Object::made_by_new)),
    /// then what `APPENDS` and `SETITEMS` added and its `BUILD` state; each
    /// [`Value::Global`] as the global it names; and references back
    /// ([`Value::Recursive`]) to the objects that hold them, as the cycles they were.
    /// `torch.load(path, weights_only=False)`, in an environment where the classes import,
    /// gives the same objects back.
    ///
    /// Such a file is no longer one that `weights_only=True` accepts, and loading it runs the
    /// constructors it names, which is why this is not the default: a faithful save of a
    /// hostile file (one that names `os.system`) writes that call back. What a faithful save
    /// cannot give back: sharing that was no cycle (the reader made each shared value
    /// again, so it is written twice; tensors still share their storage, but two references
    /// to one `nn.Parameter`, tied weights in a pickled module, become two tensors, so an
    /// optimizer state saved beside the module no longer matches its parameters), values
    /// the reader turned into plain ones (a numpy array is written as a tensor, a path or a
    /// datetime as a string, a numpy scalar as a number, a `torch.Size` as a tuple, a
    /// `bytearray` as bytes), `nn.Parameter` and tensor subclasses, written as tensors with
    /// their `requires_grad`, and attributes set on a tensor object.
    pub fn objects(mut self, objects: bool) -> Self {
        self.objects = objects;
        self
    }
}

impl StateDict {
    /// `torch.save(state_dict, path)`, or `safetensors.torch.save_file` for a path ending in
    /// `.safetensors`. The torch format is the zip of PyTorch 1.6 and later, protocol 2, an
    /// `OrderedDict` with `_metadata` when known, storages aligned to 64 bytes: what
    /// `torch.load(path, weights_only=True)` accepts. Tensors on other devices are copied to
    /// the CPU. Tensors that share a storage (tied weights, views of one buffer) share one
    /// storage in the file, each at its offset with its strides, as `torch.save` writes
    /// them; what is written of a storage is the elements its tensors span, so a slice of
    /// a large buffer writes only itself and an expanded tensor (stride 0) its one element.
    ///
    /// safetensors keeps no order (the crate sorts tensors by dtype, then name) and no
    /// `_metadata`; it keeps [`safetensors_metadata`](Self::safetensors_metadata).
    ///
    /// The file is replaced whole or not at all: the bytes go to a new temporary file in
    /// the same directory (`.{name}.tch-state-dict-XXXXXX.tmp`, never following a symlink),
    /// which takes the old file's permissions, is fsynced and renamed over `path`, and the
    /// directory is fsynced. Of two saves to one path at once, the later rename wins; the
    /// file is never a mix. A symlink at `path` is replaced, not followed. Debris that a
    /// process killed during a save left is removed by the next save to the same path.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the file cannot be written (a directory without write
    /// permission, a full disk); [`Error::Unwritable`] when `path` is a directory, or for
    /// an undefined tensor or a dtype the format cannot hold. The old file, if any, is
    /// unchanged.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("safetensors") => Format::Safetensors,
            _ => Format::TorchZip,
        };
        self.save_as(path, format)
    }

    /// Saves in the given format ([`Format::TorchZip`] or [`Format::Safetensors`]),
    /// whatever the path's extension.
    ///
    /// # Errors
    ///
    /// As [`save`](Self::save); [`Error::Unwritable`] for a format that cannot be written.
    pub fn save_as(&self, path: impl AsRef<Path>, format: Format) -> Result<(), Error> {
        let path = path.as_ref();
        match format {
            Format::TorchZip => {
                let value = Value::from(self.shallow_clone());
                write_atomically(path, |file| write_torch(path, &value, false, file))
            }
            Format::Safetensors => write_atomically(path, |file| {
                let bytes = self.to_safetensors(path)?;
                file.write_all(&bytes).map_err(|source| Error::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }),
            other => Err(Error::Unwritable {
                path: path.to_path_buf(),
                what: "a state dict".into(),
                reason: format!("{other:?} cannot be written"),
            }),
        }
    }

    /// The bytes [`save_as`](Self::save_as) would write.
    ///
    /// # Errors
    ///
    /// As [`save_as`](Self::save_as).
    pub fn to_bytes(&self, format: Format) -> Result<Vec<u8>, Error> {
        let path = Path::new("<bytes>");
        match format {
            Format::TorchZip => {
                let mut out = Cursor::new(Vec::new());
                write_torch(path, &Value::from(self.shallow_clone()), false, &mut out)?;
                Ok(out.into_inner())
            }
            Format::Safetensors => self.to_safetensors(path),
            other => Err(Error::Unwritable {
                path: path.to_path_buf(),
                what: "a state dict".into(),
                reason: format!("{other:?} cannot be written"),
            }),
        }
    }

    fn to_safetensors(&self, path: &Path) -> Result<Vec<u8>, Error> {
        let mut views = Vec::with_capacity(self.len());
        for (key, t) in self.iter() {
            views.push((key.to_string(), SafetensorsView::new(path, key, t)?));
        }
        let metadata: Option<HashMap<String, String>> = self
            .safetensors_metadata()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        safetensors::serialize(views, metadata).map_err(|source| Error::Safetensors {
            path: path.to_path_buf(),
            source,
        })
    }
}

impl Value {
    /// `torch.save(value, path)`: a whole checkpoint, such as `{'model': state_dict,
    /// 'epoch': 240, 'acc': 0.9}`, in torch.save's zip format, which
    /// `torch.load(path, weights_only=True)` accepts. A list or dict that holds itself
    /// ([`Value::Recursive`]) is written as the cycle it is. The file is replaced whole or
    /// not at all, as by [`StateDict::save`].
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the file cannot be written; [`Error::Unwritable`] when `path` is
    /// a directory, or for a value the format cannot hold (an undefined tensor, nesting
    /// deeper than 1000, an [`Object`](crate::Object) or a global outside what
    /// `weights_only=True` accepts, for which see [`save_with`](Self::save_with), a reference
    /// back to a tuple or set). The old file, if any, is unchanged.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        self.save_with(path, &SaveOptions::new())
    }

    /// [`save`](Self::save) with options: [`SaveOptions::objects`] writes the objects a
    /// training checkpoint holds back as they came.
    ///
    /// # Errors
    ///
    /// As [`save`](Self::save).
    pub fn save_with(&self, path: impl AsRef<Path>, options: &SaveOptions) -> Result<(), Error> {
        let path = path.as_ref();
        write_atomically(path, |file| write_torch(path, self, options.objects, file))
    }

    /// The bytes [`save`](Self::save) would write.
    ///
    /// # Errors
    ///
    /// As [`save`](Self::save).
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        self.to_bytes_with(&SaveOptions::new())
    }

    /// The bytes [`save_with`](Self::save_with) would write.
    ///
    /// # Errors
    ///
    /// As [`save`](Self::save).
    pub fn to_bytes_with(&self, options: &SaveOptions) -> Result<Vec<u8>, Error> {
        let mut out = Cursor::new(Vec::new());
        write_torch(Path::new("<bytes>"), self, options.objects, &mut out)?;
        Ok(out.into_inner())
    }
}

/// The archive's root directory, as torch.save names it: the file's stem, or `archive` when
/// writing to memory.
fn archive_name(path: &Path) -> String {
    if path == Path::new("<bytes>") {
        return "archive".to_string();
    }
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("archive");
    let clean: String = stem
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .collect();
    if clean.is_empty() || clean.starts_with('.') {
        "archive".to_string()
    } else {
        clean
    }
}

fn write_torch<W: Write + Seek>(
    path: &Path,
    value: &Value,
    objects: bool,
    out: W,
) -> Result<(), Error> {
    let (pickle, storages) = pickler::Pickler::new()
        .with_objects(objects)
        .finish(value)
        .map_err(|u| Error::Unwritable {
            path: path.to_path_buf(),
            what: u.what,
            reason: u.reason,
        })?;
    let zip_error = |source| Error::Zip {
        path: path.to_path_buf(),
        source,
    };
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let root = archive_name(path);
    let mut zip = ZipWriter::new(out);
    let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    let record = |zip: &mut ZipWriter<W>, name: &str, bytes: &[u8], align: bool| {
        let options = stored.large_file(bytes.len() as u64 >= u32::MAX as u64);
        let options = if align {
            options.with_alignment(ALIGNMENT)
        } else {
            options
        };
        zip.start_file(format!("{root}/{name}"), options)
            .map_err(zip_error)?;
        zip.write_all(bytes).map_err(io)
    };
    record(&mut zip, "data.pkl", &pickle, false)?;
    record(&mut zip, ".format_version", b"1", false)?;
    record(&mut zip, ".storage_alignment", b"64", false)?;
    record(&mut zip, "byteorder", b"little", false)?;
    for storage in &storages {
        let bytes = tensor_bytes(&storage.tensor).map_err(|e| Error::Torch {
            context: format!("{}: reading storage {}", path.display(), storage.key),
            source: e,
        })?;
        record(&mut zip, &format!("data/{}", storage.key), &bytes, true)?;
    }
    record(&mut zip, "version", b"3\n", false)?;
    zip.finish().map_err(zip_error)?;
    Ok(())
}

/// The bytes of a contiguous CPU tensor.
fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>, tch::TchError> {
    let numel = t.numel();
    let mut bytes = vec![0u8; numel * dtype::of_kind(t.f_kind()?).elt_size];
    if numel > 0 {
        t.f_copy_data_u8(&mut bytes, numel)?;
    }
    Ok(bytes)
}

/// A tensor as the safetensors crate sees it: dtype, shape and contiguous bytes.
struct SafetensorsView {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl SafetensorsView {
    fn new(path: &Path, key: &str, t: &Tensor) -> Result<Self, Error> {
        let fail = |reason: String| Error::Unwritable {
            path: path.to_path_buf(),
            what: key.to_string(),
            reason,
        };
        if !t.defined() {
            return Err(fail("the tensor is undefined".into()));
        }
        let kind = t.f_kind().map_err(|e| fail(e.to_string()))?;
        let dtype = dtype::of_kind(kind)
            .safetensors
            .ok_or_else(|| fail(format!("safetensors has no dtype for {kind:?}")))?;
        let contiguous = t
            .f_to_device(tch::Device::Cpu)
            .and_then(|c| c.f_contiguous())
            .map_err(|e| fail(e.to_string()))?;
        let bytes = tensor_bytes(&contiguous).map_err(|e| fail(e.to_string()))?;
        Ok(SafetensorsView {
            dtype,
            shape: t.size().iter().map(|&d| d as usize).collect(),
            bytes,
        })
    }
}

impl View for SafetensorsView {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }

    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}
