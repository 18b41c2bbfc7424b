"""Oracle for tests/training.rs: what torch.load(weights_only=False) gives, flattened.

  flatten P     torch.load(P, weights_only=False, map_location='cpu'), then every tensor and
                numpy array (dtype, shape, bytes as hex) and every scalar (type and repr),
                by a path of keys joined with '/'; dicts by key, lists and tuples by index,
                objects by attribute (vars()). Paths are strings, datetimes isoformat(),
                numpy scalars .item(). Also the repr() of every argparse.Namespace, and of
                every dict of a subclass, as `module.Class({...})` with dict's repr. JSON.
  flatten_all P [P ...]
                flatten of each, in one object by path
  flatten_weights_only P
                flatten of torch.load(P, weights_only=True)
  omegaconf P   the omegaconf configs among torch.load(P)['hyper_parameters'], each resolved
                (OmegaConf.to_container(resolve=True)) and checked: is every node's parent
                the node that holds it
  state_dict P KEY OUT
                the state_dict() of the module torch.load(P, weights_only=False) gives (or
                of the module under KEY when KEY is not empty), written to OUT with
                torch.save; its keys are printed
  script_state_dict P OUT
                torch.jit.load(P).state_dict(), written to OUT with torch.save
  save_model ARCH CLASSES OUT KEY [fx] [legacy]
                torch.save of a whole model of tests/oracle/resnets.py (a torchvision ResNet,
                a CIFAR ResNet), with BatchNorm statistics away from their defaults: the
                model itself, or {KEY: model, 'epoch': 240} when KEY is not empty; with fx,
                the torch.fx GraphModule that symbolic_trace makes of it; with legacy, in the
                legacy format (PyTorch 1.5's), which names each module class by a persistent id

The fake package of the fixtures (fakepkg) is registered first, as the fixture script did.
"""

import argparse
import datetime
import json
import os
import pathlib
import sys
from collections import OrderedDict

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures"))
import make_training  # noqa: E402

make_training.install_fakepkg()


def record(t):
    t = t.detach().contiguous()
    return {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
            "hex": t.reshape(-1).view(torch.uint8).numpy().tobytes().hex()}


def scalar(kind, value):
    return {"type": kind, "repr": value}


def state_of(obj):
    """What pickle saved of an object: its class's __getstate__() where the class defines
    one (omegaconf's nodes, which leave out a cache), else vars()."""
    if type(obj).__getstate__ is not object.__getstate__:
        state = obj.__getstate__()
        if isinstance(state, dict):
            return state
    return vars(obj)


def flatten(obj, prefix, tensors, scalars, reprs, enclosing=None):
    """`enclosing` maps the id() of each container and object that holds `obj` to its path:
    one met again inside itself is a cycle, recorded as ("recursive", its path)."""
    enclosing = {} if enclosing is None else enclosing
    join = (lambda k: f"{prefix}/{k}" if prefix else str(k))
    if isinstance(obj, (dict, list, tuple)) or (
            hasattr(obj, "__dict__") and not isinstance(obj, (type, torch.Tensor, np.ndarray,
                                                               pathlib.PurePath))):
        if id(obj) in enclosing:
            scalars[prefix] = scalar("recursive", enclosing[id(obj)])
            return
        enclosing[id(obj)] = prefix
        try:
            flatten_one(obj, prefix, join, tensors, scalars, reprs, enclosing)
        finally:
            del enclosing[id(obj)]
    else:
        flatten_one(obj, prefix, join, tensors, scalars, reprs, enclosing)


