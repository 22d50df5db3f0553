# SPDX-License-Identifier: Apache-2.0
"""What headpage.hf and headpage.serving both need to know of a transformers model
and of the policy they are asked to run: the model's attention shape, the cache
dtype, the policy and budget checked once, and the arena for a device."""
import dataclasses

import torch

import headpage

DTYPES = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


@dataclasses.dataclass(frozen=True)
class ModelShape:
    num_layers: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int


def model_shape(model, who):
    """The attention shape of `model` (or of its config). NotImplementedError, naming
    `who`, for a model with sliding-window layers, which headpage does not store."""
    config = getattr(model, "config", model)
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    q_heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or q_heads)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // q_heads
    if getattr(text, "sliding_window", None) and any(
            t != "full_attention" for t in (getattr(text, "layer_types", None) or [])):
        raise NotImplementedError(f"{who}: sliding-window layers are not supported")
    return ModelShape(int(text.num_hidden_layers), q_heads, kv_heads, int(head_dim))


def output_projections(model, num_layers, who):
    """Per layer the attention's o_proj weight of `model` (a parameter, not a copy),
    as [hidden][q_heads * head_dim]: what CriticalKV and DefensiveKV weigh values
    by. ValueError, naming `who`, when the model has no such weights (a config was
    passed, or an attention without o_proj)."""
    found = {}
    modules = model.modules() if hasattr(model, "modules") else ()
    for module in modules:
        layer = getattr(module, "layer_idx", None)
        weight = getattr(getattr(module, "o_proj", None), "weight", None)
        if layer is not None and weight is not None and weight.dim() == 2:
            found[layer] = weight
    if sorted(found) != list(range(num_layers)):
        raise ValueError(f"{who}: the policy weighs values by each layer's output projection, "
                         f"but the model's attention layers with an o_proj weight are "
                         f"{sorted(found)} of {num_layers} (pass the model, not its config)")
    return [found[layer] for layer in range(num_layers)]


def resolve_policy(policy, budget):
    """(PolicyConfig, budget) from a policy name or config and a budget ("20%", 128,
    0.2, None or "full"); ValueError or TypeError with the reason. The budget is
    None when nothing is to be evicted."""
    config = headpage.policy_by_name(policy) if isinstance(policy, str) else policy
    if not isinstance(config, headpage.PolicyConfig):
        raise TypeError(f"policy must be a name or a headpage.PolicyConfig, got {policy!r}")
    config.validate()
    if budget == "full":
        budget = None
    if budget is not None:
        headpage.budget_capacity(budget, 1)  # raises on a bad budget
    if config.compresses and budget is None:
        raise ValueError(f"policy '{config.name}' needs a budget (e.g. '20%' or 128)")
    return config, budget


def check_policy_runs_on(config, device, who):
    """NotImplementedError when a compressing `config` cannot compress a pool on
    `device`: over a CudaArena the EvictionEngine runs on the GPU, where H2O
    with reduce='max', DBudgetKV's Frobenius metric, CriticalKV and DefensiveKV
    do not run (PolicyConfig.runs_on_gpu)."""
    if torch.device(device).type == "cuda" and config.compresses and not config.runs_on_gpu:
        raise NotImplementedError(
            f"{who}: policy '{config.name}' does not run on the GPU (H2O with reduce='max', "
            "DBudgetKV's Frobenius metric, CriticalKV and DefensiveKV run on a CPU model "
            "only); use a CPU model or another policy")


def check_ints(minimum, **values):
    """ValueError naming the first of `values` that is not an int of at least
    `minimum` (1: positive, 0: non-negative)."""
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            kind = "positive" if minimum == 1 else f"at least {minimum}" if minimum else \
                "non-negative"
            raise ValueError(f"{name} must be a {kind} int, got {value!r}")


def check_compress_every(compress_every, config):
    """ValueError unless decode-time compression every `compress_every` generated
    tokens (0: none) can score with `config`'s observation window: the policy
    needs a window, and the window must hold decode queries only."""
    if compress_every and config.window < 1:
        raise ValueError(f"compress_every needs a policy that scores with an observation "
                         f"window; '{config.name}' has none")
    if 0 < compress_every < config.window:
        raise ValueError(f"compress_every ({compress_every}) is shorter than the policy's "
                         f"window ({config.window}): the window must hold decode queries only")


def pages_for_tokens(tokens, page_size, streams):
    """Pages `tokens` take in each of `streams` streams, none evicted."""
    return -(-tokens // page_size) * streams


def make_arena(geometry, num_pages, device, who):
    """A HostArena for a CPU device, a CudaArena on a CUDA one."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            return headpage.CudaArena(geometry, num_pages)
    if device.type == "cpu":
        return headpage.HostArena(geometry, num_pages)
    raise NotImplementedError(f"{who}: no arena for device {device}")
