"""PyTorch's side of benches/floors.rs: the same loads, with the same conversions, in Python,
with the thread count the Rust side uses. Prints one JSON object: the median (ms) and this
process's peak RSS growth over the model (bytes).

  floors_pytorch.py load SPEC KIND PATH MODE THREADS RUNS
      MODE safetensors: load_file of each .safetensors (PATH a file or a directory of shards)
      + load_state_dict(strict=False) each; MODE mmap: torch.load(PATH, mmap=True) +
      load_state_dict.
  floors_pytorch.py dcp SPEC DIR THREADS RUNS
      torch.distributed.checkpoint.load of {'model': model.state_dict()} from DIR, in one
      process, + load_state_dict.

SPEC is a torchvision architecture (resnet50), synthetic:N:ROWS:COLS (N tensors
layers.<i>.weight) or llm:LAYERS:DIM (the keys of benches/make_llm.py). KIND is the model's
floating dtype (float32, bfloat16).
"""

import glob
import json
import os
import resource
import sys

import torch
import torchvision
from safetensors.torch import load_file

from bench_models import Llm, Synthetic, median_ms


def build(spec, kind):
    # Built on the meta device, then given memory in its own dtype: an fp32 model made first
    # and converted would set the peak RSS that the loads are measured against.
    with torch.device("meta"):
        if spec.startswith("llm:"):
            _, layers, dim = spec.split(":")
            model = Llm(int(layers), int(dim))
        elif spec.startswith("synthetic:"):
            _, n, rows, cols = spec.split(":")
            model = Synthetic(int(n), int(rows), int(cols))
        else:
            model = getattr(torchvision.models, spec)(weights=None)
    model = model.to(getattr(torch, kind)).to_empty(device="cpu")
    for t in model.state_dict().values():
        t.zero_()  # touched, as the Rust side's model is
    return model


def peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main():
    mode = sys.argv[1]
    if mode == "load":
        spec, kind, path, how, threads, runs = sys.argv[2:8]
    else:
        spec, path, threads, runs = sys.argv[2:6]
        kind = "float32"
    torch.set_num_threads(int(threads))
    model = build(spec, kind)
    before = peak_rss()
    if mode == "dcp":
        import torch.distributed.checkpoint as dcp

        def fn():
            sd = {"model": model.state_dict()}
            dcp.load(sd, checkpoint_id=path)
            model.load_state_dict(sd["model"])
    elif how == "safetensors":
        files = sorted(glob.glob(os.path.join(path, "*.safetensors"))) if os.path.isdir(path) else [path]

        def fn():
            for f in files:
                model.load_state_dict(load_file(f), strict=False)
    else:

        def fn():
            model.load_state_dict(torch.load(path, mmap=True, weights_only=True))
    ms = median_ms(fn, int(runs))
    print(json.dumps({"ms": ms, "peak_rss_growth": peak_rss() - before, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
