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

Peers on the Delicious split (the raw X of train.txt / test.txt, default
hyper-parameters, trained here; their training is not timed against
anything), timed the same way (one-row ``predict`` calls after one warm-up
call; the whole test set, best of ``--repeats``): napkinXC PLT and omikuji in
this process, and PECOS XR-Linear (``libpecos`` 1.2.8) in a side interpreter
given by ``--pecos_python`` (default $MHE_PECOS_PYTHON). libpecos needs
numpy<2 and scipy<1.14, which jax cannot share a venv with, so
benchmarks/pecos_peer.py (see its docstring for the side venv) fits and times
it there (:func:`pecos_peer.time_predict`) and hands back the top-k lists and
the timings through files; the P@k are computed here like every other row.
Without ``--pecos_python`` the PECOS row says "not measured" and how to
measure it. The side process runs with ``OMP_WAIT_POLICY=passive``
(``--pecos_omp_wait_policy``): libpecos predicts in OpenMP regions, and with
libgomp's default spin-waiting on cores that other jobs keep busy, each
one-row predict waited for descheduled spinning threads (Delicious, 2 shared
cores: p50 84 ms with the default, 0.9 ms passive or with threads=1; the
whole test set took the same time either way).

A run merges its rows into an existing ``--out`` JSON (a row with the same
model and num_classes is replaced, the others kept; each run is appended to
"runs" with its command and load average), so rows can be (re)measured one
at a time.

  python benchmarks/predict.py          # all -> benchmarks/results/predict.json
  python benchmarks/predict.py --heads=mhp --synthetic=false --peers=false
  python benchmarks/predict.py --heads= --synthetic=false \
      --peer_models=pecos_xr_linear --pecos_python=/tmp/pecos/bin/python
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import platform
import sys
import tempfile
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

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import pecos_peer  # pylint: disable=g-import-not-at-top,wrong-import-position
import peer_timing  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = pathlib.Path(__file__).resolve().parents[1]
PEER_MODELS = ("napkinxc_plt", "omikuji", "pecos_xr_linear")

_HEADS = flags.DEFINE_list("heads", ["vanilla", "mhp", "mhc", "mhs"], "Heads.")
_DELICIOUS = flags.DEFINE_bool("delicious", True, "Benchmark Delicious models.")
_SYNTHETIC = flags.DEFINE_bool("synthetic", True,
                               "Benchmark 10^6-label synthetic models.")
_PEERS = flags.DEFINE_bool("peers", True,
                           "Time the peers of --peer_models on Delicious.")
_PEER_MODELS = flags.DEFINE_list(
    "peer_models", list(PEER_MODELS),
    f"Peers timed when --peers: some of {', '.join(PEER_MODELS)}. With "
    "--heads= and --synthetic=false a run times only these.")
_PECOS_PYTHON = flags.DEFINE_string(
    "pecos_python", os.environ.get(pecos_peer.ENV_PYTHON),
    "A python interpreter (its own venv, numpy<2) that has libpecos; "
    "benchmarks/pecos_peer.py fits and times PECOS XR-Linear there. Default "
    "$MHE_PECOS_PYTHON; unset: the PECOS row is 'not measured'.")
_PECOS_OMP_WAIT_POLICY = flags.DEFINE_string(
    "pecos_omp_wait_policy", "passive",
    "OMP_WAIT_POLICY of the --pecos_python process ('' leaves the "
    "environment's); see the module docstring.")
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
    "JSON results (merged into when it exists).")


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


def bench_mhe(name: str, workdir: pathlib.Path, test: formats.XMCData,
              results: dict, requests: int) -> dict:
  k = _K.value
  predictor = mhe_jax.load(workdir)
  t0 = time.perf_counter()
  predictor.warmup(k)
  warmup_s = time.perf_counter() - t0
  X = test.X
  p50, p99 = peer_timing.time_requests(
      lambda i: predictor.predict(X[i:i + 1], k), X.shape[0], requests)
  seconds, pred = peer_timing.time_batch(lambda: predictor.predict(X, k),
                                         _REPEATS.value)
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


def pecos_python() -> str | None:
  """--pecos_python (default $MHE_PECOS_PYTHON), also before flags parse."""
  return pecos_peer.side_python(_PECOS_PYTHON)


def pecos_not_measured(num_classes: int) -> dict:
  """The PECOS row of a run without --pecos_python."""
  return {"model": "PECOS XR-Linear", "num_classes": num_classes,
          "not_measured": "libpecos 1.2.8 needs numpy<2 / scipy<1.14, which "
                          "jax cannot share a venv with; give "
                          "--pecos_python (a side venv, see "
                          "benchmarks/pecos_peer.py) to measure it"}


