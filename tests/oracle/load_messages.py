"""Oracle for tests/pytorch_messages.rs: runs Python torch's load_state_dict on the scenarios
given as JSON on stdin and prints, as JSON, what PyTorch raised or returned for each.

A scenario describes a model (its modules in pre-order, and its tensors in state_dict order),
a state dict (keys, shapes, dtypes; a null shape stands for a value that is not a tensor),
optional `_metadata`, and `strict`. The Rust test builds the same model as a ModuleTree and
compares texts byte for byte.
"""

import json
import sys
from collections import OrderedDict

import torch
from torch import nn

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "int64": torch.int64, "int32": torch.int32, "uint8": torch.uint8, "bool": torch.bool}


def build_model(scn):
    root = type(scn["type_name"], (nn.Module,), {})()
    modules = {"": root}
    shapes = {k: s for k, s, _ in scn["model"]}
    for path, kind in scn["modules"]:
        parent, _, name = path.rpartition(".")
        if kind == "batchnorm":
            child = nn.BatchNorm1d(shapes[path + ".running_mean"][0])
        else:
            child = nn.Module()
        modules[parent].add_module(name, child)
        modules[path] = child
    kinds = dict(scn["modules"])
    for key, shape, dtype in scn["model"]:
        path, _, name = key.rpartition(".")
        if kinds.get(path) == "batchnorm":
            continue
        modules[path].register_buffer(name, torch.zeros(shape, dtype=DTYPES[dtype]))
    keys = list(root.state_dict().keys())
    expected = [k for k, _, _ in scn["model"]]
    if keys != expected:
        raise SystemExit(f"scenario {scn['name']}: model keys {keys} != spec {expected}")
    return root


def build_state_dict(scn):
    sd = OrderedDict()
    for key, shape, dtype in scn["state_dict"]:
        sd[key] = None if shape is None else torch.zeros(shape, dtype=DTYPES[dtype])
    if scn.get("metadata") is not None:
        sd._metadata = OrderedDict((k, dict(v)) for k, v in scn["metadata"].items())
    return sd


def main():
    out = {}
    for scn in json.load(sys.stdin):
        model = build_model(scn)
        sd = build_state_dict(scn)
        try:
            result = model.load_state_dict(sd, strict=scn["strict"])
            out[scn["name"]] = {"error": None, "report": repr(result)}
        except RuntimeError as e:
            out[scn["name"]] = {"error": str(e), "report": None}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
