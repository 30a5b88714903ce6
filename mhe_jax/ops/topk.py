"""Product-space scoring and exact top-k decoding for Multi-Head Product (MHP).

With H heads producing logits ``z_h [B, r_h]``, the global log-probability of a
label ``y`` with digits ``d_h(y)`` is (Liang et al., TPAMI 2024, Sec. 3.2)::

  score(y) = sum_h log_softmax(z_h)[d_h(y)],

the log of the Kronecker product of the heads' softmaxes. :func:`product_topk`
returns the exact top-k of these scores over the *valid* labels ``0 .. C-1``
without materialising the ``prod(r)`` product space.

Algorithm (exact). Sorting each head's log-probabilities is enough to find
the top-k of a sum of two sorted lists ``a`` and ``b``: the pair ``(i, j)``
is beaten by every ``(i', j')`` with ``i' <= i, j' <= j``, so only the
``O(k log k)`` pairs with ``(i + 1) * (j + 1) <= k`` can enter the top-k. Heads
are merged from the most significant one down. Codes ``>= C`` are excluded
exactly by splitting the valid codes ``{0 .. C-1}`` into at most H disjoint
"rectangles" (a fixed prefix of the digits of ``C-1``, one head restricted to
a range, free heads after it), taking the top-k of each and merging them; all
sizes are static, so no padding and no invalid label can ever be returned.

Ties. Results are ordered by score descending, then by label ascending. When
labels tie because their per-head log-probabilities are equal, the smaller
labels win, exactly like a stable sort of the ``C`` explicit scores. Scores
are summed over heads left to right in float32, as
:func:`product_log_probs` does, so the returned scores equal it bit for bit;
when unequal per-head terms round to the same float sum, which of those
labels fills the last places is decided by the per-head order instead (the
scores returned are the exact top-k scores either way).

Example::

  codec = LabelCodec.balanced(1_000_000, 2)
  z1, z2 = jnp.zeros((4, 1000)), jnp.ones((4, 1000))
  scores, labels = product_topk([z1, z2], 5, codec)   # [4, 5] each
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mhe_jax import sharding as sharding_lib
from mhe_jax.ops.codec import as_integer
from mhe_jax.ops.codec import LabelCodec

ArrayLike = jax.typing.ArrayLike


def _check_head_logits(head_logits: Sequence[ArrayLike], codec: LabelCodec):
  if isinstance(head_logits, (jax.Array, np.ndarray)):
    raise TypeError(
        "head_logits must be a sequence of H arrays [B, r_h]; split fused "
        "logits with codec.split(logits) first")
  if len(head_logits) != codec.num_heads:
    raise ValueError(
        f"head_logits has {len(head_logits)} arrays for {codec} with "
        f"{codec.num_heads} heads")
  lead = None
  for h, (z, r) in enumerate(zip(head_logits, codec.radices)):
    shape = jnp.shape(z)
    if len(shape) < 1 or shape[-1] != r:
      raise ValueError(
          f"head_logits[{h}] has shape {shape}, expected [..., {r}] for {codec}")
    if lead is None:
      lead = shape[:-1]
    elif shape[:-1] != lead:
      raise ValueError(
          f"head_logits[{h}] has leading shape {shape[:-1]}, head 0 has {lead}")


def product_log_probs(head_logits: Sequence[ArrayLike], labels: ArrayLike,
                      codec: LabelCodec) -> jax.Array:
  """Product-space log-probabilities of given labels.

  Args:
    head_logits: H arrays ``[B, r_h]`` of per-head logits.
    labels: int ``[B]`` or ``[B, L]`` (-1 padded).
    codec: the label codec.

  Returns:
    float ``[B]`` or ``[B, L]``: ``sum_h log_softmax(z_h)[d_h(label)]``;
    -inf where the label is -1 (padding). Out-of-range labels raise when
    concrete and score -inf under ``jit`` (see :meth:`LabelCodec.encode`).
  """
  _check_head_logits(head_logits, codec)
  codec.validate_labels(labels)
  labels = jnp.asarray(labels)
  if labels.ndim not in (1, 2) or labels.shape[0] != jnp.shape(head_logits[0])[0]:
    raise ValueError(
        f"labels must be [B] or [B, L] with B={jnp.shape(head_logits[0])[0]}, "
        f"got shape {labels.shape}")
  return _product_log_probs(tuple(jnp.asarray(z) for z in head_logits), labels,
                            codec)


@functools.partial(jax.jit, static_argnums=2)
def _product_log_probs(head_logits, labels, codec):
  digits = codec.encode(labels)  # [B, (L,) H]
  squeeze = labels.ndim == 1
  if squeeze:
    digits = digits[:, None, :]
  total = 0.
  for h, z in enumerate(head_logits):
    logp = jax.nn.log_softmax(z.astype(jnp.float32), axis=-1)  # [B, r_h]
    d = digits[..., h]
    total = total + jnp.take_along_axis(logp, jnp.maximum(d, 0), axis=-1)
  out = jnp.where(digits[..., 0] >= 0, total, -jnp.inf)
  return out[:, 0] if squeeze else out


def multilabel_digit_targets(labels: ArrayLike, codec: LabelCodec,
                             dtype=jnp.float32) -> list[jax.Array]:
  """Per-head multi-hot targets from -1 padded label sets.

  Head h's target is the union of the h-th digits of the example's labels.

  Args:
    labels: int ``[B, L]``, -1 padded.
    codec: the label codec.
    dtype: dtype of the targets.

  Returns:
    H arrays ``[B, r_h]`` of 0/1 values.
  """
  codec.validate_labels(labels)
  labels = jnp.asarray(labels)
  if labels.ndim != 2:
    raise ValueError(f"labels must be [B, L] (-1 padded), got shape {labels.shape}")
  return list(_multilabel_digit_targets(labels, codec, jnp.dtype(dtype)))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _multilabel_digit_targets(labels, codec, dtype):
  digits = codec.encode(labels)  # [B, L, H]
  b = labels.shape[0]
  rows = jnp.broadcast_to(jnp.arange(b)[:, None], labels.shape)
  # Targets are sharded like the labels' batch axis (needed on Explicit meshes).
  out_sharding = sharding_lib.batch_axis_sharding(labels, 2)
  out = []
  for h, r in enumerate(codec.radices):
    d = digits[..., h]
    d = jnp.where(d < 0, r, d)  # padding goes out of bounds and is dropped
    out.append(jnp.zeros((b, r), dtype).at[rows, d].set(
        1, mode="drop", out_sharding=out_sharding))
  return tuple(out)


def product_topk(head_logits: Sequence[ArrayLike], k: int,
                 codec: LabelCodec) -> tuple[jax.Array, jax.Array]:
  """Exact top-k labels of the product-space log-probabilities.

  Args:
    head_logits: H arrays ``[B, r_h]`` of per-head logits.
    k: number of labels to return, ``1 <= k <= codec.num_classes``.
    codec: the label codec.

  Returns:
    ``(scores [B, k] float32, labels [B, k] int32)``, scores descending, ties
    broken by smaller label first. Only labels ``< num_classes`` are returned.
    With a permuted codec the search runs over codes (so a tie at the k-th
    place is decided by the smaller code) and the k codes are then mapped to
    their labels and re-sorted by (score descending, label ascending).
  """
  _check_head_logits(head_logits, codec)
  k = as_integer(k, "k")
  if not 1 <= k <= codec.num_classes:
    raise ValueError(f"k must be an integer in [1, {codec.num_classes}], got {k}")
  return _product_topk(tuple(jnp.asarray(z) for z in head_logits), k, codec)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _product_topk(head_logits, k, codec):
  scores, codes = _product_topk_codes(head_logits, k, codec)
  if not codec.permuted:
    return scores, codes
  return _sort_desc(scores, codec.to_labels(codes), k)


def _pairs(ka: int, kb: int, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Static index pairs (i, j), i < ka, j < kb, that can reach a top-k."""
  ii, jj = [], []
  for i in range(min(ka, k)):
    for j in range(min(kb, k // (i + 1))):
      ii.append(i)
      jj.append(j)
  return np.asarray(ii, np.int32), np.asarray(jj, np.int32)


def _sort_desc(scores, labels, k):
  """First k of (scores, labels) by score descending, then label ascending."""
  neg, labels = jax.lax.sort((-scores, labels), dimension=-1, num_keys=2)
  return -neg[..., :k], labels[..., :k]


def _merge(a, b, k):
  """Top-k of all sums a_i + b_j; labels add (a's carry the larger strides)."""
  (sa, la), (sb, lb) = a, b
  ka, kb = sa.shape[-1], sb.shape[-1]
  if ka == 1 and kb == 1:
    return sa + sb, la + lb
  ii, jj = _pairs(ka, kb, k)
  s = sa[:, ii] + sb[:, jj]
  l = la[:, ii] + lb[:, jj]
  return _sort_desc(s, l, min(k, ka * kb))


def _head_top(logp, k, stride, start=0, stop=None):
  """Top-min(k, n) of a head's log-probs over digits [start, stop)."""
  part = logp[:, start:stop]
  n = part.shape[-1]
  vals, idx = jax.lax.top_k(part, min(k, n))  # stable: ties -> smaller digit
  return vals, ((idx + start) * stride).astype(jnp.int32)


def _product_topk_codes(head_logits, k, codec):
  """Top-k (scores, codes) over the valid codes 0 .. C-1."""
  logps = [jax.nn.log_softmax(z.astype(jnp.float32), axis=-1)
           for z in head_logits]
  radices, strides, heads = codec.radices, codec.strides, codec.num_heads
  tops = [_head_top(lp, k, s) for lp, s in zip(logps, strides)]

  def fold(cur, first_free):
    # Merge the free heads first_free .. H-1 into cur, most significant first,
    # so every score is the left-to-right float sum over heads, exactly as
    # product_log_probs computes it (ties then stay ties).
    for g in range(first_free, heads):
      cur = _merge(cur, tops[g], k)
    return cur

  last = [int(d) for d in np.unravel_index(codec.num_classes - 1, radices)]
  # t: the last head whose digit of C-1 is not maximal; all codes are valid
  # when there is none.
  t = max((h for h in range(heads) if last[h] != radices[h] - 1), default=-1)
  if t < 0:
    return fold(tops[0], 1)

  # Valid codes = union over h <= t of rectangles: digits 0..h-1 equal to those
  # of C-1, digit h below it (h < t) or at most it (h == t), the rest free.
  parts = []
  prefix_s = prefix_l = None
  for h in range(t + 1):
    stop = last[h] + 1 if h == t else last[h]
    if stop > 0:
      head_s, head_l = _head_top(logps[h], k, strides[h], 0, stop)
      if prefix_s is not None:
        head_s, head_l = prefix_s + head_s, prefix_l + head_l
      parts.append(fold((head_s, head_l), h + 1))
    digit_s = logps[h][:, last[h]:last[h] + 1]
    prefix_s = digit_s if prefix_s is None else prefix_s + digit_s
    prefix_l = (last[h] * strides[h] if prefix_l is None
                else prefix_l + last[h] * strides[h])
  if len(parts) == 1:
    return parts[0]
  scores = jnp.concatenate([p[0] for p in parts], axis=-1)
  labels = jnp.concatenate([p[1] for p in parts], axis=-1)
  return _sort_desc(scores, labels, k)
