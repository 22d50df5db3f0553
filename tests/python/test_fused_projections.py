# SPDX-License-Identifier: Apache-2.0
"""headpage.serving.fuse_projections: one product per layer for q/k/v and for
gate/up, the same outputs as the separate products, restored on request."""

import pytest
import torch
from torch import nn
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

import headpage
import headpage.serving
from headpage._fused_projections import FusedLinear

from test_serving import PROMPTS, engine_config, run_manager


def llama(seed=0, bias=False):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=128, hidden_size=256, intermediate_size=384,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         attention_bias=bias, mlp_bias=bias)
    model = LlamaForCausalLM(config).eval()
    model.set_attn_implementation("sdpa")
    return model


@pytest.mark.parametrize("bias", [False, True])
def test_fused_products_give_the_separate_products_outputs(bias):
    model = llama(bias=bias)
    ids = torch.randint(0, 128, (2, 37), generator=torch.Generator().manual_seed(1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        want = model(ids).logits
        assert headpage.serving.fuse_projections(model) == 4  # 2 layers x (qkv, gate/up)
        got = model(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # The weights a state dict reads are the same values under the same names.
    fused_state = model.state_dict()
    assert fused_state.keys() == state.keys()
    for name, value in state.items():
        assert torch.equal(fused_state[name], value), name
    attn = model.model.layers[0].self_attn
    assert isinstance(attn.q_proj, FusedLinear) and isinstance(attn.v_proj, FusedLinear)
    # The originals read the fused storage: no second copy of the weights.
    assert attn.k_proj._original[0].weight.data_ptr() == attn.k_proj.weight.data_ptr()
    # k and v are slices of q's product; nothing of it is kept once v took its own.
    x = torch.randn(5, 256)
    with torch.no_grad():
        q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
    assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr() == \
        v.untyped_storage().data_ptr()
    assert attn.q_proj._kept.output is None and model.model.layers[1].mlp.up_proj._kept.output is None
    with pytest.raises(ValueError, match="fused already"):
        headpage.serving.fuse_projections(model)
    assert headpage.serving.restore_projections(model) == 10
    assert type(model.model.layers[1].mlp.gate_proj) is nn.Linear
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, want, rtol=1e-5, atol=1e-5)


def test_a_member_called_out_of_order_computes_its_own_product():
    model = llama()
    mlp = model.model.layers[0].mlp
    x = torch.randn(3, 256)
    with torch.no_grad():
        want_up = mlp.up_proj(x)
        headpage.serving.fuse_projections(model)
        # up before gate: nothing shared yet for this input.
        torch.testing.assert_close(mlp.up_proj(x), want_up)
        mlp.gate_proj(torch.randn(3, 256))  # another input's product
        torch.testing.assert_close(mlp.up_proj(x), want_up)


def test_a_model_without_llama_layers_is_refused():
    with pytest.raises(ValueError, match="model.model.layers"):
        headpage.serving.fuse_projections(nn.Linear(4, 4))


def test_projections_that_are_not_plain_linears_are_left_alone():
    model = llama()
    calls = []
    model.model.layers[0].self_attn.k_proj.register_forward_hook(lambda *a: calls.append(1))
    # Tied across layers: both layers' up projections share one weight.
    model.model.layers[1].mlp.up_proj.weight = model.model.layers[0].mlp.up_proj.weight
    ids = torch.randint(0, 128, (1, 9))
    with torch.no_grad():
        want = model(ids).logits
        assert headpage.serving.fuse_projections(model) == 1  # layer 1's q/k/v alone
        torch.testing.assert_close(model(ids).logits, want, rtol=1e-5, atol=1e-5)
    assert len(calls) == 2  # the hook still runs
    assert type(model.model.layers[0].self_attn.k_proj) is nn.Linear
    assert model.model.layers[1].mlp.up_proj.weight is model.model.layers[0].mlp.up_proj.weight


def test_a_fused_model_moves_and_restores_with_its_weights():
    model = llama()
    ids = torch.randint(0, 128, (2, 11))
    headpage.serving.fuse_projections(model)
    model.to(torch.float64)
    twin = llama().to(torch.float64)
    with torch.no_grad():
        want = twin(ids).logits
        torch.testing.assert_close(model(ids).logits, want)
        headpage.serving.restore_projections(model)
        torch.testing.assert_close(model(ids).logits, want)
    assert model.model.layers[0].mlp.gate_proj.weight.dtype == torch.float64


def test_fused_projections_serve_the_same_tokens_through_headpage():
    # The serving engine at the full budget and with ada-snapkv compressing, fused
    # and not, the same greedy tokens.
    runs = {}
    for fused in (False, True):
        for policy, budget in (("full", None), ("ada-snapkv", "50%")):
            model = headpage.serving.enable(llama(), num_pages=2048, policy=policy,
                                            budget=budget)
            if fused:
                headpage.serving.fuse_projections(model)
            storages = []
            if fused:  # the storage of q's and v's outputs, each step
                attn = model.model.layers[1].self_attn
                for proj in (attn.q_proj, attn.v_proj):
                    proj.register_forward_hook(
                        lambda m, i, out: storages.append(out.untyped_storage().data_ptr()))
            _, results = run_manager(model, PROMPTS, 12)
            runs[fused, policy] = sorted(list(r.generated_tokens) for r in results.values())
            # v took its slice of q's product at every step.
            pairs = list(zip(storages[::2], storages[1::2]))
            assert bool(pairs) == fused and all(q == v for q, v in pairs), (
                "transformers' attention no longer calls q_proj, then k_proj and v_proj on "
                "the same tensor: nothing was shared")
    assert runs[True, "full"] == runs[False, "full"]
    assert runs[True, "ada-snapkv"] == runs[False, "ada-snapkv"]


def test_a_model_compiled_around_headpages_attention_shares_the_fused_products():
    from torch._dynamo.utils import counters

    # Compiled, fused and not: the same tokens, and fusing costs dynamo no graph
    # (a guard on the kept product's state would recompile every call).
    runs, graphs = {}, {}
    for fused in (False, True):
        torch.compiler.reset()
        counters.clear()
        model = headpage.serving.enable(llama(), num_pages=2048)
        if fused:
            headpage.serving.fuse_projections(model)
        config = engine_config()
        config.default_compile_level = 1
        _, results = run_manager(model, PROMPTS, 8, config, timeout=600)
        runs[fused] = sorted(list(r.generated_tokens) for r in results.values())
        graphs[fused] = counters["stats"]["unique_graphs"]
    assert runs[True] == runs[False]
    assert graphs[True] == graphs[False] > 0
