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

Script use (what xmc_accuracy.py runs):

  python pecos_peer.py DIR K    # DIR holds x_train.npz y_train.npz x_test.npz;
                                # writes DIR/topk.npy (int32 [N, K], -1 pad)
                                # and DIR/timing.json
"""

import json
import pathlib
import sys
import time

import numpy as np
import scipy.sparse as sp

SETTINGS = ("libpecos XLinearModel.train defaults: PIFA label embedding, "
            "hierarchical spherical k-means indexer (16 splits, leaves <= 100 "
            "labels), L2R_L2LOSS_SVC_DUAL, C=1, eps 0.1, weights threshold "
            "0.1, l3-hinge post-processor; predict defaults (beam 10)")


def train_predict(x_train: sp.csr_matrix, y_train: sp.csr_matrix,
                  x_test: sp.csr_matrix, k: int):
  """Fits XR-Linear; returns (int32 [N, k] top-k labels -1 padded, fit s, predict s)."""
  from pecos.xmc import Indexer, LabelEmbeddingFactory  # pylint: disable=g-import-not-at-top
  from pecos.xmc.xlinear.model import XLinearModel  # pylint: disable=g-import-not-at-top
  x_train = sp.csr_matrix(x_train, dtype=np.float32)
  y_train = sp.csr_matrix(y_train, dtype=np.float32)
  x_test = sp.csr_matrix(x_test, dtype=np.float32)
  t0 = time.perf_counter()
  label_feat = LabelEmbeddingFactory.create(y_train, x_train, method="pifa")
  clusters = Indexer.gen(label_feat)
  model = XLinearModel.train(x_train, y_train, C=clusters)
  fit_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  scores = sp.csr_matrix(model.predict(x_test, only_topk=k))
  predict_s = time.perf_counter() - t0
  topk = np.full((x_test.shape[0], k), -1, np.int32)
  for i, (a, b) in enumerate(zip(scores.indptr[:-1], scores.indptr[1:])):
    order = np.argsort(-scores.data[a:b], kind="stable")[:k]
    topk[i, :len(order)] = scores.indices[a:b][order]
  return topk, fit_s, predict_s


def main(argv):
  if len(argv) != 3:
    raise SystemExit(f"usage: {argv[0]} DIR K")
  workdir, k = pathlib.Path(argv[1]), int(argv[2])
  load = lambda name: sp.load_npz(workdir / f"{name}.npz")
  topk, fit_s, predict_s = train_predict(load("x_train"), load("y_train"),
                                         load("x_test"), k)
  np.save(workdir / "topk.npy", topk)
  import pecos  # pylint: disable=g-import-not-at-top
  import scipy  # pylint: disable=g-import-not-at-top
  (workdir / "timing.json").write_text(json.dumps({
      "fit_seconds": fit_s, "predict_seconds": predict_s,
      "versions": {"libpecos": pecos.__version__, "numpy": np.__version__,
                   "scipy": scipy.__version__}}))


if __name__ == "__main__":
  main(sys.argv)
