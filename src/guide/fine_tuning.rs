//! Models with PyTorch's keys, `replace_head`, `replace_linear` and freezing (feature
//! `models`, on by default).
//!
//! [`models::ResNet::new(&vs, Arch::CifarResNet50, 100)`](crate::models::ResNet::new) (or
//! [`models::cifar_resnet50(&vs, 100)`](crate::models::cifar_resnet50)) builds a ResNet on a
//! `VarStore` whose `state_dict()` has PyTorch's keys, shapes and order, `num_batches_tracked`
//! included (an int64 scalar that train mode increments). A ResNet is a target of
//! `load_state_dict`, its type name is `ResNet` in error messages, and
//! [`forward_t(&x, train)`](crate::models::ResNet::forward_t) uses and updates BatchNorm
//! statistics as PyTorch's `train()` and `eval()` do. `tests/models.rs` checks all 21
//! architectures against Python: same keys in the same order, same shapes, eval logits within
//! 1e-4, same running statistics after a train-mode forward, and a strict load of Python's
//! state dict with nothing missing or unexpected.
//!
//! The architectures ([`Arch`](crate::models::Arch), named by
//! [`Arch::name`](crate::models::Arch::name)): torchvision's `resnet18` to `resnet152`,
//! `wide_resnet50_2`, `resnext50_32x4d`; the CIFAR `ResNet18` to `ResNet152` with head
//! `linear` (`cifar_resnet18` to `cifar_resnet152`), and `resnet8` to `resnet110`,
//! `resnet8x4`, `resnet32x4` with head `fc`.
//!
//! [`replace_head(&mut model, n_cls)`](crate::models::replace_head) is `model.fc =
//! nn.Linear(in_features, n_cls)`: a new head initialized as PyTorch's `nn.Linear` (with the
//! same seed, the same values, bit for bit), on the model's device and in its dtype,
//! registered under the old name (`fc.weight`, never `fc.weight__3`). The old head's
//! variables leave the VarStore, so an optimizer built afterwards trains only live variables,
//! and `state_dict` and `load_state_dict` see the new head.
//! [`replace_linear(&vs, path, n)`](crate::models::replace_linear) does the same for the
//! `Linear` at any path of any tch model's VarStore and returns it.
//! [`model.freeze_backbone()`](crate::models::ResNet::freeze_backbone) leaves only the head
//! trainable; [`models::freeze(&vs, keep)`](crate::models::freeze) keeps trainable what
//! `keep` accepts, and [`models::unfreeze`](crate::models::unfreeze) undoes it.
//!
//! # Build with the checkpoint's classes, load, replace the head
//!
//! ```no_run
//! # fn main() -> Result<(), tch_state_dict::Error> {
//! use tch::nn;
//! use tch_state_dict::models::{self, replace_head, Arch, ResNet};
//! use tch_state_dict::{load_state_dict, StateDict};
//!
//! let vs = nn::VarStore::new(tch::Device::cuda_if_available());
//! // model = resnet32x4(num_classes=100); model.load_state_dict(torch.load(p)["model"])
//! let arch = Arch::from_name("resnet32x4").expect("a known architecture");
//! let mut model = ResNet::new(&vs, arch, 100)?;
//! load_state_dict(&model, &StateDict::load_key("ckpt_epoch_240.pth", "model")?, true)?;
//!
//! // model.fc = nn.Linear(model.fc.in_features, 7); train the head only.
//! replace_head(&mut model, 7)?;
//! assert_eq!((model.in_features(), model.num_classes()), (256, 7));
//! model.freeze_backbone();
//! // An optimizer built now, nn::Sgd::default().build(&vs, lr), trains the new head only.
//! # let _ = models::resnet18;
//! # Ok(())
//! # }
//! ```
//!
//! # Any tch model's head
//!
//! ```
//! # fn main() -> Result<(), tch_state_dict::Error> {
//! use tch::nn;
//! use tch_state_dict::models::{freeze, replace_linear};
//!
//! let vs = nn::VarStore::new(tch::Device::Cpu);
//! let _body = nn::linear(vs.root() / "body", 8, 16, Default::default());
//! let mut classifier = nn::linear(vs.root() / "classifier", 16, 100, Default::default());
//!
//! // model.classifier = nn.Linear(16, 10)
//! classifier = replace_linear(&vs, "classifier", 10)?;
//! assert_eq!(classifier.ws.size(), [10, 16]);
//!
//! // for name, p in model.named_parameters(): p.requires_grad = name.startswith("classifier.")
//! freeze(&vs, |name| name.starts_with("classifier."));
//! assert!(classifier.ws.requires_grad());
//! # Ok(())
//! # }
//! ```
