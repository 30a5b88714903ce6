"""Closed-form least-squares fit of a head on fixed features.

``config.head.fit='least_squares'`` trains a head without gradient steps:
the encoder is kept as built (e.g. ``encoder.embed_init='svd'`` with
``hidden=()``, the rank-``D`` LSA projection of the tf-idf rows), the
features ``X`` ``[N, D]`` of every training row are computed once, and each
of the head's output layers is set to the ridge regression of its 0/1
targets ``T`` ``[N, M]`` on them::

  W = (X^T X + lam I)^{-1} X^T T          [D, M], biases 0.

One Cholesky factorisation of the ``D x D`` Gram matrix serves every
level. The heads, with ``multilabel_loss='squared'`` (whose loss this
minimises):

* :class:`~mhe_jax.nn.vanilla.VanillaHead`: ``T = Y``, one-vs-rest least
  squares over all ``C`` labels.
* :class:`~mhe_jax.nn.mhc.MHCHead` with ``child_embedding='table'``: level
  1 regresses "the row has a label in group ``d``" (``T_1`` ``[N, r_1]``),
  level ``h`` the length-``h`` prefixes' membership, so the last level's
  table rows are the labels' one-vs-rest vectors. The projections ``P_h``
  are set to the identity (``hidden`` must equal ``D``). Under the
  regression rule (:mod:`mhe_jax.ops.cascade`) level 1 routes the beam and
  the leaves rank: the top-k are the labels with the largest ridge scores
  among the groups the beam keeps, at ``r_1 + beam * r_2`` scores per row
  instead of ``C``.

The solve costs ``O(N D^2 + D^3 + nnz(T) D + D^2 M)``: for citeulike-t
(``N`` = 20,780, ``D`` = 2048, ``C`` = 52,946) seconds, next to the LSA's
randomized SVD.

Example::

  W = ridge(X_nd, sp.csr_matrix(Y_nc), lam=0.3)       # [D, C]
"""

from __future__ import annotations

import time
from typing import Any

from absl import logging
from flax import nnx
import jax
import numpy as np
import scipy.linalg
import scipy.sparse as sp

from mhe_jax.nn.mhc import MHCHead
from mhe_jax.nn.vanilla import VanillaHead

FITS = ("gradient", "least_squares")


class Ridge:
  """``(X^T X + lam I)^{-1} X^T T`` for many targets on one ``X``.

  Args:
    x_nd: float ``[N, D]`` features.
    lam: the penalty ``> 0``.
  """

  def __init__(self, x_nd: np.ndarray, lam: float):
    if not lam > 0:
      raise ValueError(f"the ridge penalty must be > 0, got {lam}")
    x_nd = np.asarray(x_nd, np.float64)
    if x_nd.ndim != 2:
      raise ValueError(f"features must be [N, D], got shape {x_nd.shape}")
    if not np.all(np.isfinite(x_nd)):
      raise ValueError("features hold NaN or inf")
    self.x_nd = x_nd
    gram = x_nd.T @ x_nd
    gram[np.diag_indices_from(gram)] += lam
    self._factor = scipy.linalg.cho_factor(gram, lower=True)

  def solve(self, targets_nm: sp.spmatrix) -> np.ndarray:
    """float32 ``[D, M]`` for 0/1 (or any) targets ``[N, M]``."""
    t = sp.csr_matrix(targets_nm, dtype=np.float64)
    if t.shape[0] != self.x_nd.shape[0]:
      raise ValueError(f"targets have {t.shape[0]} rows, features "
                       f"{self.x_nd.shape[0]}")
    rhs_dm = np.asarray((t.T @ self.x_nd).T)  # X^T T, T sparse
    return scipy.linalg.cho_solve(self._factor, rhs_dm).astype(np.float32)


def ridge(x_nd: np.ndarray, targets_nm: sp.spmatrix, lam: float) -> np.ndarray:
  """``(X^T X + lam I)^{-1} X^T T`` as float32 ``[D, M]``."""
  return Ridge(x_nd, lam).solve(targets_nm)


def _membership(labels_nc: sp.csr_matrix, group_of_label: np.ndarray,
                num_groups: int) -> sp.csr_matrix:
  """0/1 ``[N, num_groups]``: row n has a label in group g."""
  c = labels_nc.shape[1]
  m = sp.csr_matrix((np.ones(c), (np.arange(c), group_of_label)),
                    shape=(c, num_groups))
  out = sp.csr_matrix(labels_nc @ m)
  out.data[:] = 1.0
  return out


