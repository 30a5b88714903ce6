"""Label features for dual encoders: hashed n-grams of names, mean features.

UniDEC (:mod:`mhe_jax.nn.unidec`) embeds labels with the same encoder as
documents, so each label needs a sparse feature row:

* :func:`hashed_ngrams`: the label's name (Bibtex / Delicious tag names from
  the Mulan XML) as hashed word unigrams and character n-grams. Names are
  lower-cased and cut into runs of letters and digits (``"TAG_datamining"``
  -> ``["tag", "datamining"]``); a word present in *every* name (``"tag"``)
  carries no information and is dropped. Each word ``w`` adds 1 to bucket
  ``crc32("w:" + w) % num_buckets`` and each character n-gram ``g`` of
  ``"<" + w + ">"`` adds 1 to ``crc32("c:" + g) % num_buckets`` (crc32 of the
  UTF-8 bytes: stable across processes, unlike Python's ``hash``).
* :func:`mean_features`: when a label has no text, the mean of the
  L2-normalised feature rows of its training examples (the usual fallback of
  label-text-free dual encoders).
* :func:`padded_rows`: a CSR matrix as fixed-width ``(ids, values)`` arrays,
  keeping each row's largest entries, the layout the encoder reads.

Example::

  names = ["TAG_data", "TAG_datamining", "TAG_??"]
  grams = hashed_ngrams(names, 1024)            # csr [3, 1024]; row 2 empty
  means = mean_features(train.X, train.Y)       # csr [C, F]
  ids_cw, values_cw = padded_rows(grams, 16)
"""

from __future__ import annotations

import re
import zlib
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from mhe_jax.data import formats

_WORD_RE = re.compile(r"[^\W_]+")


def words(name: str) -> list[str]:
  """Lower-cased runs of letters and digits of ``name``."""
  return _WORD_RE.findall(name.lower())


def bucket(gram: str, num_buckets: int) -> int:
  """``crc32(gram) % num_buckets`` over the UTF-8 bytes of ``gram``."""
  return zlib.crc32(gram.encode("utf-8")) % num_buckets


def hashed_ngrams(names: Sequence[str], num_buckets: int, *,
                  char_ngrams: Sequence[int] = (3,)) -> sp.csr_matrix:
  """Hashed word and character n-gram counts of each name.

  Args:
    names: C label names.
    num_buckets: hash space size.
    char_ngrams: character n-gram lengths, taken over ``"<" + word + ">"``.

  Returns:
    float32 csr ``[C, num_buckets]`` of counts; rows of names without any
    word (e.g. ``"??"``, or only words shared by all names) are empty.
  """
  if num_buckets < 1:
    raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
  tokens = [words(n) for n in names]
  if len(tokens) > 1:
    everywhere = set.intersection(*(set(t) for t in tokens))
    tokens = [[w for w in t if w not in everywhere] for t in tokens]
  rows, cols = [], []
  for i, ws in enumerate(tokens):
    for w in ws:
      grams = ["w:" + w]
      padded = f"<{w}>"
      for n in char_ngrams:
        grams += ["c:" + padded[j:j + n] for j in range(len(padded) - n + 1)]
      rows += [i] * len(grams)
      cols += [bucket(g, num_buckets) for g in grams]
  m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                    shape=(len(names), num_buckets))
  m.sum_duplicates()
  return m


def mean_features(X: sp.spmatrix, Y: sp.spmatrix) -> sp.csr_matrix:
  """Mean L2-normalised feature row of each label's training examples.

  Args:
    X: ``[N, F]`` features.
    Y: ``[N, C]`` 0/1 labels.

  Returns:
    float32 csr ``[C, F]``; labels without examples get an empty row.
  """
  X = sp.csr_matrix(X, dtype=np.float32)
  norms = np.sqrt(np.asarray(X.multiply(X).sum(1)).ravel())
  Xn = sp.diags(1. / np.where(norms > 0, norms, 1.)) @ X
  Y = sp.csr_matrix(Y, dtype=np.float32)
  counts = np.asarray(Y.sum(0)).ravel()
  means = sp.diags(1. / np.maximum(counts, 1.)) @ (Y.T @ Xn)
  means = sp.csr_matrix(means, dtype=np.float32)
  means.eliminate_zeros()
  return means


def padded_rows(m: sp.spmatrix, width: int, *,
                weights: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
  """Fixed-width ``(ids, values)`` of each CSR row, largest entries kept.

  Args:
    m: ``[R, F]`` sparse matrix.
    width: entries per row; longer rows keep the ``width`` entries of
      largest ``|value * weights[id]|`` (ties: smaller id).
    weights: optional float ``[F]`` importance (e.g. idf) for the cut.

  Returns:
    ``ids`` int32 ``[R, width]`` ascending, -1 padded, and ``values`` float32
    ``[R, width]``, 0 padded.
  """
  m = sp.csr_matrix(m, dtype=np.float32)
  m.sum_duplicates()
  return formats.padded_rows(formats.keep_largest(m, width, weights), width)


LABEL_FEATURES = ("auto", "names", "mean", "both")


def label_feature_matrix(mode: str, num_features: int,
                         names: Sequence[str] | None, X: sp.spmatrix,
                         Y: sp.spmatrix, num_buckets: int
                         ) -> tuple[sp.csr_matrix, sp.csr_matrix | None]:
  """Each label's input row in the documents' feature space (+ n-gram space).

  Hashed name n-grams live in their own ``num_buckets`` columns after the
  ``num_features`` document features, so an encoder over ``num_features +
  num_buckets`` inputs embeds documents and names with one table (documents
  never touch the n-gram rows).

  Args:
    mode: ``"names"`` (hashed names; a label whose name gives no n-gram falls
      back to its mean features), ``"mean"`` (mean features only),
      ``"both"`` (both in one row), ``"auto"`` (names when given, else mean).
    num_features: F, the documents' feature count.
    names: C label names, or None.
    X: ``[N, F]`` training features.
    Y: ``[N, C]`` training labels.
    num_buckets: n-gram hash buckets.

  Returns:
    ``(rows, grams)``: float32 csr ``[C, F + num_buckets]`` when names are
    used (else ``[C, F]``), and the csr ``[C, num_buckets]`` n-gram counts
    (None when names are not used).
  """
  if mode not in LABEL_FEATURES:
    raise ValueError(f"unknown label features {mode!r}; known: "
                     f"{list(LABEL_FEATURES)}")
  if mode == "auto":
    mode = "names" if names is not None else "mean"
  if mode in ("names", "both") and names is None:
    raise ValueError(f"label features {mode!r} need label names, and this "
                     "dataset has none (give data.labels_xml, or use 'mean')")
  means = mean_features(X, Y)
  if means.shape[1] != num_features:
    raise ValueError(f"X has {means.shape[1]} features, expected "
                     f"{num_features}")
  if mode == "mean":
    return means, None
  grams = hashed_ngrams(names, num_buckets)
  if grams.shape[0] != means.shape[0]:
    raise ValueError(f"{grams.shape[0]} label names for {means.shape[0]} "
                     "labels")
  if mode == "names":  # per-label fallback for names without n-grams
    empty = np.diff(grams.indptr) == 0
    means = sp.diags(empty.astype(np.float32)) @ means
  rows = sp.hstack([means, grams], format="csr", dtype=np.float32)
  rows.eliminate_zeros()
  return rows, grams
