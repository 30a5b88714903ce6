"""A power-law synthetic generator for extreme label classification.

Makes XMC-like data of any size, up to 10^8 classes and beyond, in memory
O(examples): nothing of size C (classes) or C x F (classes x features) is ever
built, so a thousand examples over 10^8 classes take a few MB.

The model:

* Label frequencies follow Zipf's law: label rank ``k`` (0-based) has
  probability proportional to ``(k + 1) ** -zipf_exponent``. Label id = rank,
  unless ``permute_labels`` maps ranks through a seeded affine bijection
  ``(p * k + q) mod C`` (``gcd(p, C) = 1``), which scatters frequent labels
  over the id space as in real data, still without a table.
* Each label owns ``signature_size`` "signature" feature ids, computed by
  hashing ``(task_seed, label, slot)`` with splitmix64 modulo F
  (:func:`signature_features`); no label x feature table exists.
* An example with labels ``S`` gets, per label in ``S``, ``tokens_per_label``
  tokens drawn uniformly from that label's signature, plus
  ``Poisson(noise_tokens)`` background tokens whose feature ids follow a Zipf
  law over F with exponent ``noise_exponent`` (feature 0 the commonest, like
  stop words). Feature values are token counts (``values="counts"``), 1
  (``"binary"``) or counts scaled to unit L2 norm per row (``"l2"``).
* Single-label examples have one label; multi-label ones have
  ``min(1 + Poisson(mean_labels - 1), max_labels)`` distinct labels.
  Duplicates are redrawn, so in multi-label mode the head labels are slightly
  less frequent than pure Zipf (a row cannot hold label 0 twice).

Zipf sampling over C values without an O(C) table (:func:`zipf_ranks`): the
first ``min(C, 1024)`` ranks are sampled exactly (inverse CDF over their
explicit weights); the tail, ranks ``K..C-1``, by inverse-CDF sampling of the
continuous density ``x ** -a`` on ``[K + 0.5, C + 0.5]`` rounded to the
nearest integer ``x = k + 1``. Each tail rank thus gets
``integral(k + 0.5, k + 1.5) x**-a dx`` instead of ``(k + 1) ** -a``: a
relative error below ``a (a + 1) / (24 K^2)``, under 2e-7 for ``a <= 2``.

Two seeds: ``task_seed`` fixes the task (signatures, label permutation) and
``seed`` the sampled examples. Make a train and a test set with the same
``task_seed`` and different ``seed`` s.

Example::

  from mhe_jax.data import synthetic

  train, y_train = synthetic.make_single_label(
      10_000, num_classes=10**8, num_features=2**16, seed=0)
  test, y_test = synthetic.make_single_label(
      1_000, num_classes=10**8, num_features=2**16, seed=1)
  train.X.shape, y_train.dtype      # (10000, 65536), int32
  tags = synthetic.make_multi_label(1_000, 100_000, 4_096, mean_labels=5)
  tags.padded_labels()              # int32 [1000, max labels], -1 padded
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from mhe_jax.data.formats import XMCData

_HEAD = 1024  # Ranks sampled exactly by zipf_ranks.
_MAX_CLASSES = 2**31 - 1  # int32 label ids.
_VALUES = ("counts", "binary", "l2")


def zipf_ranks(
    rng: np.random.Generator,
    size: int,
    num_values: int,
    exponent: float,
) -> np.ndarray:
  """Samples ranks in ``[0, num_values)``, P(k) ~ ``(k + 1) ** -exponent``.

  Memory is O(size + 1024) whatever ``num_values``; see the module docstring
  for the (tiny) approximation in the tail.

  Args:
    rng: numpy random generator.
    size: number of samples.
    num_values: number of ranks, >= 1.
    exponent: Zipf exponent, >= 0 (0 is uniform).

  Returns:
    int64 ``[size]`` ranks.
  """
  if num_values < 1:
    raise ValueError(f"num_values must be >= 1, got {num_values}")
  if exponent < 0:
    raise ValueError(f"exponent must be >= 0, got {exponent}")
  head = min(num_values, _HEAD)
  head_cdf = np.cumsum(np.arange(1, head + 1, dtype=np.float64) ** -exponent)
  head_mass = float(head_cdf[-1])
  lo, hi = head + 0.5, num_values + 0.5
  b = 1.0 - exponent
  log_ratio = math.log(hi / lo)
  # integral_lo^hi x**-a dx = lo**b * expm1(b log(hi/lo)) / b, -> log ratio.
  if abs(b * log_ratio) < 1e-12:
    growth = log_ratio
  else:
    growth = math.expm1(b * log_ratio) / b
  tail_mass = lo**b * growth if head < num_values else 0.0

  u = rng.random(size)
  v = u * (head_mass + tail_mass)
  ranks = np.searchsorted(head_cdf, v, side="right").astype(np.int64)
  in_tail = v >= head_mass
  if np.any(in_tail):
    w = (v[in_tail] - head_mass) / tail_mass  # Uniform in [0, 1).
    if abs(b * log_ratio) < 1e-12:
      x = lo * np.exp(w * log_ratio)
    else:
      x = lo * np.exp(np.log1p(w * math.expm1(b * log_ratio)) / b)
    ranks[in_tail] = np.clip(np.floor(x + 0.5).astype(np.int64) - 1,
                             head, num_values - 1)
  return np.minimum(ranks, num_values - 1)


def _mix64(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser: a bijective avalanche hash of uint64."""
  x = np.asarray(x, np.uint64)
  with np.errstate(over="ignore"):
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _seed_salt(task_seed: int, stream: int) -> np.uint64:
  return _mix64(np.uint64((task_seed * 1_000_003 + stream) % 2**64))


