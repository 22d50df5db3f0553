# SPDX-License-Identifier: Apache-2.0
"""headpage.serving's answer when running requests cannot get pages: the pool-wide
budget first, preemption last (docs/serving.md)."""
import logging

from transformers.generation.continuous_batching.requests import RequestStatus

from headpage._serving_step import io_pairs

_log = logging.getLogger("headpage.serving")


class PoolPressure:
    """Takes the place of transformers' OffloadingManager, which the engine asks to
    make room when running requests cannot get pages. headpage first applies the
    pool-wide budget: the EvictionEngine evicts the lowest-scored tokens across
    every compressed request (one threshold over all of them), keeping at least
    `floor_tokens` and the last `protect_recent` tokens of every stream. It frees
    `headroom` of the pool beyond what the step lacks (as the workload simulator's
    pool-pressure does), so that the requests' growth does not run it again a few
    steps later: each run costs a global selection and a compaction of every
    running request, and rebuilds their tables. Only if the budget cannot free
    enough for the step are the newest starved requests preempted: their
    pages are freed and each is queued again from its prompt (transformers' soft
    reset). When the one request left cannot grow even so, it fails with the
    reason and the waiting requests are served. All three are counted.

    install() also runs the pool budget before every batch is scheduled, for the
    next token of every decoding request: a request the scheduler finds starved
    loses the step (transformers offloads only requests left out of the batch), and
    under steady pressure the running requests would split into two batches that
    take turns, each request advancing every other step."""

    def __init__(self, cache, scheduler, floor_tokens, protect_recent, headroom=0.02,
                 processor=None):
        self.cache, self.scheduler, self.processor = cache, scheduler, processor
        self.floor_tokens, self.protect_recent = floor_tokens, protect_recent
        self.headroom = headroom
        self.budget_evictions = 0   # times the pool budget made enough room
        self.pages_evicted = 0      # pages it freed
        self.preemptions = 0        # requests soft-reset
        self.failures = 0           # requests failed: alone, they could not grow
        self.starved = 0            # running requests the scheduler left out of a batch

    def install(self, scheduler):
        """Makes room for the decoding requests before each batch is scheduled."""
        schedule_batch = scheduler.schedule_batch

        def make_room_then_schedule(*args, **kwargs):
            self.cache.finishing = self._finishing()
            self.make_room_for_decoding()
            return schedule_batch(*args, **kwargs)

        scheduler.schedule_batch = make_room_then_schedule
        return self

    def _finishing(self):
        """Under asynchronous batching, the requests whose last new token (by
        max_new_tokens) the step in flight computes: transformers schedules the
        next step before that step's tokens are read, and runs them once more.
        Their row of the next step stores nothing and needs no pages, so that
        they never make the pool budget evict, preempt or fail a request
        (ServingCache.finishing). A request that ends on its end-of-sequence token
        cannot be foreseen: its extra step takes its page like any other."""
        io = getattr(self.processor, "inputs_and_outputs", None)
        pairs = io_pairs(io)
        if not pairs:
            return frozenset()
        in_flight = pairs[1 - io.current_pair].host_io.requests_in_batch
        return frozenset(f.state.request_id for f in in_flight
                         if f.has_new_token and f.state.status == RequestStatus.DECODING
                         and f.state.generated_len() + 1 >= f.state._new_tokens_limit)

    def make_room_for_decoding(self):
        """Evicts through the pool budget what the next token of every decoding
        request lacks (and the headroom beyond), so that the scheduler leaves none
        of them out. Prefilling requests have no scores yet; what they lack is
        offload_requests' to find."""
        cache = self.cache
        cache.decode_promises = None
        if cache.engine is None:
            return
        needs = {state.request_id: cache._pages_for(state.request_id, 1)
                 for state in self.scheduler.active_requests.values()
                 if state.status == RequestStatus.DECODING
                 and state.request_id not in cache.finishing}
        wanted = sum(needs.values())
        deficit = self._agreed(wanted - cache.room(wanted))  # unused cached blocks go first
        if deficit > 0:
            self._evict(deficit)
            if self._agreed(wanted - cache.room(wanted)) <= 0:
                self.budget_evictions += 1
        elif cache.tp is not None:
            # Every rank holds the next token of every decoding request: the
            # scheduler's questions about them need no agreement this round
            # (ServingCache.can_store_request_tokens). After an eviction the
            # needs changed, and the questions are agreed one by one.
            cache.decode_promises = needs

    def _agreed(self, deficit):
        """Under tensor parallelism (headpage._serving_tp) the largest of the ranks'
        deficits, so that every rank takes the same steps; else `deficit`."""
        tp = self.cache.tp
        return deficit if tp is None else tp.max(deficit)

    def _evict(self, deficit):
        """Runs the pool budget for `deficit` pages and the headroom; returns the
        pages it freed. It evicts only from compressed requests: the others have no
        scores. Under tensor parallelism every rank runs it, for `deficit` and the
        headroom on each rank: the ranks' engines free the total between them,
        keeping what one engine over every head would."""
        extra = int(self.headroom * self.cache.page_pool.num_pages)
        ranks = 1 if self.cache.tp is None else self.cache.tp.size
        before = self.cache.page_pool.free_pages
        try:
            freed = self.cache.engine.enforce_pool_budget((deficit + extra) * ranks,
                                                          self.floor_tokens, self.protect_recent)
        except (MemoryError, RuntimeError) as error:
            # A stream shared with a fork cannot compact in place and found no
            # fresh pages (MemoryError; under tensor parallelism the other ranks
            # stop with it, RuntimeError): what the budget freed before it stays
            # freed, and the caller preempts for the rest, on every rank alike.
            if isinstance(error, RuntimeError) and self.cache.tp is None:
                raise
            freed = self.cache.page_pool.free_pages - before
            _log.warning("headpage.serving: the pool budget stopped short: %s", error)
        self.pages_evicted += freed
        self.cache.pool_evictions_this_step += 1
        return freed

    def offload_requests(self):
        """True when it made room (the engine schedules again), False when nothing
        can be done."""
        starved = self.scheduler.starved_requests
        if not starved:
            return False
        self.starved += len(starved)
        cache = self.cache
        wanted = sum(cache._pages_for(state.request_id, length) for state, length in starved)
        # Pages promised to the batch just scheduled are not free; unused cached
        # blocks go before any running request's tokens.
        deficit = wanted - cache.room(wanted)
        if self._agreed(deficit) <= 0:
            return True
        if cache.engine is not None:  # none before the first step
            deficit -= self._evict(self._agreed(deficit))
            if self._agreed(deficit) <= 0:
                self.budget_evictions += 1
                return True
        preempted = 0
        while starved and self._agreed(deficit) > 0 and \
                len(self.scheduler.active_requests) - preempted > 1:
            state, _ = starved.pop()  # the newest
            pages = cache.manager.stats().pages_in_use
            cache.release(state.request_id)  # it keeps its policy
            deficit -= pages - cache.manager.stats().pages_in_use
            again = state.create_equivalent_initial_request()
            state._status = RequestStatus.FINISHED
            self.scheduler.active_requests.pop(state.request_id, None)  # pages released above
            self.scheduler.add_waiting_request(again)
            preempted += 1
        if preempted:
            self.scheduler.block_new_requests = True
            self.preemptions += preempted
            _log.info("headpage.serving: preempted %d requests (the pool budget freed %d pages)",
                      preempted, self.pages_evicted)
            return True
        if starved and self._agreed(deficit) > 0 and self.processor is not None:
            # The one request left cannot grow even with everything else evicted:
            # it fails with the reason, and the engine serves the waiting ones.
            state, _ = starved.pop()
            self.processor._handle_request_error(MemoryError(
                f"headpage.serving: request {state.request_id} needs {deficit} more pages than "
                f"the pool of {cache.page_pool.num_pages} can give it, after the pool budget "
                f"evicted what it could"), state)
            self.scheduler.finish_request(state.request_id)
            # Under asynchronous batching a step in flight may still hold it: its
            # update skips a finished request.
            state._status = RequestStatus.FINISHED
            self.failures += 1
            _log.warning("headpage.serving: request %s failed: the pool cannot hold it",
                         state.request_id)
            return True
        return False

    def restore_scheduled_requests(self, requests_in_batch):
        return None  # nothing is offloaded to the CPU

    def free_request_cpu_cache(self, state):
        return None

    def free_all_waiting_cpu_caches(self):
        return None

    def reset(self):
        return None
