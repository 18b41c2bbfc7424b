//! ResNets whose state dicts match PyTorch's key for key: torchvision's, and the CIFAR ResNets
//! of the knowledge-distillation literature (RepDistiller's `resnetv2.py`, four stages with
//! head `linear`, and `resnet.py`, three stages with head `fc`).

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use tch::nn::{self, ModuleT};
use tch::{TchError, Tensor};

use super::layers::{add_linear, linear, BatchNorm2d, Conv2d};
use crate::error::Error;
use crate::module_tree::{ModuleKind, ModuleTree, StateDictModule};

/// A ResNet architecture this crate builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Arch {
    /// torchvision `resnet18`.
    ResNet18,
    /// torchvision `resnet34`.
    ResNet34,
    /// torchvision `resnet50`.
    ResNet50,
    /// torchvision `resnet101`.
    ResNet101,
    /// torchvision `resnet152`.
    ResNet152,
    /// torchvision `wide_resnet50_2`.
    WideResNet50_2,
    /// torchvision `resnext50_32x4d`.
    ResNeXt50_32x4d,
    /// CIFAR `ResNet18`: four stages, 3×3 stem, `shortcut` projections, head `linear`.
    CifarResNet18,
    /// CIFAR `ResNet34`.
    CifarResNet34,
    /// CIFAR `ResNet50` (bottleneck, `linear` 2048 → classes).
    CifarResNet50,
    /// CIFAR `ResNet101`.
    CifarResNet101,
    /// CIFAR `ResNet152`.
    CifarResNet152,
    /// CIFAR `resnet8`: three stages of widths 16/32/64, head `fc`.
    ResNet8,
    /// CIFAR `resnet14`.
    ResNet14,
    /// CIFAR `resnet20`.
    ResNet20,
    /// CIFAR `resnet32`.
    ResNet32,
    /// CIFAR `resnet44`.
    ResNet44,
    /// CIFAR `resnet56`.
    ResNet56,
    /// CIFAR `resnet110`.
    ResNet110,
    /// CIFAR `resnet8x4`: widths 64/128/256.
    ResNet8x4,
    /// CIFAR `resnet32x4`.
    ResNet32x4,
}

/// Where an architecture's definition comes from, which decides its names and stem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// torchvision: 7×7 stem with max pooling, `downsample`, head `fc`.
    Torchvision,
    /// RepDistiller `resnetv2.py`: 3×3 stem, `shortcut`, head `linear`.
    Cifar,
    /// RepDistiller `resnet.py`: 3×3 stem, three stages, `downsample`, head `fc`.
    CifarSmall,
}

struct Spec {
    family: Family,
    bottleneck: bool,
    blocks: &'static [usize],
    stem: i64,
    planes: &'static [i64],
    groups: i64,
    width_per_group: i64,
}

/// Every architecture, for [`Arch::all`].
const ALL: [Arch; 21] = [
    Arch::ResNet18,
    Arch::ResNet34,
    Arch::ResNet50,
    Arch::ResNet101,
    Arch::ResNet152,
    Arch::WideResNet50_2,
    Arch::ResNeXt50_32x4d,
    Arch::CifarResNet18,
    Arch::CifarResNet34,
    Arch::CifarResNet50,
    Arch::CifarResNet101,
    Arch::CifarResNet152,
    Arch::ResNet8,
    Arch::ResNet14,
    Arch::ResNet20,
    Arch::ResNet32,
    Arch::ResNet44,
    Arch::ResNet56,
    Arch::ResNet110,
    Arch::ResNet8x4,
    Arch::ResNet32x4,
];

