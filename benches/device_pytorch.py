"""PyTorch's side of benches/device.rs, on a CUDA machine: the medians (ms) of loading a
checkpoint into a CUDA model the two ways PyTorch users do, printed as JSON.

  device_pytorch.py MODEL PTH_OR_NONE SAFETENSORS_DIR_OR_FILE KIND RUNS [DEVICE]

MODEL is resnet50 or llm:LAYERS:DIM. KIND is the model's dtype (float32, bfloat16). DEVICE is
cuda unless given (cpu: the device check's dry run on a machine without a GPU). A route that
fails gives its error in place of its time; the others still run.
"""

import glob
import json
import os
import sys

import torch
import torchvision
from safetensors.torch import load_file

from bench_models import Llm, median_ms


def build(spec, kind, device):
    if spec.startswith("llm:"):
        _, layers, dim = spec.split(":")
        with torch.device("meta"):
            model = Llm(int(layers), int(dim))
        model = model.to_empty(device=device)
    else:
        model = getattr(torchvision.models, spec)(weights=None).to(device)
    return model.to(getattr(torch, kind))


def main():
    spec, pth, st, kind, runs = sys.argv[1:6]
    device = sys.argv[6] if len(sys.argv) > 6 else "cuda"
    runs = int(runs)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    model = build(spec, kind, device)
    files = sorted(glob.glob(os.path.join(st, "*.safetensors"))) if os.path.isdir(st) else [st]

    def safetensors_route():
        for f in files:
            model.load_state_dict(load_file(f, device=device), strict=False)

    routes = {"load_file_" + device: safetensors_route}
    if pth != "none":
        routes["torch_load_" + device] = lambda: model.load_state_dict(
            torch.load(pth, map_location=device, weights_only=True))
        routes["torch_load_mmap"] = lambda: model.load_state_dict(
            torch.load(pth, mmap=True, weights_only=True))
    out = {}
    if device == "cuda":
        out["gpu"] = torch.cuda.get_device_name()
    for name, route in routes.items():
        try:
            out[name] = round(median_ms(route, runs, sync), 2)
        except Exception as e:  # one route's failure is reported, the others still run
            out[name] = f"failed: {type(e).__name__}: {e}"[:200]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
