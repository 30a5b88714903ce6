"""k-nearest-neighbour label votes over tf-idf rows, and their blend.

A strong companion of a trained classifier on small multi-label sets: the
labels of the training rows most similar to a query (cosine of tf-idf
vectors, the training idf) vote, weighted by ``similarity ** power``. On
Bibtex and Delicious, blending these votes with a model's sigmoid
probabilities (weights chosen on a validation split, see
benchmarks/xmc_tuning.py --blend) adds 1-3 points of P@1 to our best
ensembles; README "Results" has the figures.

  votes = knn.label_scores(train, test.X, k=100, power=8)      # [N, C]
  scores = knn.blend(probs, votes, weight=0.2)                  # rank these

``label_scores`` is :func:`votes` of :func:`neighbours`; a search for the
largest k of a grid serves every smaller k (its first columns).

The neighbour search is exact, jitted over fixed-size query batches: the
dense ``[n_train, F]`` tf-idf keys through
:func:`mhe_jax.ops.shortlist.exact_search` when they are small, else sparse
keys and one ``[batch, n_train]`` similarity block at a time. Every query
is compared with every training row, so this is meant for training sets of
up to ~10^5-10^6 rows, not for the 10^8-label regime of the heads.
"""

from __future__ import annotations

import jax
import numpy as np
import scipy.sparse as sp

from mhe_jax.data import formats
from mhe_jax.nn import encoders
from mhe_jax.ops import shortlist


def tfidf(train_x: sp.spmatrix, x: sp.spmatrix) -> sp.csr_matrix:
  """Rows of ``x`` weighted by the smooth idf of ``train_x``, L2-normalised.

  The idf is the encoders' (``SparseMLPEncoder.idf_from_csr``: sklearn's
  ``TfidfTransformer(smooth_idf=True)``); all-zero rows stay zero.
  """
  idf = encoders.SparseMLPEncoder.idf_from_csr(sp.csr_matrix(train_x))
  w = sp.csr_matrix(x @ sp.diags(idf), dtype=np.float32)
  norms = np.sqrt(np.asarray(w.multiply(w).sum(axis=1)).ravel())
  return sp.csr_matrix(sp.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ w,
                       dtype=np.float32)


def neighbours(train: formats.XMCData, x: sp.spmatrix, k: int,
               batch_size: int = 1024,
               dense_limit: int = 2**27) -> tuple[np.ndarray, np.ndarray]:
  """The ``k`` training rows most cosine-similar to each query row.

  Args:
    train: the training rows (features ``X``; ``Y`` unused here).
    x: ``[N, F]`` query features (raw, like ``train.X``).
    k: neighbours, ``1 <= k <= train.num_examples``.
    batch_size: queries searched at once (one compiled shape).
    dense_limit: up to this many ``n_train * F`` entries the tf-idf keys are
      held dense and searched by :func:`mhe_jax.ops.shortlist.exact_search`;
      above it (wide vocabularies) they stay sparse, each batch's
      ``[batch, n_train]`` similarities come from a sparse product and
      ``jax.lax.top_k`` picks the neighbours, so no dense ``[n_train, F]``
      matrix is ever built.

  Returns:
    ``(sims [N, k] float32, ids [N, k] int32)``, similarity descending, ties
    by smaller training row; so the first ``j`` columns are the
    ``neighbours(..., j)`` of the same query.
  """
  if not 1 <= k <= train.num_examples:
    raise ValueError(f"k={k} must be in [1, {train.num_examples}] (the "
                     "training rows)")
  if x.shape[1] != train.num_features:
    raise ValueError(f"x has {x.shape[1]} features, the training rows "
                     f"{train.num_features}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  keys = tfidf(train.X, train.X)
  queries = tfidf(train.X, x)
  if train.num_examples * train.num_features <= dense_limit:
    dense_keys = keys.toarray()
    exact = jax.jit(lambda q, keys: shortlist.exact_search(q, keys, k))
    search = lambda q: exact(q, dense_keys)  # keys an argument, not a constant
    block = lambda q: q.toarray()
  else:
    keys_t = sp.csc_matrix(keys.T)
    search = jax.jit(lambda sims: jax.lax.top_k(sims, k))
    block = lambda q: (q @ keys_t).toarray()
  sims = np.zeros((x.shape[0], k), np.float32)
  ids = np.zeros((x.shape[0], k), np.int32)
  for a in range(0, x.shape[0], batch_size):
    q = block(queries[a:a + batch_size])
    rows = len(q)
    if rows < batch_size:
      q = np.pad(q, ((0, batch_size - rows), (0, 0)))
    s, i = search(q)
    sims[a:a + rows], ids[a:a + rows] = np.asarray(s)[:rows], np.asarray(i)[:rows]
  return sims, ids


def votes(nearest: tuple[np.ndarray, np.ndarray], train_y: sp.spmatrix,
          power: float = 1.0) -> np.ndarray:
  """Label votes, float32 ``[N, C]`` in ``[0, 1]``, of :func:`neighbours`.

  Neighbour j of query i votes ``max(sim_ij, 0) ** power`` for each of its
  labels (rows of ``train_y``); votes are divided by their row sum, so a
  label held by every neighbour scores 1 (a query with no similar row
  scores 0).
  """
  sims, ids = nearest
  n, k = ids.shape
  weights = np.maximum(sims, 0.0) ** power
  weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
  w = sp.csr_matrix((weights.ravel(), ids.ravel(), np.arange(n + 1) * k),
                    shape=(n, train_y.shape[0]))
  return (w @ sp.csr_matrix(train_y, dtype=np.float32)).toarray().astype(
      np.float32)


def label_scores(train: formats.XMCData, x: sp.spmatrix, k: int,
                 power: float = 1.0, batch_size: int = 1024,
                 dense_limit: int = 2**27) -> np.ndarray:
  """Label votes of the ``k`` nearest training rows, float32 ``[N, C]``.

  :func:`votes` of :func:`neighbours` (see both for the arguments).
  """
  return votes(neighbours(train, x, k, batch_size, dense_limit), train.Y,
               power)


def blend(probs: np.ndarray, votes: np.ndarray, weight: float) -> np.ndarray:
  """``(1 - weight) * probs + weight * votes`` (both per-label, in [0, 1])."""
  if not 0.0 <= weight <= 1.0:
    raise ValueError(f"weight must be in [0, 1], got {weight}")
  if probs.shape != votes.shape:
    raise ValueError(f"probs {probs.shape} and votes {votes.shape} differ")
  return (1.0 - weight) * probs + weight * votes
