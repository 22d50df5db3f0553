# SPDX-License-Identifier: Apache-2.0
"""headpage.serving on a CUDA device: the same checks as test_serving.py's, with the
model, the CudaArena and the kernels on the GPU. Skipped without a CUDA build and
device (and without transformers 5.23, whose engine headpage.serving drives)."""
import pytest
import torch

import headpage

pytestmark = pytest.mark.skipif(not (headpage.has_cuda and torch.cuda.is_available()),
                                reason="needs a CUDA build and a CUDA device")


def cuda_model():
    from test_serving import small_model
    return small_model().to("cuda")


def test_full_budget_on_the_gpu_gives_transformers_tokens():
    import headpage.serving
    from test_serving import PROMPTS, engine_config, tokens, twin
    from transformers import GenerationConfig
    model = cuda_model()
    generation = GenerationConfig(max_new_tokens=12, do_sample=False, eos_token_id=-1)
    want = model.generate_batch(PROMPTS, generation_config=generation,
                                continuous_batching_config=engine_config())
    served = headpage.serving.enable(twin(model).to("cuda"), num_pages=2048)
    got = served.generate_batch(PROMPTS, generation_config=generation,
                                continuous_batching_config=engine_config())
    assert tokens(got) == tokens(want)


def test_a_policy_compresses_on_the_gpu_and_the_pool_empties():
    import headpage.serving
    from test_serving import PROMPTS, run_manager
    model = headpage.serving.enable(cuda_model(), num_pages=2048, policy="ada-snapkv",
                                    budget="50%")
    manager, results = run_manager(model, PROMPTS, 12)
    cache = manager.serving_cache
    assert cache.engine.on_device
    assert all(len(r.generated_tokens) == 12 for r in results.values())
    compressed = [c for c in cache.compressions.values() if isinstance(c, headpage.CompressResult)]
    assert len(compressed) == 2 and all(c.pages_freed > 0 for c in compressed)
    assert cache.page_pool.free_pages == cache.page_pool.num_pages