def fit_head(head: Any, x_nd: np.ndarray, labels_nc: sp.csr_matrix,
             lam: float) -> None:
  """Sets ``head``'s output layers to the ridge fit, in place.

  Args:
    head: a multi-label :class:`VanillaHead` or :class:`MHCHead` (table
      children, ``hidden == D``) with ``multilabel_loss='squared'``.
    x_nd: float ``[N, D]`` training features.
    labels_nc: 0/1 CSR ``[N, C]`` training labels.
    lam: the ridge penalty.

  Raises:
    ValueError: another head or configuration (the message says which).
  """
  labels_nc = sp.csr_matrix(labels_nc)
  if labels_nc.nnz:
    labels_nc.data[:] = 1.0
  name = type(head).__name__
  if not getattr(head, "multilabel", False):
    raise ValueError(f"head.fit='least_squares' fits multi-label heads; this "
                     f"{name} is single-label")
  if getattr(head, "multilabel_loss", None) != "squared":
    raise ValueError(
        f"head.fit='least_squares' minimises the squared error: set "
        f"head.multilabel_loss='squared' (got "
        f"{getattr(head, 'multilabel_loss', None)!r}), so that the head's "
        "loss and scores are those of the fit")
  if labels_nc.shape[1] != head.num_classes:
    raise ValueError(f"labels have {labels_nc.shape[1]} columns, the head "
                     f"{head.num_classes} classes")
  d = x_nd.shape[1]
  solver = Ridge(x_nd, lam)
  if isinstance(head, VanillaHead):
    w_dc = solver.solve(labels_nc)
    kernel = np.zeros(head.kernel.shape, np.float32)
    kernel[:, :head.num_classes] = w_dc
    head.kernel[...] = jax.numpy.asarray(kernel, head.kernel[...].dtype)
    head.bias[...] = jax.numpy.zeros_like(head.bias[...])
    return
  if not isinstance(head, MHCHead):
    raise ValueError(f"head.fit='least_squares' fits the vanilla and mhc "
                     f"heads, not {name}")
  if head.child_embedding != "table":
    raise ValueError("head.fit='least_squares' needs MHC's "
                     "head.child_embedding='table' (a vector per child)")
  if head.hidden != d:
    raise ValueError(f"head.fit='least_squares' sets MHC's projections to "
                     f"the identity: head.hidden={head.hidden} must equal the "
                     f"encoder's output width {d}")
  codec = head.codec
  codes_c = np.asarray(codec.to_codes(np.arange(head.num_classes)))
  dtype = head.first.kernel[...].dtype
  for level in range(1, codec.num_heads + 1):
    s = codec.strides[level - 1]
    prefix_c = codes_c // s  # each label's length-`level` prefix
    if level == 1:
      w = solver.solve(_membership(labels_nc, prefix_c, codec.radices[0]))
      head.first.kernel[...] = jax.numpy.asarray(w, dtype)
      head.first.bias[...] = jax.numpy.zeros_like(head.first.bias[...])
      continue
    i = level - 2
    rows = head.child_table[i][...].shape[0]  # n_{h-1} * r_h child codes
    w = solver.solve(_membership(labels_nc, prefix_c, rows))
    head.child_table[i][...] = jax.numpy.asarray(w.T, dtype)
    head.child_bias[i][...] = jax.numpy.zeros_like(head.child_bias[i][...])
    proj = head.proj[i]
    proj.kernel[...] = jax.numpy.eye(d, dtype=dtype)
    proj.bias[...] = jax.numpy.zeros_like(proj.bias[...])


def _labels_csr(labels: np.ndarray, num_classes: int) -> sp.csr_matrix:
  """-1 padded ``[N, L]`` (or ``[N]``) label ids -> 0/1 CSR ``[N, C]``."""
  labels = np.asarray(labels)
  if labels.ndim == 1:
    labels = labels[:, None]
  rows, cols = np.nonzero((labels >= 0) & (labels < num_classes))
  out = sp.csr_matrix((np.ones(rows.size), (rows, labels[rows, cols])),
                      shape=(labels.shape[0], num_classes))
  out.sum_duplicates()
  out.data[:] = 1.0
  return out


def least_squares_state(trainer: Any, state: nnx.State) -> nnx.State:
  """The trainer's state with its head fitted by :func:`fit_head`.

  Every training row is encoded once (``train=False``, batches of
  ``config.eval_batch_size``), the head is fitted with
  ``config.head.ridge_lambda``, and the state comes back with the trainer's
  shardings.

  Args:
    trainer: a :class:`mhe_jax.train.Trainer`.
    state: its initial state.

  Returns:
    The fitted state.
  """
  config = trainer.config
  if jax.process_count() > 1:
    raise ValueError("head.fit='least_squares' runs in one process; got "
                     f"{jax.process_count()}")
  source = trainer.data.train
  if not hasattr(source, "gather"):
    raise ValueError(f"head.fit='least_squares' needs an indexable training "
                     f"source, got {type(source).__name__}")
  t0 = time.perf_counter()
  graphdef = trainer.graphdef

  @jax.jit
  def features(state, batch):
    model, _ = nnx.merge(graphdef, state)
    return model.features(batch, train=False)

  n = len(source)
  size = config.eval_batch_size
  feats, labels = [], []
  for start in range(0, n, size):
    idx = np.arange(start, min(start + size, n))
    m = idx.size
    batch = source.gather(np.pad(idx, (0, size - m), mode="edge"))
    labels.append(np.asarray(batch["labels"])[:m])
    with jax.set_mesh(trainer.mesh):
      f = features(state, trainer.device_batch(batch))
    f = np.asarray(f)[:m]
    if f.ndim != 2:
      raise ValueError(f"head.fit='least_squares' needs one feature vector "
                       f"per example; the encoder gives shape {f.shape[1:]}")
    feats.append(f)
  x_nd = np.concatenate(feats)
  labels_nc = _labels_csr(np.concatenate(labels), trainer.data.num_classes)
  t1 = time.perf_counter()
  with jax.set_mesh(trainer.mesh):
    model, optimizer = nnx.merge(graphdef, state)
    fit_head(model.head, x_nd, labels_nc, float(config.head.ridge_lambda))
    state = jax.device_put(nnx.state((model, optimizer)),
                           trainer.state_shardings)
  logging.info("least-squares fit of the %s head: %d rows encoded in %.1f s, "
               "solved in %.1f s (D=%d, lambda=%g)", config.head.type, n,
               t1 - t0, time.perf_counter() - t1, x_nd.shape[1],
               config.head.ridge_lambda)
  return state
