# SPDX-License-Identifier: Apache-2.0
"""tools/bench_serving.py under tensor parallelism (--tensor-parallel N, issue
#19): the seeded random model is saved once, then N processes load it with
transformers' tp_plan="auto" (rank r holds kv heads [r H, (r + 1) H) of every
layer: one GPU each over NCCL, or the CPU over gloo) and each runs the whole
benchmark, rank 0 submitting the requests (transformers broadcasts them) and
reporting. Every rank's headpage pool has --kv-gib of its own, as each GPU of a
tensor-parallel server has its own memory; the decode step's roofline is each
rank's (its weight shards and the K/V of its heads)."""
import contextlib
import os
import socket
import sys
import tempfile

import torch
import torch.multiprocessing as mp

_CHECKPOINT = "HEADPAGE_BENCH_CHECKPOINT"  # set in each rank's environment


def in_rank():
    """Whether this process is one rank of a --tensor-parallel run."""
    return _CHECKPOINT in os.environ


def rank():
    return int(os.environ.get("RANK", "0")) if in_rank() else 0


def launch(argv, args, build_model, dtype):
    """Saves the model (built on --device with --seed, so the same weights as a
    one-rank run's; into --tp-checkpoint, where one saved for the same model
    and seed is reused), runs bench_serving.main(argv) on args.tensor_parallel
    ranks and returns 0 when every rank did (a rank's failure raises here)."""
    with contextlib.ExitStack() as stack:
        path = args.tp_checkpoint or stack.enter_context(
            tempfile.TemporaryDirectory(prefix="bench-serving-tp-"))
        stamp = os.path.join(path, "bench_serving_model.txt")
        want = f"{args.model} seed {args.seed} {args.dtype}\n"
        if not (os.path.exists(stamp) and open(stamp).read() == want):
            model = build_model(args.model, torch.device(args.device), dtype, args.seed)
            model.save_pretrained(path)
            del model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            with open(stamp, "w") as f:
                f.write(want)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.start_processes(_rank_main, args=(list(argv), path, port, args.tensor_parallel),
                           nprocs=args.tensor_parallel, join=True, start_method="spawn")
    return 0


def _rank_main(local_rank, argv, path, port, size):
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      NCCL_NVLS_ENABLE="0",  # NVLink multicast stays off
                      **{_CHECKPOINT: path})
    import bench_serving

    status = bench_serving.main(argv)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    if status:
        sys.exit(status)


def load_model(dtype):
    """This rank's shard of the saved model (transformers places it on
    cuda:LOCAL_RANK where there is CUDA)."""
    from transformers import LlamaForCausalLM
    from transformers.distributed import DistributedConfig

    model = LlamaForCausalLM.from_pretrained(
        os.environ[_CHECKPOINT], distributed_config=DistributedConfig(tp_plan="auto"),
        dtype=dtype)
    model.eval()
    model.generation_config.eos_token_id = None
    model.set_attn_implementation("sdpa")
    return model
