# SPDX-License-Identifier: Apache-2.0
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

transformers' modules call their projections by name and back to back on one
tensor (`self.q_proj(hidden)`, `self.k_proj(hidden)`, `self.v_proj(hidden)`), so
the fused product hides behind them: the group's first member computes the whole
product for its input and keeps it; the others, called with that same tensor
object, return their slice of it (the last lets it go), and with any other input
compute their own product. The sharing rests on that calling pattern: a caller
that modified the input in place between the members' calls would get the
product of the old values. One forward at a time: the kept product is shared
state, as a module's weights are not.

The original weights become views into the concatenated one, so fusing takes no
memory beyond the old weights'. Fuse after placing the model (`.to()`) and
before its first serving session: CUDA graphs captured before hold the old
weights' addresses.
"""

import collections
import contextlib

import torch
import torch.nn.functional as F
from torch import nn

# The projections fused per decoder layer, by module: (the module's attribute
# names in transformers' Llama-family models, in the order its forward calls them).
FUSED_GROUPS = (("self_attn", ("q_proj", "k_proj", "v_proj")),
                ("mlp", ("gate_proj", "up_proj")))


class _KeptProduct:
    """The leading member's last product and its input, until the group's last
    member took its slice (a prefill chunk's product is large: it must not
    outlive the layer's forward)."""

    def __init__(self):
        self.input = None
        self.output = None


class FusedLinear(nn.Module):
    """One Linear of a fused group: rows [begin, end) of the group's product.

    `weight` and `bias` are views into the group's concatenated tensors (the
    module's parameters stay where a state dict expects them). The member
    transformers calls first (`leads`) holds the concatenated tensors as
    buffers, so that moving the model moves them, and computes the whole
    product; the one it calls last lets the kept product go."""

    def __init__(self, original, kept, weight, bias, begin, leads, last):
        super().__init__()
        end = begin + original.out_features
        self.in_features, self.out_features = original.in_features, original.out_features
        self.weight = nn.Parameter(weight[begin:end], requires_grad=original.weight.requires_grad)
        self.bias = (nn.Parameter(bias[begin:end], requires_grad=original.bias.requires_grad)
                     if bias is not None else None)
        if leads:
            self.register_buffer("fused_weight", weight, persistent=False)
            self.register_buffer("fused_bias", bias, persistent=False)
        self.begin, self.end, self.leads, self.last = begin, end, leads, last
        self._kept = kept
        # Kept out of the module tree (a plain tuple): restore_projections puts it back.
        self._original = (original,)

    def forward(self, x):
        kept = self._kept
        if self.leads:
            kept.input = x
            kept.output = F.linear(x, self.fused_weight, self.fused_bias)
            return kept.output[..., self.begin:self.end]
        if kept.input is x:
            out = kept.output[..., self.begin:self.end]
            if self.last:
                kept.input = kept.output = None
            return out
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"fused rows [{self.begin}, {self.end})")


def _is_plain_linear(linear, uses):
    """Whether `linear` can be replaced: a plain nn.Linear with plain tensors
    on a real device, no hooks or forward of its own (which the replacement
    would drop), and weights no other module uses (tied weights stay tied)."""
    if type(linear) is not nn.Linear or linear.weight.is_meta:
        return False
    if linear._forward_hooks or linear._forward_pre_hooks or hasattr(linear, "_hf_hook"):
        return False
    if "forward" in vars(linear):
        return False
    params = [p for p in (linear.weight, linear.bias) if p is not None]
    return all(type(p) is nn.Parameter and type(p.data) is torch.Tensor and uses[id(p)] == 1
               for p in params)


def _fuse_group(parent, names, uses):
    """Fuses parent's Linear members `names` (in call order) when they all can
    be; returns whether it did."""
    members = [getattr(parent, name) for name in names]
    if not all(_is_plain_linear(m, uses) for m in members):
        return False
    first = members[0]
    if any(m.in_features != first.in_features or (m.bias is None) != (first.bias is None)
           or m.weight.dtype != first.weight.dtype or m.weight.device != first.weight.device
           for m in members):
        return False
    with torch.no_grad():
        weight = torch.cat([m.weight for m in members], 0)
        bias = torch.cat([m.bias for m in members], 0) if first.bias is not None else None
    kept = _KeptProduct()
    begin = 0
    for i, (name, member) in enumerate(zip(names, members)):
        end = begin + member.out_features
        # The original now reads the concatenated storage: its own is freed.
        member.weight.data = weight[begin:end]
        if bias is not None:
            member.bias.data = bias[begin:end]
        setattr(parent, name, FusedLinear(member, kept, weight, bias, begin, leads=i == 0,
                                          last=i == len(names) - 1))
        begin = end
    return True


def fuse_projections(model):
    """Fuses every decoder layer's q/k/v and gate/up projections of `model` (a
    transformers Llama-family model: layers at model.model.layers, each with
    self_attn.{q,k,v}_proj and mlp.{gate,up}_proj). A group is left as it is
    when a member is not a plain nn.Linear (quantized, LoRA-wrapped, offloaded,
    hooked, or tied to a weight elsewhere). Returns the number of groups fused.
    ValueError when the model has no such layers, none could be fused, it is
    fused already, or a continuous-batching session of it is kept (its CUDA
    graphs would read the freed weights). restore_projections() puts the
    original modules back."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError("fuse_projections: the model has no decoder layers at model.model.layers")
    if any(isinstance(m, FusedLinear) for m in model.modules()):
        raise ValueError("fuse_projections: the model is fused already")
    if getattr(model, "_cached_continuous_batching_manager", None) is not None:
        raise ValueError("fuse_projections: a continuous-batching session of this model is kept "
                         "for the next (stop(keep_for_next_session=True)); fuse before it starts")
    uses = collections.Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    fused = 0
    for layer in layers:
        for attribute, names in FUSED_GROUPS:
            parent = getattr(layer, attribute, None)
            if parent is not None and all(hasattr(parent, n) for n in names):
                fused += int(_fuse_group(parent, names, uses))
    if fused == 0:
        raise ValueError("fuse_projections: no layer has q/k/v or gate/up projections "
                         "that are plain nn.Linear modules")
    return fused


def restore_projections(model):
    """Puts back the modules fuse_projections replaced, with the parameters the
    fused ones hold now (moved with the model, if it was); returns how many."""
    restored = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, FusedLinear):
                original = child._original[0]
                original.weight = child.weight
                original.bias = child.bias
                setattr(parent, name, original)
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