def signature_features(
    labels: np.ndarray,
    num_features: int,
    signature_size: int,
    task_seed: int = 0,
) -> np.ndarray:
  """The signature feature ids of each label, by hashing; no table.

  Args:
    labels: int ``[...]`` label ids.
    num_features: F; ids are in ``[0, F)``.
    signature_size: S, signature features per label.
    task_seed: the task's seed.

  Returns:
    int64 ``[..., S]`` feature ids (a label's ids may repeat by chance).
  """
  labels = np.asarray(labels, np.int64)
  slots = np.arange(signature_size, dtype=np.uint64)
  with np.errstate(over="ignore"):
    key = (labels[..., None].astype(np.uint64) * np.uint64(signature_size)
           + slots) ^ _seed_salt(task_seed, 1)
  return (_mix64(key) % np.uint64(num_features)).astype(np.int64)


def _affine_permutation(
    ranks: np.ndarray, num_classes: int, task_seed: int) -> np.ndarray:
  """A seeded bijection of [0, C): rank -> (p * rank + q) mod C."""
  rng = np.random.default_rng([task_seed, 2])
  while True:
    p = int(rng.integers(1, max(2, num_classes)))
    if math.gcd(p, num_classes) == 1:
      break
  q = int(rng.integers(0, num_classes))
  # p, rank < 2**31, so p * rank + q < 2**63: no int64 overflow.
  return (p * ranks + q) % num_classes


def _distinct_labels_per_row(
    rng: np.random.Generator, rows: np.ndarray, num_classes: int,
    exponent: float, max_rounds: int = 1000) -> np.ndarray:
  """Zipf ranks for each entry, redrawn until no row repeats a rank."""
  ranks = zipf_ranks(rng, rows.size, num_classes, exponent)
  active = np.arange(rows.size)
  for _ in range(max_rounds):
    r, k = rows[active], ranks[active]
    order = np.lexsort((k, r))
    r, k = r[order], k[order]
    dup = np.flatnonzero((r[1:] == r[:-1]) & (k[1:] == k[:-1])) + 1
    if dup.size == 0:
      return ranks
    redo = active[order[dup]]
    ranks[redo] = zipf_ranks(rng, redo.size, num_classes, exponent)
    active = np.flatnonzero(np.isin(rows, np.unique(rows[redo])))
  raise ValueError(
      f"could not draw distinct labels in {max_rounds} rounds: too many labels"
      f" per example for num_classes={num_classes}, "
      f"zipf_exponent={exponent}; lower mean_labels/max_labels")


