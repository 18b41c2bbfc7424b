//! The layers the ResNets are made of, with PyTorch's names, buffers and initialization.

use tch::nn::{self, Init};
use tch::{Kind, TchError, Tensor};

use crate::error::Error;
use crate::module_tree::{ModuleKind, ModuleTree};

/// `nn.Conv2d(..., bias=False)` with torchvision's initialization
/// (`kaiming_normal_(mode="fan_out", nonlinearity="relu")`).
#[derive(Debug)]
pub(crate) struct Conv2d {
    pub weight: Tensor,
    stride: i64,
    padding: i64,
    groups: i64,
}

impl Conv2d {
    pub(crate) fn new(
        p: &nn::Path,
        in_channels: i64,
        out_channels: i64,
        kernel: i64,
        stride: i64,
        padding: i64,
        groups: i64,
    ) -> Result<Self, TchError> {
        let init = Init::Kaiming {
            dist: nn::init::NormalOrUniform::Normal,
            fan: nn::init::FanInOut::FanOut,
            non_linearity: nn::init::NonLinearity::ReLU,
        };
        let weight = p.f_var(
            "weight",
            &[out_channels, in_channels / groups, kernel, kernel],
            init,
        )?;
        Ok(Conv2d {
            weight,
            stride,
            padding,
            groups,
        })
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> Tensor {
        xs.conv2d(
            &self.weight,
            None::<Tensor>,
            [self.stride; 2],
            [self.padding; 2],
            [1; 2],
            self.groups,
        )
    }

    pub(crate) fn add_to(&self, tree: &mut ModuleTree, path: &str) -> Result<(), Error> {
        tree.add_module(path, ModuleKind::Module)?;
        tree.add_tensor(&format!("{path}.weight"), self.weight.shallow_clone())
    }
}

/// PyTorch's `nn.BatchNorm2d`: `weight`, `bias`, and the buffers `running_mean`,
/// `running_var` and `num_batches_tracked` (an int64 scalar counting training batches).
/// tch's own `batch_norm` has no `num_batches_tracked`, so a torchvision state dict does
/// not load into it strictly.
#[derive(Debug)]
pub(crate) struct BatchNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Tensor,
    pub momentum: f64,
    pub eps: f64,
}

impl BatchNorm2d {
    pub(crate) fn new(p: &nn::Path, channels: i64) -> Result<Self, TchError> {
        // An int64 counter, whatever the store's kind: made as a variable of the store's
        // kind, then given the counter's data (`Path::add`, which would take the counter
        // itself, is public from tch 0.19 only).
        let counter = Tensor::f_zeros([], (Kind::Int64, p.device()))?;
        let mut num_batches_tracked = p.f_zeros_no_train("num_batches_tracked", &[])?;
        num_batches_tracked.set_data(&counter);
        Ok(BatchNorm2d {
            weight: p.f_ones("weight", &[channels])?,
            bias: p.f_zeros("bias", &[channels])?,
            running_mean: p.f_zeros_no_train("running_mean", &[channels])?,
            running_var: p.f_ones_no_train("running_var", &[channels])?,
            num_batches_tracked,
            momentum: 0.1,
            eps: 1e-5,
        })
    }

    /// In training, normalizes with the batch's statistics and updates the running ones in
    /// place (momentum 0.1, unbiased variance), and counts the batch, as PyTorch does; in
    /// evaluation, normalizes with the running statistics.
    pub(crate) fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        if train {
            tch::no_grad(|| {
                let _ = self.num_batches_tracked.shallow_clone().g_add_scalar_(1);
            });
        }
        Tensor::batch_norm(
            xs,
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            self.momentum,
            self.eps,
            true,
        )
    }

    pub(crate) fn add_to(&self, tree: &mut ModuleTree, path: &str) -> Result<(), Error> {
        tree.add_module(path, ModuleKind::BatchNorm)?;
        for (name, t) in [
            ("weight", &self.weight),
            ("bias", &self.bias),
            ("running_mean", &self.running_mean),
            ("running_var", &self.running_var),
            ("num_batches_tracked", &self.num_batches_tracked),
        ] {
            tree.add_tensor(&format!("{path}.{name}"), t.shallow_clone())?;
        }
        Ok(())
    }
}

pub(crate) fn add_linear(
    tree: &mut ModuleTree,
    path: &str,
    linear: &nn::Linear,
) -> Result<(), Error> {
    tree.add_module(path, ModuleKind::Module)?;
    tree.add_tensor(&format!("{path}.weight"), linear.ws.shallow_clone())?;
    if let Some(b) = &linear.bs {
        tree.add_tensor(&format!("{path}.bias"), b.shallow_clone())?;
    }
    Ok(())
}

/// The bounds of PyTorch's default `nn.Linear` initialization for `in_features` inputs,
/// computed as `torch.nn.init` computes them so that the same seed gives the same values:
/// the weight is `kaiming_uniform_(a=sqrt(5))`, U(-b, b) with b = sqrt(3) * gain / sqrt(fan_in)
/// and gain = sqrt(2 / (1 + a^2)); the bias is U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
pub(crate) fn linear_bounds(in_features: i64) -> (f64, f64) {
    let fan_in = in_features as f64;
    let a = 5f64.sqrt();
    let gain = (2.0 / (1.0 + a * a)).sqrt();
    let std = gain / fan_in.sqrt();
    let weight = 3f64.sqrt() * std;
    let bias = if in_features > 0 {
        1.0 / fan_in.sqrt()
    } else {
        0.0
    };
    (weight, bias)
}

/// A new `nn.Linear(in_features, out_features)`'s weight and bias, initialized as PyTorch
/// initializes one (the weight drawn first, then the bias, from libtorch's generator).
pub(crate) fn linear_init(
    in_features: i64,
    out_features: i64,
    options: (Kind, tch::Device),
) -> Result<(Tensor, Tensor), tch::TchError> {
    let (wb, bb) = linear_bounds(in_features);
    tch::no_grad(|| {
        let mut weight = Tensor::f_empty([out_features, in_features], options)?;
        let _ = weight.f_uniform_(-wb, wb)?;
        let mut bias = Tensor::f_empty([out_features], options)?;
        let _ = bias.f_uniform_(-bb, bb)?;
        Ok((weight, bias))
    })
}

/// `nn.Linear(in_features, out_features)` on `p`, with PyTorch's initialization.
pub(crate) fn linear(
    p: &nn::Path,
    in_features: i64,
    out_features: i64,
) -> Result<nn::Linear, TchError> {
    // Drawn in fp32, as PyTorch draws a Linear's parameters before `.to(dtype)`, and
    // copied into variables of the store's kind (`Path::kind` and a public `Path::add` came
    // with tch 0.18 and 0.19).
    let (weight, bias) = linear_init(in_features, out_features, (Kind::Float, p.device()))?;
    Ok(nn::Linear {
        ws: p.f_var_copy("weight", &weight)?,
        bs: Some(p.f_var_copy("bias", &bias)?),
    })
}
