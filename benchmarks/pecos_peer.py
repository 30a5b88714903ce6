"""PECOS XR-Linear as a peer of benchmarks/xmc_accuracy.py, in its own python.

libpecos 1.2.8 (the newest release) needs numpy<2 and scipy<1.14, which jax
0.10 cannot share an environment with. So this file imports nothing of
mhe_jax: xmc_accuracy.py imports :func:`train_predict` when ``pecos`` is
importable in its own interpreter, and otherwise runs this file as a script
under ``--pecos_python`` (a separate virtual environment), exchanging the
tf-idf matrices and the top-k label lists through files. Scoring always
happens in xmc_accuracy.py with mhe_jax.metrics, like every other row.

A side environment that holds XR-Linear (libpecos's torch/transformers
requirements are only for XR-Transformer and are skipped with --no-deps):

  python3 -m venv /tmp/pecos
  /tmp/pecos/bin/pip install "numpy<2" "scipy<1.14" scikit-learn
  /tmp/pecos/bin/pip install --no-deps libpecos==1.2.8
  python benchmarks/xmc_accuracy.py --methods=pecos_xr_linear \
      --pecos_python=/tmp/pecos/bin/python

Script use (what xmc_accuracy.py and benchmarks/predict.py run):

  python pecos_peer.py DIR K    # DIR holds x_train.npz y_train.npz x_test.npz;
                                # writes DIR/topk.npy (int32 [N, K], -1 pad)
                                # and DIR/timing.json
  python pecos_peer.py DIR K REQUESTS REPEATS
                                # also times inference like predict.py does
                                # for its other peers (:func:`time_predict`):
                                # one-row latency p50/p99 and the whole test
                                # set, best of REPEATS, into DIR/timing.json
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import scipy.sparse as sp

import peer_timing  # this directory: sys.path[0] as a script, else the benchmarks'

SETTINGS = ("libpecos XLinearModel.train defaults: PIFA label embedding, "
            "hierarchical spherical k-means indexer (16 splits, leaves <= 100 "
            "labels), L2R_L2LOSS_SVC_DUAL, C=1, eps 0.1, weights threshold "
            "0.1, l3-hinge post-processor; predict defaults (beam 10)")


def fit(x_train: sp.csr_matrix, y_train: sp.csr_matrix):
  """Fits XR-Linear with libpecos's defaults; returns (model, fit seconds)."""
  from pecos.xmc import Indexer, LabelEmbeddingFactory  # pylint: disable=g-import-not-at-top
  from pecos.xmc.xlinear.model import XLinearModel  # pylint: disable=g-import-not-at-top
  x_train = sp.csr_matrix(x_train, dtype=np.float32)
  y_train = sp.csr_matrix(y_train, dtype=np.float32)
  t0 = time.perf_counter()
  label_feat = LabelEmbeddingFactory.create(y_train, x_train, method="pifa")
  clusters = Indexer.gen(label_feat)
  model = XLinearModel.train(x_train, y_train, C=clusters)
  return model, time.perf_counter() - t0


def topk_labels(scores, k: int) -> np.ndarray:
  """int32 [N, k] labels of a sparse score matrix, best first, -1 padded."""
  scores = sp.csr_matrix(scores)
  topk = np.full((scores.shape[0], k), -1, np.int32)
  for i, (a, b) in enumerate(zip(scores.indptr[:-1], scores.indptr[1:])):
    order = np.argsort(-scores.data[a:b], kind="stable")[:k]
    topk[i, :len(order)] = scores.indices[a:b][order]
  return topk


def train_predict(x_train: sp.csr_matrix, y_train: sp.csr_matrix,
                  x_test: sp.csr_matrix, k: int):
  """Fits XR-Linear; returns (int32 [N, k] top-k labels -1 padded, fit s, predict s)."""
  model, fit_s = fit(x_train, y_train)
  x_test = sp.csr_matrix(x_test, dtype=np.float32)
  t0 = time.perf_counter()
  scores = model.predict(x_test, only_topk=k)
  predict_s = time.perf_counter() - t0
  return topk_labels(scores, k), fit_s, predict_s


