#!/usr/bin/env python3
"""How often a stream's own cut (Ada-KV, kScaled, alpha 0.2, 20% of 8 x 32K) shares the
radix digits of its sequence's cut, so that AdaSelectKernel's own select can reuse the
sequence's histograms: uniform scores against BM_SelectAdaTraceLike's (fit_scores.py).
64 sequences of 8 streams, 4 sinks and a 32-token window protected.

  .venv-python/bin/python docs/perf/2026-12-07-s8/own_cut_reuse.py
"""
import numpy as np
rng=np.random.default_rng(3)
def key(x):
    b=x.astype(np.float32).view(np.uint32); return np.where(b>>31,~b,b|0x80000000).astype(np.uint32)
n=32768; H=8; cand=n-36; B=n//5-36; alpha=0.2
for kind in ["uniform","trace-like"]:
  same0=same1=tot=0
  for seq in range(64):
    if kind=="uniform": s=rng.random((H,cand)).astype(np.float32)
    else:
      mu=rng.normal(-1.3,1.1,H); sig=rng.uniform(1.0,2.6,H)
      s=(np.exp(mu[:,None]+sig[:,None]*rng.standard_normal((H,cand)))/n).astype(np.float32)
    k=key(s); allk=np.sort(k.ravel())[::-1]; K=H*B - 0  # kScaled: the sequence selects sum of budgets
    cut=allk[K-1]
    for h in range(H):
      c=(k[h]>=cut).sum()
      kept=int(np.rint(c*(1-alpha)+np.floor(alpha*B)))
      own=np.sort(k[h])[::-1][max(kept,1)-1]
      tot+=1; same0+=(own>>21)==(cut>>21); same1+=(own>>10)==(cut>>10)
  print(kind,"own cut in the sequence's first-digit bucket: %.2f, in its first two digits': %.2f"%(same0/tot,same1/tot))
