"""Oracle for tests/tch_models.rs: torchvision's state dicts and eval logits for every model of
tch::vision that torchvision has, to be loaded into tch's models.

  tch_vision.py DIR   writes the files below one family at a time, printing "ready FAMILY"
                      after each, then waits for its stdin to close (the test process
                      ending) and removes DIR

  DIR/FAMILY.pth              one state dict holding the family's models', each under
                              "ARCH." (the state dict of an nn.ModuleDict of them)
  DIR/FAMILY.logits.pth       per case "ARCH@SIZE": .input (1x3xSIZExSIZE), .logits (eval),
                              and .tch_logits where tch's forward differs from torchvision's:
                              torchvision's model changed to do what tch's source does
  DIR/densenet121_legacy.pth  densenet121's state dict in the layout of torchvision's
                              published files (denselayer keys "norm.1", "conv.1", ...; no
                              BatchNorm counters, which those files predate), with "densenet"

The families come in the order the tests need them, so that they start while the rest is
written. Weights are random with a fixed seed, uniform with variance 1 / fan_in, so that
activations neither vanish nor blow up and the logits are not the biases; BatchNorms get
non-default affine parameters and running statistics, and counters of 240. The 6.5 GB of
weights are written as 2.2 GB: within a family, a tensor is shared (one storage in the file)
between models whose module type, tensor name, shape and occurrence agree (the k-th
[512, 512, 3, 3] conv weight of vgg11 is the k-th of vgg19); within a model every tensor is
its own.

TCH_VISION_TIMINGS=1 prints where the time goes, on stderr.
"""

import collections
import contextlib
import gc
import math
import os
import re
import shutil
import sys
import time
import warnings

import torch
import torch.nn.functional as F
import torchvision

# (family, [(arch, input sizes)], how tch's forward differs), in the order the tests ask for
# them (by test name: logits_agree_*, then logits_differ_*). Sizes: small, and what both
# forwards accept.
FAMILIES = [
    # torchvision's smallest inception_v3 input.
    ("inception", [("inception_v3", [75])], None),
    ("mobilenet", [("mobilenet_v2", [64])], None),
    ("resnet", [(f"resnet{n}", [64]) for n in (18, 34, 50, 101, 152)], None),
    ("squeezenet", [("squeezenet1_0", [64]), ("squeezenet1_1", [64])], None),
    # tch's vgg flattens with no adaptive pooling: 7x7 at the end, so 224.
    ("vgg", [(f"vgg{n}{bn}", [224]) for n in (11, 13, 16, 19) for bn in ("", "_bn")], None),
    # tch's alexnet strides its second conv by 2, so its last max-pool needs 127 pixels.
    ("alexnet", [("alexnet", [127])], "alexnet"),
    # tch's densenet ends in a 7x7 pooling and a linear layer sized for its output: 224.
    ("densenet", [(f"densenet{n}", [224]) for n in (121, 161, 169, 201)], "densenet"),
    # An even size, where tch's "same" padding differs from torchvision's at every stride-2
    # conv, and an odd one that stays odd at each of them (33, 17, 9, 5, 3), where they agree.
    ("efficientnet", [(f"efficientnet_b{i}", [32, 33]) for i in range(8)], "efficientnet"),
]

BATCH_NORM = torch.nn.BatchNorm2d
WEIGHTED = (torch.nn.Conv2d, torch.nn.Linear)


def random_tensor(kind, name, shape, gen):
    if name == "num_batches_tracked":
        return torch.tensor(240, dtype=torch.int64)
    t = torch.empty(shape)
    if issubclass(kind, BATCH_NORM):
        lo, hi = {
            "weight": (0.5, 1.5),
            "bias": (-0.2, 0.2),
            "running_mean": (-0.2, 0.2),
            "running_var": (0.5, 1.5),
        }[name]
        return t.uniform_(lo, hi, generator=gen)
    if issubclass(kind, WEIGHTED) and name == "weight":
        # Variance 1 / fan_in. He's 2 / fan_in makes the deep EfficientNets chaotic (random
        # BatchNorm statistics normalize nothing, and residuals add up): a change of 1e-6 in
        # the input changed efficientnet_b7's logits by 87%, where this changes them by 5e-7.
        bound = math.sqrt(3.0 / math.prod(shape[1:]))
        return t.uniform_(-bound, bound, generator=gen)
    if issubclass(kind, WEIGHTED) and name == "bias":
        return t.uniform_(-0.1, 0.1, generator=gen)
    raise ValueError(f"no rule for {kind.__name__}.{name}")


class Pool:
    """Random tensors shared between models by (module type, name, shape, occurrence)."""

    def __init__(self, seed):
        self.gen = torch.Generator().manual_seed(seed)
        self.tensors = {}

    def fill(self, model):
        """Replaces every parameter and buffer of `model` (on the meta device) by the pool's."""
        seen = collections.Counter()
        for module in model.modules():
            kind = type(module)
            for slots, wrap in ((module._parameters, True), (module._buffers, False)):
                for name, old in list(slots.items()):
                    if old is None:
                        continue
                    key = (kind, name, tuple(old.shape))
                    seen[key] += 1
                    key = (*key, seen[key])
                    if key not in self.tensors:
                        self.tensors[key] = random_tensor(kind, name, key[2], self.gen)
                    t = self.tensors[key]
                    slots[name] = torch.nn.Parameter(t, requires_grad=False) if wrap else t


