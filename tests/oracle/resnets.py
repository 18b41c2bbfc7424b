"""Oracle for tests/models.rs: the ResNets in Python.

torchvision's family comes from torchvision 0.26. The CIFAR family is defined below, as the
knowledge-distillation literature defines it (RepDistiller's models/resnetv2.py for the
four-stage ResNet18..152 with head `linear`, models/resnet.py for the three-stage
resnet8..110, resnet8x4 and resnet32x4 with head `fc`): same module names, registration order,
shapes and forward pass.

  parity ARCH CLASSES DIR   writes DIR/state_dict.pth (random weights and BatchNorm
                            statistics), DIR/keys.json ([key, shape] in state_dict order) and
                            DIR/expected.pth: {input, eval_logits, train_logits, after_train
                            (the buffers after one train-mode forward)}
  linear SEED IN OUT FILE   torch.manual_seed(SEED); saves nn.Linear(IN, OUT)'s state dict
  load_messages             for tests/cli.rs: loads checkpoints into these models as JSON on
                            stdin asks ([{name, arch, classes, path, key, strict}]; a
                            .safetensors path read with safetensors, others with
                            torch.load(weights_only=True), then [key] when key is not null),
                            and prints what load_state_dict raised or returned for each, as
                            JSON: {name: {"error": str(e) or null, "report": repr or null}}
"""

import json
import os
import sys
from collections import OrderedDict

import torch
import torch.nn.functional as F
import torchvision
from torch import nn


class CifarBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarBottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        out_planes = 4 * planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """The four-stage CIFAR ResNet: 3x3 stem, no max pooling, head `linear`."""

    def __init__(self, block, num_blocks, num_classes=10):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages = []
        for planes, n, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2)):
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(block(self.in_planes, planes, s))
                self.in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(512 * block.expansion, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(self.avgpool(out), 1))


class SmallBasicBlock(nn.Module):
    """The three-stage CIFAR block: `relu` is a registered module, `downsample` optional."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return F.relu(out + residual)


class SmallResNet(nn.Module):
    def __init__(self, depth, filters, num_classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.inplanes = filters[0]
        self.conv1 = nn.Conv2d(3, filters[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(filters[1], n, 1)
        self.layer2 = self._make_layer(filters[2], n, 2)
        self.layer3 = self._make_layer(filters[3], n, 2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(filters[3], num_classes)

    def _make_layer(self, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
        layers = [SmallBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [SmallBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).view(x.size(0), -1))


SmallResNet.__name__ = "ResNet"

SMALL = {"resnet8": 8, "resnet14": 14, "resnet20": 20, "resnet32": 32, "resnet44": 44,
         "resnet56": 56, "resnet110": 110}
CIFAR = {"cifar_resnet18": (CifarBasicBlock, [2, 2, 2, 2]), "cifar_resnet34": (CifarBasicBlock, [3, 4, 6, 3]),
         "cifar_resnet50": (CifarBottleneck, [3, 4, 6, 3]), "cifar_resnet101": (CifarBottleneck, [3, 4, 23, 3]),
         "cifar_resnet152": (CifarBottleneck, [3, 8, 36, 3])}


def build(arch, classes):
    if arch in CIFAR:
        block, blocks = CIFAR[arch]
        return ResNet(block, blocks, classes), 32
    if arch in SMALL:
        return SmallResNet(SMALL[arch], [16, 16, 32, 64], classes), 32
    if arch == "resnet8x4":
        return SmallResNet(8, [32, 64, 128, 256], classes), 32
    if arch == "resnet32x4":
        return SmallResNet(32, [32, 64, 128, 256], classes), 32
    return getattr(torchvision.models, arch)(weights=None, num_classes=classes), 64


def parity(arch, classes, out):
    torch.manual_seed(0)
    model, size = build(arch, int(classes))
    # Statistics and affine parameters away from their defaults, so that eval mode uses them.
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.num_batches_tracked.fill_(3)
        head = model.linear if hasattr(model, "linear") else model.fc
        head.bias.normal_(0, 0.1, generator=g)
    sd = model.state_dict()
    torch.save(sd, os.path.join(out, "state_dict.pth"))
    with open(os.path.join(out, "keys.json"), "w") as f:
        json.dump([[k, list(v.shape)] for k, v in sd.items()], f)
    x = torch.randn(2, 3, size, size, generator=g)
    with torch.no_grad():
        model.eval()
        eval_logits = model(x)
        model.train()
        train_logits = model(x)
    after = OrderedDict((k, v) for k, v in model.state_dict().items()
                        if k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    torch.save({"input": x, "eval_logits": eval_logits, "train_logits": train_logits,
                "after_train": after}, os.path.join(out, "expected.pth"))


def linear(seed, fan_in, fan_out, path):
    torch.manual_seed(int(seed))
    torch.save(nn.Linear(int(fan_in), int(fan_out)).state_dict(), path)


def load_messages():
    out = {}
    for case in json.load(sys.stdin):
        if case["path"].endswith(".safetensors"):
            from safetensors.torch import load_file
            sd = load_file(case["path"])
        else:
            sd = torch.load(case["path"], weights_only=True)
        if case["key"] is not None:
            sd = sd[case["key"]]
        model, _ = build(case["arch"], case["classes"])
        try:
            report = model.load_state_dict(sd, strict=case["strict"])
            out[case["name"]] = {"error": None, "report": repr(report)}
        except RuntimeError as e:
            out[case["name"]] = {"error": str(e), "report": None}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"parity": parity, "linear": linear, "load_messages": load_messages}[cmd](*args)
