"""Fused projections for the decode step (issue #14): each decoder layer's
query, key and value projections become one product, and so do its gate and up
projections, as vLLM's QKVParallelLinear and MergedColumnParallelLinear are on
one GPU.

A decode step multiplies a dozen rows by every weight of the model, so each
product streams its weight from memory once and its time is its bytes. Small
products stream theirs at a fraction of the bandwidth: on the H200 transformers'
Llama ran its separate q/k/v and gate/up products at about 77% of the copy
bandwidth (docs/serving.md, "Where the decode step's time goes"). One product
over the concatenated weight is one larger read.

transformers' modules call their projections by name (`self.q_proj(hidden)`,
then `self.k_proj(hidden)` and `self.v_proj(hidden)`), so the fused product
hides behind them: the first of a group computes the whole product for its input
and keeps it; the others, called with that same input tensor, return their slice
of it, and with any other input compute their own product (the result is the
same either way: only the order of calls decides whether the work is shared).
The original weights become views into the concatenated one, so fusing takes no
memory beyond the old weights'.
"""

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

# The projections fused per decoder layer, by module: (the module's attribute
# names in transformers' Llama-family models, in the order its forward calls them).
FUSED_GROUPS = (("self_attn", ("q_proj", "k_proj", "v_proj")),
                ("mlp", ("gate_proj", "up_proj")))


class _SharedProduct:
    """x W^T (+ b) over the concatenated weights of a group, kept for its input
    until the group's last member took its slice (a prefill chunk's product is
    large: it must not outlive the layer's forward)."""

    def __init__(self, weight, bias):
        self.weight = weight
        self.bias = bias
        self.input = None
        self.output = None
        self.shared = 0  # slices handed out of a product computed for another member

    def compute(self, x):
        self.input = x
        self.output = F.linear(x, self.weight, self.bias)
        return self.output

    def take(self, begin, end, last):
        out = self.output[..., begin:end]
        self.shared += 1
        if last:
            self.input = self.output = None
        return out


class FusedLinear(nn.Module):
    """One Linear of a fused group: rows [begin, end) of the group's product.

    `weight` and `bias` are views into the group's concatenated tensors (so the
    module's parameters stay where a state dict expects them); `leads` marks the
    member transformers calls first, which computes the whole product, `last` the
    one it calls last, which lets the product go."""

    def __init__(self, original, shared, begin, leads, last):
        super().__init__()
        end = begin + original.out_features
        self.in_features, self.out_features = original.in_features, original.out_features
        self.weight = nn.Parameter(shared.weight[begin:end], requires_grad=False)
        self.bias = (nn.Parameter(shared.bias[begin:end], requires_grad=False)
                     if shared.bias is not None else None)
        self.begin, self.end, self.leads, self.last = begin, end, leads, last
        self._shared = shared
        # Kept out of the module tree (a plain tuple): restore() puts it back.
        self._original = (original,)

    def forward(self, x):
        shared = self._shared
        if self.leads:
            return shared.compute(x)[..., self.begin:self.end]
        if shared.input is x:
            return shared.take(self.begin, self.end, last=self.last)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"fused rows [{self.begin}, {self.end})")


def _fuse_group(parent, names):
    linears = [getattr(parent, name) for name in names]
    if not all(type(l) is nn.Linear for l in linears):
        return False
    first = linears[0]
    if any(l.in_features != first.in_features or (l.bias is None) != (first.bias is None)
           or l.weight.dtype != first.weight.dtype or l.weight.device != first.weight.device
           for l in linears):
        return False
    with torch.no_grad():
        weight = torch.cat([l.weight for l in linears], 0)
        bias = torch.cat([l.bias for l in linears], 0) if first.bias is not None else None
        begin = 0
        for l in linears:
            # The original now reads the concatenated storage: its own is freed.
            l.weight.data = weight[begin:begin + l.out_features]
            if bias is not None:
                l.bias.data = bias[begin:begin + l.out_features]
            begin += l.out_features
    shared = _SharedProduct(weight, bias)
    begin = 0
    for i, (name, linear) in enumerate(zip(names, linears)):
        setattr(parent, name,
                FusedLinear(linear, shared, begin, leads=i == 0, last=i == len(names) - 1))
        begin += linear.out_features
    return True


def fuse_projections(model):
    """Fuses every decoder layer's q/k/v and gate/up projections of `model` (a
    transformers Llama-family model: layers at model.model.layers, each with
    self_attn.{q,k,v}_proj and mlp.{gate,up}_proj as plain nn.Linear). Returns
    the number of groups fused; ValueError when the model has no such layers.
    restore_projections() puts the original modules back (their weights stay views
    into the fused storage)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError("fuse_projections: the model has no decoder layers at model.model.layers")
    fused = 0
    for layer in layers:
        for attribute, names in FUSED_GROUPS:
            parent = getattr(layer, attribute, None)
            if parent is not None and all(hasattr(parent, n) for n in names):
                fused += _fuse_group(parent, names)
    if fused == 0:
        raise ValueError("fuse_projections: no layer has q/k/v or gate/up projections "
                         "as plain nn.Linear modules")
    return fused


def restore_projections(model):
    """Puts back the modules fuse_projections replaced; returns how many."""
    restored = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, FusedLinear):
                setattr(parent, name, child._original[0])
                restored += 1
    return restored


@contextlib.contextmanager
def fused_projections(model):
    """fuse_projections(model) for the block, restore_projections(model) after."""
    fuse_projections(model)
    try:
        yield model
    finally:
        restore_projections(model)