impl Arch {
    /// Every architecture, in the order of the enum: torchvision's, then the CIFAR ones.
    /// Later versions may add architectures.
    ///
    /// ```
    /// use tch_state_dict::models::Arch;
    ///
    /// assert!(Arch::all().contains(&Arch::CifarResNet50));
    /// ```
    pub fn all() -> &'static [Arch] {
        &ALL
    }

    /// The architecture's name: torchvision's function name (`resnet50`), `cifar_` and the
    /// CIFAR class's lower-case name (`cifar_resnet50`), or RepDistiller's (`resnet32x4`).
    pub fn name(self) -> &'static str {
        match self {
            Arch::ResNet18 => "resnet18",
            Arch::ResNet34 => "resnet34",
            Arch::ResNet50 => "resnet50",
            Arch::ResNet101 => "resnet101",
            Arch::ResNet152 => "resnet152",
            Arch::WideResNet50_2 => "wide_resnet50_2",
            Arch::ResNeXt50_32x4d => "resnext50_32x4d",
            Arch::CifarResNet18 => "cifar_resnet18",
            Arch::CifarResNet34 => "cifar_resnet34",
            Arch::CifarResNet50 => "cifar_resnet50",
            Arch::CifarResNet101 => "cifar_resnet101",
            Arch::CifarResNet152 => "cifar_resnet152",
            Arch::ResNet8 => "resnet8",
            Arch::ResNet14 => "resnet14",
            Arch::ResNet20 => "resnet20",
            Arch::ResNet32 => "resnet32",
            Arch::ResNet44 => "resnet44",
            Arch::ResNet56 => "resnet56",
            Arch::ResNet110 => "resnet110",
            Arch::ResNet8x4 => "resnet8x4",
            Arch::ResNet32x4 => "resnet32x4",
        }
    }

    /// The architecture of that [`name`](Self::name).
    pub fn from_name(name: &str) -> Option<Arch> {
        ALL.into_iter().find(|a| a.name() == name)
    }

    /// The name of the head: `fc` (torchvision, three-stage CIFAR) or `linear` (four-stage
    /// CIFAR).
    pub fn head_name(self) -> &'static str {
        match self.spec().family {
            Family::Cifar => "linear",
            Family::Torchvision | Family::CifarSmall => "fc",
        }
    }

    /// The image size the family is made for: 224 for torchvision's, 32 for CIFAR's (the
    /// three-stage CIFAR ResNets need 32: they pool with a fixed 8×8 window).
    pub fn input_size(self) -> i64 {
        match self.spec().family {
            Family::Torchvision => 224,
            Family::Cifar | Family::CifarSmall => 32,
        }
    }

    fn spec(self) -> Spec {
        use Family::*;
        const TV: &[i64] = &[64, 128, 256, 512];
        const SMALL: &[i64] = &[16, 32, 64];
        const SMALL_X4: &[i64] = &[64, 128, 256];
        // The four-stage families share widths; they differ in stem, names and head.
        let four = |family, bottleneck, blocks| Spec {
            family,
            bottleneck,
            blocks,
            stem: 64,
            planes: TV,
            groups: 1,
            width_per_group: 64,
        };
        let tv = |bottleneck, blocks| four(Torchvision, bottleneck, blocks);
        let cifar = |bottleneck, blocks| four(Cifar, bottleneck, blocks);
        let small = |n: usize, stem, planes| Spec {
            family: CifarSmall,
            bottleneck: false,
            blocks: match n {
                1 => &[1, 1, 1],
                2 => &[2, 2, 2],
                3 => &[3, 3, 3],
                5 => &[5, 5, 5],
                7 => &[7, 7, 7],
                9 => &[9, 9, 9],
                _ => &[18, 18, 18],
            },
            stem,
            planes,
            groups: 1,
            width_per_group: 64,
        };
        match self {
            Arch::ResNet18 => tv(false, &[2, 2, 2, 2]),
            Arch::ResNet34 => tv(false, &[3, 4, 6, 3]),
            Arch::ResNet50 => tv(true, &[3, 4, 6, 3]),
            Arch::ResNet101 => tv(true, &[3, 4, 23, 3]),
            Arch::ResNet152 => tv(true, &[3, 8, 36, 3]),
            Arch::WideResNet50_2 => Spec {
                width_per_group: 128,
                ..tv(true, &[3, 4, 6, 3])
            },
            Arch::ResNeXt50_32x4d => Spec {
                groups: 32,
                width_per_group: 4,
                ..tv(true, &[3, 4, 6, 3])
            },
            Arch::CifarResNet18 => cifar(false, &[2, 2, 2, 2]),
            Arch::CifarResNet34 => cifar(false, &[3, 4, 6, 3]),
            Arch::CifarResNet50 => cifar(true, &[3, 4, 6, 3]),
            Arch::CifarResNet101 => cifar(true, &[3, 4, 23, 3]),
            Arch::CifarResNet152 => cifar(true, &[3, 8, 36, 3]),
            // depth = 6n + 2
            Arch::ResNet8 => small(1, 16, SMALL),
            Arch::ResNet14 => small(2, 16, SMALL),
            Arch::ResNet20 => small(3, 16, SMALL),
            Arch::ResNet32 => small(5, 16, SMALL),
            Arch::ResNet44 => small(7, 16, SMALL),
            Arch::ResNet56 => small(9, 16, SMALL),
            Arch::ResNet110 => small(18, 16, SMALL),
            Arch::ResNet8x4 => small(1, 32, SMALL_X4),
            Arch::ResNet32x4 => small(5, 32, SMALL_X4),
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A shortcut projection: a 1×1 convolution and a BatchNorm.
#[derive(Debug)]
struct Projection {
    conv: Conv2d,
    bn: BatchNorm2d,
}

#[derive(Debug)]
struct Block {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    /// Bottleneck blocks only.
    conv3: Option<(Conv2d, BatchNorm2d)>,
    shortcut: Option<Projection>,
}

impl Block {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut out = self.bn1.forward_t(&self.conv1.forward(xs), train).relu();
        out = self.bn2.forward_t(&self.conv2.forward(&out), train);
        if let Some((conv3, bn3)) = &self.conv3 {
            out = bn3.forward_t(&conv3.forward(&out.relu()), train);
        }
        let identity = match &self.shortcut {
            Some(p) => p.bn.forward_t(&p.conv.forward(xs), train),
            None => xs.shallow_clone(),
        };
        (out + identity).relu()
    }

    /// Adds the block's modules in its family's registration order.
    fn add_to(&self, tree: &mut ModuleTree, path: &str, family: Family) -> Result<(), Error> {
        let sub = |name: &str| format!("{path}.{name}");
        tree.add_module(path, ModuleKind::Module)?;
        self.conv1.add_to(tree, &sub("conv1"))?;
        self.bn1.add_to(tree, &sub("bn1"))?;
        // torchvision's BasicBlock and the three-stage CIFAR block register `relu` here;
        // torchvision's Bottleneck registers it after bn3; the four-stage CIFAR blocks use
        // F.relu and have none.
        let relu_early = self.conv3.is_none() && family != Family::Cifar;
        if relu_early {
            tree.add_module(&sub("relu"), ModuleKind::Module)?;
        }
        self.conv2.add_to(tree, &sub("conv2"))?;
        self.bn2.add_to(tree, &sub("bn2"))?;
        if let Some((conv3, bn3)) = &self.conv3 {
            conv3.add_to(tree, &sub("conv3"))?;
            bn3.add_to(tree, &sub("bn3"))?;
            if family == Family::Torchvision {
                tree.add_module(&sub("relu"), ModuleKind::Module)?;
            }
        }
        let shortcut = if family == Family::Cifar {
            // An empty nn.Sequential when there is no projection, but a module all the same.
            tree.add_module(&sub("shortcut"), ModuleKind::Module)?;
            "shortcut"
        } else {
            "downsample"
        };
        if let Some(p) = &self.shortcut {
            p.conv.add_to(tree, &format!("{path}.{shortcut}.0"))?;
            p.bn.add_to(tree, &format!("{path}.{shortcut}.1"))?;
        }
        Ok(())
    }
}

/// A ResNet with PyTorch's module names, buffers (`num_batches_tracked` included) and order,
/// built on a `VarStore`.
///
/// It is a target of [`load_state_dict`](crate::load_state_dict) (its type name is
/// `ResNet`, as in PyTorch's messages), runs in train or eval mode through
/// [`forward_t`](Self::forward_t) (`nn::ModuleT`), and its head can be swapped with
/// [`replace_head`](crate::models::replace_head).
///
/// ```no_run
/// # fn main() -> Result<(), tch_state_dict::Error> {
/// use tch::nn::{self, ModuleT};
/// use tch_state_dict::models::{self, Arch};
/// use tch_state_dict::{load_state_dict, StateDict};
///
/// let vs = nn::VarStore::new(tch::Device::cuda_if_available());
/// let mut model = models::ResNet::new(&vs, Arch::CifarResNet50, 100)?;
/// load_state_dict(&model, &StateDict::load_key("ckpt_epoch_240.pth", "model")?, true)?;
/// models::replace_head(&mut model, 10)?; // model.linear = nn.Linear(2048, 10)
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ResNet {
    arch: Arch,
    family: Family,
    conv1: Conv2d,
    bn1: BatchNorm2d,
    layers: Vec<Vec<Block>>,
    pub(crate) head: nn::Linear,
    in_features: i64,
    num_classes: i64,
    /// The VarStore's variables, to replace the head's.
    pub(crate) vars: Arc<Mutex<nn::Variables>>,
    /// The model's path in the VarStore (`""` at the root, `"backbone."` under a path).
    pub(crate) prefix: String,
}

impl ResNet {
    /// Builds `arch` with `num_classes` outputs at the root of `vs`, initialized as
    /// PyTorch initializes it (convolutions `kaiming_normal_(fan_out)`, BatchNorm 1 and 0,
    /// the head as `nn.Linear`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when `num_classes` is below 1; [`Error::Torch`] when
    /// libtorch cannot allocate the tensors.
    pub fn new(vs: &nn::VarStore, arch: Arch, num_classes: i64) -> Result<ResNet, Error> {
        Self::new_at(vs, "", arch, num_classes)
    }

    /// [`new`](Self::new) under the dotted path `prefix` of `vs` (`"backbone"`), for a
    /// ResNet inside a larger model. Its state dict keys are relative to that path.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new); [`Error::InvalidKey`] for a prefix with an empty segment.
    pub fn new_at(
        vs: &nn::VarStore,
        prefix: &str,
        arch: Arch,
        num_classes: i64,
    ) -> Result<ResNet, Error> {
        if num_classes < 1 {
            return Err(Error::InvalidArgument {
                name: "num_classes",
                reason: format!("{num_classes}; a classifier needs at least one class"),
            });
        }
        let mut root = vs.root();
        let mut dotted = String::new();
        if !prefix.is_empty() {
            for segment in prefix.split('.') {
                if segment.is_empty() {
                    return Err(Error::InvalidKey {
                        key: prefix.to_string(),
                        reason: "the prefix has an empty segment",
                    });
                }
                root = root.sub(segment);
                dotted.push_str(segment);
                dotted.push('.');
            }
        }
        let torch = |source: TchError| Error::Torch {
            context: format!("building {}", arch.name()),
            source,
        };
        Self::build(&root, arch, num_classes)
            .map(|mut model| {
                model.vars = vs.variables_.clone();
                model.prefix = dotted;
                model
            })
            .map_err(torch)
    }

    fn build(p: &nn::Path, arch: Arch, num_classes: i64) -> Result<ResNet, TchError> {
        let spec = arch.spec();
        let conv1 = match spec.family {
            Family::Torchvision => Conv2d::new(&(p / "conv1"), 3, spec.stem, 7, 2, 3, 1)?,
            _ => Conv2d::new(&(p / "conv1"), 3, spec.stem, 3, 1, 1, 1)?,
        };
        let bn1 = BatchNorm2d::new(&(p / "bn1"), spec.stem)?;
        let expansion = if spec.bottleneck { 4 } else { 1 };
        let mut in_planes = spec.stem;
        let mut layers = Vec::new();
        for (stage, (&blocks, &planes)) in spec.blocks.iter().zip(spec.planes).enumerate() {
            let lp = p / format!("layer{}", stage + 1);
            let stride = if stage == 0 { 1 } else { 2 };
            let mut layer = Vec::with_capacity(blocks);
            for i in 0..blocks {
                let bp = &lp / i;
                let s = if i == 0 { stride } else { 1 };
                layer.push(Self::block(&bp, &spec, in_planes, planes, s)?);
                in_planes = planes * expansion;
            }
            layers.push(layer);
        }
        let head = linear(&(p / arch.head_name()), in_planes, num_classes)?;
        Ok(ResNet {
            arch,
            family: spec.family,
            conv1,
            bn1,
            layers,
            head,
            in_features: in_planes,
            num_classes,
            vars: Arc::new(Mutex::new(nn::Variables {
                named_variables: Default::default(),
                trainable_variables: Vec::new(),
            })),
            prefix: String::new(),
        })
    }

    fn block(
        p: &nn::Path,
        spec: &Spec,
        in_planes: i64,
        planes: i64,
        stride: i64,
    ) -> Result<Block, TchError> {
        let expansion = if spec.bottleneck { 4 } else { 1 };
        let out_planes = planes * expansion;
        let (conv1, bn1, conv2, bn2, conv3) = if spec.bottleneck {
            // torchvision's width for wide and grouped variants; the CIFAR blocks use planes.
            let width = planes * spec.width_per_group / 64 * spec.groups;
            let conv1 = Conv2d::new(&(p / "conv1"), in_planes, width, 1, 1, 0, 1)?;
            let bn1 = BatchNorm2d::new(&(p / "bn1"), width)?;
            let conv2 = Conv2d::new(&(p / "conv2"), width, width, 3, stride, 1, spec.groups)?;
            let bn2 = BatchNorm2d::new(&(p / "bn2"), width)?;
            let conv3 = Conv2d::new(&(p / "conv3"), width, out_planes, 1, 1, 0, 1)?;
            let bn3 = BatchNorm2d::new(&(p / "bn3"), out_planes)?;
            (conv1, bn1, conv2, bn2, Some((conv3, bn3)))
        } else {
            let conv1 = Conv2d::new(&(p / "conv1"), in_planes, planes, 3, stride, 1, 1)?;
            let bn1 = BatchNorm2d::new(&(p / "bn1"), planes)?;
            let conv2 = Conv2d::new(&(p / "conv2"), planes, planes, 3, 1, 1, 1)?;
            let bn2 = BatchNorm2d::new(&(p / "bn2"), planes)?;
            (conv1, bn1, conv2, bn2, None)
        };
        let shortcut = if stride != 1 || in_planes != out_planes {
            let name = if spec.family == Family::Cifar {
                "shortcut"
            } else {
                "downsample"
            };
            let sp = p / name;
            Some(Projection {
                conv: Conv2d::new(&(&sp / "0"), in_planes, out_planes, 1, stride, 0, 1)?,
                bn: BatchNorm2d::new(&(&sp / "1"), out_planes)?,
            })
        } else {
            None
        };
        Ok(Block {
            conv1,
            bn1,
            conv2,
            bn2,
            conv3,
            shortcut,
        })
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The head's name: `fc` or `linear`.
    pub fn head_name(&self) -> &'static str {
        self.arch.head_name()
    }

    /// The head's inputs (`512 * expansion`, or the last stage's width).
    pub fn in_features(&self) -> i64 {
        self.in_features
    }

    /// The head's outputs.
    pub fn num_classes(&self) -> i64 {
        self.num_classes
    }

    /// The head.
    pub fn head(&self) -> &nn::Linear {
        &self.head
    }

    /// The model's path in its VarStore, with a trailing dot (`""` at the root).
    pub fn var_store_prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn set_head(&mut self, head: nn::Linear, num_classes: i64) {
        self.head = head;
        self.num_classes = num_classes;
    }

    /// The features before the head: `[N, in_features]`.
    pub fn features_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut x = self.bn1.forward_t(&self.conv1.forward(xs), train).relu();
        if self.family == Family::Torchvision {
            x = x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        }
        for layer in &self.layers {
            for block in layer {
                x = block.forward_t(&x, train);
            }
        }
        let pooled = match self.family {
            Family::CifarSmall => x.avg_pool2d([8, 8], [8, 8], [0, 0], false, true, None::<i64>),
            _ => x.adaptive_avg_pool2d([1, 1]),
        };
        pooled.flatten(1, -1)
    }

    /// The logits, `[N, num_classes]`. In training, BatchNorm uses and updates batch
    /// statistics and counts the batch, as `model.train()` does in PyTorch.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.features_t(xs, train).apply(&self.head)
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        ResNet::forward_t(self, xs, train)
    }
}

impl StateDictModule for ResNet {
    /// The modules in PyTorch's registration order, parameter-free ones (`relu`, `maxpool`,
    /// `avgpool`, empty `shortcut`s) included.
    fn module_tree(&self) -> Result<Cow<'_, ModuleTree>, Error> {
        let mut tree = ModuleTree::new("ResNet");
        self.conv1.add_to(&mut tree, "conv1")?;
        self.bn1.add_to(&mut tree, "bn1")?;
        if self.family != Family::Cifar {
            tree.add_module("relu", ModuleKind::Module)?;
        }
        if self.family == Family::Torchvision {
            tree.add_module("maxpool", ModuleKind::Module)?;
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let lp = format!("layer{}", i + 1);
            tree.add_module(&lp, ModuleKind::Module)?;
            for (j, block) in layer.iter().enumerate() {
                block.add_to(&mut tree, &format!("{lp}.{j}"), self.family)?;
            }
        }
        tree.add_module("avgpool", ModuleKind::Module)?;
        add_linear(&mut tree, self.head_name(), &self.head)?;
        Ok(Cow::Owned(tree))
    }
}
