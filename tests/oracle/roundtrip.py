"""Oracle for tests/roundtrip.rs: Python's side of the round trips.

  compare A B [A B ...]
                     torch.load(weights_only=True) both of each pair, and compare them: same
                     types, keys in the same order, tensors with equal dtype, shape and values
                     (bitwise), equal _metadata; prints a line a pair, "equal" or
                     "differ: <where and how>"
  resave A B         torch.save(torch.load(A, weights_only=True), B)
  load_small P       loads P into the Small model of tests/fixtures/make_fixtures.py with
                     load_state_dict(strict=True) and checks every value landed
  st_compare A B     safetensors.torch.load_file both, and require them equal
  st_resave A B      safetensors.torch.save_file(load_file(A), B)
"""

import sys
from collections import OrderedDict

import torch
from torch import nn
from safetensors.torch import load_file, save_file


class Small(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.linear = nn.Linear(4, classes)


def bits(t):
    """A tensor's bytes, so that NaNs and -0.0 compare exactly."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def same(a, b, where="root"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), f"{where}: tensor vs {type(b)}"
        assert a.dtype == b.dtype, f"{where}: dtype {a.dtype} vs {b.dtype}"
        assert a.shape == b.shape, f"{where}: shape {a.shape} vs {b.shape}"
        assert torch.equal(bits(a), bits(b)), f"{where}: values differ"
        return
    assert type(a) is type(b), f"{where}: {type(a)} vs {type(b)}"
    if isinstance(a, dict):
        assert list(a.keys()) == list(b.keys()), f"{where}: keys {list(a)} vs {list(b)}"
        for k in a:
            same(a[k], b[k], f"{where}/{k}")
        ma, mb = getattr(a, "_metadata", None), getattr(b, "_metadata", None)
        assert ma == mb, f"{where}: _metadata {ma} vs {mb}"
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: length"
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}/{i}")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def main():
    cmd, *args = sys.argv[1:]
    if cmd == "compare":
        for a, b in zip(args[0::2], args[1::2]):
            try:
                same(torch.load(a, weights_only=True), torch.load(b, weights_only=True))
                print("equal")
            except AssertionError as e:
                print(f"differ: {e}")
    elif cmd == "resave":
        torch.save(torch.load(args[0], weights_only=True), args[1])
    elif cmd == "load_small":
        sd = torch.load(args[0], weights_only=True)
        model = Small(10)
        result = model.load_state_dict(sd, strict=True)
        for k, v in model.state_dict().items():
            assert torch.equal(v, sd[k]), k
        print(result)
    elif cmd == "st_compare":
        a, b = load_file(args[0]), load_file(args[1])
        assert sorted(a) == sorted(b), f"keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            same(a[k], b[k], k)
        print("equal")
    elif cmd == "st_resave":
        save_file(load_file(args[0]), args[1])
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
