"""What the session's numpy scripts share: one Ada layer of 8 streams of 32K tokens (4
sinks and a 32-token window protected, 20% kept, kScaled with alpha 0.2), radix keys as
AdaSelectKernel orders them, and a layer's scores drawn as select_bench.cc's
ScoreDistribution draws them (uniform, or trace-like as fit_scores.py fitted)."""
import numpy as np

ALPHA, N, HEADS, PROTECTED = 0.2, 32768, 8, 36
CANDIDATES, BUDGET = N - PROTECTED, N // 5 - PROTECTED


def order_key(x):
    """The float order as unsigned keys (select_internal.cuh's OrderedKey, NaN aside)."""
    bits = x.astype(np.float32).view(np.uint32)
    return np.where(bits >> 31, ~bits, bits | 0x80000000).astype(np.uint32)


def draw_layer(kind, rng, streams=HEADS, keys=CANDIDATES, length=N):
    """float32 scores [streams, keys]: uniform in [0, 1), or per stream
    exp(Normal(mu, sigma)) / length with mu ~ Normal(-1.3, 1.1), sigma ~ Uniform(1.0, 2.6)."""
    if kind == "uniform":
        return rng.random((streams, keys)).astype(np.float32)
    mu = rng.normal(-1.3, 1.1, streams)
    sigma = rng.uniform(1.0, 2.6, streams)
    logs = mu[:, None] + sigma[:, None] * rng.standard_normal((streams, keys))
    return (np.exp(logs) / length).astype(np.float32)


def take_of(hits):
    """A stream's own select size under kScaled from its hits (AdaKeptCount, protected off)."""
    return int(np.rint(hits * (1 - ALPHA) + np.floor(ALPHA * BUDGET)))
