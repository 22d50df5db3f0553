# SPDX-License-Identifier: Apache-2.0
"""An OpenAI-compatible HTTP server that serves through headpage: transformers'
own server (`transformers serve --continuous-batching`: /v1/chat/completions,
/v1/completions, /v1/models, /health, streaming) with the model's continuous
batching running on a headpage pool (headpage.serving.enable), plus
GET /headpage/stats, the pool and what eviction did (ServingManager.stats()).

    python -m headpage.serve HuggingFaceTB/SmolLM2-135M-Instruct \\
        --num-pages 65536 --policy ada-snapkv --budget 20% --port 8000
    headpage-serve /models/smollm2:SmolLM2-135M-Instruct.Q4_1.gguf --kv-gib 4 ...

The model is named as transformers serve names it (a Hub id, a folder, or
`<folder or repo>:<file>.gguf`) and loaded once at start. The pool is
--num-pages pages of --page-size tokens, or as many as --kv-gib of KV memory
holds (a page of --kv-dtype fp8 costs about half a bf16 one). Full prompt blocks
stay cached after their request for the next one that starts with them
(--no-prefix-caching: none). SIGINT or SIGTERM stops the server and the engine.

It needs transformers' `serving` extra (fastapi, uvicorn, openai).
"""
import argparse
import logging
import math
import signal
import sys

import headpage
import headpage.serving
from headpage._kv_pages import KV_DTYPES, cache_geometry, check_kv_dtype, pages_in
from headpage._model import DTYPES, check_compress_every, model_shape, resolve_policy

_log = logging.getLogger("headpage.serve")

_serving = []  # the live ServingManagers, for /headpage/stats


def _pages_for(model, args):
    if args.num_pages is not None:
        return args.num_pages
    kv_dtype = check_kv_dtype(args.kv_dtype, model.dtype, "headpage.serve")
    geometry = cache_geometry(model_shape(model, "headpage.serve"), model.dtype, args.page_size,
                              kv_dtype)
    # A page costs its K/V and, for fp8, its scales.
    pages = pages_in(args.kv_gib * (1 << 30), geometry)
    if pages < 1:
        raise ValueError(f"headpage.serve: --kv-gib {args.kv_gib} holds no page of "
                         f"{geometry.page_memory_bytes} bytes")
    return pages


