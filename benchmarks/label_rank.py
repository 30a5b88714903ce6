"""How much label-vector rank an XMC set needs: ridge regression at rank r.

A neural XMC model scores label ``l`` with ``<h(x), w_l>``: its label vectors
(and features) have the head's width ``r``, so it is a rank-``r`` linear
model of whatever ``h`` extracts. This benchmark measures what rank alone
allows, with no encoder to train: the tf-idf rows of the training split are
projected on their top ``r`` right singular vectors (LSA: the randomized SVD
of ``SparseMLPEncoder.svd_embedding``, the start of ``encoder.embed_init=
'svd'``),
and a one-vs-rest ridge regression from that ``r``-dimensional projection to
the 0/1 label matrix is solved in closed form, ``W = (P'P + lam I)^-1 P'Y``.
With ``--softmax_steps``, a linear label-set softmax is trained by Adam on
the same (whitened) features, to see how far a few epochs of the loss the
heads use get from the ridge solution. Beside it, two training-free
yardsticks on the full tf-idf rows: the
linear-kernel label vote ``sum_j cos(x, x_j) y_j`` over all training rows
and the kNN vote over the ``k`` most similar rows.

Validation only: the last ``--validation_fraction`` of the training file is
scored (as ``data.validation_fraction`` does), the test file is not read.

  python benchmarks/label_rank.py                       # citeulike-t
  python benchmarks/label_rank.py --ranks=1024 --softmax_steps=650,1300
  python benchmarks/label_rank.py --ranks=256,512,1024,2048 --dataset=delicious
"""

from __future__ import annotations

import json
import pathlib
import platform
import time

from absl import app
from absl import flags
import numpy as np
import scipy.sparse as sp

from mhe_jax import knn
from mhe_jax import metrics
from mhe_jax.data import datasets
from mhe_jax.data import formats
from mhe_jax.nn import encoders
import ml_collections

_DATASET = flags.DEFINE_string("dataset", "citeulike_t",
                               "A directory of the data root with train.txt.")
_RANKS = flags.DEFINE_list("ranks", ["256", "1024"], "Ranks r to solve at.")
_LAMBDA = flags.DEFINE_float("lam", 1.0, "Ridge penalty.")
_KNN = flags.DEFINE_integer("knn", 30, "k of the kNN yardstick.")
_VALIDATION = flags.DEFINE_float("validation_fraction", 0.2,
                                 "Tail of train scored.")
_SEED = flags.DEFINE_integer("seed", 0, "Seeds the SVD and the batches.")
_SOFTMAX_STEPS = flags.DEFINE_list(
    "softmax_steps", [], "Also train a linear label-set softmax on the "
    "whitened rank-r features for these many Adam steps (batch 128).")
_SOFTMAX_LR = flags.DEFINE_float("softmax_lr", 2e-3, "Its learning rate.")
_OUT = flags.DEFINE_string(
    "out", str(pathlib.Path(__file__).parent / "results" / "label_rank.json"),
    "JSON output.")


def split(data: formats.XMCData, fraction: float):
  """``(X_train, Y_train, X_val, Y_val)``: the file's last rows held out."""
  n = data.X.shape[0]
  cut = n - int(round(n * fraction))
  X, Y = data.X.tocsr(), data.Y.tocsr()
  return X[:cut], Y[:cut], X[cut:], Y[cut:]


def top5(scores: np.ndarray) -> np.ndarray:
  part = np.argpartition(-scores, 5, axis=1)[:, :5]
  order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1)
  return np.take_along_axis(part, order, 1)


def score(name: str, labels_b5: np.ndarray, y_val: sp.csr_matrix,
          seconds: float, **extra) -> dict:
  acc = metrics.XMCMetrics(ks=(1, 3, 5), num_labels=y_val.shape[1])
  acc.update(labels_b5, formats.XMCData(sp.csr_matrix(
      (y_val.shape[0], 1)), y_val).padded_labels())
  row = {"method": name, **{k: float(v) for k, v in acc.compute().items()
                            if k in ("P@1", "P@3", "P@5")},
         "seconds": seconds, **extra}
  print(f"{name:<32} P@1 {100 * row['P@1']:.2f}  P@3 {100 * row['P@3']:.2f}"
        f"  P@5 {100 * row['P@5']:.2f}  ({seconds:.0f} s)", flush=True)
  return row


