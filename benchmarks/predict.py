"""Inference benchmark: one-request latency and batch throughput, per head.

For each head (vanilla, mhp, mhc, mhs) on Delicious (983 labels; the
``configs/delicious.py:head=<head>`` models), on citeulike-t (52,946 labels;
``configs/citeulike_t.py:head=<head>`` trained for ``--citeulike_steps``
steps) and on a 10^6-label synthetic model
(``configs/synthetic_1m_mhp.py:runlocal`` with that head, trained for
``--synthetic_steps`` steps; prediction cost does not depend on how well a
model is trained), it trains the model into ``--workdir_root`` (reused when a
previous run finished it), loads it with :func:`mhe_jax.load`, compiles
every bucket (:meth:`~mhe_jax.inference.Predictor.warmup`, then one untimed
pass over the timed rows, which compiles the widths of rows longer than the
training rows) and measures, over rows 0..``--requests``-1 of the test set:

* ``predict_one``: ``predictor.predict_one(indices, values, k)``, the row's
  numpy arrays prepared before the clock starts (as a server holds them
  after parsing a request), p50 / p99 ms;
* ``predict_one`` with synchronous CPU dispatch (the same, measured in a
  child process that sets ``jax_cpu_enable_async_dispatch=False`` before
  jax starts; ``--sync_dispatch``): jax runs the program on the calling
  thread instead of handing it to a worker thread;
* ``predict`` of one CSR row (``X[i:i + 1]`` sliced before the clock) and of
  8 rows (rows ``8i .. 8i + 7``): the general API, p50 / p99 ms;
* the ``jax.export`` artifact (:func:`mhe_jax.export.export`, run by
  :func:`~mhe_jax.export.load_exported`) on one row padded to the
  training width (a row longer than it keeps its largest values), p50 /
  p99 ms (skipped above ``--export_max_params`` weights: at 10^6 labels the
  full classifier's artifact is 1 GB);
* throughput: the whole test set in one ``predict`` call, examples per
  second, best of ``--repeats``;
* P@1 / P@5 of those predictions (Delicious: equal to the trainer's
  results.json).

Peers on the same split in the same run (the raw X of train.txt / test.txt,
default hyper-parameters, trained here; their training is not timed against
anything), each request's input prepared before the clock in the peer's own
form (a one-row CSR matrix for napkinXC, a ``[(feature, value), ...]`` list
for omikuji); one warm-up request, then the same rows; the whole test set,
best of ``--repeats``: napkinXC PLT and omikuji in this process, and PECOS
XR-Linear (``libpecos`` 1.2.8) in a side interpreter given by
``--pecos_python`` (default $MHE_PECOS_PYTHON). libpecos needs numpy<2 and
scipy<1.14, which jax cannot share a venv with, so benchmarks/pecos_peer.py
(see its docstring for the side venv) fits and times it there
(:func:`pecos_peer.time_predict`, which slices each request's row inside the
clock) and hands back the top-k lists and the timings through files; the
P@k are computed here like every other row. Without ``--pecos_python`` the
PECOS row says "not measured" and how to measure it. The side process runs
with ``OMP_WAIT_POLICY=passive`` (``--pecos_omp_wait_policy``): libpecos
predicts in OpenMP regions, and with libgomp's default spin-waiting on cores
that other jobs keep busy, each one-row predict waited for descheduled
spinning threads (Delicious, 2 shared cores: p50 84 ms with the default,
0.9 ms passive or with threads=1; the whole test set took the same time
either way).

``--profile`` also splits one request of ``--profile_head`` on Delicious
into its parts (:func:`profile_one_request`), with asynchronous and with
synchronous dispatch; the JSON keeps the split under "profile".

A run merges its rows into an existing ``--out`` JSON (a row with the same
model and num_classes is replaced, the others kept; each run is appended to
"runs" with its command and load average), so datasets can be (re)measured
one at a time.

  python benchmarks/predict.py          # all -> benchmarks/results/predict.json
  python benchmarks/predict.py --citeulike_t=false --synthetic=false --profile
  python benchmarks/predict.py --delicious=false --synthetic=false  # citeulike-t
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
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

import mhe_jax
from mhe_jax import export as export_lib
from mhe_jax import metrics as metrics_lib
from mhe_jax import train
from mhe_jax.data import datasets
from mhe_jax.data import formats

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import pecos_peer  # pylint: disable=g-import-not-at-top,wrong-import-position
import peer_timing  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = pathlib.Path(__file__).resolve().parents[1]
PEER_MODELS = ("napkinxc_plt", "omikuji", "pecos_xr_linear")
# Result keys, in table order, and their titles.
DATASETS = {"delicious": "Delicious", "citeulike_t": "citeulike-t",
            "synthetic_1m": "synthetic 10^6 labels"}
PEER_DATASETS = ("delicious", "citeulike_t")

_HEADS = flags.DEFINE_list("heads", ["vanilla", "mhp", "mhc", "mhs"], "Heads.")
_DELICIOUS = flags.DEFINE_bool("delicious", True, "Benchmark Delicious models.")
_CITEULIKE = flags.DEFINE_bool("citeulike_t", True,
                               "Benchmark citeulike-t models.")
_SYNTHETIC = flags.DEFINE_bool("synthetic", True,
                               "Benchmark 10^6-label synthetic models.")
_PEERS = flags.DEFINE_bool("peers", True,
                           "Time the peers of --peer_models on Delicious and "
                           "citeulike-t.")
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
_CITEULIKE_STEPS = flags.DEFINE_integer(
    "citeulike_steps", 100, "Training steps of the citeulike-t models (the "
    "config trains 1200; latency and throughput do not depend on it).")
_REQUESTS = flags.DEFINE_integer("requests", 300, "One-row requests timed.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Whole-test-set passes timed.")
_K = flags.DEFINE_integer("k", 5, "Labels per example.")
_SYNC_DISPATCH = flags.DEFINE_bool(
    "sync_dispatch", True,
    "Also time predict_one with synchronous CPU dispatch (a child process).")
_EXPORT_MAX_PARAMS = flags.DEFINE_integer(
    "export_max_params", 50_000_000,
    "Time the jax.export artifact of models with at most this many weights.")
_PROFILE = flags.DEFINE_bool(
    "profile", False, "Split one Delicious request into its parts.")
_PROFILE_HEAD = flags.DEFINE_string("profile_head", "mhp",
                                    "The head --profile splits.")
_CHILD_OUT = flags.DEFINE_string(
    "child_out", None,
    "Internal: run as the synchronous-dispatch child, writing its timings "
    "to this JSON file.")
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


def _row_arrays(X, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """Rows 0..n-1 of a CSR matrix as (int32 indices, float32 values)."""
  return [(X.indices[X.indptr[i]:X.indptr[i + 1]].astype(np.int32),
           X.data[X.indptr[i]:X.indptr[i + 1]].astype(np.float32))
          for i in range(n)]


def _prepared(predictor, X, requests: int):
  """Each timed request's inputs, and one untimed pass that compiles every
  program they (and the whole-test-set call) use."""
  n = min(requests, X.shape[0])
  k = _K.value
  pairs = _row_arrays(X, n)
  rows = [X[i:i + 1] for i in range(n)]
  eights = [X[8 * i:8 * i + 8] for i in range(max(min(n, X.shape[0] // 8), 1))]
  for i in range(n):
    predictor.predict_one(*pairs[i], k=k)
    predictor.predict(rows[i], k)
  for x in eights:
    predictor.predict(x, k)
  predictor.predict(X, k)
  return n, pairs, rows, eights


def _time_predict_one(predictor, pairs, requests: int) -> tuple[float, float]:
  k = _K.value
  return peer_timing.time_requests(
      lambda i: predictor.predict_one(*pairs[i], k=k), len(pairs), requests)


def _num_params(predictor) -> int:
  return int(sum(np.size(l) for l in jax.tree.leaves(predictor.state)))


def _time_exported(predictor, pairs, requests: int,
                   directory: pathlib.Path) -> dict:
  """One-row latency of the jax.export artifact (rows at the export width)."""
  k = _K.value
  export_lib.export(predictor, directory, k=k)
  run = export_lib.load_exported(directory)
  width = predictor.max_features
  inputs = []
  for ids, values in pairs:
    if len(ids) > width:  # the artifact's rows have the training width
      order = np.argsort(-values, kind="stable")[:width]
      ids, values = ids[order], values[order]
    padded = (np.full((1, width), -1, np.int32), np.zeros((1, width), np.float32))
    padded[0][0, :len(ids)], padded[1][0, :len(ids)] = ids, values
    inputs.append(padded)

  def one(i):
    scores, labels = run(*inputs[i])
    return np.asarray(scores), np.asarray(labels)

  p50, p99 = peer_timing.time_requests(one, len(inputs), requests)
  return {"exported_p50_ms": p50, "exported_p99_ms": p99,
          "exported_width": width}


def bench_mhe(name: str, workdir: pathlib.Path, test: formats.XMCData,
              results: dict, requests: int) -> dict:
  """A head's row: see the module docstring for what is timed."""
  k = _K.value
  predictor = mhe_jax.load(workdir)
  t0 = time.perf_counter()
  predictor.warmup(k)
  warmup_s = time.perf_counter() - t0
  X = test.X.tocsr()
  n, pairs, rows, eights = _prepared(predictor, X, requests)
  one_p50, one_p99 = _time_predict_one(predictor, pairs, requests)
  csr_p50, csr_p99 = peer_timing.time_requests(
      lambda i: predictor.predict(rows[i], k), n, requests)
  eight_p50, eight_p99 = peer_timing.time_requests(
      lambda i: predictor.predict(eights[i], k), len(eights),
      max(requests // 3, 20))
  seconds, pred = peer_timing.time_batch(lambda: predictor.predict(X, k),
                                         _REPEATS.value)
  row = {
      "model": name, "num_classes": predictor.num_classes,
      "latency_p50_ms": one_p50, "latency_p99_ms": one_p99,
      "latency": "predict_one(indices, values)",
      "predict_csr_row_p50_ms": csr_p50, "predict_csr_row_p99_ms": csr_p99,
      "predict_8_rows_p50_ms": eight_p50, "predict_8_rows_p99_ms": eight_p99,
      "test_set_seconds": seconds, "num_test": X.shape[0],
      "examples_per_second": X.shape[0] / seconds,
      "compile_seconds_all_buckets": warmup_s,
      "requests": requests, "num_params": _num_params(predictor),
      **_precision(pred.labels, test),
      "trainer_P@1": results.get("P@1"), "trainer_P@5": results.get("P@5"),
      "train_steps": results.get("steps"),
  }
  if row["num_params"] <= _EXPORT_MAX_PARAMS.value:
    with tempfile.TemporaryDirectory() as tmp:
      row.update(_time_exported(predictor, pairs, requests,
                                pathlib.Path(tmp) / "exported"))
  else:
    row["exported"] = (f"not timed: {row['num_params']:,} weights, above "
                       f"--export_max_params={_EXPORT_MAX_PARAMS.value:,}")
  logging.info("%s", row)
  return row


def _median_us(fn, n: int) -> float:
  """Median microseconds of ``fn(i)`` over i = 0..n-1 (one untimed call)."""
  fn(0)
  times = []
  for i in range(n):
    t0 = time.perf_counter()
    fn(i)
    times.append(time.perf_counter() - t0)
  return float(np.median(times) * 1e6)


def profile_one_request(predictor, X, n: int) -> dict[str, float]:
  """Median microseconds of each part of one request, over rows 0..n-1.

  The parts of ``predict_one(indices, values)``: the numpy conversion of the
  row into the batch-1 bucket, the compiled program from the call until its
  result is ready (and, for comparison, a program of the same arguments
  that does nothing, and the same top-k program compiled with XLA's default
  intra-op parallel loops), the device-to-host copy of the result, and the
  whole call (the rest is Python). The parts of ``predict`` on a CSR row:
  scipy's row slice (the caller's), the CSR arrays to padded arrays, and the
  whole call. And ``jax.jit`` of a function of the ``nnx.State`` called on
  the same padded row, with its two host copies: the dispatch that the
  Predictor's ahead-of-time programs replace.
  """
  # pylint: disable=protected-access
  from flax import nnx  # pylint: disable=g-import-not-at-top
  k = _K.value
  pairs = _row_arrays(X, n)
  rows = [X[i:i + 1] for i in range(n)]
  inputs = [predictor._bow_row(ids, values, -1) for ids, values in pairs]
  weights = predictor._weights
  programs = [predictor._program(weights, x, k)[0] for x in inputs]
  graphdef, treedef, keys = (predictor.graphdef, weights.treedef,
                             predictor.input_keys)

  def topk(leaves, inputs):
    model = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
    return model.topk(dict(zip(keys, inputs)), k)

  def nothing(leaves, inputs):
    del leaves
    return inputs[0][:, :2 * k]

  def compiled(fn, options=None):
    cache = {}

    def get(x):
      key = x[0].shape
      if key not in cache:
        cache[key] = jax.jit(fn).lower(weights.leaves, x).compile(
            compiler_options=options)
      return cache[key]
    return get

  parallel, noop = compiled(topk), compiled(nothing)
  jitted = jax.jit(lambda state, x: nnx.merge(graphdef, state).topk(
      dict(zip(keys, x)), k))

  def fresh(i):
    return programs[i](weights.leaves, inputs[i]).block_until_ready()

  def copy_back(i):
    out = fresh(i)
    t0 = time.perf_counter()
    np.asarray(out)
    return time.perf_counter() - t0

  copy_back(0)
  copies = [copy_back(i % n) for i in range(n)]
  return {
      "predict_one": _median_us(
          lambda i: predictor.predict_one(*pairs[i], k=k), n),
      "predict_one: (indices, values) -> padded [1, width] (numpy)":
          _median_us(lambda i: predictor._bow_row(*pairs[i], -1), n),
      "predict_one: program, call to result ready": _median_us(fresh, n),
      "predict_one: device-to-host copy of the result":
          float(np.median(copies) * 1e6),
      "a program of the same arguments that does nothing, call to ready":
          _median_us(lambda i: noop(inputs[i])(
              weights.leaves, inputs[i]).block_until_ready(), n),
      "the top-k program with XLA's intra-op parallel loops, call to ready":
          _median_us(lambda i: jax.block_until_ready(parallel(inputs[i])(
              weights.leaves, inputs[i])), n),
      "jax.jit of the nnx.State function, call + 2 host copies": _median_us(
          lambda i: [np.asarray(o) for o in jitted(predictor.state,
                                                   inputs[i])], n),
      "predict(CSR row)": _median_us(lambda i: predictor.predict(rows[i], k),
                                     n),
      "predict(CSR row): scipy row slice X[i:i+1] (the caller's)":
          _median_us(lambda i: X[i:i + 1], n),
      "predict(CSR row): CSR arrays -> padded arrays (to_inputs)":
          _median_us(lambda i: predictor.to_inputs(rows[i]), n),
  }


def _sync_child() -> None:
  """The --child_out process: predict_one (and --profile) timings with
  synchronous CPU dispatch, for the parent to merge into its rows."""
  jax.config.update("jax_cpu_enable_async_dispatch", False)
  spec = json.loads(pathlib.Path(_CHILD_OUT.value).read_text())
  out = {"rows": [], "profile": None}
  for job in spec["jobs"]:
    predictor = mhe_jax.load(job["workdir"])
    predictor.warmup(_K.value)
    X = _test_set(job["dataset"], job["workdir"]).X.tocsr()
    _, pairs, _, _ = _prepared(predictor, X, _REQUESTS.value)
    p50, p99 = _time_predict_one(predictor, pairs, _REQUESTS.value)
    out["rows"].append({"dataset": job["dataset"], "model": job["model"],
                        "p50": p50, "p99": p99})
    if job.get("profile"):
      out["profile"] = profile_one_request(predictor, X, _REQUESTS.value)
    logging.info("sync dispatch %s", out["rows"][-1])
  pathlib.Path(_CHILD_OUT.value).write_text(json.dumps(out))


def _run_sync_child(jobs: list[dict]) -> dict:
  """Runs this script as the synchronous-dispatch child on ``jobs``."""
  with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / "child.json"
    path.write_text(json.dumps({"jobs": jobs}))
    subprocess.run(
        [sys.executable, str(pathlib.Path(__file__).resolve()),
         f"--child_out={path}", f"--requests={_REQUESTS.value}",
         f"--k={_K.value}", f"--workdir_root={_WORKDIR_ROOT.value}"],
        check=True)
    return json.loads(path.read_text())


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
  X = test.X.tocsr()
  from napkinxc.models import PLT  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    plt = PLT(tmp)
    y_lists = [list(map(int, r)) for r in np.split(
        train_data.Y.indices, train_data.Y.indptr[1:-1])]
    t0 = time.perf_counter()
    plt.fit(train_data.X, y_lists)
    train_s = time.perf_counter() - t0
    rows = [X[i:i + 1] for i in range(min(requests, X.shape[0]))]
    p50, p99 = peer_timing.time_requests(
        lambda i: plt.predict(rows[i], top_k=k), len(rows), requests)
    seconds, pred = peer_timing.time_batch(lambda: plt.predict(X, top_k=k),
                                           _REPEATS.value)
    labels = np.full((X.shape[0], k), -1, np.int64)
    for i, r in enumerate(pred):
      labels[i, :len(r)] = r[:k]
    row = _peer_row("napkinXC PLT", test, p50, p99, seconds, labels, train_s)
  row["latency"] = "predict(one-row CSR matrix)"
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
  row["latency"] = "predict([(feature, value), ...])"
  logging.info("%s", row)
  return row


def merge_results(previous: dict | None, new: dict) -> dict:
  """``new`` merged into ``previous`` (the --out JSON of earlier runs).

  Per dataset key (DATASETS), a row of ``new`` replaces the previous row
  with the same (model, num_classes) in place; previous rows it does not
  replace are kept, new ones are appended. The other keys (machine, jax,
  date, command, profile, ...) are those of ``new`` where it has them;
  "runs" collects every run's entry (``new["runs"]`` appended to the
  previous ones; a file written before "runs" existed counts as one run,
  its command and date).

  Args:
    previous: the earlier results, or None.
    new: this run's results.

  Returns:
    The merged results (a new dict).
  """
  previous = previous or {}
  skip = ("runs", *DATASETS)
  merged = {key: value for key, value in previous.items() if key not in skip}
  merged.update({key: value for key, value in new.items() if key not in skip})
  runs = list(previous.get("runs", []))
  if not runs and "command" in previous:  # written before "runs" existed
    runs = [{"command": previous["command"], "time": previous.get("date")}]
  merged["runs"] = runs + list(new.get("runs", []))
  for dataset in DATASETS:
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


def _ms(row: dict, key: str) -> str:
  if f"{key}_p50_ms" not in row:
    return ""
  return f"{row[f'{key}_p50_ms']:.3f} / {row[f'{key}_p99_ms']:.2f}"


def markdown(results: dict) -> str:
  """The latency and throughput table, then the issue's targets per head."""
  lines = ["| dataset | model | one request p50 / p99 (ms) | sync dispatch "
           "| predict(CSR row) | predict(8 rows) | exported artifact | "
           "throughput (examples/s) | P@1 / P@5 |",
           "|---|---|---|---|---|---|---|---|---|"]
  for key, title in DATASETS.items():
    for r in results.get(key, []):
      if "not_measured" in r:
        lines.append(f"| {title} | {r['model']} | not measured: "
                     f"{r['not_measured']} | | | | | | |")
        continue
      quality = f"{100 * r['P@1']:.1f} / {100 * r['P@5']:.1f}"
      if key == "synthetic_1m":
        quality = f"n/a ({r['train_steps']} training steps)"
      elif key != "delicious" and r.get("train_steps"):
        quality += f" ({r['train_steps']} training steps)"
      lines.append(
          f"| {title} | {r['model']} | {_ms(r, 'latency')} | "
          f"{_ms(r, 'sync_dispatch')} | {_ms(r, 'predict_csr_row')} | "
          f"{_ms(r, 'predict_8_rows')} | {_ms(r, 'exported')} | "
          f"{r['examples_per_second']:,.0f} | {quality} |")
  lines += ["", "| dataset | head | p50 / fastest peer's p50 (async; sync "
            "dispatch) | p99 / p50 | throughput / napkinXC's |",
            "|---|---|---|---|---|"]
  for key, title in DATASETS.items():
    rows = [r for r in results.get(key, []) if "not_measured" not in r]
    peers = [r for r in rows if not r["model"].startswith("mhe_jax")]
    if not peers:
      continue
    fastest = min(r["latency_p50_ms"] for r in peers)
    napkin = [r for r in peers if r["model"] == "napkinXC PLT"]
    for r in rows:
      if r in peers:  # their p99 / p50 under the same load, for reference
        lines.append(f"| {title} | ({r['model']}) | | "
                     f"{r['latency_p99_ms'] / r['latency_p50_ms']:.1f} | |")
        continue
      sync = (f"; {r['sync_dispatch_p50_ms'] / fastest:.2f}"
              if "sync_dispatch_p50_ms" in r else "")
      throughput = (f"{r['examples_per_second'] / napkin[0]['examples_per_second']:.2f}"
                    if napkin else "")
      lines.append(
          f"| {title} | {r['model'].removeprefix('mhe_jax ')} | "
          f"{r['latency_p50_ms'] / fastest:.2f}{sync} | "
          f"{r['latency_p99_ms'] / r['latency_p50_ms']:.1f} | {throughput} |")
  profile = results.get("profile")
  if profile:
    modes = [m for m in ("async", "sync") if m in profile["us"]]
    lines += ["", "| part of one request (us, median) | "
              + " | ".join(f"{m} dispatch" for m in modes) + " |",
              "|---|" + "---|" * len(modes)]
    for part in profile["us"][modes[0]]:
      lines.append(f"| {part} | " + " | ".join(
          f"{profile['us'][m][part]:.1f}" for m in modes) + " |")
  return "\n".join(lines)


def _test_set(dataset: str, workdir) -> formats.XMCData:
  """The test split a dataset's rows are timed on (raw features)."""
  if dataset == "synthetic_1m":
    from mhe_jax import config_lib  # pylint: disable=g-import-not-at-top
    config = config_lib.from_json(pathlib.Path(workdir) / "config.json")
    return datasets.load_dataset(config.data, config.seed).eval.data
  return formats.read_xc(_data_dir(dataset) / "test.txt")


def _data_dir(dataset: str) -> pathlib.Path:
  config = _config("delicious" if dataset == "delicious" else "citeulike_t",
                   "head=mhp")
  return datasets.data_root(config.data) / dataset


def _mhe_config(dataset: str, head: str):
  if dataset == "delicious":
    return _config("delicious", f"head={head}")
  if dataset == "citeulike_t":
    config = _config("citeulike_t", f"head={head}")
    config.name = f"citeulike_t_{head}_{_CITEULIKE_STEPS.value}steps"
    config.num_train_steps = _CITEULIKE_STEPS.value
    return config
  config = _config("synthetic_1m_mhp", "runlocal")
  config.name = f"synthetic_1m_{head}"
  config.head.type = head
  config.num_train_steps = _SYNTHETIC_STEPS.value
  return config


def main(argv):
  del argv
  if _CHILD_OUT.value:
    _sync_child()
    return
  root = pathlib.Path(_WORKDIR_ROOT.value)
  command = "python " + " ".join(sys.argv)
  out = {"machine": f"{platform.machine()} {platform.processor() or ''}, "
                    f"{os.cpu_count()} CPUs, {jax.device_count()} "
                    f"{jax.default_backend()} device(s)",
         "jax": jax.__version__, "date": time.strftime("%Y-%m-%d"),
         "k": _K.value, "command": command,
         "runs": [{"command": command,
                   "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "load_average_1_5_15_min_at_start": list(os.getloadavg())}]}
  chosen = [d for d, on in (("delicious", _DELICIOUS.value),
                            ("citeulike_t", _CITEULIKE.value),
                            ("synthetic_1m", _SYNTHETIC.value)) if on]
  jobs = []
  for dataset in chosen:
    rows = []
    for head in _HEADS.value:
      config = _mhe_config(dataset, head)
      workdir = root / config.name
      results = _trained(config, workdir)
      test = _test_set(dataset, workdir)
      requests = (_REQUESTS.value if dataset != "synthetic_1m"
                  else max(_REQUESTS.value // 3, 20))
      rows.append(bench_mhe(f"mhe_jax {head}", workdir, test, results,
                            requests))
      profile = (_PROFILE.value and dataset == "delicious"
                 and head == _PROFILE_HEAD.value)
      if profile:
        predictor = mhe_jax.load(workdir)
        predictor.warmup(_K.value)
        X = test.X.tocsr()
        _prepared(predictor, X, requests)
        out["profile"] = {
            "model": f"{dataset} mhe_jax {head}", "requests": requests,
            "us": {"async": profile_one_request(predictor, X, requests)}}
      jobs.append({"dataset": dataset, "model": f"mhe_jax {head}",
                   "workdir": str(workdir), "profile": profile})
    if _PEERS.value and dataset in PEER_DATASETS:
      data_dir = _data_dir(dataset)
      train_data = formats.read_xc(data_dir / "train.txt")
      test = formats.read_xc(data_dir / "test.txt")
      rows += bench_peers(train_data, test, data_dir, _REQUESTS.value,
                          _PEER_MODELS.value)
    out[dataset] = rows
  if _SYNC_DISPATCH.value and jobs:
    child = _run_sync_child(jobs)
    for got in child["rows"]:
      for row in out[got["dataset"]]:
        if row["model"] == got["model"]:
          row["sync_dispatch_p50_ms"] = got["p50"]
          row["sync_dispatch_p99_ms"] = got["p99"]
    if child["profile"] and "profile" in out:
      out["profile"]["us"]["sync"] = child["profile"]
  out["runs"][0]["load_average_1_5_15_min_at_end"] = list(os.getloadavg())
  path = pathlib.Path(_OUT.value)
  previous = json.loads(path.read_text()) if path.exists() else None
  out = merge_results(previous, out)
  print(markdown(out))
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
  app.run(main)
