"""Readers and writers for extreme multi-label data files.

The in-memory form is :class:`XMCData`: a CSR feature matrix and a CSR label
matrix over the same examples.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp


@dataclasses.dataclass(frozen=True)
class XMCData:
  """An extreme multi-label dataset held in memory.

  Attributes:
    X: ``scipy.sparse.csr_matrix`` float32 ``[N, F]`` features.
    Y: ``scipy.sparse.csr_matrix`` float32 ``[N, L]`` binary label matrix.
    label_names: the L label names, or None when the source has none.
  """

  X: sp.csr_matrix
  Y: sp.csr_matrix
  label_names: list[str] | None = None

  def __post_init__(self):
    if self.X.shape[0] != self.Y.shape[0]:
      raise ValueError(
          f"X has {self.X.shape[0]} rows but Y has {self.Y.shape[0]}")
    if self.label_names is not None and len(self.label_names) != self.Y.shape[1]:
      raise ValueError(
          f"{len(self.label_names)} label names for {self.Y.shape[1]} labels")

  @property
  def num_examples(self) -> int:
    return self.X.shape[0]

  @property
  def num_features(self) -> int:
    return self.X.shape[1]

  @property
  def num_labels(self) -> int:
    return self.Y.shape[1]

  def padded_labels(self, max_labels: int | None = None) -> np.ndarray:
    """Label sets as an int32 ``[N, max_labels]`` array padded with -1.

    Labels in each row are sorted ascending. ``max_labels`` defaults to the
    largest row; a smaller value raises instead of dropping labels.
    """
    return _csr_to_padded(self.Y, max_labels, "labels")[0]

  def padded_features(
      self, max_features: int | None = None
  ) -> tuple[np.ndarray, np.ndarray]:
    """Features as (indices int32 ``[N, M]`` -1 padded, values float32 ``[N, M]``)."""
    return _csr_to_padded(self.X, max_features, "features")


def _csr_to_padded(
    m: sp.csr_matrix, width: int | None, what: str
) -> tuple[np.ndarray, np.ndarray]:
  m = sp.csr_matrix(m)
  m.sort_indices()
  counts = np.diff(m.indptr)
  longest = int(counts.max()) if counts.size else 0
  if width is None:
    width = longest
  elif longest > width:
    row = int(np.argmax(counts))
    raise ValueError(
        f"row {row} has {longest} {what}, more than the padded width {width}")
  n = m.shape[0]
  idx = np.full((n, width), -1, np.int32)
  val = np.zeros((n, width), np.float32)
  rows = np.repeat(np.arange(n), counts)
  cols = np.arange(m.nnz) - np.repeat(m.indptr[:-1], counts)
  idx[rows, cols] = m.indices
  val[rows, cols] = m.data
  return idx, val