def bench_pecos(train_data: formats.XMCData, test: formats.XMCData,
                python: str, k: int, requests: int, repeats: int,
                omp_wait_policy: str | None = "passive") -> dict:
  """PECOS XR-Linear fitted and timed by benchmarks/pecos_peer.py in ``python``.

  The side interpreter gets the same raw features as napkinXC (train X and Y,
  test X), fits XR-Linear with libpecos's defaults and times it like
  :func:`bench_peers` times the others (:func:`pecos_peer.time_predict`):
  one-row requests over rows 0..requests-1 after one warm-up request, and the
  whole test set, best of ``repeats``. P@1 / P@5 are computed here.

  Args:
    train_data: the training split (X, Y).
    test: the test split (X for the requests; labels for P@k).
    python: the side interpreter that can import ``pecos``.
    k: labels per example.
    requests: one-row requests timed.
    repeats: whole-test-set passes timed.
    omp_wait_policy: OMP_WAIT_POLICY set for the side process (libpecos uses
      OpenMP); None or '' keeps this process's environment.

  Returns:
    The row: model, num_classes, latency_p50_ms, latency_p99_ms,
    test_set_seconds, num_test, examples_per_second, train_seconds, P@1, P@5,
    settings, python, omp_wait_policy (as the side process saw it; None:
    libgomp's default).

  Raises:
    FileNotFoundError: when ``python`` is not an executable.
    RuntimeError: when pecos_peer.py fails under ``python`` (its stderr tail).
  """
  env = dict(os.environ)
  if omp_wait_policy:
    env["OMP_WAIT_POLICY"] = omp_wait_policy
  topk, timing = pecos_peer.run_side(python, train_data.X, train_data.Y,
                                     test.X, k, requests, repeats, env=env)
  row = {**_peer_row("PECOS XR-Linear", test, timing["latency_p50_ms"],
                     timing["latency_p99_ms"], timing["test_set_seconds"],
                     topk.astype(np.int64), timing["fit_seconds"]),
         "settings": (f"{pecos_peer.SETTINGS}; raw features; requests "
                      f"predict(x[i:i+1], only_topk={k})"),
         "python": pecos_peer.describe_side(python, timing),
         "omp_wait_policy": timing.get("omp_wait_policy")}
  logging.info("%s", row)
  return row


def bench_peers(train_data: formats.XMCData, test: formats.XMCData,
                data_dir: pathlib.Path, requests: int,
                models=PEER_MODELS) -> list[dict]:
  """Rows of the peers named in ``models`` (some of PEER_MODELS)."""
  unknown = sorted(set(models) - set(PEER_MODELS))
  if unknown:
    raise ValueError(f"--peer_models: unknown {unknown}; known: "
                     f"{', '.join(PEER_MODELS)}")
  k = _K.value
  rows = []
  if "napkinxc_plt" in models:
    rows.append(_bench_napkinxc(train_data, test, k, requests))
  if "omikuji" in models:
    rows.append(_bench_omikuji(test, data_dir, k, requests))
  if "pecos_xr_linear" in models:
    python = pecos_python()
    rows.append(bench_pecos(train_data, test, python, k, requests,
                            _REPEATS.value, _PECOS_OMP_WAIT_POLICY.value)
                if python else pecos_not_measured(test.num_labels))
  return rows


def _peer_row(model: str, test: formats.XMCData, p50: float, p99: float,
              seconds: float, labels: np.ndarray, train_s: float) -> dict:
  """A peer's row: latencies, whole-test-set time, P@1/P@5 of ``labels``."""
  n = test.X.shape[0]
  return {"model": model, "num_classes": test.num_labels,
          "latency_p50_ms": p50, "latency_p99_ms": p99,
          "test_set_seconds": seconds, "num_test": n,
          "examples_per_second": n / seconds, "train_seconds": train_s,
          **_precision(labels, test)}