def flatten_one(obj, prefix, join, tensors, scalars, reprs, enclosing):
    flatten_ = (lambda o, p: flatten(o, p, tensors, scalars, reprs, enclosing))
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = record(obj)
    elif isinstance(obj, np.ndarray):
        native = obj.astype(obj.dtype.newbyteorder("="))
        tensors[prefix] = record(torch.from_numpy(native.copy(order="C")))
    elif isinstance(obj, np.generic):
        flatten_(obj.item(), prefix)
    elif isinstance(obj, bool):
        scalars[prefix] = scalar("bool", repr(obj))
    elif isinstance(obj, int):
        scalars[prefix] = scalar("int", repr(obj))
    elif isinstance(obj, float):
        scalars[prefix] = scalar("float", repr(obj))
    elif isinstance(obj, str):
        scalars[prefix] = scalar("str", obj)
    elif obj is None:
        scalars[prefix] = scalar("none", "None")
    elif isinstance(obj, pathlib.PurePath):
        scalars[prefix] = scalar("str", str(obj))
    elif isinstance(obj, (datetime.datetime, datetime.date, datetime.time)):
        scalars[prefix] = scalar("str", obj.isoformat())
    elif isinstance(obj, dict):
        if type(obj) not in (dict, OrderedDict):
            cls = type(obj)
            reprs[prefix] = f"{cls.__module__}.{cls.__qualname__}({dict.__repr__(obj)})"
        for k, v in obj.items():
            flatten_(v, join(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            flatten_(v, join(i))
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        # (A class, such as the typing.Any an omegaconf node names, is a global here.)
        if isinstance(obj, argparse.Namespace):
            reprs[prefix] = repr(obj)
        for k, v in state_of(obj).items():
            flatten_(v, join(k))


def flattened(path, weights_only=False):
    obj = torch.load(path, weights_only=weights_only, map_location="cpu")
    tensors, scalars, reprs = {}, {}, {}
    flatten(obj, "", tensors, scalars, reprs)
    return {"tensors": tensors, "scalars": scalars, "reprs": reprs}


def main():
    cmd, *args = sys.argv[1:]
    if cmd == "flatten":
        print(json.dumps(flattened(args[0])))
    elif cmd == "flatten_all":
        print(json.dumps({p: flattened(p) for p in args}))
    elif cmd == "flatten_weights_only":
        print(json.dumps(flattened(args[0], weights_only=True)))
    elif cmd == "omegaconf":
        # The omegaconf configs among hyper_parameters' items, resolved (interpolations
        # follow `_parent` up to the root), and whether every node's parent is the node
        # that holds it.
        from omegaconf import Container, OmegaConf

        hp = torch.load(args[0], weights_only=False, map_location="cpu")["hyper_parameters"]
        out = {}
        for k, cfg in hp.items():
            if isinstance(cfg, Container):
                def parents_ok(node):
                    children = (node._content.values() if isinstance(node._content, dict)
                                else node._content)
                    return all(c._get_parent() is node
                               and (not isinstance(c, Container) or parents_ok(c))
                               for c in children)
                out[k] = {"resolved": OmegaConf.to_container(cfg, resolve=True,
                                                             throw_on_missing=False),
                          "parents_ok": parents_ok(cfg), "type": type(cfg).__name__}
        print(json.dumps(out))
    elif cmd == "script_state_dict":
        sd = torch.jit.load(args[0], map_location="cpu").state_dict()
        torch.save(sd, args[1])
        print(json.dumps(list(sd.keys())))
    elif cmd == "save_model":
        import resnets

        arch, classes, out, key, *how = args
        torch.manual_seed(0)
        model, _ = resnets.build(arch, int(classes))
        g = torch.Generator().manual_seed(1)
        make_training.randomize(model, g)
        if "fx" in how:
            model = torch.fx.symbolic_trace(model)
        torch.save({key: model, "epoch": 240} if key else model, out,
                   _use_new_zipfile_serialization="legacy" not in how)
    elif cmd == "state_dict":
        obj = torch.load(args[0], weights_only=False, map_location="cpu")
        if args[1]:
            obj = obj[args[1]]
        sd = obj.state_dict()
        torch.save(sd, args[2])
        print(json.dumps(list(sd.keys())))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
