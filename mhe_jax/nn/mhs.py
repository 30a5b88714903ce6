"""Multi-Head Sampling (MHS) head, Flax NNX (Liang et al., TPAMI 2024, Sec. 3.4).

A :class:`~mhe_jax.ops.LabelCodec` writes a label ``y < C`` as digits
``(d_1, ..., d_H)`` (Sec. 3.1). :class:`MHSHead` keeps the full ``C``-way
classifier but trains it on a sample of label groups (the first digit),
cutting the training compute, not the parameters; evaluation uses the full
classifier.

It follows the heads' contract (:mod:`mhe_jax.nn.heads`)::

  head(x_bd)                      # full-classifier logits [B, C]
  head.per_example_loss(x_bd, labels, *, rng=None)   # float32 [B]
  head.loss(x_bd, labels, *, rng=None, where=None)   # float32 scalar
  head.topk(x_bd, k)              # (scores [B, k] f32, labels [B, k] int32)

with ``labels`` int ``[B]`` (single-label, -1 = no label) or ``[B, L]``
(multi-label, -1 padded).

The kernel ``[d, padded C]`` and bias carry the logical axis names
``('embed', 'classes')`` and ``('classes',)`` (``nnx.with_partitioning``),
created unsharded (``eager_sharding=False``), so the head builds without a
mesh; a trainer reads the names with ``nnx.get_partition_spec`` and places
the state itself (the sharded axis must divide the kernel's columns: pick
the codec so that it does). The head runs under ``jit`` on Auto and Explicit
meshes with the batch on one mesh axis and the classes on another: training
gathers only the sampled columns, replicated over the class axis; the
full-classifier logits of evaluation are gathered over it before slicing and
top-k.

Example::

  from flax import nnx
  from mhe_jax import LabelCodec
  from mhe_jax.nn.mhs import MHSHead

  codec = LabelCodec.balanced(1_000_000, 2)            # radices (1000, 1000)
  mhs = MHSHead(512, codec, num_sampled_groups=64, rngs=nnx.Rngs(0))
  loss = mhs.loss(x_bd, y_b, rng=jax.random.key(1))    # B <= 64: 64 groups
                                                       # of 1000 classes
  scores_bk, labels_bk = mhs.topk(x_bd, 5)             # full classifier

Tied item table. :meth:`MHSHead.label_embeddings` reads label ``y``'s
kernel column as a ``[C, d]`` table in label order and
:meth:`MHSHead.set_label_embeddings` writes it, so a SASRec encoder can
share it as its item embeddings (``config.head.tie_embeddings``; the
sampled loss then trains the rows of the sampled groups through the head
and the input items' rows through the encoder).

Sparse update. Training the full classifier with a dense optimiser still
reads and writes all ``C x d`` parameters and their optimiser state every
step. :class:`SparseUpdateOptimizer` (``config.head.sparse_update`` in the
trainer) instead differentiates the loss with respect to the sampled
groups' rows only and updates those rows and their optimiser state in place
(:mod:`mhe_jax.ops.sparse_update`; lazy Adam, lazy momentum SGD or plain
SGD, which is exact)::

  optimizer = SparseUpdateOptimizer(model, optax.adam(1e-3))
  loss, grads, rows = optimizer.value_and_grad(loss_fn, model)
  optimizer.update(model, grads)                  # every other parameter
  optimizer.update_rows(model, rows, learning_rate=1e-3)
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
from typing import Any, Callable, NamedTuple

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np

from mhe_jax.nn import head_utils
from mhe_jax.ops import losses
from mhe_jax.ops import sparse_update
from mhe_jax.ops.codec import LabelCodec
from mhe_jax.ops.sampling import sample_groups

ArrayLike = jax.typing.ArrayLike


class GroupFrequency(nnx.Variable):
  """Fixed training frequencies of the MHS label groups ``[G]`` (sum 1);
  not trained (not a Param)."""


def inclusion_probability(freq_g: ArrayLike, num_labelled: ArrayLike,
                          num_true: ArrayLike, num_sampled: int) -> jax.Array:
  """Probability that each group joins a step's MHS sample, float32 ``[G]``.

  With ``n`` labels drawn from the group frequencies ``f_g``, group ``g``
  holds one of them with probability ``t_g = 1 - (1 - f_g)^n``; otherwise it
  is one of the ``S - n_true`` random picks among the ``G - n_true`` other
  groups (:func:`mhe_jax.ops.sampling.sample_groups`). So
  ``q_g = t_g + (1 - t_g) (S - n_true) / (G - n_true)``.

  Args:
    freq_g: float ``[G]`` group frequencies among the training labels.
    num_labelled: n, the labels of the step.
    num_true: n_true, the distinct groups they fall in.
    num_sampled: S, the groups sampled.
  """
  freq_g = jnp.asarray(freq_g, jnp.float32)
  num_groups = freq_g.shape[0]
  n = jnp.asarray(num_labelled, jnp.float32)
  n_true = jnp.asarray(num_true, jnp.float32)
  true_g = -jnp.expm1(n * jnp.log1p(-jnp.minimum(freq_g, 1. - 1e-7)))
  rest = jnp.maximum(num_groups - n_true, 1.)
  fill = jnp.clip((num_sampled - n_true) / rest, 0., 1.)
  return true_g + (1. - true_g) * fill


class MHSHead(nnx.Module):
  """Multi-Head Sampling: a full classifier trained on sampled groups (Sec. 3.4).

  The classifier ``kernel [d, P]`` (+ ``bias [P]``) holds one column per
  class in code order (label order unless the codec carries a permutation;
  ``head(x)`` and :meth:`topk` speak labels either way). With ``s = codec.strides[0]`` (the product of all
  radices but the first), class ``y`` is position ``y % s`` of group
  ``y // s`` (its first digit; the remaining digits combined are the
  position). There are ``G = ceil(C / s)`` non-empty groups (``<= r_1``) and
  ``P = G * s`` columns; the at most ``s - 1`` columns ``>= C`` of the last
  group are padding, masked to ``-inf`` everywhere and never trained.

  Training (:meth:`loss` with an ``rng``, :meth:`sampled_logits`). One
  sample of groups is shared by the whole batch: every group holding a label
  of the batch, then uniformly random other groups
  (:func:`mhe_jax.ops.sampling.sample_groups`), deterministic given the rng
  and computed on device. Logits are computed only for the sampled groups'
  ``S * s`` classes, and the loss is a softmax CE over them at the true class
  (single-label; classes of other groups are left out of the softmax, as in
  the paper) or a sigmoid BCE over them (multi-label).

  Sampling correction (single-label, ``label_frequencies`` given). The
  groups of the batch's labels always join the sample, so frequent groups
  are a step's negatives far more often than rare ones and the sampled
  softmax pushes them down harder than the full softmax would. With the
  training label frequencies the head subtracts ``log q_g`` from every
  sampled logit of group ``g`` (the logQ correction of sampled softmax,
  Jean et al. 2015; Yi et al. 2019), where ``q_g`` is the probability that
  ``g`` joins the sample given the step's number of labels
  (:func:`inclusion_probability`). Evaluation is unaffected.

  Budget. The number of sampled groups is static:
  ``S = min(G, max(num_sampled_groups, N))`` where ``N`` is the number of
  label slots of the batch (``B`` single-label, ``B * L`` multi-label). So
  ``num_sampled_groups`` is the sample size whenever it can hold every label
  of the batch in distinct groups; true groups always win, the random fill is
  what shrinks when the batch's labels span many groups, and a budget below
  ``N`` is raised to ``N`` (a batch could need that many) rather than ever
  dropping a ground truth. Per example this costs ``S * s`` logits instead
  of ``C``; :meth:`num_sampled` gives ``S`` for a label shape.

  Evaluation (``head(x)``, :meth:`topk`, :meth:`loss` without rng) uses the
  full classifier over the ``C`` valid classes.

  Outputs and scores (the heads' contract, :mod:`mhe_jax.nn.heads`):
  ``head(x)`` is the full classifier's logits, float32 ``[B, C]`` in label
  order, the head's raw outputs; :meth:`topk` scores are log-probabilities
  of them (``log_softmax`` over the ``C`` classes, or ``log_sigmoid`` per
  class for a multi-label head). With ``dtype=jnp.bfloat16`` the matmuls
  (full and sampled) run in bfloat16 and the logits, log-sum-exps and losses
  are float32.

  Attributes:
    codec: the label codec.
    num_classes: C.
    num_groups: G.
    group_size: s.
    num_sampled_groups: the sampling budget.
    multilabel: whether labels are ``[B, L]`` label sets.
    dtype: the matmuls' input dtype, None: the features' and parameters'.
    kernel: ``[d, P]`` Param, logical axes ``('embed', 'classes')``.
    bias: ``[P]`` Param, logical axes ``('classes',)``.
    group_frequency: ``[G]`` :class:`GroupFrequency` (the sampling
      correction's), or None.
  """

  def __init__(self, in_features: int, codec: LabelCodec,
               num_sampled_groups: int, *, multilabel: bool = False,
               label_bias: ArrayLike | None = None,
               label_frequencies: ArrayLike | None = None,
               dtype: Any = None, param_dtype: Any = jnp.float32,
               kernel_init: nnx.Initializer = nnx.initializers.lecun_normal(),
               bias_init: nnx.Initializer = nnx.initializers.zeros_init(),
               rngs: nnx.Rngs):
    """Builds the head.

    Args:
      in_features: d, the feature size.
      codec: the label codec; groups are its first digit. Two heads
        (``LabelCodec.balanced(C, 2)``, about ``sqrt(C)`` groups of
        ``sqrt(C)`` classes) is the usual choice; any codec works.
      num_sampled_groups: the sampling budget, ``>= 1``; see the class
        docstring for how it meets the batch.
      multilabel: labels are ``[B, L]`` sets (-1 padded) and the loss is
        BCE instead of softmax CE.
      label_bias: optional float ``[C]`` initial bias per label (in label
        order; e.g. ``mhe_jax.registry.prior_bias``); it replaces
        ``bias_init``.
      dtype: matmul input dtype (e.g. ``jnp.bfloat16``); None: the promoted
        dtype of the features and parameters. Logits are accumulated, and
        log-sum-exps and losses computed, in float32.
      param_dtype: dtype of the kernel and bias.
      kernel_init: initializer of the kernel ``[d, P]`` (columns in code
        order).
      bias_init: initializer of the per-label bias, called with shape
        ``(C,)`` in label order (as ``VanillaHead``'s); the padding columns
        start at 0.
      rngs: ``rngs.params()`` draws the kernel and the bias.
    """
    if not isinstance(codec, LabelCodec):
      raise TypeError(f"codec must be a LabelCodec, got {type(codec).__name__}")
    if int(num_sampled_groups) != num_sampled_groups or num_sampled_groups < 1:
      raise ValueError(
          f"num_sampled_groups must be an integer >= 1, got "
          f"{num_sampled_groups!r}")
    self.codec = codec
    self.num_classes = codec.num_classes
    self.in_features = int(in_features)
    self.multilabel = bool(multilabel)
    self.group_size = codec.strides[0]
    self.num_groups = math.ceil(codec.num_classes / self.group_size)
    self.num_sampled_groups = int(num_sampled_groups)
    self.dtype = dtype
    padded = self.num_groups * self.group_size
    self.kernel = head_utils.param(kernel_init, rngs,
                                   (self.in_features, padded),
                                   ("embed", "classes"), param_dtype)
    if label_bias is not None:
      label_bias = np.asarray(label_bias, np.float32)
      if label_bias.shape != (codec.num_classes,):
        raise ValueError(f"label_bias must have shape ({codec.num_classes},), "
                         f"got {label_bias.shape}")
      bias_init = lambda key, shape, dtype=jnp.float32: jnp.asarray(
          label_bias, dtype)
    codes = (np.asarray(codec.permutation) if codec.permuted
             else np.arange(codec.num_classes))

    def bias_by_code(key, shape, dtype=jnp.float32):
      """The per-label bias placed at its code's column, 0 on padding."""
      bias_c = bias_init(key, (codec.num_classes,), dtype)
      return jnp.zeros(shape, dtype).at[codes].set(bias_c)

    self.bias = head_utils.param(bias_by_code, rngs, (padded,), ("classes",),
                                 param_dtype)
    self.group_frequency = nnx.data(None)
    if label_frequencies is not None:
      if self.multilabel:
        raise ValueError("label_frequencies (the sampling correction) is for "
                         "single-label heads; this head is multi-label")
      freq_c = np.asarray(label_frequencies, np.float64)
      if (freq_c.shape != (codec.num_classes,) or not np.isfinite(freq_c).all()
          or (freq_c < 0).any() or freq_c.sum() <= 0):
        raise ValueError(
            f"label_frequencies must be {codec.num_classes} finite counts "
            f">= 0, not all 0; got shape {freq_c.shape}")
      freq_g = np.zeros(padded, np.float64)
      freq_g[codes] = freq_c / freq_c.sum()
      freq_g = freq_g.reshape(self.num_groups, self.group_size).sum(1)
      self.group_frequency = GroupFrequency(jnp.asarray(freq_g, jnp.float32))

  def _label_columns(self) -> jax.Array:
    """int32 ``[C]``: label ``y``'s kernel column (its code)."""
    return self.codec.to_codes(jnp.arange(self.num_classes, dtype=jnp.int32))

  def label_embeddings(self) -> jax.Array:
    """``[C, in_features]``: label ``y``'s kernel column (its logit is
    ``<x, row y> + b_y``), in label order; what a tied encoder reads as its
    item table."""
    return jnp.take(self.kernel[...], self._label_columns(), axis=1).T

  def set_label_embeddings(self, table_cd: ArrayLike) -> None:
    """Writes ``[C, in_features]`` label vectors into the kernel columns of
    their codes (the padding columns are left as they are)."""
    kernel = self.kernel[...]
    self.kernel[...] = kernel.at[:, self._label_columns()].set(
        jnp.asarray(table_cd, kernel.dtype).T)

  def num_sampled(self, labels_shape: tuple[int, ...]) -> int:
    """S, the static number of groups sampled for labels of this shape."""
    slots = math.prod(labels_shape)
    return min(self.num_groups, max(self.num_sampled_groups, slots))

  def __call__(self, x_bd: ArrayLike) -> jax.Array:
    """Full-classifier logits, float32 ``[B, C]`` in label order."""
    logits_bp = head_utils.dense(x_bd, self.kernel[...], self.bias[...],
                                 self.dtype)
    logits_bc = head_utils.replicate_last_axis(logits_bp)[:, :self.num_classes]
    if self.codec.permuted:  # columns are codes; return them in label order
      logits_bc = logits_bc[:, self.codec.permutation]
    return logits_bc

  def _sampled(self, x_bd, labels, rng):
    """Unmasked sampled logits ``[B, S*s]``, valid mask, ids, targets."""
    s = self.group_size
    labels = self.codec.to_codes(labels)  # columns and groups are codes
    groups = jnp.where(labels >= 0, labels // s, -1)
    num = self.num_sampled(labels.shape)
    group_ids_t, slots = sample_groups(groups, self.num_groups, num, rng)
    # Column n = t * s + p of the sample is class group_ids[t] * s + p.
    codes_n = (group_ids_t[:, None] * s +
               jnp.arange(s, dtype=jnp.int32)).reshape(-1)
    hook = _SAMPLE_HOOK.get()
    if hook is not None:  # SparseUpdateOptimizer.value_and_grad
      w_dn, b_n = hook.block(group_ids_t)
    else:
      w_dn, b_n = self._gather(codes_n)
    logits_bn = head_utils.dense(x_bd, w_dn, b_n, self.dtype)
    if self.group_frequency is not None:
      logits_bn = logits_bn - jnp.repeat(
          self._log_inclusion(slots, num)[group_ids_t], s).astype(
              logits_bn.dtype)
    valid_n = codes_n < self.num_classes
    targets = jnp.where(labels >= 0, slots * s + labels % s, -1)
    return logits_bn, valid_n, group_ids_t, targets.astype(jnp.int32)

  def _log_inclusion(self, slots, num_sampled):
    """log q_g ``[G]`` for this step's labels (:func:`inclusion_probability`),
    from their sample slots: the true groups hold slots ``0 .. n_true - 1``
    (:func:`sample_groups` puts them first), padding -1."""
    q_g = inclusion_probability(self.group_frequency[...], (slots >= 0).sum(),
                                slots.max() + 1, num_sampled)
    return jax.lax.stop_gradient(jnp.log(jnp.maximum(q_g, 1e-30)))

  def _gather(self, codes_n):
    """The kernel columns ``[d, n]`` and bias ``[n]`` of the given codes."""
    kernel_dp, bias_p = self.kernel[...], self.bias[...]
    # Gather only the sampled columns; on Explicit meshes they are replicated
    # over the class axis (the embed axis keeps its sharding).
    sharding = jax.typeof(kernel_dp).sharding
    spec = tuple(getattr(sharding, "spec", ()) or ())
    out_dn = out_n = None
    if any(axis is not None for axis in spec):
      embed_axis = spec[0] if spec else None
      out_dn = jax.sharding.NamedSharding(sharding.mesh, P(embed_axis, None))
      out_n = jax.sharding.NamedSharding(sharding.mesh, P(None))
    w_dn = kernel_dp.at[:, codes_n].get(out_sharding=out_dn)
    b_n = bias_p.at[codes_n].get(out_sharding=out_n)
    return w_dn, b_n

  def sampled_logits(self, x_bd: ArrayLike, labels: ArrayLike,
                     rng: jax.Array
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training logits over the sampled groups' classes.

    Args:
      x_bd: features ``[B, d]``.
      labels: int ``[B]`` or ``[B, L]`` (multi-label head), -1 padded.
      rng: PRNG key of the group sample.

    Returns:
      ``(logits [B, S * s] float32, group_ids [S] int32, targets)``: column
      ``t * s + p`` is class ``group_ids[t] * s + p`` of the full classifier,
      ``-inf`` where that code is ``>= C``; ``targets`` (int32, shaped like
      ``labels``) is each label's column, -1 for padding.
    """
    labels = head_utils.check_labels(labels, self.codec, jnp.shape(x_bd)[0],
                                     self.multilabel)
    logits_bn, valid_n, group_ids_s, targets = self._sampled(x_bd, labels, rng)
    return jnp.where(valid_n, logits_bn, -jnp.inf), group_ids_s, targets

  def _per_example(self, x_bd: ArrayLike, labels: jax.Array,
                   rng: jax.Array | None) -> jax.Array:
    """Unreduced loss ``[B]`` of checked labels; full classifier if no rng."""
    if rng is None:
      logits_bn = self(x_bd)
      valid_n = jnp.ones(logits_bn.shape[-1:], bool)
      targets = labels
    else:
      logits_bn, valid_n, _, targets = self._sampled(x_bd, labels, rng)
    logits_bn = logits_bn.astype(jnp.float32)
    if not self.multilabel:
      loss_b = losses.softmax_cross_entropy(
          jnp.where(valid_n, logits_bn, -jnp.inf), targets)
      return jnp.where(
          head_utils.labelled(labels, self.num_classes, False), loss_b, 0.)
    b, n = logits_bn.shape
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], targets.shape)
    # The multi-hot is sharded like the labels' batch axis (Explicit meshes).
    sharding = jax.typeof(targets).sharding
    spec = tuple(getattr(sharding, "spec", ()) or ())
    out_bn = None
    if spec and spec[0] is not None:
      out_bn = jax.sharding.NamedSharding(sharding.mesh, P(spec[0], None))
    multi_hot_bn = jnp.zeros((b, n), jnp.float32).at[
        rows, jnp.where(targets >= 0, targets, n)].set(
            1., mode="drop", out_sharding=out_bn)
    terms_bn = jax.nn.softplus(logits_bn) - multi_hot_bn * logits_bn
    return jnp.where(valid_n, terms_bn, 0.).sum(-1)

  def per_example_loss(self, x_bd: ArrayLike, labels: ArrayLike, *,
                       rng: jax.Array | None = None) -> jax.Array:
    """The loss of each example, float32 ``[B]``.

    Args:
      x_bd: features ``[B, d]``.
      labels: int ``[B]`` (single-label) or ``[B, L]`` (multi-label), -1
        padded.
      rng: PRNG key of the group sample (training); the same key gives the
        same sample as :meth:`loss`, one sample for the whole batch. None:
        the exact full-classifier loss.

    Returns:
      Single-label: softmax CE over the sampled classes (all C without
      rng), 0 for an example without a label; multi-label: sigmoid BCE
      summed over the sampled classes (all C without rng).
    """
    labels = head_utils.check_labels(labels, self.codec, jnp.shape(x_bd)[0],
                                     self.multilabel)
    return self._per_example(x_bd, labels, rng)

  def loss(self, x_bd: ArrayLike, labels: ArrayLike, *,
           rng: jax.Array | None = None,
           where: ArrayLike | None = None) -> jax.Array:
    """Mean of :meth:`per_example_loss` over the counted examples.

    Args:
      x_bd: features ``[B, d]``.
      labels: int ``[B]`` (single-label) or ``[B, L]`` (multi-label), -1
        padded.
      rng: PRNG key of the group sample (training). None computes the exact
        full-classifier loss (softmax CE over all C classes, or BCE over all
        C), e.g. for evaluation.
      where: optional bool ``[B]``; False excludes an example (its labels
        still join the group sample). Single-label examples without a label
        are excluded too; multi-label rows without labels count.

    Returns:
      float32 scalar, ``masked_mean(per_example_loss, where & labelled)``
      (0 if no example counts).
    """
    labels = head_utils.check_labels(labels, self.codec, jnp.shape(x_bd)[0],
                                     self.multilabel)
    counted_b = head_utils.example_mask(
        head_utils.labelled(labels, self.num_classes, self.multilabel), where)
    return losses.masked_mean(self._per_example(x_bd, labels, rng), counted_b)

  def topk(self, x_bd: ArrayLike, k: int) -> tuple[jax.Array, jax.Array]:
    """Exact top-k of the full classifier over the C valid classes.

    Args:
      x_bd: features ``[B, d]``.
      k: ``1 <= k <= C``.

    Returns:
      ``(scores [B, k] float32 descending, labels [B, k] int32)``; scores
      are log-probabilities (``log_softmax`` over the C classes, or
      ``log_sigmoid`` for a multi-label head), ranked like the logits.
    """
    if int(k) != k or not 1 <= k <= self.num_classes:
      raise ValueError(
          f"k must be an integer in [1, {self.num_classes}], got {k}")
    logits_bc = self(x_bd).astype(jnp.float32)
    # Rank the logits themselves (a shift or log_sigmoid could merge close
    # floats into ties), then convert the k picked ones to log-probabilities.
    logits_bk, labels_bk = jax.lax.top_k(logits_bc, int(k))
    if self.multilabel:
      scores_bk = jax.nn.log_sigmoid(logits_bk)
    else:
      scores_bk = logits_bk - jax.nn.logsumexp(logits_bc, -1, keepdims=True)
    return scores_bk, labels_bk.astype(jnp.int32)


# ------------------------------------------------------------ sparse update
class SampledRows(NamedTuple):
  """The classifier rows of one MHS step and their gradients.

  ``S`` sampled groups of ``s`` classes, in the head's kernel layout (a
  class is a kernel column, a row of ``W = kernel.T``).
  """
  group_ids: jax.Array    # int32 [S], distinct
  kernel: jax.Array       # [d, S * s], the gathered columns
  bias: jax.Array         # [S * s]
  kernel_grad: jax.Array  # [d, S * s]
  bias_grad: jax.Array    # [S * s]

  def scaled(self, factor: ArrayLike) -> SampledRows:
    """The same rows with their gradients multiplied by ``factor``."""
    return self._replace(
        kernel_grad=self.kernel_grad * factor.astype(self.kernel_grad.dtype),
        bias_grad=self.bias_grad * factor.astype(self.bias_grad.dtype))


class _SampleDrawn(Exception):
  """Ends the recording pass once the head has drawn its sample."""

  def __init__(self, group_ids):
    super().__init__("MHS sample drawn")
    self.group_ids = group_ids


class _SampleHook:
  """What an MHS head's training loss uses instead of its own gather.

  Without a block it records the sample and stops the loss (raising
  :class:`_SampleDrawn`); with one it hands the block to the head.
  """

  def __init__(self, block=None):
    self.blocks = block
    self.uses = 0

  def block(self, group_ids_s):
    if self.blocks is None:
      raise _SampleDrawn(group_ids_s)
    kernel_dn, bias_n = self.blocks
    self.uses += 1
    if self.uses > 1 or kernel_dn.shape[1] != bias_n.shape[0] or (
        bias_n.shape[0] % group_ids_s.shape[0]):
      raise ValueError("a sparse-update loss must call the MHS head's "
                       "training loss exactly once, with the same labels")
    return kernel_dn, bias_n


_SAMPLE_HOOK: contextvars.ContextVar[_SampleHook | None] = (
    contextvars.ContextVar("mhe_jax_mhs_sample_hook", default=None))


@dataclasses.dataclass(frozen=True)
class _Excluding:
  """nnx filter: every variable but those at ``paths``."""
  paths: frozenset[tuple[Any, ...]]

  def __call__(self, path, value) -> bool:
    del value
    return tuple(path) not in self.paths


def _the_mhs_head(model: nnx.Module) -> tuple[tuple[Any, ...], MHSHead]:
  found = [(tuple(path), node) for path, node in nnx.iter_graph(model)
           if isinstance(node, MHSHead)]
  if len(found) != 1:
    raise ValueError(f"a sparse update needs exactly one MHSHead in the "
                     f"model, found {len(found)}")
  return found[0]


def _node_at(model: nnx.Module, path: tuple[Any, ...]) -> Any:
  for name in path:
    model = model[name] if isinstance(name, int) else getattr(model, name)
  return model


SPARSE_RULES = ("adam", "momentum", "sgd")


class SparseUpdateOptimizer(nnx.Optimizer):
  """An ``nnx.Optimizer`` that updates only the sampled rows of an MHS head.

  The model's one :class:`MHSHead` keeps its kernel ``[d, P]`` and bias
  ``[P]`` out of ``tx``: they get no dense gradient and no dense optimiser
  state. Each step, :meth:`value_and_grad` gathers the sampled groups'
  ``S * s`` columns (the rows of ``W``) and differentiates the loss with
  respect to that block, and :meth:`update_rows` applies the lazy rule to
  the block and scatters it, and its optimiser state, back in place
  (:mod:`mhe_jax.ops.sparse_update`). Every other parameter is updated by
  ``tx`` through :meth:`update` as usual. Unsampled rows and their state are
  neither read nor written.

  Rules (the lazy forms of the trainer's optimisers):

  * ``'adam'``: lazy Adam (AdamW with ``weight_decay``), as PyTorch
    ``SparseAdam`` and TF ``LazyAdam``: a row's moments advance only when
    its group is sampled, and the bias correction uses the optimiser's
    global step count (``self.step``), so a row first sampled late takes
    the larger first step that dense Adam would give it. (A per-row count,
    which restarts every row at Adam's first-step size, trained worse: see
    ``docs/heads.md``.)
  * ``'momentum'``: SGD with heavy-ball momentum (one trace per row, as
    Renee, Jain et al. MLSys 2023, trains its classifier); a row's trace
    decays only when it is sampled.
  * ``'sgd'``: plain SGD, no state. Not lazy: an unsampled row's gradient
    is zero, so the sparse step is the dense ``optax.sgd`` step exactly, and
    the classifier costs its parameters alone in memory.

  The state (``kernel_mu``, ``kernel_nu``, ``bias_mu``, ``bias_nu``, or
  ``kernel_trace``, ``bias_trace``; none for ``'sgd'``) is ``nnx.OptState``
  with the kernel's and bias's logical axes, so a trainer shards it like
  them (class-sharded: each device updates the rows it holds) and saves it
  with the optimiser.

  Args:
    model: the model holding one :class:`MHSHead`.
    tx: the optax transformation of every other parameter.
    rule: ``'adam'``, ``'momentum'`` or ``'sgd'``.
    b1, b2, eps, weight_decay: lazy Adam's constants (optax's defaults;
      ``weight_decay`` > 0: AdamW's decoupled decay).
    momentum: the momentum rule's decay.
    wrt: the parameters to train (the head's kernel and bias are taken out
      of it for ``tx``).
  """

  def __init__(self, model: nnx.Module, tx, *, rule: str = "adam",
               b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
               weight_decay: float = 0.0, momentum: float = 0.9,
               wrt: Any = nnx.Param):
    if rule not in SPARSE_RULES:
      raise ValueError(f"unknown sparse-update rule {rule!r}; known: "
                       f"{list(SPARSE_RULES)}")
    path, head = _the_mhs_head(model)
    rows = frozenset({(*path, "kernel"), (*path, "bias")})
    super().__init__(model, tx, wrt=nnx.All(wrt, _Excluding(rows)))
    self.head_path = path
    self.rule = rule
    self.b1, self.b2, self.eps = float(b1), float(b2), float(eps)
    self.weight_decay, self.momentum = float(weight_decay), float(momentum)

    def zeros_like(var):
      return nnx.OptState(jnp.zeros_like(var[...]), **var.get_metadata())

    if rule == "adam":
      self.kernel_mu, self.kernel_nu = (zeros_like(head.kernel),
                                        zeros_like(head.kernel))
      self.bias_mu, self.bias_nu = zeros_like(head.bias), zeros_like(head.bias)
    elif rule == "momentum":
      self.kernel_trace = zeros_like(head.kernel)
      self.bias_trace = zeros_like(head.bias)

  def value_and_grad(self, loss_fn: Callable[[nnx.Module], jax.Array],
                     model: nnx.Module
                     ) -> tuple[jax.Array, nnx.State, SampledRows]:
    """The loss, the gradient of the other parameters, and the sampled rows.

    ``loss_fn(model)`` must call the MHS head's training loss once (with an
    rng). It runs twice while tracing: on a copy of ``model`` up to the
    head's draw of the sample (nothing of that pass is computed: only the
    sample, a function of the labels and the rng, is kept), then with the
    gathered block in place of the head's own gather, differentiated with
    respect to the block and ``self.wrt``.

    Returns:
      ``(loss, grads, rows)``: ``grads`` as ``nnx.grad`` gives them for
      ``self.wrt`` (for :meth:`update`), ``rows`` the gathered block and its
      gradient (for :meth:`update_rows`).
    """
    head = _node_at(model, self.head_path)
    token = _SAMPLE_HOOK.set(_SampleHook())
    try:
      loss_fn(nnx.clone(model))
    except _SampleDrawn as drawn:
      group_ids_s = drawn.group_ids
    else:
      raise ValueError("loss_fn never drew an MHS sample: it must call the "
                       "head's loss with an rng")
    finally:
      _SAMPLE_HOOK.reset(token)
    s = head.group_size
    kernel_dn = sparse_update.gather_blocks(head.kernel[...], group_ids_s, s)
    bias_n = sparse_update.gather_blocks(head.bias[...], group_ids_s, s)

    def loss_of_block(m, kernel_dn, bias_n):
      hook = _SampleHook((kernel_dn, bias_n))
      token = _SAMPLE_HOOK.set(hook)
      try:
        loss = loss_fn(m)
      finally:
        _SAMPLE_HOOK.reset(token)
      if hook.uses != 1:
        raise ValueError("loss_fn must call the MHS head's training loss "
                         "exactly once")
      return loss

    loss, (grads, kernel_grad, bias_grad) = nnx.value_and_grad(
        loss_of_block, argnums=(nnx.DiffState(0, self.wrt), 1, 2))(
            model, kernel_dn, bias_n)
    return loss, grads, SampledRows(group_ids_s, kernel_dn, bias_n,
                                    kernel_grad, bias_grad)

  def update_rows(self, model: nnx.Module, rows: SampledRows,
                  learning_rate: ArrayLike, *, apply: ArrayLike = True
                  ) -> None:
    """Updates the sampled rows and their state in place.

    Call it after :meth:`update` of the same step: lazy Adam's bias
    correction takes ``self.step``, which :meth:`update` has advanced.

    Args:
      model: the model ``rows`` came from.
      rows: :meth:`value_and_grad`'s rows (gradients possibly rescaled).
      learning_rate: this step's learning rate (a scalar).
      apply: a bool scalar; False leaves the rows and their state as they
        were (a step whose loss or gradient is not finite).
    """
    head = _node_at(model, self.head_path)
    s, ids_s = head.group_size, rows.group_ids
    gather = lambda var: sparse_update.gather_blocks(var[...], ids_s, s)
    keep = lambda new, old: jnp.where(apply, new, old)

    def write(var, new_n, old_n):
      var[...] = sparse_update.scatter_blocks(var[...], ids_s,
                                              keep(new_n, old_n), s)

    if self.rule == "adam":
      count = self.step[...]  # incremented by update(): this step included
      for param_var, mu_var, nu_var, param, grad in (
          (head.kernel, self.kernel_mu, self.kernel_nu, rows.kernel,
           rows.kernel_grad),
          (head.bias, self.bias_mu, self.bias_nu, rows.bias, rows.bias_grad)):
        old = (param, gather(mu_var), gather(nu_var))
        new = sparse_update.lazy_adam(
            param, grad, old[1], old[2], count, learning_rate=learning_rate,
            b1=self.b1, b2=self.b2, eps=self.eps,
            weight_decay=self.weight_decay)
        for var, new_n, old_n in zip((param_var, mu_var, nu_var), new, old):
          write(var, new_n, old_n)
    elif self.rule == "sgd":
      for param, grad, var in ((rows.kernel, rows.kernel_grad, head.kernel),
                               (rows.bias, rows.bias_grad, head.bias)):
        write(var, sparse_update.sgd(param, grad,
                                     learning_rate=learning_rate), param)
    else:
      for param, grad, trace, var, trace_var in (
          (rows.kernel, rows.kernel_grad, gather(self.kernel_trace),
           head.kernel, self.kernel_trace),
          (rows.bias, rows.bias_grad, gather(self.bias_trace), head.bias,
           self.bias_trace)):
        new_param, new_trace = sparse_update.lazy_momentum(
            param, grad, trace, learning_rate=learning_rate,
            momentum=self.momentum)
        write(var, new_param, param)
        write(trace_var, new_trace, trace)