def _csr_from_entries(
    rows: np.ndarray, cols: np.ndarray, vals: np.ndarray,
    shape: tuple[int, int]) -> sp.csr_matrix:
  """CSR summing duplicate (row, col) entries; O(entries) memory."""
  order = np.lexsort((cols, rows))
  rows, cols, vals = rows[order], cols[order], vals[order]
  new = np.ones(rows.size, bool)
  new[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
  starts = np.flatnonzero(new)
  summed = np.add.reduceat(vals, starts) if rows.size else vals
  rows, cols = rows[starts], cols[starts]
  indptr = np.zeros(shape[0] + 1, np.int64)
  np.cumsum(np.bincount(rows, minlength=shape[0]), out=indptr[1:])
  m = sp.csr_matrix(
      (summed.astype(np.float32), cols.astype(np.int32),
       indptr.astype(np.int32)), shape=shape)
  m.has_sorted_indices = True
  return m


def _generate(
    num_examples: int, num_classes: int, num_features: int, *,
    labels_per_example: np.ndarray | None, zipf_exponent: float,
    signature_size: int, tokens_per_label: int, noise_tokens: float,
    noise_exponent: float, values: str, permute_labels: bool,
    task_seed: int, rng: np.random.Generator,
) -> tuple[XMCData, np.ndarray]:
  """Shared body; returns the data and the flat label ids of each entry."""
  if not 1 <= num_classes <= _MAX_CLASSES:
    raise ValueError(f"num_classes must be in [1, 2**31), got {num_classes}")
  if not 1 <= num_features <= _MAX_CLASSES:
    raise ValueError(f"num_features must be in [1, 2**31), got {num_features}")
  if num_examples < 0:
    raise ValueError(f"num_examples must be >= 0, got {num_examples}")
  if values not in _VALUES:
    raise ValueError(f"values must be one of {_VALUES}, got {values!r}")
  if signature_size < 1 or tokens_per_label < 0 or noise_tokens < 0:
    raise ValueError("need signature_size >= 1, tokens_per_label >= 0 and "
                     "noise_tokens >= 0")

  # Labels: one entry per (example, label).
  if labels_per_example is None:
    label_rows = np.arange(num_examples)
    ranks = zipf_ranks(rng, num_examples, num_classes, zipf_exponent)
  else:
    label_rows = np.repeat(np.arange(num_examples), labels_per_example)
    ranks = _distinct_labels_per_row(rng, label_rows, num_classes,
                                     zipf_exponent)
  labels = (_affine_permutation(ranks, num_classes, task_seed)
            if permute_labels else ranks)

  # Signature tokens: tokens_per_label per label entry.
  token_label = np.repeat(labels, tokens_per_label)
  token_rows = np.repeat(label_rows, tokens_per_label)
  slot = rng.integers(0, signature_size, token_label.size)
  with np.errstate(over="ignore"):
    key = (token_label.astype(np.uint64) * np.uint64(signature_size)
           + slot.astype(np.uint64)) ^ _seed_salt(task_seed, 1)
  sig_features = (_mix64(key) % np.uint64(num_features)).astype(np.int64)

  # Background tokens.
  noise_counts = rng.poisson(noise_tokens, num_examples)
  noise_rows = np.repeat(np.arange(num_examples), noise_counts)
  noise_features = zipf_ranks(rng, noise_rows.size, num_features,
                              noise_exponent)

  rows = np.concatenate([token_rows, noise_rows])
  cols = np.concatenate([sig_features, noise_features])
  X = _csr_from_entries(rows, cols, np.ones(rows.size, np.float32),
                        (num_examples, num_features))
  if values == "binary":
    X.data[:] = 1.0
  elif values == "l2":
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).reshape(-1))
    X.data /= np.repeat(np.maximum(norms, 1e-30), np.diff(X.indptr))
  Y = _csr_from_entries(label_rows, labels, np.ones(labels.size, np.float32),
                        (num_examples, num_classes))
  return XMCData(X=X, Y=Y), labels


