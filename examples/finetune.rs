//! The story this crate exists for, on a small network built in a VarStore: a checkpoint
//! trained with 100 classes, loaded into a 10-class model.
//!
//! Run it with `scripts/cargo run --example finetune`.

use tch::nn::{self, Module, ModuleT};
use tch::{Device, Kind, Tensor};
use tch_state_dict::{load_state_dict, state_dict, ModuleTree};

/// A small classifier as a tch user builds one: `fc1 -> bn -> relu -> linear`.
struct Net {
    vs: nn::VarStore,
    fc1: nn::Linear,
    bn: nn::BatchNorm,
    linear: nn::Linear,
}

impl Net {
    fn new(classes: i64) -> Net {
        let vs = nn::VarStore::new(Device::cuda_if_available());
        let root = vs.root();
        let fc1 = nn::linear(&root / "fc1", 32, 64, Default::default());
        let bn = nn::batch_norm1d(&root / "bn", 64, Default::default());
        let linear = nn::linear(&root / "linear", 64, classes, Default::default());
        Net {
            vs,
            fc1,
            bn,
            linear,
        }
    }

    /// The network as PyTorch's `load_state_dict` sees it: named "Net", with its keys in
    /// PyTorch's registration order.
    fn module_tree(&self) -> Result<ModuleTree, tch_state_dict::Error> {
        let order = [
            "fc1.weight",
            "fc1.bias",
            "bn.weight",
            "bn.bias",
            "bn.running_mean",
            "bn.running_var",
            "linear.weight",
            "linear.bias",
        ];
        Ok(ModuleTree::from_var_store_ordered(&self.vs, order)?.with_type_name("Net"))
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        let h = self.bn.forward_t(&self.fc1.forward(xs), false).relu();
        self.linear.forward(&h)
    }
}

fn main() -> Result<(), tch_state_dict::Error> {
    // The checkpoint: a network trained on 100 classes.
    let pretrained = Net::new(100);
    let checkpoint = state_dict(&pretrained.module_tree()?)?;
    println!("checkpoint: {checkpoint}\n");

    // 1. The wall: a 10-class model refuses it, even with strict = false.
    let model = Net::new(10);
    println!(">>> load_state_dict(&model, &checkpoint, false)");
    match load_state_dict(&model.module_tree()?, &checkpoint, false) {
        Err(e) => println!("{e}\n"),
        Ok(report) => println!("unexpectedly loaded: {report}\n"),
    }

    // 2. Fix 1: drop the head's keys and load the rest non-strictly.
    let mut backbone = checkpoint.shallow_clone();
    backbone.pop("linear.weight");
    backbone.pop("linear.bias");
    println!(">>> checkpoint.pop(\"linear.weight\"); checkpoint.pop(\"linear.bias\");");
    let report = load_state_dict(&model.module_tree()?, &backbone, false)?;
    println!(">>> load_state_dict(&model, &checkpoint, false)\n{report}\n");

    // 3. Fix 2: build the model with the checkpoint's class count and load strictly.
    let same = Net::new(100);
    let report = load_state_dict(&same.module_tree()?, &checkpoint, true)?;
    println!(">>> load_state_dict(&model_100, &checkpoint, true)\n{report}");

    let x = Tensor::randn([4, 32], (Kind::Float, model.vs.device()));
    println!(
        "\noutputs: fine-tuned model {:?}, 100-class model {:?}",
        model.forward(&x).size(),
        same.forward(&x).size()
    );
    Ok(())
}
