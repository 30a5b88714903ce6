"""Beam search over the prefix tree of a label code, for Multi-Head Cascade.

Multi-Head Cascade (MHC; Liang et al., TPAMI 2024, Sec. 3.3) scores a label
``y`` with digits ``(d_1, ..., d_H)`` level by level, coarse to fine: level 1
scores the ``r_1`` first digits, level ``h >= 2`` scores the ``r_h`` children
of a length-``(h-1)`` prefix. A label's score is the sum of its levels'
log-probabilities::

  score(y) = sum_h log p_h(d_h | d_1 .. d_{h-1}).

Only the ``beam`` best prefixes of each level are expanded, so an example
costs ``r_1 + (H-1) * beam * r_h`` scores instead of ``C``.

Under the *regression* rule (``regression=True``: heads fitted by least
squares to 0/1 membership targets, whose logits are estimates of "this
prefix holds a true label" rather than log-probabilities) a level's score is
its raw logit, prefixes are kept by their own level's score and a label's
score is its last level's logit::

  score(y) = z_H(y),   kept at level h: the beam best z_h among the children
                       of the prefixes kept at level h - 1.

The upper levels then route (they choose where to look) and the last level
ranks; the sum of the levels' estimates would count a label's group
membership once per level.

Prefixes are integers: the length-``h`` prefix ``(d_1, ..., d_h)`` is the code
``q = sum_{i<=h} d_i * r_{i+1} * ... * r_h`` (so the length-``H`` prefix is the
label). A prefix is *valid* if its smallest completion ``q * s_h`` is below
``C`` (``s_h = r_{h+1} * ... * r_H``), i.e. ``q < n_h = ceil(C / s_h)``. Invalid
prefixes score ``-inf`` and are never kept, so no code ``>= C`` is returned.

Shapes are static: the beam kept after level ``h`` has width
``W_h = min(beam, n_h)``, which the valid candidates can always fill (every
kept prefix has at least one valid child, and ``(W - 1) * r + 1 >= W``), so
there is no padding.

Everything here is pure JAX; the per-level scoring is a callback, so any
parameterisation (see :class:`mhe_jax.nn.mhc.MHCHead`) can use it.

Example::

  codec = LabelCodec((4, 3, 5), 50)
  # Children's logits of every valid prefix: [B, r_1], [B, n_h, r_{h+1}].
  table = [jnp.zeros((2, 4)), jnp.zeros((2, 4, 3)), jnp.zeros((2, 10, 5))]
  def child_logits(level, prefixes_bw):          # level is 2 .. H
    return jnp.take_along_axis(table[level - 1], prefixes_bw[..., None], 1)
  scores_bk, labels_bk = cascade_topk(table[0], child_logits, codec, beam=3,
                                      k=5)
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mhe_jax.ops.codec import LabelCodec

ArrayLike = jax.typing.ArrayLike

# (level h in 2..H, prefixes [B, W] int32 of length h-1) -> logits [B, W, r_h].
ChildLogitsFn = Callable[[int, jax.Array], jax.Array]

_INT_MAX = np.iinfo(np.int32).max


def valid_prefix_counts(codec: LabelCodec) -> tuple[int, ...]:
  """``(n_1, ..., n_H)``: the number of valid length-``h`` prefixes.

  ``n_h = ceil(C / s_h)``; ``n_H = C``. Valid prefixes are ``0 .. n_h - 1``.
  """
  c = codec.num_classes
  return tuple(-(-c // s) for s in codec.strides)


def beam_widths(codec: LabelCodec, beam: int) -> tuple[int, ...]:
  """``(W_1, ..., W_{H-1})``, the static beam widths ``min(beam, n_h)``."""
  _check_beam(beam)
  return tuple(min(beam, n) for n in valid_prefix_counts(codec)[:-1])


def max_topk(codec: LabelCodec, beam: int) -> int:
  """The largest ``k`` that :func:`cascade_topk` can always fill.

  The last level has ``W_{H-1} * r_H`` candidates; when the beam holds the
  last valid prefix ``n_{H-1} - 1``, its ``n_{H-1} * r_H - C`` children beyond
  ``C`` are invalid. So ``k <= W_{H-1} * r_H - (n_{H-1} * r_H - C)``, which
  is ``C`` when the beam covers every prefix and at least
  ``(beam - 1) * r_H + 1`` otherwise.
  """
  _check_beam(beam)
  if codec.num_heads < 2:
    raise ValueError(f"a cascade needs at least 2 heads, got {codec}")
  n_last = valid_prefix_counts(codec)[-2]
  r_last = codec.radices[-1]
  return min(beam, n_last) * r_last - (n_last * r_last - codec.num_classes)


def _check_beam(beam: int) -> None:
  if int(beam) != beam or beam < 1:
    raise ValueError(f"beam must be an integer >= 1, got {beam!r}")


def level_log_probs(logits: ArrayLike, codes: ArrayLike, codec: LabelCodec,
                    level: int, *, multilabel: bool,
                    regression: bool = False) -> jax.Array:
  """Per-level log-probabilities of candidates, ``-inf`` for invalid codes.

  Args:
    logits: ``[..., r_h]`` logits of the ``r_h`` children of one prefix (or
      of the ``r_1`` groups at level 1).
    codes: int ``[..., r_h]``, the children's length-``level`` prefix codes.
    codec: the label codec.
    level: ``h`` in ``1 .. H``.
    multilabel: ``log_sigmoid`` per child (BCE model) if True, else
      ``log_softmax`` over the valid children (CE model).
    regression: the raw logits (the regression rule; overrides
      ``multilabel``).

  Returns:
    float32 ``[..., r_h]``.
  """
  n = valid_prefix_counts(codec)[level - 1]
  logits = jnp.asarray(logits).astype(jnp.float32)
  valid = jnp.asarray(codes) < n
  if regression:
    logp = logits
  elif multilabel:
    logp = jax.nn.log_sigmoid(logits)
  else:
    logp = jax.nn.log_softmax(jnp.where(valid, logits, -jnp.inf), axis=-1)
  return jnp.where(valid, logp, -jnp.inf)


def is_member(codes: ArrayLike, sets: ArrayLike) -> jax.Array:
  """Whether each code lies in its example's set.

  Args:
    codes: int ``[B, N]``.
    sets: int ``[B, L]``; negative entries are padding (members of nothing).

  Returns:
    bool ``[B, N]``. ``O((N + L) log L)`` per example (:func:`positions`).
  """
  return positions(sets, codes) >= 0


def positions(codes: ArrayLike, queries: ArrayLike) -> jax.Array:
  """Where each query stands in its example's codes, or -1.

  Args:
    codes: int ``[B, N]``; negative entries are never matched, and of a
      code given twice either position may be returned.
    queries: int ``[B, L]``; negative queries are padding.

  Returns:
    int32 ``[B, L]``: ``j`` with ``codes[b, j] == queries[b, l]``, else -1.
    ``O((N + L) log N)`` per example (sort, then a batched binary search
    written with gathers, so batch-sharded inputs stay sharded).
  """
  codes = jnp.asarray(codes, jnp.int32)
  queries = jnp.asarray(queries, jnp.int32)
  num = codes.shape[-1]
  if num == 0:
    return jnp.full_like(queries, -1)
  keyed = jnp.where(codes < 0, _INT_MAX, codes)
  order_bn = jnp.argsort(keyed, axis=-1).astype(jnp.int32)
  sorted_bn = jnp.take_along_axis(keyed, order_bn, axis=-1)
  below_bl = jnp.zeros_like(queries)  # entries < query, by binary search
  step = 1 << (num.bit_length() - 1)
  while step:
    probe_bl = below_bl + step
    value_bl = jnp.take_along_axis(
        sorted_bn, jnp.minimum(probe_bl, num) - 1, axis=-1)
    below_bl = jnp.where((probe_bl <= num) & (value_bl < queries), probe_bl,
                         below_bl)
    step //= 2
  at_bl = jnp.minimum(below_bl, num - 1)
  hit_bl = ((jnp.take_along_axis(sorted_bn, at_bl, axis=-1) == queries) &
            (below_bl < num) & (queries >= 0))
  return jnp.where(hit_bl, jnp.take_along_axis(order_bn, at_bl, axis=-1), -1)


def select(codes: ArrayLike, scores: ArrayLike, width: int, *,
           forced: ArrayLike | None = None) -> tuple[jax.Array, jax.Array]:
  """Keeps the ``width`` best candidates, forced ones first.

  Args:
    codes: int ``[B, N]`` candidate prefix codes.
    scores: float ``[B, N]`` cumulative scores; ``-inf`` for invalid ones.
    width: static number kept, ``<= N``.
    forced: optional int ``[B, L]`` codes (-1 padded) that are kept before
      any other candidate (teacher forcing); among themselves, and among the
      others, the higher score wins. If more than ``width`` forced codes are
      candidates, only the ``width`` best-scoring of them are kept.

  Returns:
    ``(codes [B, width] int32, scores [B, width] float32)``, kept in order of
    priority (forced first, then by score descending).
  """
  codes = jnp.asarray(codes, jnp.int32)
  scores = jax.lax.stop_gradient(jnp.asarray(scores, jnp.float32))
  if forced is None:
    top_bw, idx_bw = jax.lax.top_k(scores, width)
    return jnp.take_along_axis(codes, idx_bw, axis=-1), top_bw
  rank_bn = (~is_member(codes, forced)).astype(jnp.int32)  # 0 = forced
  _, _, codes_s, scores_s = jax.lax.sort(
      (rank_bn, -scores, codes, scores), dimension=-1, is_stable=True,
      num_keys=2)
  return codes_s[:, :width], scores_s[:, :width]


class CascadeBeam(NamedTuple):
  """What :func:`cascade_search` kept and computed, level by level.

  Attributes:
    prefixes: ``H - 1`` int32 arrays ``[B, W_h]``: the length-``h`` prefixes
      kept after level ``h`` (``h = 1 .. H-1``).
    prefix_scores: ``H - 1`` float32 arrays ``[B, W_h]``: their cumulative
      scores (sum of level log-probabilities), without gradient.
    logits: ``H`` arrays of raw logits, with gradient: ``[B, r_1]`` for
      level 1 and ``[B, W_{h-1}, r_h]`` for level ``h >= 2`` (the children of
      ``prefixes[h - 2]``).
    child_codes: ``H`` int32 arrays of the codes the logits belong to:
      ``[B, r_1]`` and ``[B, W_{h-1}, r_h]`` (length-``h`` prefixes).
  """

  prefixes: list[jax.Array]
  prefix_scores: list[jax.Array]
  logits: list[jax.Array]
  child_codes: list[jax.Array]


def cascade_search(first_logits: ArrayLike, child_logits: ChildLogitsFn,
                   codec: LabelCodec, beam: int, *, multilabel: bool,
                   forced_labels: ArrayLike | None = None,
                   regression: bool = False) -> CascadeBeam:
  """Runs the beam down to level ``H`` (its last level is not selected).

  Args:
    first_logits: ``[B, r_1]`` level-1 logits.
    child_logits: ``(h, prefixes [B, W] int32) -> [B, W, r_h]`` logits of the
      children of length-``(h-1)`` prefixes, for ``h = 2 .. H``.
    codec: the label codec, ``H >= 2``.
    beam: the beam width; level ``h`` keeps ``min(beam, n_h)`` prefixes.
    multilabel: scoring rule, see :func:`level_log_probs`.
    forced_labels: optional int ``[B, L]`` (or ``[B]``) labels, -1 padded,
      whose prefixes are kept first at every level (teacher forcing).
    regression: the regression rule (module docstring): prefixes are kept
      by their own level's logit, and ``prefix_scores`` hold it.

  Returns:
    A :class:`CascadeBeam`.
  """
  if codec.num_heads < 2:
    raise ValueError(f"a cascade needs at least 2 heads, got {codec}")
  widths = beam_widths(codec, beam)
  first_logits = jnp.asarray(first_logits)
  b = first_logits.shape[0]
  forced = None
  if forced_labels is not None:
    forced = jnp.asarray(forced_labels, jnp.int32)
    if forced.ndim == 1:
      forced = forced[:, None]
    forced = jnp.where((forced >= 0) & (forced < codec.num_classes), forced,
                       -1)

  def forced_at(level):  # ground-truth length-`level` prefixes, -1 padded
    if forced is None:
      return None
    s = codec.strides[level - 1]
    return jnp.where(forced >= 0, forced // s, -1)

  # Sharded like first_logits (a batch-sharded Explicit mesh needs that).
  codes_bn = (jnp.zeros_like(first_logits, dtype=jnp.int32) +
              jnp.arange(codec.radices[0], dtype=jnp.int32))
  logp_bn = level_log_probs(jax.lax.stop_gradient(first_logits), codes_bn,
                            codec, 1, multilabel=multilabel,
                            regression=regression)
  prefix_bw, score_bw = select(codes_bn, logp_bn, widths[0],
                               forced=forced_at(1))
  out = CascadeBeam([prefix_bw], [score_bw], [first_logits], [codes_bn])
  for level in range(2, codec.num_heads + 1):
    r = codec.radices[level - 1]
    logits_bwr = child_logits(level, prefix_bw)
    codes_bwr = prefix_bw[..., None] * r + jnp.arange(r, dtype=jnp.int32)
    out.logits.append(logits_bwr)
    out.child_codes.append(codes_bwr)
    if level == codec.num_heads:
      break
    logp_bwr = level_log_probs(jax.lax.stop_gradient(logits_bwr), codes_bwr,
                               codec, level, multilabel=multilabel,
                               regression=regression)
    total_bn = (logp_bwr if regression else
                score_bw[..., None] + logp_bwr).reshape(b, -1)
    prefix_bw, score_bw = select(codes_bwr.reshape(b, -1), total_bn,
                                 widths[level - 1], forced=forced_at(level))
    out.prefixes.append(prefix_bw)
    out.prefix_scores.append(score_bw)
  return out


def cascade_topk(first_logits: ArrayLike, child_logits: ChildLogitsFn,
                 codec: LabelCodec, beam: int, k: int, *,
                 multilabel: bool = False,
                 regression: bool = False) -> tuple[jax.Array, jax.Array]:
  """Top-k labels by ``sum_h log p_h`` among the labels the beam reaches.

  Under ``regression`` the score is the last level's logit ``z_H(y)`` and
  the beam keeps each level's best logits (module docstring).

  Exact for the labels whose every prefix was kept by the beam; when
  ``beam >= n_{H-1}`` (the beam covers every prefix) that is the exact top-k
  over all ``C`` labels.

  Args:
    first_logits: ``[B, r_1]`` level-1 logits.
    child_logits: see :func:`cascade_search`.
    codec: the label codec, ``H >= 2``.
    beam: the beam width.
    k: ``1 <= k <= max_topk(codec, beam)``.
    multilabel: scoring rule, see :func:`level_log_probs`.
    regression: the regression rule.

  Returns:
    ``(scores [B, k] float32 descending, labels [B, k] int32)``; every label
    is in ``[0, C)``.
  """
  limit = max_topk(codec, beam)
  if int(k) != k or not 1 <= k <= limit:
    raise ValueError(
        f"k must be an integer in [1, {limit}] for {codec} with beam={beam} "
        f"(at most min(beam, n_(H-1)) * r_H labels are reachable, less the "
        f"codes >= num_classes), got {k}")
  search = cascade_search(first_logits, child_logits, codec, beam,
                          multilabel=multilabel, regression=regression)
  level = codec.num_heads
  logp_bwr = level_log_probs(search.logits[-1], search.child_codes[-1], codec,
                             level, multilabel=multilabel,
                             regression=regression)
  b = logp_bwr.shape[0]
  total_bn = (logp_bwr if regression else
              search.prefix_scores[-1][..., None] + logp_bwr).reshape(b, -1)
  scores_bk, idx_bk = jax.lax.top_k(total_bn, int(k))
  labels_bk = jnp.take_along_axis(search.child_codes[-1].reshape(b, -1),
                                  idx_bk, axis=-1)
  return scores_bk, labels_bk