def make_single_label(
    num_examples: int,
    num_classes: int,
    num_features: int,
    *,
    zipf_exponent: float = 1.0,
    signature_size: int = 8,
    tokens_per_label: int = 6,
    noise_tokens: float = 20.0,
    noise_exponent: float = 1.0,
    values: str = "counts",
    permute_labels: bool = False,
    task_seed: int = 0,
    seed: int = 0,
) -> tuple[XMCData, np.ndarray]:
  """Single-label examples: one Zipf-distributed class per example.

  Args:
    num_examples: N.
    num_classes: C, up to 2**31 - 1.
    num_features: F, up to 2**31 - 1.
    zipf_exponent: label frequency exponent (>= 0).
    signature_size: signature features per label.
    tokens_per_label: signature tokens each label puts in an example.
    noise_tokens: mean number of background tokens per example.
    noise_exponent: Zipf exponent of background feature ids.
    values: ``"counts"``, ``"binary"`` or ``"l2"`` feature values.
    permute_labels: scatter label ranks over ids by a seeded bijection.
    task_seed: fixes signatures and permutation (share it across splits).
    seed: fixes the sampled examples.

  Returns:
    ``(data, labels)``: ``data.X`` float32 ``[N, F]``, ``data.Y`` float32
    ``[N, C]`` one-hot CSR, and ``labels`` int32 ``[N]`` class ids.
  """
  rng = np.random.default_rng([task_seed, seed, 1])
  data, labels = _generate(
      num_examples, num_classes, num_features, labels_per_example=None,
      zipf_exponent=zipf_exponent, signature_size=signature_size,
      tokens_per_label=tokens_per_label, noise_tokens=noise_tokens,
      noise_exponent=noise_exponent, values=values,
      permute_labels=permute_labels, task_seed=task_seed, rng=rng)
  return data, labels.astype(np.int32)


def make_multi_label(
    num_examples: int,
    num_classes: int,
    num_features: int,
    *,
    mean_labels: float = 5.0,
    max_labels: int | None = None,
    zipf_exponent: float = 1.0,
    signature_size: int = 8,
    tokens_per_label: int = 4,
    noise_tokens: float = 20.0,
    noise_exponent: float = 1.0,
    values: str = "counts",
    permute_labels: bool = False,
    task_seed: int = 0,
    seed: int = 0,
) -> XMCData:
  """Multi-label examples: ``1 + Poisson(mean_labels - 1)`` distinct labels.

  Args:
    num_examples: N.
    num_classes: C, up to 2**31 - 1.
    num_features: F, up to 2**31 - 1.
    mean_labels: mean labels per example before capping, >= 1.
    max_labels: cap on labels per example; default ``min(C, 4 * mean + 10)``.
    zipf_exponent: label frequency exponent (>= 0).
    signature_size: signature features per label.
    tokens_per_label: signature tokens each label puts in an example.
    noise_tokens: mean number of background tokens per example.
    noise_exponent: Zipf exponent of background feature ids.
    values: ``"counts"``, ``"binary"`` or ``"l2"`` feature values.
    permute_labels: scatter label ranks over ids by a seeded bijection.
    task_seed: fixes signatures and permutation (share it across splits).
    seed: fixes the sampled examples.

  Returns:
    ``data.X`` float32 ``[N, F]`` and ``data.Y`` float32 ``[N, C]`` binary,
    both CSR with sorted indices.
  """
  if mean_labels < 1:
    raise ValueError(f"mean_labels must be >= 1, got {mean_labels}")
  if max_labels is None:
    max_labels = int(4 * mean_labels + 10)
  max_labels = min(max_labels, num_classes)
  if max_labels < 1:
    raise ValueError(f"max_labels must be >= 1, got {max_labels}")
  rng = np.random.default_rng([task_seed, seed, 2])
  per_example = np.minimum(1 + rng.poisson(mean_labels - 1, num_examples),
                           max_labels)
  data, _ = _generate(
      num_examples, num_classes, num_features, labels_per_example=per_example,
      zipf_exponent=zipf_exponent, signature_size=signature_size,
      tokens_per_label=tokens_per_label, noise_tokens=noise_tokens,
      noise_exponent=noise_exponent, values=values,
      permute_labels=permute_labels, task_seed=task_seed, rng=rng)
  return data
