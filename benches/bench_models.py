"""What the benches' PyTorch sides share: their models (the synthetic one, and the LLM-like one
of benches/make_llm.py's checkpoint) and their timing."""

import statistics
import time

import torch
from torch import nn


class Holder(nn.Module):
    def __init__(self, rows, cols):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(rows, cols))


class Synthetic(nn.Module):
    """N tensors layers.<i>.weight of shape [ROWS, COLS]."""

    def __init__(self, n, rows, cols):
        super().__init__()
        self.layers = nn.ModuleList([Holder(rows, cols) for _ in range(n)])


class Attn(nn.Module):
    def __init__(self, dim):
        super().__init__()
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(self, p, nn.Linear(dim, dim, bias=False))


class Layer(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.self_attn = Attn(dim)


class Inner(nn.Module):
    def __init__(self, layers, dim):
        super().__init__()
        self.layers = nn.ModuleList([Layer(dim) for _ in range(layers)])


class Llm(nn.Module):
    """model.layers.<i>.self_attn.{q,k,v,o}_proj.weight, bias-free [DIM, DIM] Linear layers."""

    def __init__(self, layers, dim):
        super().__init__()
        self.model = Inner(layers, dim)


def median_ms(fn, runs, sync=lambda: None):
    """The median of `runs` runs of `fn` after a warm-up (page cache, allocator), in ms;
    `sync` waits for the device before each clock reading."""
    fn()
    times = []
    for _ in range(runs):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
