# SPDX-License-Identifier: Apache-2.0
"""headpage.serving under transformers' tensor parallelism (docs/serving.md).

transformers shards every layer's KV heads across the ranks of its tensor-parallel
group (k_proj and v_proj column-wise: rank r of s holds heads [r H, (r + 1) H)),
and runs the same scheduler on every rank from the requests its driver (rank 0)
broadcasts: the ranks stay in step only if every question the scheduler asks of
the cache gets the same answer on every rank. Each rank's headpage pool holds its
own heads, and after head-wise compression the ranks hold different numbers of
tokens, so their pools fill differently. TensorParallel makes the answers agree:
a request fits when it fits on every rank, the free capacity is the fullest
rank's, the pool budget runs on every rank when one rank needs it, and the
ranks' eviction engines allocate one budget across all heads
(EvictionEngine.join_group): each rank keeps, for its heads, what one engine over
every head would keep. A request's own policy and budget travel to the other
ranks with the request itself (carry_request_policies)."""
import logging

import torch
import torch.distributed as dist

import headpage
from headpage._model import ModelShape, resolve_policy
from headpage.distributed import ProcessGroupCollective

_log = logging.getLogger("headpage.serving")


class TensorParallel:
    """The ranks of one tensor-parallel group, agreeing through transformers' CPU
    (gloo) group of it: every method is a collective that every rank calls at the
    same point."""

    def __init__(self, helper):
        self.size = helper.tp_size
        self.rank = helper.tp_local_rank
        self.group = helper.cpu_comm_group
        self.collective = ProcessGroupCollective(self.group)
        self._value = torch.zeros(1, dtype=torch.int64)

    def _reduce(self, value, op):
        self._value[0] = int(value)
        dist.all_reduce(self._value, op=op, group=self.group)
        return int(self._value[0])

    def min(self, value):
        return self._reduce(value, dist.ReduceOp.MIN)

    def max(self, value):
        return self._reduce(value, dist.ReduceOp.MAX)

    def all(self, flag):
        """True when `flag` holds on every rank."""
        return self.min(1 if flag else 0) == 1

    def settle(self, shape, prefix_caching):
        """This rank's attention shape, and whether its cache keeps prefixes (not
        under tensor parallelism: each rank's pool reclaims cached blocks when it
        runs short, and the ranks run short at different times, so a prompt would
        hit on one rank and miss on another). Compression needs nothing more, on
        host or device pools: the ranks' engines agree through join_group. Nor
        does decode-time compression (compress_every): every rank compresses the
        same requests at the same step, and the engines agree as they do for a
        prompt."""
        if prefix_caching:
            _log.info("headpage.serving: prefix caching is off under tensor parallelism "
                      "(the ranks' caches would keep different blocks)")
        return self.local_shape(shape), False

    def local_shape(self, shape):
        """This rank's slice of the model's attention: 1 / size of its heads."""
        for name, heads in (("key-value", shape.num_kv_heads), ("query", shape.num_q_heads)):
            if heads % self.size:
                raise ValueError(f"headpage.serving: {heads} {name} heads do not split over a "
                                 f"tensor-parallel group of {self.size}")
        return ModelShape(shape.num_layers, shape.num_q_heads // self.size,
                          shape.num_kv_heads // self.size, shape.head_dim)


def portable_policy(config):
    """(name, options) from which headpage.policy_by_name rebuilds `config` on
    another rank (PolicyConfig does not pickle); ValueError when it cannot: a
    config renamed to what the registry does not know, or changed where its
    options do not reach."""
    options = {k: v for k, v in config.options.items() if not (k == "profile" and v == "-")}
    try:
        again = headpage.policy_by_name(config.name, **options)
    except ValueError:
        again = None
    if again is None or again.options != config.options or repr(again) != repr(config):
        raise ValueError(f"policy {config!r} cannot be rebuilt on the other ranks from its name "
                         f"and options: under tensor parallelism a request's own policy must be "
                         f"a registry policy (headpage.policy_by_name) with its options")
    return config.name, options


def carried_policy(portable, budget, default):
    """(PolicyConfig, budget) rebuilt from portable_policy's (name, options), or
    `default` (enable()'s policy) with the budget when portable is None."""
    if portable is None:
        return resolve_policy(default, budget)
    name, options = portable
    return resolve_policy(headpage.policy_by_name(name, **options), budget)


def carry_request_policies(helper, policies, portable, default):
    """Makes transformers' broadcast of new requests from the driver (tensor-
    parallel rank 0) carry their own policies and budgets (`portable` there:
    request id -> ((name, options) or None for enable()'s policy `default`,
    budget), taken as they travel) to every
    rank, before any rank schedules them: each rank's `policies` (request id ->
    (PolicyConfig, budget)) then holds exactly the broadcast requests' own, and
    nothing for the others (an id used before leaves nothing behind). Nothing
    here can fail before the broadcast, which the other ranks are waiting in."""
    broadcast = helper.tp_broadcast_object_from_rank_0

    def broadcast_with_policies(payload):
        new_states, cancellations = payload
        carried = {}
        for state in new_states:  # one step each: add_request may pop one too
            entry = portable.pop(state.request_id, None)
            if entry is not None:
                carried[state.request_id] = entry
        new_states, cancellations, carried = broadcast((new_states, cancellations, carried))
        for state in new_states:
            if state.request_id in carried:
                policies[state.request_id] = carried_policy(*carried[state.request_id], default)
            else:
                policies.pop(state.request_id, None)
        return new_states, cancellations

    helper.tp_broadcast_object_from_rank_0 = broadcast_with_policies


def tensor_parallel(helper):
    """TensorParallel for transformers' DistributedHelper when it shards the KV
    heads over several ranks; None otherwise (one rank, or heads replicated on
    every rank, whose pools then fill alike)."""
    if helper is None or helper.tp_size <= 1 or not helper.are_kv_heads_tp_ed():
        return None
    return TensorParallel(helper)


def local_weight(weight):
    """A parameter as this rank holds it (a DTensor's local shard)."""
    return weight.to_local() if hasattr(weight, "to_local") else weight
