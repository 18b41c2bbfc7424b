"""PyTorch's side of benches/device.rs, on a CUDA machine: the medians (ms) of loading a
checkpoint into a CUDA model the two ways PyTorch users do, printed as JSON.

  device_pytorch.py MODEL PTH_OR_NONE SAFETENSORS_DIR_OR_FILE KIND RUNS

MODEL is resnet50 or llm:LAYERS:DIM. KIND is the model's dtype (float32, bfloat16).
"""

import glob
import json
import os
import sys

import torch
import torchvision
from safetensors.torch import load_file

from bench_models import Llm, median_ms


def build(spec, kind):
    if spec.startswith("llm:"):
        _, layers, dim = spec.split(":")
        with torch.device("meta"):
            model = Llm(int(layers), int(dim))
        model = model.to_empty(device="cuda")
    else:
        model = getattr(torchvision.models, spec)(weights=None).cuda()
    return model.to(getattr(torch, kind))


def main():
    spec, pth, st, kind, runs = sys.argv[1:6]
    runs = int(runs)
    model = build(spec, kind)
    files = sorted(glob.glob(os.path.join(st, "*.safetensors"))) if os.path.isdir(st) else [st]

    def safetensors_route():
        for f in files:
            model.load_state_dict(load_file(f, device="cuda"), strict=False)

    out = {"load_file_cuda": median_ms(safetensors_route, runs, torch.cuda.synchronize)}
    if pth != "none":
        out["torch_load_cuda"] = median_ms(
            lambda: model.load_state_dict(torch.load(pth, map_location="cuda", weights_only=True)),
            runs, torch.cuda.synchronize)
        out["torch_load_mmap"] = median_ms(
            lambda: model.load_state_dict(torch.load(pth, mmap=True, weights_only=True)),
            runs, torch.cuda.synchronize)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