@contextlib.contextmanager
def no_init():
    """torch.nn.init's in-place initializers as no-ops: even on the meta device they make
    building the models about 3 times slower, and the pool replaces every tensor anyway."""
    saved = {
        name: f
        for name, f in vars(torch.nn.init).items()
        if callable(f) and name.endswith("_") and not name.startswith("_")
    }
    for name in saved:
        setattr(torch.nn.init, name, lambda t, *args, **kwargs: t)
    try:
        yield
    finally:
        for name, f in saved.items():
            setattr(torch.nn.init, name, f)


def build(arch, pool):
    kwargs = {"weights": None}
    if arch == "inception_v3":
        kwargs["init_weights"] = False
    with no_init(), torch.device("meta"):
        model = getattr(torchvision.models, arch)(**kwargs)
    pool.fill(model)
    return model.eval()


def tf_same_padding(conv):
    """tch's efficientnet.rs Conv2DSame: no padding in the conv, and zero padding before it that
    makes the output ceil(size / stride), with the odd pixel on the right and bottom."""
    k, s = conv.kernel_size[0], conv.stride[0]
    conv.padding = (0, 0)

    def pad(module, args):
        (x,) = args
        ih, iw = x.shape[-2:]
        ph = max((-(-ih // s) - 1) * s + k - ih, 0)
        pw = max((-(-iw // s) - 1) * s + k - iw, 0)
        return (F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)),)

    conv.register_forward_pre_hook(pad)


def make_like_tch(how, model):
    """torchvision's `model` (not its state dict) changed to compute what tch's source does:
    its forward function."""
    if how == "alexnet":
        # tch's alexnet.rs: conv2d(&p / "3", 64, 192, 5, 1, 2) is (ksize 5, padding 1,
        # stride 2); torchvision's features[3] has stride 1, padding 2.
        conv = model.features[3]
        conv.stride, conv.padding = (2, 2), (1, 1)
        return model
    if how == "densenet":
        # tch's densenet.rs pools with a divisor override of 1, which sums: in each transition,
        # avg_pool2d_default(2) (tensor/mod.rs: avg_pool2d([2, 2], [2, 2], [0, 0], false,
        # true, 1)), and at the end avg_pool2d([7, 7], [1, 1], [0, 0], false, true, 1) where
        # torchvision has adaptive_avg_pool2d(1).
        for m in model.features:
            if isinstance(m, torchvision.models.densenet._Transition):
                m.pool = torch.nn.AvgPool2d(2, stride=2, divisor_override=1)

        def forward(x):
            f = F.relu(model.features(x))
            return model.classifier(F.avg_pool2d(f, 7, 1, 0, False, True, 1).flatten(1))

        return forward
    if how == "efficientnet":
        # tch's efficientnet.rs: BatchNorm eps 1e-3 for every variant (torchvision: 1e-5 for
        # b0 to b4), and TensorFlow's "same" padding.
        for m in model.modules():
            if isinstance(m, BATCH_NORM):
                m.eps = 1e-3
            if isinstance(m, torch.nn.Conv2d):
                tf_same_padding(m)
        return model
    raise ValueError(how)


LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))([12])\.(weight|bias|running_mean|running_var)$"
)


def legacy_densenet(sd):
    """The inverse of torchvision's densenet _load_state_dict: norm1 -> norm.1, conv2 -> conv.2."""
    out = collections.OrderedDict()
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        m = LEGACY.match(k)
        out[f"{m[1]}.{m[2]}.{m[3]}" if m else k] = v
    return out


def logits(arch, how, sizes, model):
    """torchvision's logits, then (changing `model`, not its state dict) tch's."""
    out = {}
    for size in sizes:
        case = f"{arch}@{size}"
        x = torch.randn(1, 3, size, size)
        out[f"{case}.input"] = x
        out[f"{case}.logits"] = model(x)
    if how is not None:
        forward = make_like_tch(how, model)
        for size in sizes:
            case = f"{arch}@{size}"
            out[f"{case}.tch_logits"] = forward(out[f"{case}.input"])
    return out


def write(out):
    timings = collections.Counter()
    torch.manual_seed(0)
    for seed, (family, archs, how) in enumerate(FAMILIES):
        # Tensors are shared within a family, which is one file.
        pool = Pool(seed)
        models = torch.nn.ModuleDict()
        expected = {}
        for arch, sizes in archs:
            start = time.perf_counter()
            models[arch] = build(arch, pool)
            timings["build"] += time.perf_counter() - start
            start = time.perf_counter()
            with torch.no_grad():
                expected.update(logits(arch, how, sizes, models[arch]))
            timings["forward"] += time.perf_counter() - start
        start = time.perf_counter()
        torch.save(models.state_dict(), os.path.join(out, f"{family}.pth"))
        # Not FAMILY.expected.pth: the zip crate (9.8.2) rejects that file for efficientnet
        # ("Invalid Central Directory header"), which torch.load reads.
        torch.save(expected, os.path.join(out, f"{family}.logits.pth"))
        if family == "densenet":
            legacy = legacy_densenet(models["densenet121"].state_dict())
            torch.save(legacy, os.path.join(out, "densenet121_legacy.pth"))
        timings["save"] += time.perf_counter() - start
        print(f"ready {family}", flush=True)
    if os.environ.get("TCH_VISION_TIMINGS"):
        for k, v in timings.items():
            print(f"{k}: {v:.2f} s", file=sys.stderr)


def main():
    (out,) = sys.argv[1:]
    warnings.simplefilter("ignore")
    # Small inputs: one thread is fastest, and on a busy machine two are much slower
    # (densenet121 at 224: 0.13 s on one thread, 6 s on two that share two loaded cores).
    torch.set_num_threads(1)
    os.makedirs(out, exist_ok=True)
    try:
        write(out)
        gc.collect()
        sys.stdin.read()
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