def _install(args):
    """Makes transformers' server enable headpage on the model it loads, keep its
    continuous-batching managers, and answer GET /headpage/stats."""
    from transformers.cli.serving import model_manager, server

    def load_on_headpage(self, model_id_and_revision, tqdm_class=None, progress_callback=None,
                         gguf_file=None):
        # headpage serves causal language models: loaded as one, whatever the
        # checkpoint's config says of its architecture (a GGUF's says nothing).
        from transformers import AutoModelForCausalLM

        model_id, revision = model_id_and_revision.split("@", 1)
        model = AutoModelForCausalLM.from_pretrained(
            model_id, revision=revision, dtype=self.dtype, device_map=self.device,
            trust_remote_code=self.trust_remote_code, gguf_file=gguf_file, tqdm_class=tqdm_class)
        model.eval()
        if model.dtype not in DTYPES:
            raise ValueError(f"headpage.serve: no headpage cache dtype for {model.dtype}")
        pages = _pages_for(model, args)
        headpage.serving.enable(model, num_pages=pages, page_size=args.page_size,
                                policy=args.policy, budget=args.budget,
                                floor_tokens=args.floor_tokens,
                                protect_recent=args.protect_recent,
                                compress_every=args.compress_every, kv_dtype=args.kv_dtype,
                                prefix_caching=not args.no_prefix_caching)
        make_manager = model.init_continuous_batching

        def init_continuous_batching(*b, **bk):
            manager = make_manager(*b, **bk)
            _serving.append(manager)
            return manager

        model.init_continuous_batching = init_continuous_batching
        _log.warning("headpage.serve: %s on a headpage pool of %d pages of %d tokens (K/V "
                     "%s), policy %s, budget %s", type(model).__name__, pages, args.page_size,
                     args.kv_dtype, args.policy, args.budget)
        return model

    model_manager.ModelManager._load_model = load_on_headpage
    build = server.build_server

    def build_with_stats(*a, **kw):
        app = build(*a, **kw)

        @app.exception_handler(headpage.serving.RequestRefused)
        async def refused(_request, error):
            # A request the engine could never serve is the client's to change:
            # 400 with the reason, in the OpenAI API's error form.
            from fastapi.responses import JSONResponse
            return JSONResponse({"error": {"message": str(error), "type": "invalid_request_error",
                                           "code": "headpage_refused"}}, status_code=400)

        @app.get("/headpage/stats")
        def headpage_stats():
            _serving[:] = [m for m in _serving if m.is_running()]  # drop stopped ones
            return {"managers": [m.stats() for m in _serving]}

        return app

    server.build_server = build_with_stats


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="headpage-serve", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a Hub id, a folder, or <folder or repo>:<file>.gguf")
    pool = ap.add_mutually_exclusive_group(required=True)
    pool.add_argument("--num-pages", type=int, help="pages in the pool")
    pool.add_argument("--kv-gib", type=float, help="KV memory of the pool, in GiB")
    ap.add_argument("--page-size", type=int, default=16, help="tokens a page (default 16)")
    ap.add_argument("--policy", default="full",
                    help="eviction policy (headpage policies lists them; default full)")
    ap.add_argument("--budget", default=None, help="what each prompt keeps: '20%%' or tokens")
    ap.add_argument("--compress-every", type=int, default=0,
                    help="compress each request again after every N generated tokens "
                         "(default 0: the prompt only)")
    ap.add_argument("--floor-tokens", type=int, default=64,
                    help="tokens a stream keeps whatever the pool budget (default 64)")
    ap.add_argument("--protect-recent", type=int, default=16,
                    help="last tokens of a stream the pool budget never evicts (default 16)")
    ap.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda:0', ...")
    ap.add_argument("--dtype", default="auto", help="'auto', 'bfloat16', 'float32', ...")
    ap.add_argument("--kv-dtype", default="auto", choices=KV_DTYPES,
                    help="how pages store K/V: auto (the model's dtype) or fp8 (e4m3 with a "
                         "scale per token and stream; a bfloat16 or float16 model)")
    ap.add_argument("--no-prefix-caching", action="store_true",
                    help="keep no prompt blocks after their request (by default a request "
                         "that starts with cached tokens starts on their pages)")
    ap.add_argument("--max-batch-tokens", type=int, default=None,
                    help="tokens an engine step takes (default: transformers')")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--log-level", default="warning")
    args = ap.parse_args(argv)
    try:
        config, _ = resolve_policy(args.policy, args.budget)
    except (ValueError, TypeError) as error:
        ap.error(str(error))
    if args.compress_every < 0:
        ap.error(f"--compress-every must be non-negative, got {args.compress_every}")
    try:
        check_compress_every(args.compress_every, config)
    except ValueError as error:
        ap.error(f"--compress-every: {error}")
    for name in ("num_pages", "port", "max_batch_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            ap.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.page_size < 4:  # transformers' continuous batching takes no smaller page
        ap.error(f"--page-size must be at least 4, got {args.page_size}")
    if args.kv_gib is not None and not (args.kv_gib > 0 and math.isfinite(args.kv_gib)):
        ap.error(f"--kv-gib must be positive, got {args.kv_gib}")
    if args.floor_tokens < 0 or args.protect_recent < 0:
        ap.error("--floor-tokens and --protect-recent must be non-negative")
    if args.kv_dtype != "auto" and args.dtype in ("float32", "f32"):
        ap.error(f"--kv-dtype {args.kv_dtype} needs a bfloat16 or float16 model: "
                 "--dtype bfloat16")
    return args


def main(argv=None):
    args = parse_args(argv)
    from transformers.utils.import_utils import is_serve_available
    if not is_serve_available():
        raise SystemExit("headpage.serve needs transformers' serving extra: "
                         "pip install fastapi uvicorn openai")
    from transformers import ContinuousBatchingConfig
    from transformers.cli.serve import Serve

    _install(args)
    config = ContinuousBatchingConfig(page_size=args.page_size,
                                      allow_block_sharing=not args.no_prefix_caching,
                                      max_batch_tokens=args.max_batch_tokens,
                                      auto_switch_to_flash=False)
    # transformers' command line has no flag for allow_block_sharing or
    # auto_switch_to_flash: its generation state is handed the config instead.
    from transformers.cli.serving import utils
    state = utils.GenerationState

    class HeadpageGenerationState(state):
        def __init__(self, *a, cb_config=None, **kw):
            super().__init__(*a, cb_config=config, **kw)

    utils.GenerationState = HeadpageGenerationState
    # uvicorn shuts the server down on SIGINT or SIGTERM and then raises the
    # signal again under the handler it found: this one ends the command, after
    # the engine is stopped, with status 0.
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, _stopped)
    try:
        # Builds transformers' server and runs it until SIGINT or SIGTERM.
        Serve(force_model=args.model, continuous_batching=True, device=args.device,
              dtype=args.dtype, host=args.host, port=args.port, log_level=args.log_level)
    except _Stop:
        pass
    finally:
        utils.GenerationState = state
        # The server is gone and no client waits: pending requests fail at once.
        # A second signal now ends the process outright.
        for stop in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop, signal.SIG_DFL)
        for manager in _serving:
            manager.stop(block=True, timeout=30, hard_stop=True)
    _log.warning("headpage.serve: stopped")
    return 0


class _Stop(Exception):
    pass


def _stopped(signum, frame):
    raise _Stop()


if __name__ == "__main__":
    sys.exit(main())
