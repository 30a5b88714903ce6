"""Loss functions of the heads, optax-style: per-example outputs, ``where=``.

Every function returns one loss per example (no reduction) and takes a
keyword-only ``where`` mask; masked examples get loss 0, so a mean over valid
examples is ``loss.sum() / where.sum()`` (:func:`masked_mean`). Integer labels
use -1 for padding.

Example::

  codec = LabelCodec.balanced(10_000, 2)
  head_logits = codec.split(x @ w)                    # H arrays [B, r_h]
  loss_b = multi_head_softmax_cross_entropy(head_logits, labels_b, codec)
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from mhe_jax.ops.codec import LabelCodec

ArrayLike = jax.typing.ArrayLike


def _apply_where(loss, where):
  if where is None:
    return loss
  return jnp.where(jnp.asarray(where, bool), loss, 0.)


def masked_mean(values: ArrayLike, where: ArrayLike | None = None
                ) -> jax.Array:
  """Mean of per-example values over the examples ``where`` allows.

  The one reduction of every head's loss: ``sum(values * where) /
  max(sum(where), 1)``, so 0 when no example is allowed. Masked values are
  selected away, not multiplied, so a masked ``inf`` or ``nan`` (e.g. the
  loss of a padding row) neither reaches the mean nor its gradient.

  Args:
    values: float ``[B]`` per-example values (e.g. losses).
    where: optional bool ``[B]``; None allows every example.

  Returns:
    float32 (or the values' wider float) scalar.
  """
  values = jnp.asarray(values)
  values = values.astype(jnp.promote_types(values.dtype, jnp.float32))
  if where is None:
    where = jnp.ones(values.shape, bool)
  where = jnp.asarray(where, bool)
  if where.shape != values.shape:
    raise ValueError(f"where must be bool {values.shape} like the values, "
                     f"got shape {where.shape}")
  total = jnp.where(where, values, 0.).sum()
  return total / jnp.maximum(where.sum(), 1).astype(values.dtype)


def softmax_cross_entropy(logits: ArrayLike, labels: ArrayLike, *,
                          where: ArrayLike | None = None) -> jax.Array:
  """Softmax cross-entropy with integer labels.

  Args:
    logits: ``[..., C]``.
    labels: int ``[...]`` in ``[0, C)``, or -1 for "no label" (loss 0).
    where: optional bool ``[...]``; False gives loss 0.

  Returns:
    float32 ``[...]``: ``logsumexp(logits) - logits[label]``.
  """
  logits = jnp.asarray(logits).astype(jnp.float32)
  labels = jnp.asarray(labels)
  valid = labels >= 0
  picked = jnp.take_along_axis(
      logits, jnp.maximum(labels, 0)[..., None], axis=-1)[..., 0]
  loss = jax.nn.logsumexp(logits, axis=-1) - picked
  return _apply_where(jnp.where(valid, loss, 0.), where)


def multi_head_softmax_cross_entropy(
    head_logits: Sequence[ArrayLike], labels: ArrayLike, codec: LabelCodec, *,
    where: ArrayLike | None = None) -> jax.Array:
  """MHP single-label loss: ``sum_h CE(z_h, d_h(label))`` (paper Eq. 6).

  Equals ``-product_log_probs(head_logits, labels, codec)`` for valid labels.

  Args:
    head_logits: H arrays ``[B, r_h]``.
    labels: int ``[B]`` in ``[0, C)``, -1 for padding (loss 0).
    codec: the label codec.
    where: optional bool ``[B]``.

  Returns:
    float32 ``[B]``.
  """
  digits = codec.encode(labels)  # [B, H]; -1 rows stay -1
  loss = 0.
  for h, z in enumerate(head_logits):
    loss = loss + softmax_cross_entropy(z, digits[..., h])
  return _apply_where(loss, where)


def sigmoid_binary_cross_entropy(logits: ArrayLike, targets: ArrayLike, *,
                                 where: ArrayLike | None = None) -> jax.Array:
  """Per-example sum of sigmoid binary cross-entropies over the last axis.

  Args:
    logits: ``[..., C]``.
    targets: ``[..., C]`` in [0, 1] (multi-hot).
    where: optional bool ``[...]`` (per example).

  Returns:
    float32 ``[...]``: ``sum_c softplus(z_c) - y_c z_c``.
  """
  logits = jnp.asarray(logits).astype(jnp.float32)
  targets = jnp.asarray(targets).astype(jnp.float32)
  loss = (jax.nn.softplus(logits) - targets * logits).sum(-1)
  return _apply_where(loss, where)


def pick_some_labels(labels: ArrayLike, num_picks: int,
                     rng: jax.Array) -> jax.Array:
  """Uniformly picks up to ``num_picks`` positives of each example.

  Args:
    labels: int ``[B, L]``, -1 padded label sets.
    num_picks: k, the number of positives kept per example.
    rng: a PRNG key; the pick is a deterministic function of it.

  Returns:
    int32 ``[B, k]``: a random subset of each row's labels (without
    replacement), -1 padded when a row has fewer than k labels.
  """
  labels = jnp.asarray(labels)
  keys = jax.random.uniform(rng, labels.shape)
  keys = jnp.where(labels >= 0, keys, 2.)  # padding sorts last
  _, shuffled = jax.lax.sort((keys, labels.astype(jnp.int32)), num_keys=1)
  if num_picks > labels.shape[1]:
    pad = -jnp.ones((labels.shape[0], num_picks - labels.shape[1]), jnp.int32)
    shuffled = jnp.concatenate([shuffled, pad], axis=1)
  return shuffled[:, :num_picks]


def pick_some_labels_loss(scores: ArrayLike, positives: ArrayLike,
                          picked: ArrayLike, *,
                          where: ArrayLike | None = None) -> jax.Array:
  """PSL, the pick-some-labels loss of UniDEC (Kharbanda et al., 2024).

  Scores are given against a shared candidate set of M labels (typically the
  union of the batch's picked positives and shortlisted hard negatives). Each
  picked positive ``p`` of example ``b`` gets a softmax cross-entropy over
  ``{p}`` and the candidates that are *not* positives of ``b``::

    loss_b = mean_{p picked} [ logsumexp_{m in {p} + negatives(b)} s_bm - s_bp ]

  so other positives of the same example are never pushed down.

  Args:
    scores: float ``[B, M]`` similarity of each example to each candidate.
    positives: bool ``[B, M]``, candidate m is a positive of example b.
    picked: bool ``[B, M]``, candidate m is a picked positive of b (a subset
      of ``positives``).
    where: optional bool ``[B]``.

  Returns:
    float32 ``[B]``: 0 for examples with no picked positive.
  """
  scores = jnp.asarray(scores).astype(jnp.float32)
  positives = jnp.asarray(positives, bool)
  picked = jnp.asarray(picked, bool) & positives
  neg_inf = jnp.finfo(jnp.float32).min
  neg_scores = jnp.where(positives, neg_inf, scores)  # [B, M]
  neg_lse = jax.nn.logsumexp(neg_scores, axis=-1, keepdims=True)  # [B, 1]
  # For each candidate as the positive: log(exp(s_p) + sum_neg exp(s_n)).
  denom = jnp.logaddexp(scores, neg_lse)
  per = jnp.where(picked, denom - scores, 0.)
  count = picked.sum(-1)
  loss = per.sum(-1) / jnp.maximum(count, 1)
  return _apply_where(loss, where)


psl = pick_some_labels_loss  # The name UniDEC's papers and configs use.
