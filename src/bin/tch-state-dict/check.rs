//! `check`: what `model.load_state_dict(sd, strict)` would print, without loading.

use std::io::Write;
use std::path::Path;

use tch::nn::VarStore;
use tch::Device;
use tch_state_dict::models::{Arch, ResNet};
use tch_state_dict::{check_state_dict, Error, LoadOptions};

use crate::{open_state_dict, Answer, Failure};

/// Builds the model on the CPU, matches the checkpoint's state dict against it (reading no
/// tensor), and prints PyTorch's text: the `IncompatibleKeys` line when the load would
/// succeed (yes), the error's message and hints when it would fail (no).
pub fn run(
    path: &Path,
    key: Option<&str>,
    arch: Arch,
    classes: i64,
    strict: bool,
    out: &mut impl Write,
) -> Result<Answer, Failure> {
    let sd = open_state_dict(path, key)?;
    let vs = VarStore::new(Device::Cpu);
    let model = tch::no_grad(|| ResNet::new(&vs, arch, classes))?;
    match check_state_dict(&model, &sd, &LoadOptions::new().strict(strict)) {
        Ok(report) => {
            writeln!(out, "{report}")?;
            Ok(Answer::Yes)
        }
        Err(Error::Load(e)) => {
            writeln!(out, "{e}")?;
            Ok(Answer::No)
        }
        Err(e) => Err(e.into()),
    }
}
