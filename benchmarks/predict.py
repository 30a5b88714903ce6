"""Inference benchmark: load a trained model and predict top-5, per head.

For each head (vanilla, mhp, mhc, mhs), on Delicious (983 labels; the
``configs/delicious_<head>.py`` models) and on a 10^6-label synthetic model
(``configs/synthetic_1m_mhp.py:runlocal`` with that head, trained for
``--synthetic_steps`` steps: the prediction cost does not depend on how well
it is trained), it trains the model into ``--workdir_root`` (reused when a
previous run finished it), loads it with :func:`mhe_jax.load` and measures:

* latency of one request: ``predictor.predict(one_row, k=5)`` end to end
  (host input conversion, the jitted encoder + head + decode, the copy back),
  p50 and p99 over ``--requests`` requests (rows of the test set), after
  :meth:`~mhe_jax.inference.Predictor.warmup`;
* throughput: the whole test set in one ``predict`` call (chunks of the
  largest bucket, 512), examples per second, best of ``--repeats``;
* P@1 / P@5 of those predictions (it must equal the trainer's results.json).

Peers on the Delicious split, in the same run and process: napkinXC PLT and
omikuji (default hyper-parameters, trained here; their training is not
timed against anything), timed the same way (one-row ``predict`` calls; the
whole test set). PECOS (``libpecos`` 1.2.8) does not run with this
environment's numpy 2 / scipy 1.17 (it calls removed scipy.sparse.sputils
helpers and ``np.array(copy=False)``), so it is reported as not measured.

  python benchmarks/predict.py          # all -> benchmarks/results/predict.json
  python benchmarks/predict.py --heads=mhp --synthetic=false --peers=false
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import platform
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

import mhe_jax
from mhe_jax import metrics as metrics_lib
from mhe_jax import registry
from mhe_jax import train
from mhe_jax.data import formats

REPO = pathlib.Path(__file__).resolve().parents[1]

_HEADS = flags.DEFINE_list("heads", ["vanilla", "mhp", "mhc", "mhs"], "Heads.")
_DELICIOUS = flags.DEFINE_bool("delicious", True, "Benchmark Delicious models.")
_SYNTHETIC = flags.DEFINE_bool("synthetic", True,
                               "Benchmark 10^6-label synthetic models.")
_PEERS = flags.DEFINE_bool("peers", True, "Time napkinXC and omikuji.")
_WORKDIR_ROOT = flags.DEFINE_string(
    "workdir_root", "/tmp/mhe_predict_bench",
    "Training workdirs; a finished one (results.json) is reused.")
_SYNTHETIC_STEPS = flags.DEFINE_integer("synthetic_steps", 2,
                                        "Training steps of the 10^6 models.")
_REQUESTS = flags.DEFINE_integer("requests", 300, "One-row requests timed.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Whole-test-set passes timed.")
_K = flags.DEFINE_integer("k", 5, "Labels per example.")
_OUT = flags.DEFINE_string(
    "out", str(REPO / "benchmarks" / "results" / "predict.json"),
    "Where to write the JSON results.")


def _config(module: str, arg: str | None = None):
  import importlib  # pylint: disable=g-import-not-at-top
  if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
  return importlib.import_module(f"configs.{module}").get_config(arg)


def _trained(config, workdir: pathlib.Path) -> dict:
  if (workdir / "results.json").exists() and (workdir / "config.json").exists():
    logging.info("reusing %s", workdir)
  else:
    t0 = time.perf_counter()
    train.train_and_evaluate(config, workdir)
    logging.info("trained %s in %.0f s", workdir, time.perf_counter() - t0)
  return json.loads((workdir / "results.json").read_text())


def _precision(labels_nk, data: formats.XMCData) -> dict[str, float]:
  m = metrics_lib.XMCMetrics(ks=(1, 5), num_labels=data.num_labels)
  m.update(np.asarray(labels_nk), data.padded_labels())
  out = m.compute()
  return {"P@1": out["P@1"], "P@5": out["P@5"]}


def _time_requests(predict_one, num_rows: int, requests: int):
  """p50/p99 ms of ``predict_one(i)`` over rows 0..requests-1 (cycled)."""
  predict_one(0)
  times = []
  for i in range(requests):
    t0 = time.perf_counter()
    predict_one(i % num_rows)
    times.append(time.perf_counter() - t0)
  ms = np.asarray(times) * 1e3
  return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def _time_batch(predict_all, repeats: int) -> tuple[float, object]:
  best, out = float("inf"), None
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = predict_all()
    best = min(best, time.perf_counter() - t0)
  return best, out


def bench_mhe(name: str, workdir: pathlib.Path, test: formats.XMCData,
              results: dict, requests: int) -> dict:
  k = _K.value
  predictor = mhe_jax.load(workdir)
  t0 = time.perf_counter()
  predictor.warmup(k)
  warmup_s = time.perf_counter() - t0
  X = test.X
  p50, p99 = _time_requests(lambda i: predictor.predict(X[i:i + 1], k),
                            X.shape[0], requests)
  seconds, pred = _time_batch(lambda: predictor.predict(X, k), _REPEATS.value)
  row = {
      "model": name, "num_classes": predictor.num_classes,
      "latency_p50_ms": p50, "latency_p99_ms": p99,
      "test_set_seconds": seconds, "num_test": X.shape[0],
      "examples_per_second": X.shape[0] / seconds,
      "compile_seconds_all_buckets": warmup_s,
      **_precision(pred.labels, test),
      "trainer_P@1": results.get("P@1"), "trainer_P@5": results.get("P@5"),
      "train_steps": results.get("steps"), "num_params": results.get("num_params"),
  }
  logging.info("%s", row)
  return row


@contextlib.contextmanager
def _quiet_stderr():
  sys.stderr.flush()
  saved = os.dup(2)
  with open(os.devnull, "w") as null:
    os.dup2(null.fileno(), 2)
    try:
      yield
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def bench_peers(train_data: formats.XMCData, test: formats.XMCData,
                data_dir: pathlib.Path, requests: int) -> list[dict]:
  k = _K.value
  rows = []
  X = test.X
  # napkinXC PLT (defaults: hierarchical k-means tree, liblinear).
  from napkinxc.models import PLT  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    plt = PLT(tmp)
    y_lists = [list(map(int, r)) for r in np.split(
        train_data.Y.indices, train_data.Y.indptr[1:-1])]
    t0 = time.perf_counter()
    plt.fit(train_data.X, y_lists)
    train_s = time.perf_counter() - t0
    p50, p99 = _time_requests(lambda i: plt.predict(X[i:i + 1], top_k=k),
                              X.shape[0], requests)
    seconds, pred = _time_batch(lambda: plt.predict(X, top_k=k),
                                _REPEATS.value)
    labels = np.full((X.shape[0], k), -1, np.int64)
    for i, r in enumerate(pred):
      labels[i, :len(r)] = r[:k]
    rows.append({"model": "napkinXC PLT", "num_classes": test.num_labels,
                 "latency_p50_ms": p50, "latency_p99_ms": p99,
                 "test_set_seconds": seconds, "num_test": X.shape[0],
                 "examples_per_second": X.shape[0] / seconds,
                 "train_seconds": train_s, **_precision(labels, test)})
    logging.info("%s", rows[-1])
  # omikuji (Parabel-like defaults); its Python API predicts one example.
  import omikuji  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  with _quiet_stderr():  # omikuji draws per-example progress bars
    model = omikuji.Model.train_on_data(str(data_dir / "train.txt"))
  train_s = time.perf_counter() - t0
  X = X.tocsr()
  pairs = [list(zip(X.indices[X.indptr[i]:X.indptr[i + 1]].tolist(),
                    X.data[X.indptr[i]:X.indptr[i + 1]].tolist()))
           for i in range(X.shape[0])]
  p50, p99 = _time_requests(lambda i: model.predict(pairs[i], top_k=k),
                            X.shape[0], requests)

  def predict_all():
    return [model.predict(p, top_k=k) for p in pairs]

  seconds, pred = _time_batch(predict_all, _REPEATS.value)
  labels = np.full((X.shape[0], k), -1, np.int64)
  for i, r in enumerate(pred):
    labels[i, :len(r)] = [l for l, _ in r[:k]]
  rows.append({"model": "omikuji", "num_classes": test.num_labels,
               "latency_p50_ms": p50, "latency_p99_ms": p99,
               "test_set_seconds": seconds, "num_test": X.shape[0],
               "examples_per_second": X.shape[0] / seconds,
               "train_seconds": train_s, **_precision(labels, test)})
  logging.info("%s", rows[-1])
  rows.append({"model": "PECOS XR-Linear", "num_classes": test.num_labels,
               "not_measured": "libpecos 1.2.8 fails under numpy 2 / scipy "
                               "1.17 (removed sputils helpers, "
                               "np.array(copy=False))"})
  return rows


def markdown(results: dict) -> str:
  lines = ["| dataset | model | latency p50 / p99 (ms, 1 example) | "
           "throughput (examples/s) | test set (s) | P@1 / P@5 |",
           "|---|---|---|---|---|---|"]
  for key, title in (("delicious", "Delicious"),
                     ("synthetic_1m", "synthetic 10^6 labels")):
    for r in results.get(key, []):
      if "not_measured" in r:
        lines.append(f"| {title} | {r['model']} | not measured: "
                     f"{r['not_measured']} | | | |")
        continue
      quality = (f"{100 * r['P@1']:.1f} / {100 * r['P@5']:.1f}"
                 if key == "delicious" else
                 f"n/a ({r['train_steps']} training steps)")
      lines.append(
          f"| {title} | {r['model']} | {r['latency_p50_ms']:.2f} / "
          f"{r['latency_p99_ms']:.2f} | {r['examples_per_second']:,.0f} | "
          f"{r['test_set_seconds']:.3f} ({r['num_test']:,}) | {quality} |")
  return "\n".join(lines)


def main(argv):
  del argv
  root = pathlib.Path(_WORKDIR_ROOT.value)
  out = {"machine": f"{platform.machine()} {platform.processor() or ''}, "
                    f"{jax.device_count()} {jax.default_backend()} device(s)",
         "jax": jax.__version__, "date": time.strftime("%Y-%m-%d"),
         "k": _K.value,
         "command": "python benchmarks/predict.py"}
  if _DELICIOUS.value:
    data_dir = registry.data_root(_config("delicious_mhp").data) / "delicious"
    train_data = formats.read_xc(data_dir / "train.txt")
    test = formats.read_xc(data_dir / "test.txt")
    rows = []
    for head in _HEADS.value:
      workdir = root / f"delicious_{head}"
      results = _trained(_config(f"delicious_{head}"), workdir)
      rows.append(bench_mhe(f"mhe_jax {head}", workdir, test, results,
                            _REQUESTS.value))
    if _PEERS.value:
      rows += bench_peers(train_data, test, data_dir, _REQUESTS.value)
    out["delicious"] = rows
  if _SYNTHETIC.value:
    rows = []
    for head in _HEADS.value:
      config = _config("synthetic_1m_mhp", "runlocal")
      config.name = f"synthetic_1m_{head}"
      config.head.type = head
      config.num_train_steps = _SYNTHETIC_STEPS.value
      workdir = root / f"synthetic_1m_{head}"
      results = _trained(config, workdir)
      test = registry.load_dataset(config.data, config.seed).eval.data
      rows.append(bench_mhe(f"mhe_jax {head}", workdir, test, results,
                            max(_REQUESTS.value // 3, 20)))
    out["synthetic_1m"] = rows
  table = markdown(out)
  print(table)
  pathlib.Path(_OUT.value).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(_OUT.value).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
  app.run(main)
