# SPDX-License-Identifier: Apache-2.0
"""CUDA graphs of headpage.serving's decode steps.

A decode step of an 8B model launches about 700 kernels from Python: on an H200
the host took 38 ms a step where the GPU needed 9 (docs/serving.md). A step
whose every request decodes one token runs instead as a CUDA graph captured for
its batch size, padded (ServingCache.graph_rows_for_step): the graph holds the
whole forward, sampling included (transformers' _forward_process_and_sample, the
function its own graphs capture), and headpage's attention in it reads only
static device buffers (ServingCache._attend_graph): the decode tables' padded
views, which keep their addresses while the DeviceBlockTables keep their
generation, and one buffer of positions uploaded before the replay.

transformers pads its inputs only when its own graphs are on; these steps pad
theirs here: the model's inputs are views at offset 0 of transformers' static
buffers, widened to the padded size. The rows past the batch are computed and
never used: their token ids, positions and logits indices are set to 0 (the
buffers hold an earlier, larger step's values there, and a model may read
every row, e.g. the largest position), their slots are -1, their tables empty.

A model whose forward cannot be captured (it synchronizes with the host, as a
data-dependent branch does) fails its first capture: the step's results are
already there (the eager run before the capture), a warning is logged and its
decode steps run eagerly from then on.

Prefill steps, mixed steps, and a decode step whose query belongs to an
observation window run eagerly, as does every step on the CPU.

Under transformers' asynchronous batching the host prepares and launches step
N+1 while the GPU runs step N. Nothing here waits for the GPU: the tables and
the slots reach the device through pinned mirrors that are rewritten only once
their last copy has run (DeviceBlockTables, PinnedUpload), and every copy and
kernel is enqueued on transformers' compute stream, after step N's.
"""
import logging

import torch

from headpage._serving_cache import ServingCache
from headpage._serving_step import io_pairs

_log = logging.getLogger("headpage.serving")

# transformers' batch arguments that hold one entry per token or per request of
# the step, and the dimension along which a padded step widens them.
_PER_ROW = (("input_ids", 1), ("position_ids", 1), ("logits_indices", 0),
            ("logits_processor_args", 1))


def _widen(tensor, dim, rows):
    """`tensor` with dimension `dim` widened to `rows` over the same storage, or
    None if the storage ends before."""
    shape = list(tensor.shape)
    shape[dim] = rows
    last = tensor.storage_offset() + sum((size - 1) * stride
                                         for size, stride in zip(shape, tensor.stride()))
    if min(shape) > 0 and (last + 1) * tensor.element_size() > tensor.untyped_storage().nbytes():
        return None
    return tensor.as_strided(shape, tensor.stride(), tensor.storage_offset())


class DecodeGraphs:
    """Runs transformers' model runner, capturing and replaying a CUDA graph for
    each decode step that ServingCache can run as one (install() puts
    compute_batch in the runner's place). Counts captures and replays."""

    def __init__(self, cache: ServingCache, runner, inputs_and_outputs):
        self.cache = cache
        self.runner = runner
        self.io = inputs_and_outputs
        self._pairs = io_pairs(inputs_and_outputs) is not None
        self._eager = runner.compute_batch
        # (IO pair, padded rows, splits, tables generation) -> CUDAGraph
        self._graphs = {}
        self._generation = None
        self._pool = torch.cuda.graph_pool_handle()
        self.captures = 0
        self.replays = 0
        self.eager_steps = 0
        self.failed = None  # why capturing failed, if it did: graphs are off

    def install(self):
        """Puts compute_batch in the runner's place; a runner that already has a
        DecodeGraphs (a processor kept for the next session) keeps it."""
        installed = getattr(self.runner.compute_batch, "__self__", None)
        if isinstance(installed, DecodeGraphs):
            return installed
        self.runner.compute_batch = self.compute_batch
        return self

    def compute_batch(self, model, batch_data):
        """transformers' ModelRunner.compute_batch, through a graph where the step
        allows one."""
        cache = self.cache
        rows = None if self.failed else cache.graph_rows_for_step()
        wide = None if rows is None else self._padded_inputs(model, batch_data, rows)
        if wide is None:
            self.eager_steps += 1
            return self._eager(model, batch_data)
        carry_over_ids, prev_output_ids, output_ids = self.io.get_cb_kwargs()
        stream = self.io.compute_stream
        args = (model, wide, carry_over_ids, prev_output_ids, output_ids)
        # The function transformers' eager steps run: compiled, with a compile config.
        forward = (getattr(self.runner, "_compiled_varlen", None)
                   or self.runner._forward_process_and_sample)
        with torch.cuda.stream(stream):
            key = cache.prepare_graph_step(rows)
            if key[2] != self._generation:
                # The tables moved: graphs captured over the old arrays would read
                # freed memory.
                self._graphs.clear()
                self._generation = key[2]
            n = len(cache._step)
            for name in ("logits_indices", "input_ids", "position_ids"):
                padding = wide.get(name)
                if padding is not None:
                    padding[..., n:].zero_()
            # Under asynchronous batching each of transformers' two IO pairs has its
            # own static inputs and outputs (and reads the other's last outputs):
            # a graph is captured per pair.
            key = (self.io.current_pair if self._pairs else 0,) + key
            graph = self._graphs.get(key)
            if graph is None:
                # The step itself runs eagerly over the static buffers; the
                # capture that follows records it without running it.
                forward(*args)
                self._capture(key, forward, args, stream)
            else:
                graph.replay()
                self.replays += 1
            # On the compute stream: a decode-time compression reads the ring the
            # graph just wrote.
            cache.end_step()

    def _capture(self, key, forward, args, stream):
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self._pool, stream=stream,
                                  capture_error_mode="thread_local"):
                forward(*args)
        except Exception as error:  # noqa: BLE001: whatever the model's forward raised
            self.failed = f"{type(error).__name__}: {error}"
            self._graphs.clear()
            _log.warning("headpage.serving: the decode step could not be captured as a CUDA "
                         "graph (%s); decode steps run eagerly from now on", self.failed)
            return
        self._graphs[key] = graph
        self.captures += 1

    def _padded_inputs(self, model, batch_data, rows):
        """batch_data with its per-row tensors widened to `rows`, or None when one
        is not the shape a decode step of this batch gives it."""
        n = len(self.cache._step)
        wide = dict(batch_data)
        for name, dim in _PER_ROW:
            tensor = batch_data.get(name)
            if tensor is None:
                continue
            if tensor.dim() <= dim or tensor.shape[dim] != n:
                return None
            wide[name] = _widen(tensor, dim, rows)
            if wide[name] is None:
                return None
        if "logits_indices" not in wide:
            return None
        if self.runner.supports_logits_to_keep(model):
            wide["logits_to_keep"] = wide["logits_indices"]
        return wide
