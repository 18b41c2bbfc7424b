"""Writes the LLM-like checkpoint of benches/convert.rs: LAYERS decoder layers of four bias-free
[DIM, DIM] projections (q, k, v, o) in bf16, as the sharded safetensors that transformers'
save_pretrained writes (model-0000k-of-0000n.safetensors and model.safetensors.index.json),
with a fixed seed.

  make_llm.py OUT_DIR LAYERS DIM SHARDS

32 layers of 4096 give 128 tensors of 32 MiB: 4 GiB in 4 shards.
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def main():
    out, layers, dim, shards = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    os.makedirs(out, exist_ok=True)
    gen = torch.Generator().manual_seed(20261205)
    keys = [f"model.layers.{i}.self_attn.{p}.weight" for i in range(layers) for p in PROJECTIONS]
    per_shard = -(-len(keys) // shards)
    weight_map = {}
    total = 0
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {}
        for key in keys[s * per_shard:(s + 1) * per_shard]:
            tensors[key] = torch.randn(dim, dim, generator=gen).to(torch.bfloat16)
            weight_map[key] = name
            total += tensors[key].numel() * 2
        save_file(tensors, os.path.join(out, name), metadata={"format": "pt"})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)


if __name__ == "__main__":
    main()
