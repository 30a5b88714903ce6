"""Inference timing shared by benchmarks/predict.py and pecos_peer.py.

numpy only: pecos_peer.py also runs it inside PECOS's side venv.
"""

import time

import numpy as np


def time_requests(predict_one, num_rows: int,
                  requests: int) -> tuple[float, float]:
  """p50/p99 ms of ``predict_one(i)`` over rows 0..requests-1 (cycled).

  One untimed ``predict_one(0)`` warms up first.
  """
  predict_one(0)
  times = []
  for i in range(requests):
    t0 = time.perf_counter()
    predict_one(i % num_rows)
    times.append(time.perf_counter() - t0)
  ms = np.asarray(times) * 1e3
  return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def time_batch(predict_all, repeats: int) -> tuple[float, object]:
  """(best seconds of ``repeats`` calls of ``predict_all()``, the last output)."""
  best, out = float("inf"), None
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = predict_all()
    best = min(best, time.perf_counter() - t0)
  return best, out
