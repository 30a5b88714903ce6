"""Label orders for a :class:`~mhe_jax.ops.LabelCodec`: given, random, clustered.

Multi-Head Encoding writes label ``y`` as the digits of its *code*; labels
whose codes share the first digit share the first head's output (a group),
and so on down the heads. Which labels share digits is the label order:

* ``'given'``: code = label (the dataset's order; the MHC reference sorts
  labels by name, so its groups are alphabetical).
* ``'random'``: a seeded uniformly random permutation.
* ``'clustered'``: a code assignment from balanced clustering of label
  centroids (e.g. the mean tf-idf features of each label's training
  examples), so that labels with the same first digit -- and recursively the
  same first two digits, ... -- are similar, as label-tree methods build
  their trees (LightXML / PECOS balanced k-means; AttentionXML).

The paper (Liang et al., TPAMI 2024, Sec. 4) argues that MHE needs no such
label preprocessing once the model fits; ``benchmarks/claims.py`` measures it.

Balanced clustering (:func:`balanced_clustering_permutation`). The valid
codes ``0 .. C-1`` split by their first digit into blocks of ``s_1 =
r_2 * ... * r_H`` consecutive codes (the last block may be shorter); each
block splits by the second digit into blocks of ``s_2``, and so on. The
labels are partitioned top-down to fill exactly these blocks: at each node,
spherical k-means (cosine, k-means++ seeding) with ``m = ceil(n / s_h)``
centres, where every assignment step is capacity-constrained so that cluster
``j`` receives exactly the size of block ``j`` (points are placed in order of
their regret -- how much they lose by not getting their nearest centre --
each into its nearest centre with room left). Plain numpy; about 5 s for
C = 11,697 labels in 64 dimensions on a loaded 2-core CPU.

Example::

  centroids = label_centroids(X_csr, Y_csr, dim=64)        # [C, 64]
  perm = label_permutation("clustered", codec, centroids=centroids)
  codec = codec.with_permutation(perm)                      # labels -> codes
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from mhe_jax.data import label_features
from mhe_jax.ops.codec import LabelCodec

LABEL_ORDERS = ("given", "random", "clustered")


def _normalize_rows(x: np.ndarray) -> np.ndarray:
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  return x / np.maximum(norms, 1e-12)


def _kmeans_pp(x: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
  """k-means++ seeding with a few local trials per centre (as scikit-learn)."""
  n = x.shape[0]
  trials = 2 + int(math.log(m))
  centres = [x[rng.integers(n)]]
  d2 = ((x - centres[0]) ** 2).sum(1)
  for _ in range(1, m):
    p = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
    cand = rng.choice(n, size=trials, p=p)
    cand_d2 = np.minimum(d2[None, :],
                         ((x[None, :, :] - x[cand][:, None, :]) ** 2).sum(-1))
    best = int(np.argmin(cand_d2.sum(1)))
    centres.append(x[cand[best]])
    d2 = cand_d2[best]
  return np.stack(centres)


def _capacitated_assign(sim: np.ndarray, sizes: np.ndarray) -> np.ndarray:
  """Assignment with exactly ``sizes[j]`` points in cluster j.

  Points go in order of decreasing regret (best minus second-best
  similarity), each to its most similar cluster with room left.
  """
  n, m = sim.shape
  order_nm = np.argsort(-sim, axis=1, kind="stable")
  if m > 1:
    top2 = np.take_along_axis(sim, order_nm[:, :2], axis=1)
    regret = top2[:, 0] - top2[:, 1]
  else:
    regret = np.zeros(n)
  room = sizes.astype(np.int64).copy()
  assign = np.empty(n, np.int64)
  for i in np.argsort(-regret, kind="stable"):
    row = order_nm[i]
    j = row[np.argmax(room[row] > 0)]
    assign[i] = j
    room[j] -= 1
  return assign


def balanced_kmeans(x: np.ndarray, sizes: Sequence[int], *, seed: int = 0,
                    iters: int = 10) -> np.ndarray:
  """Spherical k-means whose cluster j has exactly ``sizes[j]`` points.

  Args:
    x: float ``[n, d]`` points (compared by cosine similarity).
    sizes: cluster sizes, summing to n.
    seed: seeds the k-means++ initialisation.
    iters: assignment / update rounds.

  Returns:
    int64 ``[n]`` cluster ids in ``[0, len(sizes))``.
  """
  sizes = np.asarray(sizes, np.int64)
  n, m = x.shape[0], sizes.shape[0]
  if sizes.sum() != n or (sizes < 0).any():
    raise ValueError(f"sizes {sizes.tolist()} must be >= 0 and sum to the "
                     f"number of points {n}")
  if m == 1:
    return np.zeros(n, np.int64)
  x = _normalize_rows(np.asarray(x, np.float64))
  rng = np.random.default_rng(seed)
  centres = _normalize_rows(_kmeans_pp(x, m, rng))
  assign = None
  for _ in range(iters):
    new = _capacitated_assign(x @ centres.T, sizes)
    if assign is not None and (new == assign).all():
      break
    assign = new
    sums = np.zeros_like(centres)
    np.add.at(sums, assign, x)
    centres = np.where(np.linalg.norm(sums, axis=1, keepdims=True) > 0,
                       _normalize_rows(sums), centres)
  return assign


def balanced_clustering_permutation(centroids: np.ndarray,
                                    codec: LabelCodec, *, seed: int = 0,
                                    iters: int = 10,
                                    max_centres: int = 4096) -> np.ndarray:
  """A label -> code permutation grouping similar labels under shared digits.

  See the module docstring for the algorithm. Group sizes match the codec
  exactly: the labels with first digit ``d`` are the codes
  ``[d * s_1, (d + 1) * s_1) & [0, C)``, and recursively below.

  Args:
    centroids: float ``[C, d]``, one vector per label (rows of zeros, e.g.
      labels never seen in training, are placed wherever room is left).
    codec: gives C and the radices (its own permutation is ignored).
    seed: seeds every k-means++ initialisation (deterministic given it).
    iters: k-means rounds per node.
    max_centres: a node that would need more k-means centres (blocks of its
      digit) is first split into about ``sqrt(m)`` super-blocks of whole
      blocks, each then split as usual; k-means++ seeding and the
      capacitated assignment cost ``O(n m)`` time and memory per node, so
      this keeps e.g. 13,636 groups of 4 items tractable.

  Returns:
    int32 ``[C]`` permutation, ``perm[label] = code``, for
    ``codec.with_permutation``.
  """
  centroids = np.asarray(centroids, np.float64)
  c = codec.num_classes
  if centroids.ndim != 2 or centroids.shape[0] != c:
    raise ValueError(f"centroids must be [num_classes={c}, d], got shape "
                     f"{centroids.shape}")
  perm = np.empty(c, np.int64)
  strides = codec.strides
  # Work list of (labels, first code, level): labels fill codes
  # [first, first + len(labels)), split by digit `level`.
  stack = [(np.arange(c), 0, 0)]
  node = 0
  while stack:
    labels, first, level = stack.pop()
    n = labels.shape[0]
    if level == codec.num_heads - 1 or n == 1:
      # Last digit: any order within the block (codes are consecutive).
      perm[labels] = first + np.arange(n)
      continue
    s = strides[level]
    m = -(-n // s)
    if m > max_centres:  # super-blocks of q whole blocks, same level next
      q = math.isqrt(m - 1) + 1  # ceil(sqrt(m))
      s, m, child_level = q * s, -(-m // q), level
    else:
      child_level = level + 1
    sizes = np.full(m, s)
    sizes[-1] = n - s * (m - 1)
    assign = balanced_kmeans(centroids[labels], sizes, seed=seed + node,
                             iters=iters)
    node += 1
    for j in range(m):
      stack.append((labels[assign == j], first + j * s, child_level))
  return perm.astype(np.int32)


def label_centroids(X: sp.spmatrix, Y: sp.spmatrix, *, dim: int = 0,
                    seed: int = 0) -> np.ndarray:
  """Each label's mean (l2-normalised) feature row, optionally projected.

  Args:
    X: ``[N, F]`` features (CSR; e.g. tf-idf or binary bag-of-words).
    Y: ``[N, C]`` 0/1 labels (CSR).
    dim: if ``0 < dim < F``, a seeded Gaussian random projection to ``dim``
      dimensions (Johnson-Lindenstrauss; keeps cosine geometry roughly).
    seed: seeds the projection.

  Returns:
    float32 ``[C, F or dim]`` label centroids, zero rows for unseen labels.
  """
  if X.shape[0] != Y.shape[0]:
    raise ValueError(f"X has {X.shape[0]} rows but Y has {Y.shape[0]}")
  cent = label_features.mean_features(X, Y)  # csr [C, F]
  if 0 < dim < X.shape[1]:
    proj = np.random.default_rng(seed).standard_normal((X.shape[1], dim))
    return np.asarray(cent @ proj, np.float32)
  return cent.toarray().astype(np.float32)


def token_label_centroids(ids: np.ndarray, context: int, num_classes: int, *,
                          dim: int = 64, seed: int = 0) -> np.ndarray:
  """Label centroids of a next-token task: the bag of each word's contexts.

  Row y is the (projected) normalised count vector of the ``context`` tokens
  preceding each occurrence of y in ``ids`` -- :func:`label_centroids` with
  X the bag of context tokens and Y the next token.
  """
  ids = np.asarray(ids, np.int64)
  n = ids.shape[0] - context
  if n <= 0:
    raise ValueError(f"need more than context={context} tokens, got "
                     f"{ids.shape[0]}")
  rows = np.repeat(np.arange(n), context)
  cols = np.lib.stride_tricks.sliding_window_view(ids, context)[:n].ravel()
  X = sp.csr_matrix((np.ones(rows.shape[0]), (rows, cols)),
                    shape=(n, num_classes))
  Y = sp.csr_matrix((np.ones(n), (np.arange(n), ids[context:])),
                    shape=(n, num_classes))
  return label_centroids(X, Y, dim=dim, seed=seed)


def sequence_label_centroids(values: np.ndarray, offsets: np.ndarray,
                             num_classes: int, *, window: int = 3,
                             dim: int = 64, seed: int = 0) -> np.ndarray:
  """Label centroids of next-item data: the bag of each item's neighbours.

  Row y is the (projected) mean of the one-hot rows of the items at most
  ``window`` positions before or after an occurrence of y in the same
  sequence -- :func:`label_centroids` with one row per such pair, so items
  bought in the same stretches of users' histories get similar centroids.

  Args:
    values, offsets: the sequences in CSR layout
      (:class:`~mhe_jax.data.interactions.Sequences`).
    num_classes: C, items are in ``[0, C)``.
    window: neighbours on each side.
    dim, seed: the projection (see :func:`label_centroids`).
  """
  values = np.asarray(values, np.int64)
  offsets = np.asarray(offsets, np.int64)
  if window < 1:
    raise ValueError(f"window must be >= 1, got {window}")
  seq = np.repeat(np.arange(offsets.shape[0] - 1), np.diff(offsets))
  items, neighbours = [], []
  for o in range(1, window + 1):
    same = seq[o:] == seq[:-o]
    a, b = values[:-o][same], values[o:][same]
    items += [a, b]
    neighbours += [b, a]
  items, neighbours = np.concatenate(items), np.concatenate(neighbours)
  n = items.shape[0]
  X = sp.csr_matrix((np.ones(n), (np.arange(n), neighbours)),
                    shape=(n, num_classes))
  Y = sp.csr_matrix((np.ones(n), (np.arange(n), items)),
                    shape=(n, num_classes))
  return label_centroids(X, Y, dim=dim, seed=seed)


def label_permutation(order: str, codec: LabelCodec, *, seed: int = 0,
                      centroids: np.ndarray | None = None
                      ) -> np.ndarray | None:
  """The label -> code permutation of a named label order.

  Args:
    order: one of :data:`LABEL_ORDERS`.
    codec: gives C and the radices.
    seed: seeds 'random' and the clustering.
    centroids: float ``[C, d]``, required for 'clustered'.

  Returns:
    None for 'given', else an int32 ``[C]`` permutation (label -> code).
  """
  if order == "given":
    return None
  if order == "random":
    return np.random.default_rng(seed).permutation(
        codec.num_classes).astype(np.int32)
  if order == "clustered":
    if centroids is None:
      raise ValueError("label order 'clustered' needs label centroids")
    return balanced_clustering_permutation(centroids, codec, seed=seed)
  raise ValueError(f"unknown label order {order!r}; known: "
                   f"{list(LABEL_ORDERS)}")