def softmax_linear(p_tr: np.ndarray, y_tr: sp.csr_matrix, p_va: np.ndarray,
                   steps: int, learning_rate: float, batch: int,
                   seed: int) -> np.ndarray:
  """Top-5 of a linear label-set softmax trained by Adam on fixed features.

  The features are whitened (each column scaled to unit training variance,
  then by ``1 / sqrt(r)``), the loss is :class:`~mhe_jax.nn.vanilla.
  VanillaHead`'s ``multilabel_loss='softmax'``: the cross-entropy of the
  softmax over all labels against the uniform distribution on the row's
  labels. Weights and biases start at 0.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  scale = 1.0 / (p_tr.std(axis=0) + 1e-6) / np.sqrt(p_tr.shape[1])
  p_tr, p_va = (p_tr * scale).astype(np.float32), (p_va * scale).astype(
      np.float32)
  labels = formats.XMCData(sp.csr_matrix((y_tr.shape[0], 1)),
                           y_tr).padded_labels()
  params = (jnp.zeros((p_tr.shape[1], y_tr.shape[1])),
            jnp.zeros((y_tr.shape[1],)))
  opt = optax.adam(learning_rate)
  state = opt.init(params)

  def loss(params, x, y):
    logp = jax.nn.log_softmax(x @ params[0] + params[1])
    valid = y >= 0
    picked = jnp.take_along_axis(logp, jnp.where(valid, y, 0), axis=1)
    return -jnp.mean(jnp.sum(picked * valid, axis=1)
                     / jnp.maximum(valid.sum(axis=1), 1))

  @jax.jit
  def step(params, state, x, y):
    grads = jax.grad(loss)(params, x, y)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  rng = np.random.default_rng(seed)
  for _ in range(steps):
    rows = rng.integers(0, p_tr.shape[0], batch)
    params, state = step(params, state, p_tr[rows], labels[rows])
  top = jax.jit(lambda x: jax.lax.top_k(x @ params[0] + params[1], 5)[1])
  return np.concatenate([np.asarray(top(p_va[i:i + 512]))
                         for i in range(0, p_va.shape[0], 512)])


def main(argv):
  del argv
  cfg = ml_collections.ConfigDict({"data_dir": ""})
  path = datasets.data_root(cfg) / _DATASET.value / "train.txt"
  x_tr, y_tr, x_va, y_va = split(formats.read_xc(path), _VALIDATION.value)
  a, b = knn.tfidf(x_tr, x_tr), knn.tfidf(x_tr, x_va)
  rows = []
  t0 = time.perf_counter()
  sims = (b @ a.T).toarray()
  votes = np.asarray(sims @ y_tr)
  rows.append(score("linear-kernel vote (all rows)", top5(votes), y_va,
                    time.perf_counter() - t0))
  t0 = time.perf_counter()
  k = _KNN.value
  idx = np.argpartition(-sims, k, axis=1)[:, :k]
  w = sp.csr_matrix((np.take_along_axis(sims, idx, 1).ravel(), idx.ravel(),
                     np.arange(0, idx.size + 1, k)), shape=sims.shape)
  rows.append(score(f"kNN vote (k={k})", top5(np.asarray((w @ y_tr)
                                                          .todense())),
                    y_va, time.perf_counter() - t0, k=k))
  del sims, votes
  for r in (int(v) for v in _RANKS.value):
    t0 = time.perf_counter()
    v = encoders.SparseMLPEncoder.svd_embedding(
        x_tr, r, idf=encoders.SparseMLPEncoder.idf_from_csr(x_tr),
        seed=_SEED.value)
    p_tr, p_va = a @ v, b @ v
    gram = p_tr.T @ p_tr + _LAMBDA.value * np.eye(r)
    w_rl = np.linalg.solve(gram, np.asarray((y_tr.T @ p_tr).T))
    rows.append(score(f"ridge on rank-{r} LSA", top5(p_va @ w_rl), y_va,
                      time.perf_counter() - t0, rank=r, lam=_LAMBDA.value))
    for steps in (int(v) for v in _SOFTMAX_STEPS.value):
      t0 = time.perf_counter()
      top = softmax_linear(p_tr, y_tr, p_va, steps, _SOFTMAX_LR.value, 128,
                           _SEED.value)
      rows.append(score(f"softmax on rank-{r} LSA, {steps} steps", top, y_va,
                        time.perf_counter() - t0, rank=r, steps=steps,
                        learning_rate=_SOFTMAX_LR.value, batch=128))
  out = {"dataset": _DATASET.value, "split": "validation",
         "validation_fraction": _VALIDATION.value,
         "num_labels": int(y_tr.shape[1]),
         "machine": f"{platform.machine()} {platform.node()}", "rows": rows}
  pathlib.Path(_OUT.value).write_text(json.dumps(out, indent=1) + "\n")
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
