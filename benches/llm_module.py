"""The nn.Module of benches/make_llm.py's checkpoint, shared by the benches' PyTorch sides:
model.layers.<i>.self_attn.{q,k,v,o}_proj.weight, bias-free [DIM, DIM] Linear layers."""

from torch import nn


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
    def __init__(self, layers, dim):
        super().__init__()
        self.model = Inner(layers, dim)
