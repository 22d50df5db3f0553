# SPDX-License-Identifier: Apache-2.0
"""headpage.serving's compressions, inside the engine's steps: a prompt once it
is prefilled (its observation window's queries kept as its chunks go by), and
with compress_every a request again after every compress_every generated tokens
(its last decode queries, headpage._decode_windows). ServingCache inherits them;
they read its pool, engine and per-request state."""
import logging
import time

import torch

import headpage
from headpage._serving_tp import local_weight
from headpage.hf import Skipped

_log = logging.getLogger("headpage.serving")

# How many requests' compression results ServingCache.compressions keeps.
RECENT_RESULTS = 4096


class Compressions:
    """The compression half of ServingCache (a mixin: every attribute it reads is
    the cache's)."""

    def _projections(self, policy):
        """The output projections compress() takes for `policy`, where the engine
        reads them; None when it needs none (or the model has none: the engine
        then refuses the policy, and the request is served uncompressed)."""
        if not policy.needs_output_projection or self._output_projections is None:
            return None
        where = self.device if self.engine.on_device else "cpu"
        # Moved (and made contiguous) once per cache, not once per compression.
        if self._projections_at is None:
            # Under tensor parallelism, this rank's columns (its heads' rows of W_o^T).
            self._projections_at = [local_weight(w).detach().to(where).contiguous()
                                    for w in self._output_projections]
        return self._projections_at

    def _keep_window(self, layer, r, q):
        window = self._policies[r.request_id][0].observed_queries(r.compress_at)
        start = max(r.compress_at - window, r.past)
        stop = min(r.compress_at, r.past + r.count)
        if start >= stop:
            return
        rows = q[:, start - r.past:stop - r.past].detach()
        where = self.device if self.engine.on_device else "cpu"
        rows = rows.to(where)
        key = (r.request_id, layer)
        kept = self._windows.get(key)
        self._windows[key] = rows.contiguous() if kept is None else torch.cat([kept, rows], 1)

    def _compress_completed_prompts(self):
        for r in self._step:
            if not r.ends_prompt or r.seq in self._compressed:
                continue
            self._compressed.add(r.seq)
            windows = [self._windows.pop((r.request_id, layer), None)
                       for layer in range(self.shape.num_layers)]
            policy, budget = self._policies[r.request_id]
            # A cached prefix stays whole: the policy compresses what follows it,
            # now and in any later compression (even when this one is skipped).
            frozen = self._frozen.get(r.request_id, 0)
            if frozen:
                self.engine.freeze_prefix(r.seq, frozen)
            if r.compress_at - frozen <= policy.window or any(w is None for w in windows):
                self._record(r.request_id, Skipped(
                    f"prompt of {r.compress_at} tokens" +
                    (f" ({frozen} of them a cached prefix)" if frozen else "") +
                    f" is not longer than the window ({policy.window})"))
                continue
            observed = windows[0].shape[1]
            positions = torch.arange(r.compress_at - observed, r.compress_at, dtype=torch.int32,
                                     device=windows[0].device)
            began = time.perf_counter()
            try:
                result = self.engine.compress(r.seq, policy, budget, windows, [positions],
                                              self._projections(policy))
            except (ValueError, RuntimeError, MemoryError) as error:
                # This request cannot be compressed as asked (a budget below what the
                # policy protects, no pages to compact a forked stream into, a policy
                # that needs what the step did not keep): it keeps its whole prompt,
                # and the others are served. The engine changed nothing.
                result = Skipped(str(error))
                _log.warning("headpage.serving: request %s is not compressed: %s",
                             r.request_id, error)
            self.compress_seconds += time.perf_counter() - began
            self._record(r.request_id, result)
            self._keep_compressed_prefix(r, result)

    def _compress_during_decode(self):
        """Compresses each request of the step that has generated another
        compress_every tokens down to its budget of the tokens it has seen, scored
        by its last `window` decode queries."""
        windows = self.decode_windows
        if windows is None:  # no decode step of a request compressed during decode yet
            return
        for r in self._step:
            if r.request_id not in self._decoded or not r.is_decode or \
                    r.request_id in self.finishing:
                continue
            generated = r.past + 1 - self._compress_at[r.request_id]
            if generated < max(self.compress_every, windows.window) or \
                    generated % self.compress_every:
                continue
            policy, budget = self._policies[r.request_id]
            queries, positions = windows.window_of(r.request_id, r.past)
            began = time.perf_counter()
            try:
                # The budget of what it has seen past its frozen prefix (on top of it).
                seen = r.past + 1 - self._frozen.get(r.request_id, 0)
                result = self.engine.compress(r.seq, policy,
                                              headpage.budget_capacity(budget, seen),
                                              queries, [positions], self._projections(policy))
            except (ValueError, RuntimeError, MemoryError) as error:
                self.totals["decode_skipped"] += 1
                _log.warning("headpage.serving: request %s is not compressed after %d "
                             "generated tokens: %s", r.request_id, generated, error)
            else:
                self.totals["decode_compressions"] += 1
                self.totals["decode_pages_freed"] += result.pages_freed
            self.compress_seconds += time.perf_counter() - began

    def _record(self, request_id, result):
        """Keeps `result` for the request (the latest RECENT_RESULTS requests are
        kept) and adds it to the totals."""
        self.compressions[request_id] = result
        self.compressions.move_to_end(request_id)
        while len(self.compressions) > RECENT_RESULTS:
            self.compressions.popitem(last=False)
        totals = self.totals
        if isinstance(result, Skipped):
            totals["skipped"] += 1
        else:
            totals["compressed"] += 1
            totals["tokens_before"] += result.tokens_before
            totals["tokens_after"] += result.tokens_after
            totals["pages_freed"] += result.pages_freed
