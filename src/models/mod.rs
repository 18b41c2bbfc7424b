//! ResNets with PyTorch-identical state dicts, and the transfer-learning surgery: replacing
//! a classifier head, freezing the backbone.
//!
//! # Design note
//!
//! tch's `tch::vision::resnet` returns an opaque `FuncT` whose head cannot be swapped, has no
//! `num_batches_tracked` (so a torchvision state dict does not load into it strictly), and
//! re-creating `fc` on the same path gives `fc.weight__N` beside the old variables. Here a
//! model keeps a handle on its `VarStore`'s variables, so that [`replace_head`] can remove
//! the old head's variables (from the named and the trainable lists) and register the new
//! one under the old name: an optimizer built afterwards trains only live variables, and
//! `state_dict` and `load_state_dict` see the new head.

mod layers;
mod resnet;

use std::sync::{Arc, Mutex};

use tch::nn;
use tch::Tensor;

pub use resnet::{Arch, ResNet};

use crate::error::Error;
use crate::module_tree::lock;

macro_rules! constructors {
    ($($(#[$doc:meta])* $name:ident => $arch:ident,)*) => {
        $(
            $(#[$doc])*
            ///
            /// # Errors
            ///
            /// As [`ResNet::new`].
            pub fn $name(vs: &nn::VarStore, num_classes: i64) -> Result<ResNet, Error> {
                ResNet::new(vs, Arch::$arch, num_classes)
            }
        )*
    };
}

constructors! {
    /// torchvision's `resnet18(num_classes=...)`.
    resnet18 => ResNet18,
    /// torchvision's `resnet34(num_classes=...)`.
    resnet34 => ResNet34,
    /// torchvision's `resnet50(num_classes=...)`.
    resnet50 => ResNet50,
    /// torchvision's `resnet101(num_classes=...)`.
    resnet101 => ResNet101,
    /// torchvision's `resnet152(num_classes=...)`.
    resnet152 => ResNet152,
    /// torchvision's `wide_resnet50_2(num_classes=...)`.
    wide_resnet50_2 => WideResNet50_2,
    /// torchvision's `resnext50_32x4d(num_classes=...)`.
    resnext50_32x4d => ResNeXt50_32x4d,
    /// The CIFAR `ResNet18(num_classes=...)` (four stages, head `linear`).
    cifar_resnet18 => CifarResNet18,
    /// The CIFAR `ResNet34(num_classes=...)`.
    cifar_resnet34 => CifarResNet34,
    /// The CIFAR `ResNet50(num_classes=...)`: head `linear`, 2048 → classes.
    cifar_resnet50 => CifarResNet50,
    /// The CIFAR `ResNet101(num_classes=...)`.
    cifar_resnet101 => CifarResNet101,
    /// The CIFAR `ResNet152(num_classes=...)`.
    cifar_resnet152 => CifarResNet152,
    /// The CIFAR `resnet8(num_classes=...)` (three stages, head `fc`).
    resnet8 => ResNet8,
    /// The CIFAR `resnet14(num_classes=...)`.
    resnet14 => ResNet14,
    /// The CIFAR `resnet20(num_classes=...)`.
    resnet20 => ResNet20,
    /// The CIFAR `resnet32(num_classes=...)`.
    resnet32 => ResNet32,
    /// The CIFAR `resnet44(num_classes=...)`.
    resnet44 => ResNet44,
    /// The CIFAR `resnet56(num_classes=...)`.
    resnet56 => ResNet56,
    /// The CIFAR `resnet110(num_classes=...)`.
    resnet110 => ResNet110,
    /// The CIFAR `resnet8x4(num_classes=...)`.
    resnet8x4 => ResNet8x4,
    /// The CIFAR `resnet32x4(num_classes=...)`.
    resnet32x4 => ResNet32x4,
}

/// `model.fc = nn.Linear(model.fc.in_features, num_classes)` (or `model.linear = ...`):
/// replaces the model's head with a new `Linear(in_features, num_classes)` initialized as
/// PyTorch initializes one (the same seed gives the same values), on the model's device and
/// in its dtype, registered under the old name (`fc.weight`, never `fc.weight__3`). The old
/// head's variables leave the `VarStore`, from the named and the trainable lists, whose
/// places the new head takes (same parameter group); the new head requires gradients.
///
/// # Errors
///
/// [`Error::InvalidArgument`] when `num_classes` is below 1; [`Error::NotALinear`] when the
/// head's variables are no longer in the `VarStore`; [`Error::Torch`] when libtorch cannot
/// allocate the new head. The model is unchanged on error.
pub fn replace_head(model: &mut ResNet, num_classes: i64) -> Result<(), Error> {
    let path = format!("{}{}", model.prefix, model.head_name());
    let head = replace_linear_in(&model.vars, &path, num_classes)?;
    model.set_head(head, num_classes);
    Ok(())
}

/// Replaces the `Linear` at the dotted `path` of any tch model's `VarStore` (`"classifier"`,
/// `"head.fc"`) with a new one of `out_features` outputs, as [`replace_head`] does, and
/// returns it: put it in your model in place of the old layer.
///
/// ```
/// # fn main() -> Result<(), tch_state_dict::Error> {
/// use tch::nn::{self, Module};
/// use tch_state_dict::models::replace_linear;
///
/// let vs = nn::VarStore::new(tch::Device::Cpu);
/// let mut head = nn::linear(vs.root() / "classifier", 16, 100, Default::default());
/// head = replace_linear(&vs, "classifier", 10)?;
/// assert_eq!(head.ws.size(), [10, 16]);
/// assert_eq!(vs.len(), 2); // classifier.weight and classifier.bias, nothing stale
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// [`Error::NotALinear`] when `path.weight` is missing or not 2-D, or `path.bias` is not a
/// matching 1-D tensor; otherwise as [`replace_head`].
pub fn replace_linear(
    vs: &nn::VarStore,
    path: &str,
    out_features: i64,
) -> Result<nn::Linear, Error> {
    replace_linear_in(&vs.variables_, path, out_features)
}

fn replace_linear_in(
    vars: &Arc<Mutex<nn::Variables>>,
    path: &str,
    out_features: i64,
) -> Result<nn::Linear, Error> {
    if out_features < 1 {
        return Err(Error::InvalidArgument {
            name: "num_classes",
            reason: format!("{out_features}; a classifier needs at least one class"),
        });
    }
    let not_linear = |reason: String| Error::NotALinear {
        path: path.to_string(),
        reason,
    };
    let weight_key = format!("{path}.weight");
    let bias_key = format!("{path}.bias");
    let mut v = lock(vars);
    let old_weight = v
        .named_variables
        .get(&weight_key)
        .map(Tensor::shallow_clone)
        .ok_or_else(|| not_linear(format!("the VarStore has no {weight_key}")))?;
    let shape = old_weight.size();
    if shape.len() != 2 {
        return Err(not_linear(format!(
            "{weight_key} has shape {shape:?}, not 2-D"
        )));
    }
    let old_bias = v.named_variables.get(&bias_key).map(Tensor::shallow_clone);
    if let Some(b) = &old_bias {
        if b.size() != [shape[0]] {
            return Err(not_linear(format!(
                "{bias_key} has shape {:?}, not [{}]",
                b.size(),
                shape[0]
            )));
        }
    }
    let options = (old_weight.kind(), old_weight.device());
    let (weight, bias) =
        layers::linear_init(shape[1], out_features, options).map_err(|source| Error::Torch {
            context: format!("creating the new {path}"),
            source,
        })?;
    // The new layer takes the old one's places: its entries of the trainable list (tch's
    // `Var` cannot be built outside tch, and reusing them keeps each one's parameter group
    // and position) and its names. A layer without bias stays without bias.
    let bias = old_bias.as_ref().map(|_| bias);
    let mut trainable = false;
    for var in v.trainable_variables.iter_mut() {
        if var.tensor.is_set_to(&old_weight) {
            var.tensor = weight.set_requires_grad(true);
            trainable = true;
        } else if let (Some(old), Some(new)) = (&old_bias, &bias) {
            if var.tensor.is_set_to(old) {
                var.tensor = new.set_requires_grad(true);
            }
        }
    }
    let weight = weight.set_requires_grad(trainable);
    let bias = bias.map(|b| b.set_requires_grad(trainable));
    v.named_variables.insert(weight_key, weight.shallow_clone());
    if let Some(b) = &bias {
        v.named_variables.insert(bias_key, b.shallow_clone());
    }
    Ok(nn::Linear {
        ws: weight,
        bs: bias,
    })
}

/// Freezes the trainable variables of `vs` whose names `keep_trainable` rejects
/// (`requires_grad = False`), and makes the others trainable: the other half of the
/// transfer-learning habit. `freeze(&vs, |name| name.starts_with("fc."))` trains the head
/// only. Buffers (running statistics) are never trainable and stay as they are.
pub fn freeze(vs: &nn::VarStore, keep_trainable: impl Fn(&str) -> bool) {
    set_trainable(&vs.variables_, |name| Some(keep_trainable(name)));
}

/// Makes every trainable variable of `vs` require gradients again.
pub fn unfreeze(vs: &nn::VarStore) {
    set_trainable(&vs.variables_, |_| Some(true));
}

/// Sets `requires_grad` on each parameter (a variable on the trainable list) to what
/// `trainable` says for its name; `None` leaves it.
fn set_trainable(vars: &Arc<Mutex<nn::Variables>>, trainable: impl Fn(&str) -> Option<bool>) {
    let v = lock(vars);
    for (name, t) in &v.named_variables {
        let Some(flag) = trainable(name) else {
            continue;
        };
        let is_parameter = v
            .trainable_variables
            .iter()
            .any(|var| var.tensor.is_set_to(t));
        if is_parameter {
            let _ = t.shallow_clone().set_requires_grad(flag);
        }
    }
}

impl ResNet {
    /// Freezes everything but the head: of the model's parameters, only the head's weight
    /// and bias require gradients. Variables of the `VarStore` outside the model are left
    /// as they are.
    pub fn freeze_backbone(&self) {
        let head = format!("{}{}.", self.prefix, self.head_name());
        set_trainable(&self.vars, |name| {
            name.starts_with(&self.prefix)
                .then(|| name.starts_with(&head))
        });
    }

    /// Makes every parameter of the model require gradients again.
    pub fn unfreeze(&self) {
        set_trainable(&self.vars, |name| {
            name.starts_with(&self.prefix).then_some(true)
        });
    }
}
