# SPDX-License-Identifier: Apache-2.0
"""The configurations tools/bench_serving.py runs, and what each name means:

  full                  headpage at the full budget (same engine, same kernels)
  POLICY:BUDGET         headpage compressing each prompt once prefilled
  pool-pressure         ada-snapkv scores every prompt but keeps it all (100%);
                        only the pool-wide budget evicts, when the pool runs short
  transformers          transformers' own PagedAttentionCache (paged|sdpa) with
                        the same KV bytes, the floor
  NAME+eager            a headpage configuration with its decode steps launched
                        from Python, not replayed as CUDA graphs
  NAME+compile          a configuration (headpage's or transformers') with the
                        model compiled by torch.compile around the attention
                        (transformers' default_compile_level=1); a few short
                        requests compile it before the measured run
  NAME+autotune         +compile at transformers' default_compile_level=2:
                        mode max-autotune-no-cudagraphs, where Inductor times
                        its own matrix-product kernels against cuBLAS for the
                        decode step's shapes (compiling takes longer)
  NAME+fused            q/k/v and gate/up fused into one product each
                        (headpage.serving.fused_projections)
  NAME+balanced         decode attention's balanced division: one wave of
                        blocks, each an equal run of all the step's pages
                        (enable(decode_division="balanced"); the default
                        splits every stream alike)
  NAME+splitsN          decode attention's even division with N splits a
                        stream at every step (enable(decode_splits=N); by
                        default decode_attention_splits chooses)
  NAME+async            transformers' asynchronous batching: the host prepares
                        and launches step N+1 while the GPU runs step N (every
                        other configuration runs one step at a time)
  NAME+prefix           with prefix caching (transformers' allow_block_sharing:
                        headpage's prefix cache, whose hits a compressing policy
                        keeps whole while it compresses the rest of the prompt)
  NAME+prefix+compressed  shared-prefix: each request names the system prompt as
                        its compressed prefix, compressed once by the policy and
                        shared by every later request (add_request(...,
                        compressed_prefix=--prefix-tokens))
"""


def engine_config(args, config, bytes_per_token):
    """transformers' ContinuousBatchingConfig of a configuration: headpage's pages
    (its pool is sized by headpage.serving.enable), or for transformers' own cache
    as many blocks of --transformers-page-size tokens as --kv-gib holds."""
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    name, modes = config_modes(config)
    common = dict(max_batch_tokens=args.max_batch_tokens,
                  max_requests_per_batch=args.max_requests_per_batch, auto_switch_to_flash=False,
                  use_async_batching="async" in modes, use_cuda_graph=False,
                  max_memory_percent=None,
                  default_compile_level=compile_level(modes),
                  allow_block_sharing="prefix" in modes)
    if name == "transformers":
        page = args.transformers_page_size
        blocks = int(args.kv_gib * (1 << 30) // (bytes_per_token * page))
        return ContinuousBatchingConfig(page_size=page, num_blocks=blocks, **common)
    return ContinuousBatchingConfig(page_size=args.page_size, num_blocks=1, **common)


def compile_level(modes):
    """transformers' default_compile_level for a configuration's modes: 0 (not
    compiled), 1 (+compile) or 2 (+autotune)."""
    return 2 if "autotune" in modes else int("compile" in modes)


def config_modes(config):
    """(name, modes) of NAME[+MODE...]: the modes a set of MODE names."""
    name, *modes = config.split("+")
    unknown = set(modes) - {"eager", "compile", "autotune", "prefix", "compressed", "fused",
                            "async", "balanced"} - {m for m in modes if split_count(m)}
    if unknown:
        raise SystemExit(f"configuration '{config}': unknown mode(s) {sorted(unknown)} "
                         "(the modes are +eager, +compile, +autotune, +prefix, +compressed, "
                         "+fused, +balanced, +splitsN and +async)")
    splits = [m for m in modes if split_count(m)]
    if name == "transformers" and ("balanced" in modes or splits):
        raise SystemExit(f"configuration '{config}': +balanced and +splitsN are headpage's "
                         "decode attention")
    if len(splits) > 1 or (splits and "balanced" in modes):
        raise SystemExit(f"configuration '{config}': one of +balanced and +splitsN at most")
    if "compressed" in modes and ("prefix" not in modes or name == "transformers"):
        raise SystemExit(f"configuration '{config}': +compressed is headpage's, with +prefix")
    if name == "transformers" and "eager" in modes:
        raise SystemExit(f"configuration '{config}': +eager is for headpage's graphs")
    return name, set(modes)


def split_count(mode):
    """N of a mode splitsN (N a whole number from 1), else None."""
    digits = mode[len("splits"):]
    if mode.startswith("splits") and digits.isascii() and digits.isdecimal() and int(digits) >= 1:
        return int(digits)
    return None


def decode_splits(modes):
    """enable()'s decode_splits for a configuration's modes (None: the default)."""
    return next((split_count(m) for m in modes if split_count(m)), None)


def parse_config(config):
    """(policy, budget, cuda_graphs) of a headpage configuration name: full,
    pool-pressure or POLICY:BUDGET, with "+eager" for decode steps without CUDA
    graphs (and "+compile", which engine_config reads)."""
    name, modes = config_modes(config)
    return policy_of(name) + ("eager" not in modes,)


def policy_of(config):
    """(policy, budget) of POLICY[:BUDGET] as the registry reads them (a policy
    that evicts needs a budget), or of pool-pressure."""
    from headpage._model import resolve_policy

    if config == "pool-pressure":
        return "ada-snapkv", "100%"
    policy, _, budget = config.partition(":")
    try:
        resolve_policy(policy, budget or None)
    except (ValueError, TypeError) as error:
        raise SystemExit(f"configuration '{config}': {error} (want POLICY[:BUDGET], "
                         "pool-pressure or transformers)") from None
    return policy, budget or None


def evicts(config):
    """Whether a configuration's policy evicts at admission (pool-pressure keeps
    every prompt whole)."""
    import headpage

    name = config_modes(config)[0]
    if name in ("transformers", "pool-pressure"):
        return False
    return headpage.policy_by_name(policy_of(name)[0]).compresses
