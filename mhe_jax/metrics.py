"""Ranking metrics for extreme classification, mergeable across eval batches.

Metrics are computed from the top-k predicted labels of each example (int
`[B, K]`, best first, `-1` for "no prediction") and its true labels (int
`[B, L]` padded with `-1`, or `[B]` for single-label data, `-1` meaning no
label). `batch_stats` turns one batch into a dict of *sums*; stats of several
batches are merged by adding them (`merge_stats`, or `jax.tree.map(jnp.add,
...)` inside jit), and `finalize` turns the merged sums into numbers:

  P@k       precision at k.
  R@k       recall at k.
  nDCG@k    normalised DCG at k.
  PSP@k     propensity-scored precision at k (needs `inv_propensity`).
  PSnDCG@k  propensity-scored nDCG at k (needs `inv_propensity`).
  acc@k     fraction of examples with at least one true label in the top k
            (top-k accuracy for single-label data).
  coverage@k  fraction of the distinct true labels of the evaluated set that
            are predicted correctly in the top k of some example (needs
            `num_labels`).

The definitions are napkinXC's (`napkinxc.metrics`, 0.7.2), which agree with
pyxclib's `xc_metrics` for P, R, nDCG, PSP and PSnDCG; the tests check this
module against napkinXC to 1e-6. Conventions, with `t` the set of true labels
of an example and `disc_i = 1 / log2(i + 1)` for rank i = 1..k:

  * P@k = |top_k ∩ t| / k, always divided by k, also when fewer than k
    predictions are given (a `-1` prediction, at any rank, is a miss).
  * R@k = |top_k ∩ t| / |t|; nDCG@k = DCG@k / IDCG@k with
    DCG@k = sum_{i <= k, pred_i in t} disc_i and
    IDCG@k = sum_{i <= min(k, |t|)} disc_i (ideal truncated by |t|).
  * Examples with no true labels count in the denominator of P, R, nDCG and
    acc and score 0 there (napkinXC's `zero_division=0`).
  * PSP@k and PSnDCG@k are normalised as in napkinXC and pyxclib: the sum over
    the whole evaluated set of the propensity-scored gain, divided by the same
    sum for the best achievable ranking (the true labels of each example
    sorted by decreasing inverse propensity). That is a ratio of sums, not a
    mean of per-example ratios. For PSP the per-example gain is
    sum_{i <= k, pred_i in t} q_{pred_i} / k; for PSnDCG it is
    sum_{i <= k, pred_i in t} q_{pred_i} disc_i / IDCG@k, where IDCG@k is the
    *unweighted* ideal DCG above (napkinXC and pyxclib both do this; the
    factor is per example so it does not cancel). Examples without true
    labels add 0 to both sums, so they do not count at all.
  * coverage@k = |{l : l in top_k(x) ∩ t(x) for some x}| / |∪_x t(x)|: the
    denominator is the number of distinct labels among the true labels of the
    evaluated examples (napkinXC), not the size of the label space as in some
    papers.
  * Masked rows (`mask=False`, e.g. padding of the last eval batch) count
    nowhere, coverage included.
  * A metric with a zero denominator (no examples; no true labels at all for
    PSP, PSnDCG and coverage) finalizes to NaN instead of raising.

Inverse propensities follow Jain, Prabhu & Varma (KDD 2016, "Extreme
multi-label loss functions for recommendation, tagging, ranking and other
missing label applications"): `p_l = 1 / (1 + C (N_l + B)^-A)` with
`C = (log N - 1)(B + 1)^A`, see `propensity` and `inverse_propensity`.

`batch_stats` is vectorised and runs on numpy inputs in float64 on the host,
or on jax arrays with jax.numpy (jittable with `ks` and `num_labels` static);
value checks (label ranges, duplicates) only run on concrete inputs. The
coverage stats hold per-label counts `[num_labels]`; pass `num_labels=None` to
skip coverage when that is too large to carry per batch.

Example:

  >>> import numpy as np
  >>> from mhe_jax import metrics
  >>> inv_ps = metrics.inverse_propensity(np.array([50, 5, 1, 0]), 100)
  >>> ev = metrics.XMCMetrics(ks=(1, 2), inv_propensity=inv_ps, num_labels=4)
  >>> ev.update(np.array([[0, 2], [3, -1]]), np.array([[0, 1], [-1, -1]]))
  >>> ev.update(np.array([[1, 0]]), np.array([1]))
  >>> out = ev.compute()
  >>> out['P@1'], out['R@2'], out['acc@2'], out['coverage@2']
  (0.6666666666666666, 0.5, 0.6666666666666666, 1.0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

Array = Any  # np.ndarray or jax.Array, following the inputs.
Stats = dict[str, Array]

DEFAULT_KS = (1, 3, 5)

# Metric names in output order. The PS ones carry an extra "<name>@k/ideal"
# stat; coverage carries "coverage@k/hits" and the shared "coverage/true".
_MEAN_METRICS = ("P", "nDCG", "R", "acc")
_PS_METRICS = ("PSP", "PSnDCG")
_COUNT_KEY = "num_examples"
_TRUE_KEY = "coverage/true"


def inverse_propensity(
    label_counts: ArrayLike,
    num_examples: int,
    A: float = 0.55,  # pylint: disable=invalid-name
    B: float = 1.5,  # pylint: disable=invalid-name
) -> np.ndarray:
  """Inverse label propensities `q_l = 1 + C (N_l + B)^-A` (Jain et al. 2016).

  Args:
    label_counts: `[num_labels]` number of training examples carrying each
      label (`N_l`).
    num_examples: number of training examples (`N`). The model assumes
      `N > e`; for smaller `N`, `C` is negative and so are the weights.
    A: dataset parameter; 0.55 by default (0.5 for Wikipedia, 0.6 for Amazon
      datasets in the XC repository).
    B: dataset parameter; 1.5 by default (0.4 for Wikipedia, 2.6 for Amazon).

  Returns:
    `[num_labels]` float64 inverse propensities `1 / p_l`, the weights used by
    PSP@k and PSnDCG@k. Equals napkinXC's `Jain_et_al_inverse_propensity` and
    pyxclib's `compute_inv_propesity`.
  """
  counts_l = np.asarray(label_counts, dtype=np.float64)
  if counts_l.ndim != 1:
    raise ValueError(f"label_counts must be 1-D, got shape {counts_l.shape}.")
  if np.any(counts_l < 0):
    raise ValueError("label_counts must be non-negative.")
  if num_examples <= 0:
    raise ValueError(f"num_examples must be positive, got {num_examples}.")
  c = (math.log(num_examples) - 1.0) * (B + 1.0) ** A
  return 1.0 + c * np.exp(-A * np.log(counts_l + B))


def propensity(
    label_counts: ArrayLike,
    num_examples: int,
    A: float = 0.55,  # pylint: disable=invalid-name
    B: float = 1.5,  # pylint: disable=invalid-name
) -> np.ndarray:
  """Label propensities `p_l = 1 / (1 + C exp(-A log(N_l + B)))`.

  `C = (log N - 1)(B + 1)^A`; see `inverse_propensity` for the arguments.

  Returns:
    `[num_labels]` float64 propensities.
  """
  return 1.0 / inverse_propensity(label_counts, num_examples, A=A, B=B)


def _is_traced(x: Any) -> bool:
  return isinstance(x, jax.core.Tracer)


def _check_ks(ks: Sequence[int], num_preds: int) -> tuple[int, ...]:
  ks = tuple(ks)
  if not ks:
    raise ValueError("ks must not be empty.")
  for k in ks:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
      raise ValueError(f"ks must be positive integers, got {ks}.")
  if len(set(ks)) != len(ks):
    raise ValueError(f"ks must be distinct, got {ks}.")
  if max(ks) > num_preds:
    raise ValueError(
        f"k={max(ks)} is larger than the number of predictions provided per "
        f"example (topk_labels has shape [B, {num_preds}]).")
  return tuple(sorted(int(k) for k in ks))


def _check_label_values(
    name: str, labels_bn: Any, num_labels: int | None) -> None:
  """Range and duplicate checks on a concrete `[B, N]` label array."""
  labels_bn = np.asarray(labels_bn)
  if labels_bn.size == 0:
    return
  if labels_bn.min() < -1:
    raise ValueError(f"{name} must be >= -1 (-1 is padding), got "
                     f"{labels_bn.min()}.")
  if num_labels is not None and labels_bn.max() >= num_labels:
    raise ValueError(f"{name} has label {labels_bn.max()} >= num_labels="
                     f"{num_labels}.")
  sorted_bn = np.sort(labels_bn, axis=1)
  dup_bn = (sorted_bn[:, 1:] == sorted_bn[:, :-1]) & (sorted_bn[:, 1:] >= 0)
  if dup_bn.any():
    row = int(np.nonzero(dup_bn.any(axis=1))[0][0])
    raise ValueError(f"{name} repeats a label in row {row}: "
                     f"{labels_bn[row].tolist()}.")


def _label_counts(xp, labels: Array, include: Array, num_labels: int) -> Array:
  """Per-label number of `include`d occurrences of `labels`: `[num_labels]`."""
  if xp is np:
    return np.bincount(labels[include], minlength=num_labels).astype(np.int64)
  idx = jnp.where(include, labels, num_labels).ravel()
  return jnp.zeros(num_labels, jnp.int32).at[idx].add(1, mode="drop")


def batch_stats(
    topk_labels: ArrayLike,
    true_labels: ArrayLike,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    inv_propensity: ArrayLike | None = None,
    num_labels: int | None = None,
    mask: ArrayLike | None = None,
) -> Stats:
  """Mergeable metric sums for one batch.

  Args:
    topk_labels: int `[B, K]` predicted labels, best first; `-1` for no
      prediction (a miss at that rank). Labels must be distinct in a row.
    true_labels: int `[B, L]` true label sets padded with `-1`, or `[B]` for
      single-label data (`-1`: no label). Labels must be distinct in a row.
    ks: the cut-offs, each at most `K`.
    inv_propensity: optional float `[num_labels]` inverse propensities (see
      `inverse_propensity`); enables PSP@k and PSnDCG@k.
    num_labels: optional size of the label space; enables coverage@k and the
      range check of the labels. Defaults to the length of `inv_propensity`
      for the range check only.
    mask: optional bool `[B]`; rows with `False` count nowhere.

  Returns:
    Dict of sums, all to be merged by addition: `num_examples` (int scalar),
    scalars `P@k`, `nDCG@k`, `R@k`, `acc@k` (sums of per-example values),
    with `inv_propensity` scalars `PSP@k`, `PSP@k/ideal`, `PSnDCG@k`,
    `PSnDCG@k/ideal`, and with `num_labels` int `[num_labels]` vectors
    `coverage@k/hits` (correct top-k predictions per label) and
    `coverage/true` (true occurrences per label). numpy float64 for numpy
    inputs; jax arrays (default float dtype) when any input is a jax array.

  Raises:
    ValueError: on shape or dtype mismatches, a k larger than K, labels
      outside [-1, num_labels) or repeated within a row (value checks only
      for concrete, i.e. non-traced, inputs).
  """
  inputs = (topk_labels, true_labels, inv_propensity, mask)
  xp = jnp if any(isinstance(x, jax.Array) for x in inputs) else np

  pred_bk = xp.asarray(topk_labels)
  true_bl = xp.asarray(true_labels)
  if pred_bk.ndim != 2:
    raise ValueError(
        f"topk_labels must be [B, K], got shape {tuple(pred_bk.shape)}.")
  if true_bl.ndim == 1:
    true_bl = true_bl[:, None]
  if true_bl.ndim != 2:
    raise ValueError(
        f"true_labels must be [B, L] or [B], got shape {tuple(true_bl.shape)}.")
  for name, x in (("topk_labels", pred_bk), ("true_labels", true_bl)):
    if not np.issubdtype(x.dtype, np.integer):
      raise ValueError(f"{name} must be integers, got dtype {x.dtype}.")
  batch, num_preds = pred_bk.shape
  if true_bl.shape[0] != batch:
    raise ValueError(f"topk_labels has {batch} rows but true_labels has "
                     f"{true_bl.shape[0]}.")
  ks = _check_ks(ks, num_preds)
  kmax = ks[-1]

  if mask is None:
    mask_b = xp.ones((batch,), dtype=bool)
  else:
    mask_b = xp.asarray(mask)
    if mask_b.shape != (batch,):
      raise ValueError(
          f"mask must have shape ({batch},), got {tuple(mask_b.shape)}.")
    if mask_b.dtype != bool:
      raise ValueError(f"mask must be bool, got dtype {mask_b.dtype}.")

  inv_ps_l = None
  if inv_propensity is not None:
    inv_ps_l = xp.asarray(inv_propensity)
    if inv_ps_l.ndim != 1:
      raise ValueError(f"inv_propensity must be 1-D [num_labels], got shape "
                       f"{tuple(inv_ps_l.shape)}.")
    if num_labels is not None and inv_ps_l.shape[0] != num_labels:
      raise ValueError(f"inv_propensity has {inv_ps_l.shape[0]} entries but "
                       f"num_labels={num_labels}.")
  label_bound = num_labels
  if label_bound is None and inv_ps_l is not None:
    label_bound = inv_ps_l.shape[0]

  if not (_is_traced(pred_bk) or _is_traced(true_bl)):
    _check_label_values("topk_labels", pred_bk, label_bound)
    _check_label_values("true_labels", true_bl, label_bound)

  if xp is np:
    ftype = np.float64
  else:
    ftype = jnp.result_type(float)
    if inv_ps_l is not None:
      ftype = jnp.result_type(ftype, inv_ps_l.dtype)
  pred_bk = pred_bk[:, :kmax]
  valid_bk = pred_bk >= 0
  valid_bl = true_bl >= 0
  n_true_b = valid_bl.sum(axis=1)
  has_true_b = n_true_b > 0
  match_bkl = ((pred_bk[:, :, None] == true_bl[:, None, :])
               & valid_bl[:, None, :])
  hit_bk = match_bkl.any(axis=-1) & valid_bk
  hit_f_bk = hit_bk.astype(ftype)

  rank_k = xp.arange(1, kmax + 1)
  disc_k = (1.0 / xp.log2(rank_k + 1.0)).astype(ftype)
  # IDCG@i of each row, the ideal truncated at min(i, |t|); 1 for empty rows
  # (their DCG is 0, and they score 0 by convention).
  idcg_rank_bk = xp.clip(xp.minimum(rank_k[None, :], n_true_b[:, None]) - 1,
                         0, kmax - 1)
  idcg_bk = xp.cumsum(disc_k)[idcg_rank_bk]

  n_hits_bk = xp.cumsum(hit_f_bk, axis=1)
  per_row = {
      "P": n_hits_bk / rank_k.astype(ftype),
      "nDCG": xp.where(has_true_b[:, None],
                       xp.cumsum(hit_f_bk * disc_k, axis=1) / idcg_bk, 0.0),
      "R": xp.where(has_true_b[:, None],
                    n_hits_bk / xp.maximum(n_true_b, 1)[:, None].astype(ftype),
                    0.0),
      "acc": (n_hits_bk > 0).astype(ftype),
  }
  if inv_ps_l is not None:
    inv_ps_l = inv_ps_l.astype(ftype)
    gain_bk = xp.where(hit_bk, inv_ps_l[xp.where(valid_bk, pred_bk, 0)], 0.0)
    # Best achievable gains: the row's true labels by decreasing weight.
    true_w_bl = xp.where(valid_bl, inv_ps_l[xp.where(valid_bl, true_bl, 0)],
                         -np.inf)
    best_bk = -xp.sort(-true_w_bl, axis=1)[:, :kmax]
    if best_bk.shape[1] < kmax:
      pad = xp.full((batch, kmax - best_bk.shape[1]), -np.inf, dtype=ftype)
      best_bk = xp.concatenate([best_bk, pad], axis=1)
    best_bk = xp.where(best_bk > -np.inf, best_bk, 0.0)
    per_row["PSP"] = xp.cumsum(gain_bk, axis=1) / rank_k.astype(ftype)
    per_row["PSP/ideal"] = xp.cumsum(best_bk, axis=1) / rank_k.astype(ftype)
    per_row["PSnDCG"] = xp.where(
        has_true_b[:, None], xp.cumsum(gain_bk * disc_k, axis=1) / idcg_bk,
        0.0)
    per_row["PSnDCG/ideal"] = xp.where(
        has_true_b[:, None], xp.cumsum(best_bk * disc_k, axis=1) / idcg_bk,
        0.0)

  mask_f_b = mask_b.astype(ftype)
  sums = {name: mask_f_b @ vals_bk for name, vals_bk in per_row.items()}
  int_type = np.int64 if xp is np else jnp.int32
  stats = {_COUNT_KEY: mask_b.astype(int_type).sum()}
  for name in _MEAN_METRICS + _PS_METRICS:
    if name not in sums:
      continue
    for k in ks:
      stats[f"{name}@{k}"] = sums[name][k - 1]
      if name in _PS_METRICS:
        stats[f"{name}@{k}/ideal"] = sums[f"{name}/ideal"][k - 1]
  if num_labels is not None:
    for k in ks:
      stats[f"coverage@{k}/hits"] = _label_counts(
          xp, pred_bk[:, :k], hit_bk[:, :k] & mask_b[:, None], num_labels)
    stats[_TRUE_KEY] = _label_counts(xp, true_bl, valid_bl & mask_b[:, None],
                                     num_labels)
  return stats


def merge_stats(a: Mapping[str, Array], b: Mapping[str, Array]) -> Stats:
  """Adds two stats dicts from `batch_stats` with the same configuration."""
  if a.keys() != b.keys():
    raise ValueError("Cannot merge stats computed with different ks, "
                     f"inv_propensity or num_labels: {sorted(a)} vs "
                     f"{sorted(b)}.")
  return {key: a[key] + b[key] for key in a}


def _ratio(num: Any, den: Any) -> float:
  num, den = float(num), float(den)
  return num / den if den != 0 else float("nan")


def finalize(stats: Mapping[str, Array]) -> dict[str, float]:
  """Turns (merged) stats from `batch_stats` into metric values.

  Args:
    stats: a stats dict from `batch_stats`, possibly merged over batches.

  Returns:
    Dict from names like `P@1`, `nDCG@3`, `R@5`, `acc@5`, `PSP@5`,
    `PSnDCG@5`, `coverage@5` to Python floats in [0, 1] (NaN where the
    denominator is zero, see the module docstring).
  """
  count = stats[_COUNT_KEY]
  out = {}
  for key, value in stats.items():
    if key == _COUNT_KEY or "/" in key:
      continue
    name = key.split("@")[0]
    if name in _PS_METRICS:
      out[key] = _ratio(value, stats[f"{key}/ideal"])
    else:
      out[key] = _ratio(value, count)
  if _TRUE_KEY in stats:
    num_true = np.count_nonzero(np.asarray(stats[_TRUE_KEY]))
    for key, value in stats.items():
      if key.startswith("coverage@"):
        out[key.split("/")[0]] = _ratio(
            np.count_nonzero(np.asarray(value)), num_true)
  return out


def compute(
    topk_labels: ArrayLike,
    true_labels: ArrayLike,
    **kwargs: Any,
) -> dict[str, float]:
  """`finalize(batch_stats(topk_labels, true_labels, **kwargs))`."""
  return finalize(batch_stats(topk_labels, true_labels, **kwargs))


class XMCMetrics:
  """Host-side accumulator of `batch_stats` over an evaluation set.

  Sums are kept as numpy float64/int64 whatever the per-batch inputs were.

  Attributes:
    ks: the cut-offs.
    inv_propensity: float `[num_labels]` inverse propensities, or None.
    num_labels: size of the label space (enables coverage), or None.
  """

  def __init__(
      self,
      ks: Sequence[int] = DEFAULT_KS,
      *,
      inv_propensity: ArrayLike | None = None,
      num_labels: int | None = None,
  ):
    self.ks = tuple(ks)
    self.inv_propensity = (None if inv_propensity is None else
                           np.asarray(inv_propensity, dtype=np.float64))
    self.num_labels = num_labels
    self._stats: Stats | None = None

  def reset(self) -> None:
    """Forgets all accumulated batches."""
    self._stats = None

  def update(
      self,
      topk_labels: ArrayLike,
      true_labels: ArrayLike,
      mask: ArrayLike | None = None,
  ) -> None:
    """Adds a batch (see `batch_stats` for the shapes), computed on the host.

    Args:
      topk_labels: int `[B, K]` predicted labels, best first, `-1` padded.
      true_labels: int `[B, L]` (`-1` padded) or `[B]` true labels.
      mask: optional bool `[B]`; `False` rows are ignored.
    """
    self.add(batch_stats(
        np.asarray(topk_labels), np.asarray(true_labels), ks=self.ks,
        inv_propensity=self.inv_propensity, num_labels=self.num_labels,
        mask=None if mask is None else np.asarray(mask)))

  def add(self, stats: Mapping[str, Array]) -> None:
    """Adds stats from `batch_stats` (e.g. computed inside jit on device)."""
    host = {key: np.asarray(value) for key, value in stats.items()}
    stats = {key: value.astype(np.float64 if np.issubdtype(
        value.dtype, np.floating) else np.int64) for key, value in host.items()}
    self._stats = stats if self._stats is None else merge_stats(
        self._stats, stats)

  @property
  def stats(self) -> Stats | None:
    """The merged stats so far (None before the first batch)."""
    return self._stats

  def compute(self) -> dict[str, float]:
    """Metric values over all batches added so far (see `finalize`)."""
    if self._stats is None:
      raise ValueError("No batch was added.")
    return finalize(self._stats)


# ------------------------------------------------------ next-item metrics
# Leave-one-out next-item recommendation (one held-out target per user):
#
#   HR@k    fraction of users whose target ranks in the top k (= acc@k).
#   NDCG@k  mean of 1 / log2(rank + 2) over users whose 0-based target rank
#           is < k, 0 otherwise (one relevant item, so IDCG = 1).
#
# Full ranking ranks the target among all C items (optionally without the
# items of the user's input sequence: `drop_excluded`); the sampled protocol
# of BERT4Rec (Sun et al., CIKM 2019) among the target and 100
# popularity-sampled negatives (`sampled_ranks`, reported under
# "sampled/...").


NOT_RANKED = 2**31 - 1  # The rank of a target outside the predictions.


def drop_excluded(topk_labels: ArrayLike, exclude: ArrayLike,
                  k: int) -> Array:
  """The first ``k`` predictions of each row that are not excluded.

  If a row's ``K`` predictions are the exact top-``K`` of some scores and it
  excludes ``h`` distinct labels with ``K >= k + h``, the result is the exact
  top-``k`` of those scores with the excluded labels removed.

  Args:
    topk_labels: int ``[B, K]`` predictions, best first (-1: none).
    exclude: int ``[B, H]`` labels to remove, -1 padded.
    k: how many to keep, ``<= K``.

  Returns:
    int ``[B, k]``, best first, -1 where fewer than ``k`` remain. numpy for
    numpy inputs, else jax (jittable with ``k`` static).
  """
  xp = jnp if any(isinstance(x, jax.Array) for x in (topk_labels, exclude)) \
      else np
  pred_bn = xp.asarray(topk_labels)
  ex_bh = xp.asarray(exclude)
  if pred_bn.ndim != 2 or ex_bh.ndim != 2 or pred_bn.shape[0] != ex_bh.shape[0]:
    raise ValueError(f"topk_labels [B, K] and exclude [B, H] needed, got "
                     f"{tuple(pred_bn.shape)} and {tuple(ex_bh.shape)}")
  if not 1 <= k <= pred_bn.shape[1]:
    raise ValueError(f"k={k} must be in [1, K={pred_bn.shape[1]}]")
  hit_bn = ((pred_bn[:, :, None] == ex_bh[:, None, :])
            & (ex_bh[:, None, :] >= 0)).any(-1) | (pred_bn < 0)
  n = pred_bn.shape[1]
  # Kept predictions first, in their order; removed ones after.
  key_bn = xp.where(hit_bn, n, 0) + xp.arange(n)
  order_bk = xp.argsort(key_bn, axis=1)[:, :k]
  out_bk = xp.take_along_axis(pred_bn, order_bk, axis=1)
  gone_bk = xp.take_along_axis(hit_bn, order_bk, axis=1)
  return xp.where(gone_bk, -1, out_bk)


def target_ranks(topk_labels: ArrayLike, targets: ArrayLike) -> np.ndarray:
  """0-based rank of each target in its row's predictions.

  Args:
    topk_labels: int ``[B, K]`` distinct predictions, best first.
    targets: int ``[B]``.

  Returns:
    int64 ``[B]``; :data:`NOT_RANKED` (beyond every k) where the target is
    not among the predictions (or is -1).
  """
  pred_bk = np.asarray(topk_labels)
  t_b = np.asarray(targets)
  if pred_bk.ndim != 2 or t_b.shape != pred_bk.shape[:1]:
    raise ValueError(f"topk_labels [B, K] and targets [B] needed, got "
                     f"{pred_bk.shape} and {t_b.shape}")
  hit_bk = (pred_bk == t_b[:, None]) & (t_b[:, None] >= 0)
  return np.where(hit_bk.any(1), hit_bk.argmax(1), NOT_RANKED).astype(np.int64)


def sampled_ranks(target_scores: ArrayLike,
                  negative_scores: ArrayLike) -> np.ndarray:
  """0-based rank of the target among sampled negatives.

  Ties count against the target (a negative scoring exactly as the target
  ranks above it), so a constant scorer gets the worst rank.

  Args:
    target_scores: float ``[B]``.
    negative_scores: float ``[B, N]``.

  Returns:
    int64 ``[B]`` in ``[0, N]``.
  """
  t_b = np.asarray(target_scores, np.float64)
  neg_bn = np.asarray(negative_scores, np.float64)
  return (neg_bn >= t_b[:, None]).sum(1).astype(np.int64)


class NextItemMetrics:
  """Host-side HR@k / NDCG@k from target ranks, summed over batches.

  Example::

    acc = NextItemMetrics(ks=(1, 10))
    acc.update(np.array([0, 3, 50]))       # 0-based target ranks
    acc.compute()   # {'HR@1': 1/3, 'NDCG@1': 1/3, 'HR@10': 2/3, ...}

  Args:
    ks: the cut-offs.
    prefix: prepended to every metric name (e.g. ``"sampled/"``).
  """

  def __init__(self, ks: Sequence[int] = (1, 5, 10), *, prefix: str = ""):
    self.ks = tuple(int(k) for k in ks)
    if not self.ks or min(self.ks) < 1:
      raise ValueError(f"ks must be positive, got {ks}")
    self.prefix = prefix
    self._hits = np.zeros(len(self.ks))
    self._gains = np.zeros(len(self.ks))
    self._count = 0

  def update(self, ranks: ArrayLike, mask: ArrayLike | None = None) -> None:
    """Adds 0-based ranks ``[B]``; rows with ``mask`` False are ignored."""
    r_b = np.asarray(ranks, np.int64)
    if mask is not None:
      r_b = r_b[np.asarray(mask, bool)]
    k_k = np.asarray(self.ks)[:, None]
    inside_kb = r_b[None, :] < k_k
    self._hits += inside_kb.sum(1)
    self._gains += np.where(inside_kb, 1.0 / np.log2(r_b[None, :] + 2.0),
                            0.0).sum(1)
    self._count += r_b.shape[0]

  @property
  def count(self) -> int:
    return self._count

  def compute(self) -> dict[str, float]:
    """``{prefix + 'HR@k': ..., prefix + 'NDCG@k': ...}``; NaN when empty."""
    out = {}
    for i, k in enumerate(self.ks):
      out[f"{self.prefix}HR@{k}"] = _ratio(self._hits[i], self._count)
      out[f"{self.prefix}NDCG@{k}"] = _ratio(self._gains[i], self._count)
    return out
