"""Writes a DCP checkpoint {'model': state_dict} with real torch.distributed: 2 ranks of
DTensors on CPU (gloo on 127.0.0.1), for tests/memory.rs and benches/compare.rs.

  dcp_save.py layers OUT N WIDTH CLASSES
      N layers `layers.{i}.weight` of WIDTH x WIDTH float32 (seeded), even layers Shard(0)
      (rows), odd ones Shard(1) (columns), and a head `linear.weight` (CLASSES x WIDTH),
      `linear.bias`, replicated.
  dcp_save.py from PTH KEY OUT
      the state dict under KEY of the torch.save file PTH ('' for the whole file), every
      tensor of a dimension or more Shard(0), 0-dim ones replicated: the layout of FSDP2.
"""

import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp

WORLD = 2


def state_dict(args):
    if args[0] == "layers":
        _, out, n, width, classes = args
        n, width, classes = int(n), int(width), int(classes)
        g = torch.Generator().manual_seed(0)
        sd = {f"layers.{i}.weight": torch.randn(width, width, generator=g) for i in range(n)}
        sd["linear.weight"] = torch.randn(classes, width, generator=g)
        sd["linear.bias"] = torch.zeros(classes)
        return out, sd, lambda k: 1 if k.startswith("layers.") and int(k.split(".")[1]) % 2 else 0
    _, pth, key, out = args
    sd = torch.load(pth, weights_only=True)
    if key:
        sd = sd[key]
    return out, dict(sd), lambda k: 0


def run(rank, port, args):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        out, sd, dim_of = state_dict(args)
        mesh = init_device_mesh("cpu", (WORLD,))
        sharded = {}
        for k, t in sd.items():
            if t.dim() == 0 or (k.startswith("linear.") and args[0] == "layers"):
                placement = Replicate()
            else:
                placement = Shard(min(dim_of(k), t.dim() - 1))
            sharded[k] = distribute_tensor(t, mesh, [placement])
        dcp.save({"model": sharded}, checkpoint_id=out)
    finally:
        dist.destroy_process_group()


def main():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(run, args=(port, sys.argv[1:]), nprocs=WORLD, join=True)


if __name__ == "__main__":
    main()
