"""PyTorch's side of benches/compare.rs: times loading the same checkpoint into the same model
in Python, with the thread count the Rust side uses, and prints the medians (ms) as JSON.

  pytorch_load.py MODEL PTH SAFETENSORS THREADS RUNS

MODEL is a torchvision architecture (resnet50) or synthetic:N:ROWS:COLS (N tensors
layers.<i>.weight of shape [ROWS, COLS]).
"""

import json
import sys

import torch
import torchvision
from safetensors.torch import load_file

from bench_models import Synthetic, median_ms


def build(spec):
    if spec.startswith("synthetic:"):
        _, n, rows, cols = spec.split(":")
        return Synthetic(int(n), int(rows), int(cols))
    return getattr(torchvision.models, spec)(weights=None)


def main():
    spec, pth, st, threads, runs = sys.argv[1:6]
    torch.set_num_threads(int(threads))
    runs = int(runs)
    model = build(spec)
    out = {
        "default": median_ms(lambda: model.load_state_dict(torch.load(pth, weights_only=True)), runs),
        "mmap": median_ms(lambda: model.load_state_dict(torch.load(pth, weights_only=True, mmap=True)), runs),
        "safetensors": median_ms(lambda: model.load_state_dict(load_file(st)), runs),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