def time_predict(model, x_test: sp.csr_matrix, k: int, requests: int,
                 repeats: int):
  """Times ``model.predict`` the way benchmarks/predict.py times its peers.

  Args:
    model: a fitted XLinearModel (or anything with ``predict(x, only_topk)``
      returning a sparse [rows, labels] score matrix).
    x_test: [N, F] test features.
    k: labels per example.
    requests: one-row requests timed, rows 0, 1, ... (cycled over N), after
      one untimed warm-up request; each times the row slice and the predict.
    repeats: whole-test-set ``predict`` calls timed; the best one counts.

  Returns:
    (int32 [N, k] top-k labels of the last whole-test-set call, -1 padded;
    dict with latency_p50_ms, latency_p99_ms, test_set_seconds, requests,
    repeats).

  Raises:
    ValueError: when ``requests`` or ``repeats`` is below 1.
  """
  if requests < 1:
    raise ValueError(f"requests={requests}: need at least one request")
  if repeats < 1:
    raise ValueError(f"repeats={repeats}: need at least one repeat")
  x_test = sp.csr_matrix(x_test, dtype=np.float32)
  p50, p99 = peer_timing.time_requests(
      lambda i: model.predict(x_test[i:i + 1], only_topk=k), x_test.shape[0],
      requests)
  best, scores = peer_timing.time_batch(
      lambda: model.predict(x_test, only_topk=k), repeats)
  return topk_labels(scores, k), {
      "latency_p50_ms": p50, "latency_p99_ms": p99,
      "test_set_seconds": best, "requests": requests, "repeats": repeats}


ENV_PYTHON = "MHE_PECOS_PYTHON"  # default of the benchmarks' --pecos_python


def side_python(flag) -> str | None:
  """A benchmark's --pecos_python ``flag`` value, or $MHE_PECOS_PYTHON.

  The environment variable is also the answer before absl parsed the flags
  (tests load the benchmarks as modules).
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  if flags.FLAGS.is_parsed():
    return flag.value
  return os.environ.get(ENV_PYTHON)


def run_side(python: str, x_train, y_train, x_test, k: int,
             requests: int | None = None, repeats: int | None = None,
             env: dict[str, str] | None = None) -> tuple[np.ndarray, dict]:
  """Runs this file as a script under ``python`` (PECOS's own venv).

  The matrices go there as .npz files in a temporary directory; with
  ``requests`` and ``repeats`` the script also times inference
  (:func:`time_predict`).

  Returns:
    (int32 [N, k] top-k labels, -1 padded; the script's timing.json).

  Raises:
    FileNotFoundError: ``python`` is not an executable.
    RuntimeError: the script failed (its stderr tail) or returned a top-k of
      the wrong shape.
  """
  if shutil.which(python) is None:
    raise FileNotFoundError(f"--pecos_python={python}: no such executable")
  script = pathlib.Path(__file__).resolve()
  timed = [] if requests is None else [str(requests), str(repeats)]
  with tempfile.TemporaryDirectory() as tmp:
    workdir = pathlib.Path(tmp)
    sp.save_npz(workdir / "x_train.npz", sp.csr_matrix(x_train))
    sp.save_npz(workdir / "y_train.npz", sp.csr_matrix(y_train))
    sp.save_npz(workdir / "x_test.npz", sp.csr_matrix(x_test))
    done = subprocess.run([python, str(script), str(workdir), str(k)] + timed,
                          env=env, capture_output=True, text=True, check=False)
    if done.returncode:
      raise RuntimeError(f"--pecos_python={python} {script} failed "
                         f"({done.returncode}):\n{done.stderr[-2000:]}")
    timing = json.loads((workdir / "timing.json").read_text())
    topk = np.load(workdir / "topk.npy")
  if topk.shape != (x_test.shape[0], k):
    raise RuntimeError(f"--pecos_python={python}: topk.npy has shape "
                       f"{topk.shape}, want {(x_test.shape[0], k)}")
  return topk, timing


def describe_side(python: str, timing: dict) -> str:
  """``python (libpecos 1.2.8, numpy ..., scipy ...)`` for a result row."""
  versions = ", ".join(f"{k} {v}" for k, v in timing["versions"].items())
  return f"{python} ({versions})"


def main(argv):
  if len(argv) not in (3, 5):
    raise SystemExit(f"usage: {argv[0]} DIR K [REQUESTS REPEATS]")
  workdir, k = pathlib.Path(argv[1]), int(argv[2])
  load = lambda name: sp.load_npz(workdir / f"{name}.npz")
  if len(argv) == 3:
    topk, fit_s, predict_s = train_predict(load("x_train"), load("y_train"),
                                           load("x_test"), k)
    timing = {"fit_seconds": fit_s, "predict_seconds": predict_s}
  else:
    model, fit_s = fit(load("x_train"), load("y_train"))
    topk, timing = time_predict(model, load("x_test"), k, int(argv[3]),
                                int(argv[4]))
    timing = {"fit_seconds": fit_s, **timing}
  np.save(workdir / "topk.npy", topk)
  import pecos  # pylint: disable=g-import-not-at-top
  import scipy  # pylint: disable=g-import-not-at-top
  (workdir / "timing.json").write_text(json.dumps({
      **timing,
      # libgomp reads it once; None: its default (spin, then sleep).
      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
      "versions": {"libpecos": pecos.__version__, "numpy": np.__version__,
                   "scipy": scipy.__version__}}))


if __name__ == "__main__":
  main(sys.argv)
