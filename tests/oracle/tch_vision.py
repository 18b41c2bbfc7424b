"""Oracle for tests/tch_models.rs: a torchvision ResNet's state dict and eval logits, to be
loaded strictly into tch's own `tch::vision::resnet` models.

  tch_vision.py ARCH DIR   writes DIR/state_dict.pth (random weights, BatchNorm statistics
                           and counters) and DIR/expected.pth: {input, logits} in eval mode
"""

import os
import sys

import torch
import torchvision


def main():
    arch, out = sys.argv[1:3]
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(240)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
    os.makedirs(out, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(out, "state_dict.pth"))
    torch.save({"input": x, "logits": logits}, os.path.join(out, "expected.pth"))


if __name__ == "__main__":
    main()