def _bench_napkinxc(train_data: formats.XMCData, test: formats.XMCData,
                    k: int, requests: int) -> dict:
  """napkinXC PLT (defaults: hierarchical k-means tree, liblinear)."""
  X = test.X
  from napkinxc.models import PLT  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    plt = PLT(tmp)
    y_lists = [list(map(int, r)) for r in np.split(
        train_data.Y.indices, train_data.Y.indptr[1:-1])]
    t0 = time.perf_counter()
    plt.fit(train_data.X, y_lists)
    train_s = time.perf_counter() - t0
    p50, p99 = peer_timing.time_requests(
        lambda i: plt.predict(X[i:i + 1], top_k=k), X.shape[0], requests)
    seconds, pred = peer_timing.time_batch(lambda: plt.predict(X, top_k=k),
                                           _REPEATS.value)
    labels = np.full((X.shape[0], k), -1, np.int64)
    for i, r in enumerate(pred):
      labels[i, :len(r)] = r[:k]
    row = _peer_row("napkinXC PLT", test, p50, p99, seconds, labels, train_s)
  logging.info("%s", row)
  return row


def _bench_omikuji(test: formats.XMCData, data_dir: pathlib.Path, k: int,
                   requests: int) -> dict:
  """omikuji (Parabel-like defaults); its Python API predicts one example."""
  X = test.X
  import omikuji  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  with _quiet_stderr():  # omikuji draws per-example progress bars
    model = omikuji.Model.train_on_data(str(data_dir / "train.txt"))
  train_s = time.perf_counter() - t0
  X = X.tocsr()
  pairs = [list(zip(X.indices[X.indptr[i]:X.indptr[i + 1]].tolist(),
                    X.data[X.indptr[i]:X.indptr[i + 1]].tolist()))
           for i in range(X.shape[0])]
  p50, p99 = peer_timing.time_requests(
      lambda i: model.predict(pairs[i], top_k=k), X.shape[0], requests)

  def predict_all():
    return [model.predict(p, top_k=k) for p in pairs]

  seconds, pred = peer_timing.time_batch(predict_all, _REPEATS.value)
  labels = np.full((X.shape[0], k), -1, np.int64)
  for i, r in enumerate(pred):
    labels[i, :len(r)] = [l for l, _ in r[:k]]
  row = _peer_row("omikuji", test, p50, p99, seconds, labels, train_s)
  logging.info("%s", row)
  return row


def merge_results(previous: dict | None, new: dict) -> dict:
  """``new`` merged into ``previous`` (the --out JSON of earlier runs).

  Per dataset key ("delicious", "synthetic_1m"), a row of ``new`` replaces
  the previous row with the same (model, num_classes) in place; previous
  rows it does not replace are kept, new ones are appended. The other keys
  (machine, jax, date, command, ...) are those of ``new``; "runs" collects
  every run's entry (``new["runs"]`` appended to the previous ones; a file
  written before "runs" existed counts as one run, its command and date).

  Args:
    previous: the earlier results, or None.
    new: this run's results.

  Returns:
    The merged results (a new dict).
  """
  previous = previous or {}
  merged = {key: value for key, value in previous.items()
            if key not in ("delicious", "synthetic_1m", "runs")}
  merged.update({key: value for key, value in new.items()
                 if key not in ("delicious", "synthetic_1m", "runs")})
  runs = list(previous.get("runs", []))
  if not runs and "command" in previous:  # written before "runs" existed
    runs = [{"command": previous["command"], "time": previous.get("date")}]
  merged["runs"] = runs + list(new.get("runs", []))
  for dataset in ("delicious", "synthetic_1m"):
    if dataset not in previous and dataset not in new:
      continue
    rows = list(previous.get(dataset, []))
    where = {(r["model"], r["num_classes"]): i for i, r in enumerate(rows)}
    for row in new.get(dataset, []):
      key = (row["model"], row["num_classes"])
      if key in where:
        rows[where[key]] = row
      else:
        where[key] = len(rows)
        rows.append(row)
    merged[dataset] = rows
  return merged


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
  command = "python " + " ".join(sys.argv)
  out = {"machine": f"{platform.machine()} {platform.processor() or ''}, "
                    f"{jax.device_count()} {jax.default_backend()} device(s)",
         "jax": jax.__version__, "date": time.strftime("%Y-%m-%d"),
         "k": _K.value, "command": command,
         "runs": [{"command": command,
                   "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "load_average_1_5_15_min_at_start": list(os.getloadavg())}]}
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
      rows += bench_peers(train_data, test, data_dir, _REQUESTS.value,
                          _PEER_MODELS.value)
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
  out["runs"][0]["load_average_1_5_15_min_at_end"] = list(os.getloadavg())
  path = pathlib.Path(_OUT.value)
  previous = json.loads(path.read_text()) if path.exists() else None
  out = merge_results(previous, out)
  print(markdown(out))
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
  app.run(main)
