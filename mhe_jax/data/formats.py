"""Readers and writers for extreme multi-label data files.

The in-memory form is :class:`XMCData`: a CSR feature matrix and a CSR label
matrix over the same examples. Two on-disk formats are supported:

* The Extreme Classification Repository text format (:func:`read_xc`,
  :func:`write_xc`): a header line ``N F L``, then one line per example,
  ``l1,l2,... f:v f:v ...`` with 0-based label and feature indices.
* Mulan ARFF (:func:`read_arff`): Weka ARFF with sparse ``{i v, ...}`` or dense
  ``v,v,...`` rows, the label attributes named by a companion Mulan XML file
  or given as the last ``num_labels`` attributes.

Both readers are strict: anything they cannot read exactly raises
:class:`FormatError` (a ``ValueError``) naming the file and the 1-based line,
never a silently truncated matrix or a wrong row. The common rules:

* Indices are 0-based non-negative integers of at most 18 digits; an index
  ``>=`` the declared size (header for XC, number of attributes for ARFF) is
  an error, and so is a negative one. The sizes of an XC header must fit in
  int64.
* Feature values are any finite decimal numbers, negative ones included
  (tf-idf is never negative, but centred or signed features are).
  ``nan``/``inf`` and values that overflow float32 are errors.
* Unsorted feature or label indices within a row are sorted; a feature index
  or a label given twice in one row is an error.
* Explicit zero feature values written in a row (``5:0``, ``{5 0}``) are kept
  as explicit zeros in ``X`` (as ``tools/arff2xc.py`` does); dense ARFF zeros
  are absent entries.
* Line endings may be ``\\n``, ``\\r\\n`` or ``\\r``; a UTF-8 byte order mark is
  ignored.

Example::

  from mhe_jax.data import formats

  train = formats.read_xc("bibtex/train.txt")
  same = formats.read_arff("bibtex/bibtex-train.arff",
                           labels_xml="bibtex/bibtex.xml")
  assert train.equals(same, check_label_names=False)
  labels = train.padded_labels()  # int32 [4880, max labels], -1 padded
  formats.write_xc(train, "/tmp/copy.txt")
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import xml.parsers.expat
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

PathLike = str | os.PathLike


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
    if (self.label_names is not None
        and len(self.label_names) != self.Y.shape[1]):
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
    y = sorted_csr(self.Y)
    return padded_rows(y, row_width(y, max_labels, "labels"),
                       with_values=False)[0]

  def padded_features(
      self, max_features: int | None = None
  ) -> tuple[np.ndarray, np.ndarray]:
    """Features as indices int32 ``[N, M]`` and values float32 ``[N, M]``.

    Indices are sorted per row and padded with -1, values padded with 0;
    ``max_features`` works as ``max_labels`` in :meth:`padded_labels`.
    """
    x = sorted_csr(self.X)
    return padded_rows(x, row_width(x, max_features, "features"))

  def equals(self, other: XMCData, *, check_label_names: bool = True) -> bool:
    """Whether both hold exactly the same matrices (and label names).

    Matrices are equal when shapes, stored entries (explicit zeros included)
    and values all match after sorting indices; dtypes of the values must
    match too.

    Args:
      other: the dataset to compare with.
      check_label_names: also require equal ``label_names``.

    Returns:
      True when equal.
    """
    if check_label_names and self.label_names != other.label_names:
      return False
    return _csr_equal(self.X, other.X) and _csr_equal(self.Y, other.Y)


def _csr_equal(a: sp.spmatrix, b: sp.spmatrix) -> bool:
  a, b = sp.csr_matrix(a), sp.csr_matrix(b)
  if a.shape != b.shape or a.dtype != b.dtype or a.nnz != b.nnz:
    return False
  a, b = a.sorted_indices(), b.sorted_indices()
  return (np.array_equal(a.indptr, b.indptr)
          and np.array_equal(a.indices, b.indices)
          and np.array_equal(a.data, b.data))


# ----------------------------------------------------------------------------
# CSR rows as fixed-width arrays.


def sorted_csr(m: sp.spmatrix) -> sp.csr_matrix:
  """``m`` as CSR with indices sorted within rows (copied only to sort)."""
  m = sp.csr_matrix(m)
  if not m.has_sorted_indices:
    m = m.sorted_indices()
  return m


def row_width(m: sp.csr_matrix, width: int | None, what: str) -> int:
  """The padded width of ``m``'s rows: ``width``, or the longest row's.

  Args:
    m: ``[N, F]`` CSR matrix.
    width: the requested width; None for the longest row (0 if none).
    what: what a row holds, for the error (e.g. ``"labels"``).

  Raises:
    ValueError: a row has more than ``width`` entries.
  """
  counts = np.diff(m.indptr)
  longest = int(counts.max()) if counts.size else 0
  if width is None:
    return longest
  if longest > width:
    row = int(np.argmax(counts))
    raise ValueError(f"row {row} has {longest} {what}, more than the given "
                     f"maximum {width}")
  return int(width)


def padded_rows(
    m: sp.csr_matrix, width: int, rows: np.ndarray | None = None, *,
    with_values: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
  """CSR rows as -1 padded ids and 0 padded values, ``[B, width]``.

  The layout every sparse input of the models reads: row ``b`` holds the
  column ids (and values) of its row of ``m`` left-aligned, in ``m``'s order
  within the row (ascending for :func:`sorted_csr` input).

  Args:
    m: ``[N, F]`` CSR matrix whose rows hold at most ``width`` entries (see
      :func:`row_width`, :func:`keep_largest`).
    width: W.
    rows: int ``[B]`` rows to take, -1 for an all-padding row; None: all N.
    with_values: also return the values.

  Returns:
    ``ids`` int32 ``[B, W]`` and ``values`` float32 ``[B, W]`` (None without
    ``with_values``).

  Example:

    >>> import numpy as np, scipy.sparse as sp
    >>> m = sp.csr_matrix(np.array([[0., 2., 3.], [0., 0., 0.], [4., 0., 0.]]))
    >>> ids, values = padded_rows(m, 2, np.array([2, -1, 0]))
    >>> ids.tolist(), values.tolist()
    ([[0, -1], [-1, -1], [1, 2]], [[4.0, 0.0], [0.0, 0.0], [2.0, 3.0]])
  """
  if rows is None and m.shape[0] == 1:
    # One row (a single request): two slices, no index arrays.
    start, end = m.indptr[0], m.indptr[1]
    ids = np.full((1, width), -1, np.int32)
    ids[0, :end - start] = m.indices[start:end]
    values = None
    if with_values:
      values = np.zeros((1, width), np.float32)
      values[0, :end - start] = m.data[start:end]
    return ids, values
  if rows is None:
    starts = m.indptr[:-1]
    counts = np.diff(m.indptr)
  else:
    valid = rows >= 0
    safe = np.where(valid, rows, 0)
    starts = m.indptr[safe]
    counts = np.where(valid, m.indptr[safe + 1] - starts, 0)
  b = counts.shape[0]
  ids = np.full((b, width), -1, np.int32)
  values = np.zeros((b, width), np.float32) if with_values else None
  total = int(counts.sum())
  if total:
    offsets = np.cumsum(counts) - counts
    out_rows = np.repeat(np.arange(b), counts)
    cols = np.arange(total) - np.repeat(offsets, counts)
    src = cols + np.repeat(starts, counts)
    ids[out_rows, cols] = m.indices[src]
    if with_values:
      values[out_rows, cols] = m.data[src]
  return ids, values


def keep_largest(m: sp.spmatrix, width: int,
                 weights: np.ndarray | None = None) -> sp.csr_matrix:
  """Each row's ``width`` entries of largest ``|value * weights[column]|``.

  Ties go to the lower column; kept entries stay in column order. Rows with
  at most ``width`` entries are unchanged.

  Args:
    m: ``[N, F]`` sparse matrix.
    width: entries kept per row, ``>= 1``.
    weights: optional float ``[F]`` column weights of the ranking (e.g. the
      idf, to keep the largest tf-idf); None ranks by ``|value|``.

  Returns:
    CSR ``[N, F]`` with sorted indices and ``m``'s value dtype.
  """
  if int(width) != width or width < 1:
    raise ValueError(f"width must be an integer >= 1, got {width!r}")
  m = sorted_csr(m)
  counts = np.diff(m.indptr)
  if counts.size == 0 or counts.max() <= width:
    return m
  rows = np.repeat(np.arange(m.shape[0]), counts)
  key = np.abs(m.data.astype(np.float64))
  if weights is not None:
    key = key * np.asarray(weights, np.float64)[m.indices]
  # Within each row: by key descending, then column ascending.
  order = np.lexsort((m.indices, -key, rows))
  rank = np.arange(order.size) - np.repeat(m.indptr[:-1], counts)
  keep = np.zeros(order.size, bool)
  keep[order[rank < width]] = True
  kept = sp.csr_matrix((m.data[keep], m.indices[keep],
                        np.concatenate([[0], np.cumsum(
                            np.minimum(counts, width))])), shape=m.shape)
  return kept


def smooth_idf(m: sp.spmatrix | np.ndarray) -> np.ndarray:
  """Smooth inverse document frequencies of a ``[N, V]`` feature matrix.

  ``idf_v = log((1 + N) / (1 + df_v)) + 1`` with ``df_v`` the number of
  rows where feature ``v`` is non-zero: sklearn's
  ``TfidfTransformer(smooth_idf=True)``, as if one extra document held
  every feature once (so no division by zero, and features absent from the
  training set get the largest weight, ``log(1 + N) + 1``). Explicit zeros
  in the CSR do not count.

  Args:
    m: scipy sparse (any format) or dense ``[N, V]`` features.

  Returns:
    float32 ``[V]``.
  """
  m = sp.csr_matrix(m, copy=True)
  m.sum_duplicates()
  m.eliminate_zeros()
  n = m.shape[0]
  df_v = np.bincount(m.indices, minlength=m.shape[1])
  idf_v = np.log((1.0 + n) / (1.0 + df_v)) + 1.0
  return idf_v.astype(np.float32)


# ----------------------------------------------------------------------------
# Errors and shared helpers.


class FormatError(ValueError):
  """A data file that cannot be read exactly.

  Attributes:
    path: the offending file.
    line: 1-based line number, or None when the error concerns the whole file.
  """

  def __init__(self, path: PathLike, line: int | None, message: str):
    self.path = os.fspath(path)
    self.line = line
    where = f"{self.path}, line {line}" if line is not None else self.path
    super().__init__(f"{where}: {message}")


# A decimal number as written by C, Python, Weka or numpy; no nan/inf/hex.
# Possessive quantifiers: no backtracking on long rows. All patterns are
# compiled with re.ASCII so that only 0-9 count as digits.
_NUM = r"[-+]?+(?:\d++(?:\.\d*+)?+|\.\d++)(?:[eE][-+]?+\d++)?+"
_NUM_RE = re.compile(_NUM, re.ASCII)
# Indices: at most 18 digits, so int64 parsing can never overflow.
_IDX = r"\d{1,18}+"


def read_text(path: PathLike, encoding: str = "utf-8") -> str:
  """A text file decoded, without a leading byte order mark.

  Raises:
    FormatError: bytes that are not valid ``encoding``, naming their line.
  """
  raw = pathlib.Path(path).read_bytes()
  try:
    text = raw.decode(encoding)
  except UnicodeDecodeError as e:
    raise FormatError(path, _line_of_byte(raw, e.start),
                      f"not valid {encoding}: {e.reason}") from None
  return text[1:] if text.startswith("\ufeff") else text


def _read_lines(path: PathLike, encoding: str) -> tuple[list[str], bool]:
  """Lines of a text file without terminators, and whether it ended in one."""
  text = read_text(path, encoding)
  if "\r" in text:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
  if not text.strip():
    raise FormatError(path, 1, "empty file")
  lines = text.split("\n")
  ends_with_newline = lines[-1] == ""
  if ends_with_newline:
    lines.pop()
  return lines, ends_with_newline


def _line_of_byte(raw: bytes, pos: int) -> int:
  """1-based line of byte ``pos``; lines end at \\n, \\r\\n or \\r."""
  head = raw[:pos]
  return head.count(b"\n") + head.count(b"\r") - head.count(b"\r\n") + 1


def _parse_xc_header(path: PathLike, line: str) -> tuple[int, int, int]:
  """``N F L`` of an XC header line; FormatError (line 1) when malformed."""
  header = line.split()
  if len(header) != 3 or not all(h.isascii() and h.isdigit() for h in header):
    raise FormatError(
        path, 1, "malformed header: expected 'N F L' (three non-negative "
        f"integers), got {line!r}")
  sizes = tuple(map(int, header))
  if max(sizes) >= 2**63:
    raise FormatError(path, 1, f"header size {max(sizes)} does not fit in "
                      "int64")
  return sizes


def _truncation_hint(is_last: bool, ends_with_newline: bool) -> str:
  if is_last and not ends_with_newline:
    return " (truncated last line?)"
  return ""


def _first(mask: np.ndarray) -> int | None:
  hits = np.flatnonzero(mask)
  return int(hits[0]) if hits.size else None


def _sort_rows(
    rows: np.ndarray, idx: np.ndarray, *others: np.ndarray
) -> tuple[np.ndarray, ...]:
  """Sorts entries by (row, idx); ``rows`` must already be non-decreasing."""
  same_row = rows[1:] == rows[:-1]
  if np.any(same_row & (idx[1:] < idx[:-1])):
    order = np.lexsort((idx, rows))
    return (rows[order], idx[order]) + tuple(o[order] for o in others)
  return (rows, idx) + others


def _first_duplicate(
    rows: np.ndarray, idx: np.ndarray) -> tuple[int, int] | None:
  """(row, index) of the first repeated pair in sorted entries, or None."""
  dup = (rows[1:] == rows[:-1]) & (idx[1:] == idx[:-1])
  k = _first(dup)
  return None if k is None else (int(rows[k]), int(idx[k]))


def _build_csr(
    rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int]
) -> sp.csr_matrix:
  """CSR from entries sorted by (row, col) with no duplicates."""
  counts = np.bincount(rows, minlength=shape[0]) if rows.size else np.zeros(
      shape[0], np.int64)
  indptr = np.zeros(shape[0] + 1, np.int64)
  np.cumsum(counts, out=indptr[1:])
  index_dtype = np.int32 if max(shape[1], rows.size) < 2**31 else np.int64
  m = sp.csr_matrix(
      (vals.astype(np.float32), cols.astype(index_dtype),
       indptr.astype(index_dtype)), shape=shape)
  m.has_sorted_indices = True
  return m


def _index_problem(token: str, what: str) -> str | None:
  """Why ``token`` is not a 0-based index of at most 18 digits, or None."""
  if token.startswith("-") and token[1:].isdigit():
    return f"negative {what} {token}"
  if not (token.isascii() and token.isdigit()):
    return f"{what} {token!r} is not a non-negative integer"
  if len(token) > 18:
    return f"{what} {token} out of range"
  return None


class _Errors:
  """Collects candidate errors and raises the one on the earliest line."""

  def __init__(self, path: PathLike):
    self.path = path
    self.found: list[tuple[int, str]] = []

  def add(self, line: int | None, message: str) -> None:
    if line is not None:
      self.found.append((line, message))

  def raise_first(self) -> None:
    if self.found:
      line, message = min(self.found, key=lambda x: x[0])
      raise FormatError(self.path, line, message)


def _parse_floats(tokens: list[str], row_of: np.ndarray,
                  line_of_row: np.ndarray, errors: _Errors) -> np.ndarray:
  """Validated decimal strings -> float32, flagging non-finite float32s."""
  # Parse each distinct string once: real files have few distinct values.
  as_bytes = np.array(tokens, dtype=np.bytes_) if tokens else np.zeros(0, "S1")
  uniq, inverse = np.unique(as_bytes, return_inverse=True)
  vals64 = uniq.astype(np.float64)[inverse.reshape(-1)]
  with np.errstate(over="ignore"):
    vals = vals64.astype(np.float32)
  k = _first(~np.isfinite(vals))
  if k is not None:
    errors.add(int(line_of_row[row_of[k]]),
               f"value {tokens[k]!r} does not fit in float32")
  return vals


# ----------------------------------------------------------------------------
# Extreme Classification Repository text format.

_XC_ROW_RE = re.compile(
    rf"(?:({_IDX}(?:,{_IDX})*+))?+((?:[ \t]++{_IDX}:{_NUM})*+)[ \t]*+",
    re.ASCII)


def _diagnose_xc_row(line: str) -> str:
  """A specific message for a row that failed the row pattern."""
  tokens = line.split()
  if line[:1] not in (" ", "\t") and tokens:
    labels, tokens = tokens[0], tokens[1:]
    if ":" in labels:
      return (f"row starts with feature-like token {labels!r}; a row without "
              "labels must start with a space")
    for piece in labels.split(","):
      if not piece:
        return f"empty entry in label list {labels!r}"
      problem = _index_problem(piece, "label index")
      if problem:
        return problem
  for tok in tokens:
    if ":" not in tok:
      return f"malformed feature {tok!r}: expected index:value"
    index, _, value = tok.partition(":")
    if not index:
      return f"missing feature index in {tok!r}"
    problem = _index_problem(index, "feature index")
    if problem:
      return problem
    if not value:
      return f"missing feature value in {tok!r}"
    if not _NUM_RE.fullmatch(value):
      return f"non-numeric feature value {value!r} in {tok!r}"
  return "malformed row: expected 'l1,l2,... f:v f:v ...'"


def read_xc(path: PathLike, *, encoding: str = "utf-8") -> XMCData:
  """Reads the Extreme Classification Repository text format.

  The file is a header line ``N F L`` (three non-negative integers: examples,
  features, labels), then exactly N rows ``l1,l2,... f:v f:v ...``: a
  comma-separated label list (no spaces), then whitespace-separated
  ``index:value`` features. A row without labels starts with whitespace; a row
  may have no features; a blank line is a row with neither. Indices are
  0-based. See the module docstring for the value, ordering and duplicate
  rules.

  Args:
    path: the text file.
    encoding: its text encoding.

  Returns:
    The dataset, with ``label_names=None``.

  Raises:
    FormatError: naming the file and 1-based line of the first problem found
      (malformed header or row, index out of range, duplicates, non-numeric or
      non-finite values, more or fewer rows than the header declares).
  """
  lines, ends_with_newline = _read_lines(path, encoding)
  n, num_features, num_labels = _parse_xc_header(path, lines[0])
  body = lines[1:]
  data = parse_xc_rows(
      path, body[:n], num_features, num_labels, first_line=2,
      last_unterminated=len(body) <= n and not ends_with_newline)
  if len(body) < n:
    raise FormatError(
        path, len(body) + 2, f"unexpected end of file after {len(body)} rows; "
        f"the header declares {n} (truncated file?)")
  if len(body) > n:
    raise FormatError(
        path, n + 2, f"more rows than the {n} the header declares")
  return data


def parse_xc_rows(path: PathLike, lines: Sequence[str], num_features: int,
                  num_labels: int, *, first_line: int = 2,
                  last_unterminated: bool = False) -> XMCData:
  """Parses rows of the XC text format (no header) held in memory.

  The one row parser of the format: :func:`read_xc` runs it on a file's
  rows, and :func:`mhe_jax.streaming.iter_xc_batches` on each batch of lines
  it reads, so both apply the same rules and raise the same errors.

  Args:
    path: the file the lines come from (named in errors).
    lines: the rows, without line terminators.
    num_features: F, the header's feature count.
    num_labels: L, the header's label count.
    first_line: the 1-based file line of ``lines[0]`` (2 after the header).
    last_unterminated: the last of ``lines`` ends the file without a line
      terminator (a malformed last row is then reported as possibly
      truncated).

  Returns:
    ``len(lines)`` examples, with ``label_names=None``.

  Raises:
    FormatError: naming ``path`` and the line of the first problem found
      (malformed row, index out of range, duplicates, non-numeric or
      non-finite values).
  """
  errors = _Errors(path)

  # Row syntax, line by line (regex in C; no per-token Python).
  label_strs, feature_strs = [], []
  bad_row = None
  for i, line in enumerate(lines):
    m = _XC_ROW_RE.fullmatch(line)
    if m is None:
      bad_row = i
      break
    label_strs.append(m.group(1) or "")
    feature_strs.append(m.group(2))
  num_rows = len(label_strs)
  line_of_row = np.arange(num_rows) + first_line

  # Labels.
  label_counts = np.array(
      [s.count(",") + 1 if s else 0 for s in label_strs], np.int64)
  label_tokens = ",".join(s for s in label_strs if s).split(",")
  if label_tokens == [""]:
    label_tokens = []
  label_idx = np.array(label_tokens, np.int64)
  label_rows = np.repeat(np.arange(num_rows), label_counts)
  k = _first(label_idx >= num_labels)
  if k is not None:
    errors.add(int(line_of_row[label_rows[k]]),
               f"label index {label_idx[k]} >= number of labels {num_labels}")

  # Features.
  feature_counts = np.array([s.count(":") for s in feature_strs], np.int64)
  feature_tokens = " ".join(feature_strs).replace(":", " ").split()
  feature_idx = np.array(feature_tokens[0::2], np.int64)
  feature_rows = np.repeat(np.arange(num_rows), feature_counts)
  feature_vals = _parse_floats(feature_tokens[1::2], feature_rows,
                               line_of_row, errors)
  k = _first(feature_idx >= num_features)
  if k is not None:
    errors.add(
        int(line_of_row[feature_rows[k]]),
        f"feature index {feature_idx[k]} >= number of features {num_features}")

  label_rows, label_idx = _sort_rows(label_rows, label_idx)
  dup = _first_duplicate(label_rows, label_idx)
  if dup is not None:
    errors.add(int(line_of_row[dup[0]]), f"label {dup[1]} listed twice")
  feature_rows, feature_idx, feature_vals = _sort_rows(
      feature_rows, feature_idx, feature_vals)
  dup = _first_duplicate(feature_rows, feature_idx)
  if dup is not None:
    errors.add(int(line_of_row[dup[0]]),
               f"feature index {dup[1]} given twice in one row")

  # The earliest of: a semantic error above, a malformed row.
  errors.raise_first()
  if bad_row is not None:
    is_last = bad_row == len(lines) - 1
    raise FormatError(
        path, bad_row + first_line, _diagnose_xc_row(lines[bad_row])
        + _truncation_hint(is_last, not last_unterminated))

  n = len(lines)
  X = _build_csr(feature_rows, feature_idx, feature_vals, (n, num_features))
  Y = _build_csr(label_rows, label_idx, np.ones(label_idx.size, np.float32),
                 (n, num_labels))
  return XMCData(X=X, Y=Y, label_names=None)


def _format_values(values: np.ndarray) -> list[str]:
  """Shortest strings that read back (float64 -> float32) to the same value."""
  values = np.asarray(values, np.float32)
  uniq, inverse = np.unique(values, return_inverse=True)
  strs = []
  for v in uniq:
    f = float(v)
    if f == int(f) and abs(f) < 1e16:
      s = str(int(f))
      if f == 0 and np.signbit(v):
        s = "-0"
    else:
      s = str(v)  # numpy's shortest float32 repr, e.g. '0.1', '1e-05'.
      if np.float32(float(s)) != v:  # Double rounding: fall back to exact.
        s = repr(f)
    strs.append(s)
  # np.unique merges -0.0 and 0.0; restore the sign where it differs.
  out = [strs[i] for i in inverse.reshape(-1).tolist()]
  zeros = np.flatnonzero(values == 0)
  for i in zeros.tolist():
    out[i] = "-0" if np.signbit(values[i]) else "0"
  return out


def write_xc(data: XMCData, path: PathLike) -> None:
  """Writes ``data`` in the Extreme Classification Repository text format.

  Rows are ``l1,l2,... f:v f:v ...`` with sorted indices; a row without labels
  starts with a space. Values are written as the shortest decimal that reads
  back to the same float32 (integral values as integers, ``5:1``), so
  ``read_xc(path)`` returns exactly ``data`` (explicit zeros included), except
  that ``label_names`` are not stored (they read back as None).

  Args:
    data: the dataset; ``Y`` must hold only the value 1.
    path: output file (overwritten).

  Raises:
    ValueError: if ``Y`` holds values other than 1 or ``X`` non-finite values.
  """
  X = sp.csr_matrix(data.X).sorted_indices()
  Y = sp.csr_matrix(data.Y).sorted_indices()
  if Y.nnz and not np.all(Y.data == 1):
    raise ValueError("the XC format stores binary labels; Y holds values "
                     f"other than 1 (e.g. {Y.data[Y.data != 1][0]})")
  if not np.all(np.isfinite(X.data)):
    raise ValueError("X holds non-finite values")
  values = _format_values(X.data)
  tokens = [f"{i}:{v}" for i, v in zip(X.indices.tolist(), values)]
  label_tokens = [str(i) for i in Y.indices.tolist()]
  xp, yp = X.indptr.tolist(), Y.indptr.tolist()
  out = [f"{data.num_examples} {data.num_features} {data.num_labels}\n"]
  for r in range(data.num_examples):
    out.append(",".join(label_tokens[yp[r]:yp[r + 1]]) + " "
               + " ".join(tokens[xp[r]:xp[r + 1]]) + "\n")
  pathlib.Path(path).write_text("".join(out), encoding="utf-8")


# ----------------------------------------------------------------------------
# Mulan ARFF.

_NUMERIC_TYPES = ("numeric", "real", "integer")
_SPARSE_ROW_RE = re.compile(
    rf"\{{\s*+(?:{_IDX}\s++{_NUM}(?:\s*+,\s*+{_IDX}\s++{_NUM})*+)?+\s*+\}}",
    re.ASCII)
_DENSE_ROW_RE = re.compile(rf"\s*+{_NUM}(?:\s*+,\s*+{_NUM})*+\s*+", re.ASCII)


def _unquote(text: str, pos: int) -> tuple[str, int] | None:
  """Parses a quoted ARFF string at ``text[pos]``; returns (value, end)."""
  quote = text[pos]
  out = []
  i = pos + 1
  while i < len(text):
    c = text[i]
    if c == "\\" and i + 1 < len(text):
      nxt = text[i + 1]
      out.append({"n": "\n", "t": "\t", "r": "\r"}.get(nxt, nxt))
      i += 2
    elif c == quote:
      return "".join(out), i + 1
    else:
      out.append(c)
      i += 1
  return None


def _parse_name(text: str) -> tuple[str, str] | None:
  """Splits ``name rest`` where name is quoted or a run without spaces/braces.

  Unquoted names are taken literally, backslashes included: Mulan's own files
  (e.g. Delicious ``TAG_m\\'usica``) write them so, and the XML repeats them
  verbatim.
  """
  text = text.lstrip()
  if not text:
    return None
  if text[0] in "'\"":
    parsed = _unquote(text, 0)
    if parsed is None:
      return None
    name, end = parsed
    return name, text[end:]
  m = re.match(r"[^\s{]+", text)
  if m is None:
    return None
  return m.group(), text[m.end():]


def _split_nominal(body: str) -> list[str] | None:
  """Values of a nominal type's ``{a, 'b c', ...}`` body (without braces)."""
  values, i = [], 0
  while True:
    while i < len(body) and body[i].isspace():
      i += 1
    if i < len(body) and body[i] in "'\"":
      parsed = _unquote(body, i)
      if parsed is None:
        return None
      value, i = parsed
    else:
      j = body.find(",", i)
      j = len(body) if j < 0 else j
      value, i = body[i:j].strip(), j
    values.append(value)
    while i < len(body) and body[i].isspace():
      i += 1
    if i == len(body):
      return values
    if body[i] != ",":
      return None
    i += 1


def _parse_arff_header(
    path: PathLike, lines: list[str]
) -> tuple[list[str], list[int], int]:
  """Attribute names, their line numbers, and the index of the @data line."""
  names: list[str] = []
  name_lines: list[int] = []
  seen: dict[str, int] = {}
  for i, line in enumerate(lines):
    s = line.strip()
    if not s or s.startswith("%"):
      continue
    keyword = s.split(None, 1)[0].lower()
    rest = s[len(keyword):]
    if keyword == "@relation":
      if _parse_name(rest) is None:
        raise FormatError(path, i + 1, "malformed @relation line")
    elif keyword == "@attribute":
      parsed = _parse_name(rest)
      if parsed is None:
        raise FormatError(path, i + 1, "malformed @attribute line: bad name")
      name, type_text = parsed
      type_text = type_text.split("%", 1)[0].strip()
      if type_text.startswith("{"):
        if not type_text.endswith("}"):
          raise FormatError(path, i + 1,
                            f"unterminated nominal type {type_text!r}")
        values = _split_nominal(type_text[1:-1])
        if values is None:
          raise FormatError(path, i + 1,
                            f"malformed nominal type {type_text!r}")
        bad = [v for v in values if not _NUM_RE.fullmatch(v)]
        if bad:
          raise FormatError(
              path, i + 1, f"attribute {name!r}: nominal value {bad[0]!r} is "
              "not numeric (only numeric attributes and numeric-valued "
              "nominals such as {0,1} are supported)")
      elif type_text.lower() not in _NUMERIC_TYPES:
        raise FormatError(
            path, i + 1, f"attribute {name!r}: unsupported type "
            f"{type_text!r} (expected numeric, real, integer or {{0,1}})")
      if name in seen:
        raise FormatError(path, i + 1, f"duplicate attribute name {name!r} "
                          f"(first declared on line {seen[name]})")
      seen[name] = i + 1
      names.append(name)
      name_lines.append(i + 1)
    elif keyword == "@data":
      if rest.strip():
        raise FormatError(path, i + 1, "unexpected text after @data")
      if not names:
        raise FormatError(path, i + 1, "@data before any @attribute")
      return names, name_lines, i
    else:
      raise FormatError(
          path, i + 1, f"expected @relation, @attribute or @data, got {s!r}")
  raise FormatError(path, len(lines) + 1, "no @data section (truncated file?)")


def _read_label_xml(path: PathLike) -> list[tuple[str, int]]:
  """(name, line) of each ``<label name=...>`` element of a Mulan XML file."""
  raw = pathlib.Path(path).read_bytes()
  parser = xml.parsers.expat.ParserCreate(namespace_separator=" ")
  found: list[tuple[str | None, int]] = []

  def start(tag, attrs):
    if tag.rsplit(" ", 1)[-1] == "label":
      found.append((attrs.get("name"), parser.CurrentLineNumber))

  parser.StartElementHandler = start
  try:
    parser.Parse(raw, True)
  except xml.parsers.expat.ExpatError as e:
    reason = xml.parsers.expat.errors.messages[e.code]
    raise FormatError(path, e.lineno, f"malformed XML: {reason}") from None
  seen: dict[str, int] = {}
  for name, line in found:
    if name is None:
      raise FormatError(path, line, "<label> element without a name")
    if name in seen:
      raise FormatError(path, line, f"label {name!r} listed twice (first on "
                        f"line {seen[name]})")
    seen[name] = line
  if not seen:
    raise FormatError(path, None, "no <label name=...> elements")
  return list(seen.items())


def read_names(path: PathLike, count: int | None = None, *,
               encoding: str = "utf-8") -> list[str]:
  """One name per line (e.g. citeulike-t's ``labels.txt``: line i names label i).

  Args:
    path: the file.
    count: the number of names expected (the labels of the data it goes
      with); None accepts any number.
    encoding: text encoding.

  Returns:
    The names, in line order.

  Raises:
    FormatError: an empty or blank name, a name given twice (both lines
      named), or a line count other than ``count``.
  """
  lines, _ = _read_lines(path, encoding)
  seen: dict[str, int] = {}
  for i, name in enumerate(lines, start=1):
    if not name.strip():
      raise FormatError(path, i, "empty name")
    if name in seen:
      raise FormatError(path, i, f"name {name!r} given twice (first on line "
                        f"{seen[name]})")
    seen[name] = i
  if count is not None and len(lines) != count:
    raise FormatError(path, None, f"{len(lines)} names for {count} labels")
  return lines


def _diagnose_arff_row(line: str, num_attributes: int) -> str:
  s = line.strip()
  if s.startswith("{"):
    if not s.endswith("}"):
      return "sparse row without closing '}'"
    body = s[1:-1].strip()
    for pair in body.split(","):
      parts = pair.split()
      if len(parts) != 2:
        return (f"malformed sparse entry {pair.strip()!r}: "
                "expected 'index value'")
      index, value = parts
      problem = _index_problem(index, "attribute index")
      if problem:
        return problem
      if not _NUM_RE.fullmatch(value):
        return f"non-numeric value {value!r}"
    return "malformed sparse row"
  values = [v.strip() for v in s.split(",")]
  for v in values:
    if not _NUM_RE.fullmatch(v):
      return f"non-numeric value {v!r}" + (
          " (missing values '?' are not supported)" if v == "?" else "")
  return f"dense row has {len(values)} values, expected {num_attributes}"


def read_arff(
    path: PathLike,
    *,
    labels_xml: PathLike | None = None,
    num_labels: int | None = None,
    encoding: str = "utf-8",
) -> XMCData:
  """Reads a Mulan multi-label ARFF file.

  The dialect read is Weka ARFF as Mulan writes it: ``%`` comment lines,
  case-insensitive ``@relation``/``@attribute``/``@data`` keywords, a
  ``@relation`` name that may be quoted and carry options (MEKA's
  ``'name: -C 6'``; ignored), attribute names unquoted (taken literally,
  backslashes included) or quoted with ``'`` or ``"`` (backslash escapes
  resolved), types ``numeric``/``real``/``integer`` or numeric-valued nominals
  like ``{0,1}``. Data rows are sparse ``{index value, ...}`` (0-based
  attribute indices) or dense ``v,v,...`` with one value per attribute; the two
  may be mixed. Blank and ``%`` lines in the data section are skipped. Not
  supported (error): string/date/relational attributes, non-numeric nominal
  values, missing values ``?``, instance weights.

  Label attributes are those named in ``labels_xml`` (Mulan's
  ``<label name="..."/>`` elements, nested ones included) or the last
  ``num_labels`` attributes; exactly one of the two must be given. Labels are
  numbered in attribute order; features are the other attributes, in order.
  A label value must be 0 or 1 (1 = present). Feature rules (sorting,
  duplicates, explicit zeros, negative values) are in the module docstring.

  Args:
    path: the ARFF file.
    labels_xml: Mulan XML file naming the label attributes.
    num_labels: number of label attributes at the end of the attribute list.
    encoding: text encoding of the ARFF file.

  Returns:
    The dataset; ``label_names`` are the label attributes' names.

  Raises:
    FormatError: naming the file (ARFF or XML) and 1-based line of the first
      problem found.
    ValueError: if not exactly one of ``labels_xml``/``num_labels`` is given.
  """
  if (labels_xml is None) == (num_labels is None):
    raise ValueError("give exactly one of labels_xml and num_labels")
  lines, ends_with_newline = _read_lines(path, encoding)
  names, name_lines, data_start = _parse_arff_header(path, lines)
  num_attributes = len(names)

  is_label = np.zeros(num_attributes, bool)
  if labels_xml is not None:
    index_of = {name: j for j, name in enumerate(names)}
    for name, line in _read_label_xml(labels_xml):
      if name not in index_of:
        raise FormatError(labels_xml, line,
                          f"label {name!r} is not an attribute of {path}")
      is_label[index_of[name]] = True
  else:
    if not 1 <= num_labels <= num_attributes:
      raise ValueError(f"num_labels={num_labels} but {path} has "
                       f"{num_attributes} attributes")
    is_label[num_attributes - num_labels:] = True
  label_names = [n for n, lab in zip(names, is_label) if lab]
  num_features = num_attributes - len(label_names)

  # Data lines: validate each (regex in C), stop at the first malformed one.
  row_lines, row_texts, sparse_flags = [], [], []
  bad_line = None
  for i in range(data_start + 1, len(lines)):
    s = lines[i].strip()
    if not s or s.startswith("%"):
      continue
    if s.startswith("{"):
      ok = _SPARSE_ROW_RE.fullmatch(s) is not None
    else:
      ok = (_DENSE_ROW_RE.fullmatch(s) is not None
            and s.count(",") == num_attributes - 1)
    if not ok:
      bad_line = i
      break
    row_lines.append(i + 1)
    row_texts.append(s)
    sparse_flags.append(s.startswith("{"))
  num_rows = len(row_texts)
  line_of_row = np.array(row_lines, np.int64)
  sparse = np.array(sparse_flags, bool)
  errors = _Errors(path)

  # Sparse rows -> (row, attribute, value) entries.
  sparse_rows = np.flatnonzero(sparse)
  bodies = [row_texts[r][1:-1] for r in sparse_rows.tolist()]
  counts = np.array([b.count(",") + 1 if b.strip() else 0 for b in bodies],
                    np.int64)
  tokens = ",".join(bodies).replace(",", " ").split()
  s_rows = np.repeat(sparse_rows, counts)
  s_cols = np.array(tokens[0::2], np.int64)
  s_vals = _parse_floats(tokens[1::2], s_rows, line_of_row, errors)

  # Dense rows, in chunks of about 4M values.
  d_parts = []
  dense_rows = np.flatnonzero(~sparse)
  chunk = max(1, 2**22 // num_attributes)
  for start in range(0, dense_rows.size, chunk):
    rows = dense_rows[start:start + chunk]
    tokens = ",".join(row_texts[r] for r in rows.tolist()).split(",")
    tokens = [t.strip() for t in tokens]
    flat_rows = np.repeat(rows, num_attributes)
    vals = _parse_floats(tokens, flat_rows, line_of_row, errors)
    nz = np.flatnonzero(vals)
    d_parts.append((flat_rows[nz], nz % num_attributes, vals[nz]))
  if d_parts:
    d_rows, d_cols, d_vals = (np.concatenate(p) for p in zip(*d_parts))
    rows = np.concatenate([s_rows, d_rows])
    order = np.argsort(rows, kind="stable")
    rows = rows[order]
    cols = np.concatenate([s_cols, d_cols])[order]
    vals = np.concatenate([s_vals, d_vals])[order]
  else:
    rows, cols, vals = s_rows, s_cols, s_vals

  k = _first(cols >= num_attributes)
  if k is not None:
    errors.add(int(line_of_row[rows[k]]), f"attribute index {cols[k]} >= "
               f"number of attributes {num_attributes}")
    keep = cols < num_attributes
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
  rows, cols, vals = _sort_rows(rows, cols, vals)
  dup = _first_duplicate(rows, cols)
  if dup is not None:
    errors.add(int(line_of_row[dup[0]]),
               f"attribute index {dup[1]} given twice in one row")

  lab = is_label[cols]
  bad_label = lab & (vals != 0) & (vals != 1)
  k = _first(bad_label)
  if k is not None:
    errors.add(int(line_of_row[rows[k]]),
               f"label attribute {names[cols[k]]!r} has value {vals[k]:g}; "
               "expected 0 or 1")
  errors.raise_first()
  if bad_line is not None:
    is_last = bad_line == len(lines) - 1
    raise FormatError(path, bad_line + 1,
                      _diagnose_arff_row(lines[bad_line], num_attributes)
                      + _truncation_hint(is_last, ends_with_newline))

  new_index = np.where(is_label, np.cumsum(is_label) - 1,
                       np.cumsum(~is_label) - 1)
  f = ~lab
  X = _build_csr(rows[f], new_index[cols[f]], vals[f],
                 (num_rows, num_features))
  y = lab & (vals == 1)
  Y = _build_csr(rows[y], new_index[cols[y]], np.ones(int(y.sum()), np.float32),
                 (num_rows, len(label_names)))
  return XMCData(X=X, Y=Y, label_names=label_names)

