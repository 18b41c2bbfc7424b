//! torchvision checkpoints in `tch::vision` models: which load, and which then compute what
//! torchvision computes (measured).
//!
//! The crate makes tch's models take torchvision's checkpoints with no Python conversion:
//! [`load_state_dict(&vs, &sd, true)`](crate::load_state_dict) into a bare `VarStore` consumes
//! the BatchNorm counters that tch's BatchNorms have no buffer for (see
//! [`rules`](super::rules)). Whether the model then gives torchvision's predictions depends
//! on tch's forward, which for some models differs from torchvision's. Measured with tch
//! 0.24.0, torch 2.11.0 and torchvision 0.26.0, on the CPU in fp32, by `tests/tch_models.rs`
//! and its oracle `tests/oracle/tch_vision.py`.
//!
//! # What was measured
//!
//! For every `tch::vision` model that torchvision has: torchvision's `state_dict()` (random
//! weights with a fixed seed, uniform with variance 1 / fan_in; BatchNorm weight U(0.5, 1.5),
//! bias U(-0.2, 0.2), running_mean U(-0.2, 0.2), running_var U(0.5, 1.5),
//! num_batches_tracked 240) saved by `torch.save`, loaded with `load_state_dict(&vs, &sd,
//! true)` into tch's model (a bare `VarStore`), then tch's eval logits against torchvision's
//! eval logits on the same input, batch 1.
//!
//! "Max relative difference" is `max |tch - torchvision| / max |torchvision|` over the logits.
//! Where tch's forward differs, the oracle also changes torchvision's model to do what tch's
//! source does; tch agrees with that to float rounding in every case (the fourth column),
//! which pins the cause.
//!
//! Input sizes: the smallest that both forwards accept, or small. vgg and densenet need 224
//! (tch flattens into a linear layer sized for 7x7, with no adaptive pooling), alexnet 127
//! (tch's stride-2 second conv leaves too little for the last max-pool below that),
//! inception_v3 75 (torchvision's minimum). EfficientNet at 32 and 33, see below.
//!
//! # Results
//!
//! Keys: strict everywhere but inception_v3. BatchNorm counters (`num_batches_tracked`) are
//! consumed by tch's counter-less BatchNorms
//! ([`IncompatibleKeys::dropped_keys`](crate::IncompatibleKeys::dropped_keys)), so a strict
//! load needs no key surgery.
//!
//! | model | keys | max rel. diff. vs torchvision | vs torchvision made like tch | cause (tch 0.24, `src/`) |
//! |---|---|---|---|---|
//! | alexnet @127 | strict | 5.2e-1 | 0 | `vision/alexnet.rs:18`: `conv2d(&p / "3", 64, 192, 5, 1, 2)`; the helper is `conv2d(p, c_in, c_out, ksize, padding, stride)`, so padding 1, stride 2. torchvision: `Conv2d(64, 192, kernel_size=5, padding=2)` (stride 1) |
//! | vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn @224 | strict | 0 (bit-identical) | | |
//! | densenet121 @224 | strict | 1.7e3 | 0 | pooling that sums (divisor override 1): each transition's `avg_pool2d_default(2)` (`vision/densenet.rs:46`, defined at `tensor/mod.rs:208` as `avg_pool2d([k, k], [k, k], [0, 0], false, true, 1)`; torchvision `AvgPool2d(2, 2)`), and the last pooling `avg_pool2d([7, 7], [1, 1], [0, 0], false, true, 1)` (`vision/densenet.rs:78`; torchvision `adaptive_avg_pool2d(1)`). 4 x 4 x 4 x 49 = 3136 if nothing renormalized in between |
//! | densenet161 @224 | strict | 1.9e3 | 0 | as densenet121 |
//! | densenet169 @224 | strict | 2.3e3 | 0 | as densenet121 |
//! | densenet201 @224 | strict | 1.9e3 | 0 | as densenet121 |
//! | squeezenet1_0, squeezenet1_1 @64 | strict | 0 | | |
//! | mobilenet_v2 @64 | strict | 2.3e-7 | | rounding (tch averages with two `mean_dim`s where torchvision uses `adaptive_avg_pool2d`) |
//! | inception_v3 @75 | not strict: exactly the 14 `AuxLogits.*` keys unexpected | 0 | | tch has no auxiliary classifier (`vision/inception.rs`, `v3`); it is unused in eval anyway |
//! | efficientnet_b0 @32 / @33 | strict | 5.2e-3 / 9.9e-4 | 2.6e-7 / 3.2e-7 | at 33: BatchNorm eps 1e-3 in every variant (`vision/efficientnet.rs:6`, used at :130); torchvision's b0 to b4 use 1e-5 (b5 to b7 use 1e-3). At 32, also the padding: `Conv2DSame` (`vision/efficientnet.rs:99-114`) pads TensorFlow's way, ceil(size / stride) outputs with the odd pixel after the image, where torchvision pads (k - 1) / 2 on each side. The two agree when every stride-2 conv sees an odd size (33 -> 17 -> 9 -> 5 -> 3) and differ when they are even (32 -> 16 -> 8 -> 4 -> 2) |
//! | efficientnet_b1 @32 / @33 | strict | 6.5e-3 / 1.1e-3 | 2.7e-7 / 3.6e-7 | as b0 |
//! | efficientnet_b2 @32 / @33 | strict | 7.3e-3 / 1.1e-3 | 3.5e-7 / 3.0e-7 | as b0 |
//! | efficientnet_b3 @32 / @33 | strict | 9.2e-3 / 1.2e-3 | 4.0e-7 / 3.3e-7 | as b0 |
//! | efficientnet_b4 @32 / @33 | strict | 7.7e-3 / 1.3e-3 | 5.1e-7 / 3.5e-7 | as b0 |
//! | efficientnet_b5 @32 / @33 | strict | 7.1e-3 / 5.1e-7 | 5.2e-7 / 5.1e-7 | padding only (same eps) |
//! | efficientnet_b6 @32 / @33 | strict | 1.0e-2 / 4.0e-7 | 4.1e-7 / 4.0e-7 | padding only |
//! | efficientnet_b7 @32 / @33 | strict | 1.3e-2 / 4.9e-7 | 6.1e-7 / 4.9e-7 | padding only |
//! | resnet18, 34, 50, 101, 152 @64 | strict | 0 | | |
//!
//! The rounding-level differences (up to 6.1e-7) are tch's swish, `x * sigmoid(x)`, against
//! torch's fused SiLU (and `mean_dim` against `adaptive_avg_pool2d` in mobilenet_v2); the
//! test's tolerance for "agrees" is 1e-5.
//!
//! What the tests assert: "agrees" models at most 1e-5; alexnet at least 0.1 from
//! torchvision, densenets at least 100, efficientnets at least 1e-3 at 32 and (b0 to b4) 1e-4
//! at 33, b5 to b7 at most 1e-5 at 33; and every "differs" case at most 1e-5 from torchvision
//! made like tch. A fix in tch (or a change of cause) fails the test.
//!
//! With He-scaled random weights (variance 2 / fan_in) the deep EfficientNets (b5 to b7) are
//! numerically chaotic: random BatchNorm statistics normalize nothing, residuals add up, and
//! a relative change of 1e-6 in the input changed b7's logits by 87%. With variance 1 / fan_in,
//! as measured here, the same perturbation moves the logits by about 5e-7.
//!
//! # What to expect
//!
//! The ResNets, VGGs, SqueezeNets, MobileNetV2 and InceptionV3 give torchvision's logits from
//! torchvision's checkpoints (InceptionV3 after dropping `AuxLogits.*`, or with a non-strict
//! load). tch's AlexNet and DenseNets compute something else from the same weights, so
//! torchvision checkpoints (pretrained ImageNet weights) do not give torchvision's
//! predictions there. tch's EfficientNets are close at odd input sizes for b5 to b7 only.
//!
//! ```no_run
//! # fn main() -> Result<(), tch_state_dict::Error> {
//! use tch::{nn, vision};
//! use tch_state_dict::{load_state_dict, StateDict};
//!
//! // torch.save(torchvision.models.resnet50().state_dict(), "resnet50.pth")
//! let vs = nn::VarStore::new(tch::Device::Cpu);
//! let net = vision::resnet::resnet50(&vs.root(), 1000);
//! let report = load_state_dict(&vs, &StateDict::load("resnet50.pth")?, true)?;
//! assert_eq!(report.dropped_keys.len(), 53); // the BatchNorm counters tch has no buffer for
//! # let _ = net;
//! # Ok(())
//! # }
//! ```
//!
//! # The two key gaps, and their hints
//!
//! Printed after PyTorch's message as `hint: ...` lines
//! ([`LoadError::hints`](crate::LoadError::hints)), PyTorch's text unchanged.
//!
//! Unexpected keys under one submodule the model lacks (tch's inception_v3 with a torchvision
//! checkpoint):
//!
//! ```text
//! the unexpected keys all lie under "AuxLogits.", a submodule the model does not have
//! (14 keys); if the model is not meant to have it (an auxiliary head, say), drop it first:
//! state_dict.retain(|k, _| !k.starts_with("AuxLogits."))
//! ```
//!
//! The prefix is the deepest module that every unexpected key (not already explained by
//! another hint) lies under; no missing key lies under it, and some unexpected key lies in a
//! submodule of it (so an extra tensor of a module the model has, `fc.extra_weight`, gives no
//! hint).
//!
//! ```no_run
//! # fn main() -> Result<(), tch_state_dict::Error> {
//! use tch::{nn, vision};
//! use tch_state_dict::{load_state_dict, LazyStateDict};
//!
//! let vs = nn::VarStore::new(tch::Device::Cpu);
//! let net = vision::inception::v3(&vs.root(), 1000);
//! let mut sd = LazyStateDict::load("inception_v3.pth")?;
//! sd.retain(|k, _| !k.starts_with("AuxLogits."));
//! load_state_dict(&vs, &sd, true)?;
//! # let _ = net;
//! # Ok(())
//! # }
//! ```
//!
//! torchvision's legacy DenseNet names: its published files predate the ban on dots in module
//! names, and torchvision's `densenet._load_state_dict` renames them with a regex on load.
//!
//! ```text
//! the checkpoint's keys use the names of torchvision's published DenseNet files (580 keys,
//! such as "features.denseblock1.denselayer1.norm.1.weight" for the model's
//! "features.denseblock1.denselayer1.norm1.weight"), which torchvision renames as it loads
//! them; rename them first: state_dict.rename(|k| k.replace(".norm.1.", ".norm1.")
//! .replace(".relu.1.", ".relu1.").replace(".conv.1.", ".conv1.").replace(".norm.2.",
//! ".norm2.").replace(".relu.2.", ".relu2.").replace(".conv.2.", ".conv2."))
//! ```
//!
//! It fires when an unexpected key, renamed by exactly that closure, is a missing key. After
//! the rename a strict load into `tch::vision::densenet::densenet121` succeeds (legacy files
//! have no BatchNorm counters; tch's model has none either). The logits are still tch's (see
//! the table).
//!
//! ```no_run
//! # fn main() -> Result<(), tch_state_dict::Error> {
//! use tch::{nn, vision};
//! use tch_state_dict::{load_state_dict, LazyStateDict};
//!
//! let vs = nn::VarStore::new(tch::Device::Cpu);
//! let net = vision::densenet::densenet121(&vs.root(), 1000);
//! let mut sd = LazyStateDict::load("densenet121-a639ec97.pth")?;
//! sd.rename(|k| {
//!     k.replace(".norm.1.", ".norm1.")
//!         .replace(".relu.1.", ".relu1.")
//!         .replace(".conv.1.", ".conv1.")
//!         .replace(".norm.2.", ".norm2.")
//!         .replace(".relu.2.", ".relu2.")
//!         .replace(".conv.2.", ".conv2.")
//! })?;
//! load_state_dict(&vs, &sd, true)?;
//! # let _ = net;
//! # Ok(())
//! # }
//! ```
