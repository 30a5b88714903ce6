"""Multi-Head Cascade (MHC): heads in series, coarse to fine, with a beam.

Liang et al., "Multi-Head Encoding for Extreme Label Classification", TPAMI
2024, Sec. 3.3. A label ``y`` is written as digits ``(d_1, ..., d_H)`` by a
:class:`~mhe_jax.ops.codec.LabelCodec`. Level 1 scores the ``r_1`` groups
(first digits) with a linear layer; level ``h >= 2`` scores the ``r_h``
children of a length-``(h-1)`` prefix ``p``::

  z_h(x, p) = W_h^T (P_h x  *  e_h[p]) + b_h          in R^{r_h},

a projection ``P_h x`` of the features to ``hidden`` units, gated elementwise
by the embedding ``e_h[p]`` of the prefix (a table of ``n_{h-1} <=
r_1 * ... * r_{h-1}`` rows of size ``hidden``), then a shared ``[hidden,
r_h]`` output layer. Every prefix thus gets its own child classifier
``W_h diag(e_h[p])`` for ``n_{h-1} * hidden + hidden * r_h`` parameters, far
fewer than the reference's child embeddings (``r_1 * ... * r_h`` rows, so
``C * hidden`` at the last level). With ``e_h[p]`` constant the level reduces
to an MHP head; the gate is what lets level ``h`` depend on the prefix. On
the 2000-class Gaussian-mixture check of the tests (300 steps) this form
reaches 0.91 top-1 with ``hidden=256`` (0.82 with 64); the reference's child
embeddings reach 0.92 with ``hidden=64``, and an additive prefix embedding
followed by a ReLU only 0.55. The bottleneck there is level 1 (0.85 alone).

``child_embedding='table'`` is the reference's form: every child code ``q``
of level ``h`` (a length-``h`` prefix; at the last level, a label) has its
own vector ``t_h[q]`` and bias ``c_h[q]``::

  z_h(x, p)[j] = <P_h x, t_h[p * r_h + j]> + c_h[p * r_h + j],

``n_{h-1} * r_h * (hidden + 1)`` parameters at level ``h`` (about
``C * (hidden + 1)`` at the last). Labels that share a position ``j`` under
different prefixes then share nothing, which the gated form cannot give
when the label order puts unrelated labels at the same position (clustered
orders do): with a clustered order the head is a label tree whose leaves
are per-label classifiers, scored only under the kept prefixes (``beam *
r_H`` labels per example instead of ``C``).

Scoring rule. Single-label: ``p_h = softmax`` over the valid children of
the prefix, so ``score(y) = sum_h log p_h(d_h | prefix) = log P(y)`` is the
chain-rule factorisation of a distribution over the ``C`` labels. Multi-label
with ``multilabel_loss='bce'``: ``p_h = sigmoid`` per child and ``score(y) =
sum_h log sigmoid(z_h)[d_h]``, the log of the product of the levels'
probabilities (as the reference does). Multi-label with
``multilabel_loss='softmax'``: the single-label rule, ``score(y) = log P(y)``.
Multi-label with ``multilabel_loss='squared'`` (the regression rule of
:mod:`mhe_jax.ops.cascade`): every level is a regression of 0/1 targets
("this child holds one of the row's labels"), the beam keeps each level's
best raw logits, and ``score(y) = z_H(y)``, the last level's logit: the
upper levels route, the leaves rank. This is the head that
:mod:`mhe_jax.fit` fits in closed form (ridge regression per level).

Losses. Single-label: ``-score(y)`` = the sum over levels of the CE over the
``r_h`` children of the *true* prefix. This is the exact negative
log-likelihood of the model that ``topk`` ranks by, it does not depend on the
beam, and it costs ``r_1 + (H-1) * r_h`` logits per example. (A CE over all
kept prefixes' children would make the level-``h`` probability depend on
which other prefixes happen to share the beam, so the scores ``topk`` returns
would not be a function of the label.) Multi-label: BCE at each level over
the children of the kept prefixes, with teacher forcing: at every level the
kept set is the example's ground-truth prefixes first, then the best-scoring
other prefixes up to the beam width (if an example has more distinct
ground-truth prefixes at a level than the width, its best-scoring ones are
kept). The non-ground-truth prefixes in the beam are the hard negatives the
next level learns to reject. Multi-label with ``multilabel_loss='softmax'``:
the cross-entropy of ``P`` against the uniform distribution over the row's
labels, ``-(1/|Y|) sum_{y in Y} log P(y)`` -- the label-set softmax of
:class:`~mhe_jax.nn.vanilla.VanillaHead` with ``P`` factorised down the
tree. It needs the children of the ground-truth prefixes only; the
teacher-forced beam supplies them, so a row with more than ``beam``
distinct ground-truth prefixes at a level is trained, that step, on the
labels under the kept ones (``|Y|`` then counts those labels).
Multi-label with ``multilabel_loss='squared'``: the sum over levels of the
squared error ``(z - t)^2`` of the children of the teacher-forced beam
(all ``r_1`` groups at level 1), ``t`` the 0/1 membership target.

Inference (:meth:`MHCHead.topk`) runs the beam without forcing and costs
``r_1 + (H-1) * beam * r_h`` logits per example instead of ``C``; it returns
the exact top-k among the labels whose prefixes the beam kept, for ``k`` up
to ``beam * r_H`` less the codes ``>= C`` under the last prefix
(``MHCHead.max_k``). Any ``H >= 2``; shapes are static under ``jit``, the
beam width at level ``h`` is ``min(beam, n_h)`` (``n_h`` valid prefixes), so
no padding is needed, and nothing goes to the host.

Outputs and scores (the heads' contract, :mod:`mhe_jax.nn.heads`).
``head(x)`` is the level-1 logits ``[B, r_1]`` (the group scores), the head's
raw outputs; the other levels' logits depend on the prefixes kept
(:meth:`MHCHead.child_logits`). :meth:`MHCHead.topk` scores are
``score(y)`` above: log-probabilities (the sum of the levels'
``log_softmax``, or ``log_sigmoid`` under ``'bce'``), equal to
:meth:`MHCHead.log_probs` of the returned labels. With
``dtype=jnp.bfloat16`` the matmuls and einsums of every level run in
bfloat16 and the logits, per-level log-softmaxes, beam scores and losses are
float32.

Example::

  codec = LabelCodec.balanced(100_000, 2)
  head = MHCHead(512, codec, beam=16, hidden=256, rngs=nnx.Rngs(0))
  x_bd, labels_b = jnp.ones((8, 512)), jnp.arange(8) * 12_345
  loss = head.loss(x_bd, labels_b)                        # scalar
  scores_bk, labels_bk = head.topk(x_bd, 5)               # [8, 5] each
"""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from mhe_jax.nn import head_utils
from mhe_jax.ops import cascade
from mhe_jax.ops import losses
from mhe_jax.ops.codec import LabelCodec

ArrayLike = jax.typing.ArrayLike


def _lookup(table_n: jax.Array, idx: jax.Array) -> jax.Array:
  """``table_n[idx]`` -> ``idx.shape + table_n.shape[1:]``, sharded like
  ``idx``'s batch (first) axis.

  On an Explicit mesh a gather with batch-sharded indices needs its output
  sharding spelled out (``nnx.Embed`` would fail there).
  """
  sharding = jax.typeof(idx).sharding
  out_sharding = None
  if sharding.spec and sharding.spec[0] is not None:
    rest = (None,) * (idx.ndim - 1 + table_n.ndim - 1)
    out_sharding = jax.sharding.NamedSharding(
        sharding.mesh, jax.sharding.PartitionSpec(sharding.spec[0], *rest))
  return table_n.at[idx].get(out_sharding=out_sharding)


CHILD_EMBEDDINGS = ("gated", "table")
MULTILABEL_LOSSES = ("bce", "softmax", "squared")


class MHCHead(nnx.Module):
  """Multi-Head Cascade head (paper Sec. 3.3), single- or multi-label.

  Attributes:
    codec: the label codec, ``H = codec.num_heads >= 2``.
    num_classes: ``C``.
    beam: prefixes kept per level; level ``h`` keeps ``min(beam, n_h)``,
      with ``n_h`` the number of valid length-``h`` prefixes.
    hidden: width of the projections and prefix embeddings.
    child_embedding: ``'gated'`` or ``'table'`` (see the module docstring).
    multilabel: label sets (True) or one label per example.
    multilabel_loss: ``'bce'``, ``'softmax'`` or ``'squared'``
      (multi-label only).
    max_k: the largest ``k`` :meth:`topk` accepts (see
      :func:`mhe_jax.ops.cascade.max_topk`); ``C`` when ``beam >= n_{H-1}``,
      at least ``(beam - 1) * r_H + 1`` otherwise.
    dtype: the matmuls' input dtype, None: the features' and parameters'.
  """

  def __init__(self, in_features: int, codec: LabelCodec, *, beam: int,
               hidden: int, multilabel: bool = False,
               multilabel_loss: str = "bce",
               child_embedding: str = "gated",
               dtype: Any = None, param_dtype: Any = jnp.float32,
               kernel_init: nnx.Initializer = nnx.initializers.lecun_normal(),
               bias_init: nnx.Initializer = nnx.initializers.zeros_init(),
               embedding_init: nnx.Initializer | None = None,
               rngs: nnx.Rngs):
    """Builds the head.

    Args:
      in_features: ``D``, the feature size.
      codec: label codec with at least 2 heads.
      beam: beam width ``>= 1``.
      hidden: hidden size ``>= 1`` of levels ``2 .. H``.
      multilabel: the scoring rule and loss (see the module docstring).
      multilabel_loss: with ``multilabel``, ``'bce'`` (sigmoid scores, BCE
        over the teacher-forced beam), ``'softmax'`` (the chain-rule
        distribution, label-set cross-entropy) or ``'squared'`` (per-level
        regressions, leaf scores); see the module docstring.
      child_embedding: ``'gated'`` (prefix embedding gating a shared output
        layer) or ``'table'`` (a vector and bias per child code), see the
        module docstring.
      dtype: matmul and einsum input dtype (e.g. ``jnp.bfloat16``); None:
        the promoted dtype of the features and parameters. Logits are
        accumulated, and log-softmaxes, beam scores and losses computed, in
        float32.
      param_dtype: dtype of every parameter.
      kernel_init: initializer of the linear layers' kernels (level 1, the
        projections ``P_h`` and the gated output layers ``W_h``).
      bias_init: initializer of the linear layers' biases and of the
        table's per-child biases ``c_h``.
      embedding_init: initializer of the prefix embeddings ``e_h`` (gated)
        or the child vectors ``t_h`` (table); None: ``normal(1)`` for
        ``e_h``, ``normal(1 / sqrt(hidden))`` for ``t_h``.
      rngs: initialisation keys.
    """
    if multilabel_loss not in MULTILABEL_LOSSES:
      raise ValueError(f"multilabel_loss must be one of {MULTILABEL_LOSSES}, "
                       f"got {multilabel_loss!r}")
    if child_embedding not in CHILD_EMBEDDINGS:
      raise ValueError(f"child_embedding must be one of {CHILD_EMBEDDINGS}, "
                       f"got {child_embedding!r}")
    if not isinstance(codec, LabelCodec):
      raise TypeError(f"codec must be a LabelCodec, got {type(codec)}")
    if codec.num_heads < 2:
      raise ValueError(f"MHCHead needs a codec with >= 2 heads, got {codec}")
    if int(beam) != beam or beam < 1:
      raise ValueError(f"beam must be an integer >= 1, got {beam!r}")
    if int(hidden) != hidden or hidden < 1:
      raise ValueError(f"hidden must be an integer >= 1, got {hidden!r}")
    self.codec = codec
    self.num_classes = codec.num_classes
    self.beam = int(beam)
    self.hidden = int(hidden)
    self.multilabel = bool(multilabel)
    self.multilabel_loss = multilabel_loss
    # Sigmoid scores per child (the BCE model), else the softmax chain.
    self.sigmoid = self.multilabel and multilabel_loss == "bce"
    # Raw per-level logits, leaf scores (the regression rule).
    self.regression = self.multilabel and multilabel_loss == "squared"
    self.child_embedding = child_embedding
    self.dtype = dtype
    self.max_k = cascade.max_topk(codec, self.beam)
    counts = cascade.valid_prefix_counts(codec)
    linear = lambda i, o: nnx.Linear(  # pylint: disable=g-long-lambda
        i, o, param_dtype=param_dtype, kernel_init=kernel_init,
        bias_init=bias_init, rngs=rngs)
    self.first = linear(in_features, codec.radices[0])
    # Level h = 2 .. H lives at index h - 2.
    self.proj = nnx.List([linear(in_features, self.hidden)
                          for _ in codec.radices[1:]])
    if child_embedding == "gated":
      init = (nnx.initializers.normal(1.0) if embedding_init is None
              else embedding_init)
      self.prefix_embed = nnx.List([
          nnx.Embed(n, self.hidden, param_dtype=param_dtype,
                    embedding_init=init, rngs=rngs)
          for n in counts[:-1]])
      self.out = nnx.List([linear(self.hidden, r) for r in codec.radices[1:]])
    else:
      # Rows: every child code of a valid prefix, n_{h-1} * r_h (the codes
      # >= n_h among them are masked by the scoring rule, never trained).
      init = (nnx.initializers.normal(1.0 / self.hidden ** 0.5)
              if embedding_init is None else embedding_init)
      self.child_table = nnx.List([
          nnx.Param(init(rngs.params(), (n * r, self.hidden), param_dtype))
          for n, r in zip(counts[:-1], codec.radices[1:])])
      self.child_bias = nnx.List([
          nnx.Param(bias_init(rngs.params(), (n * r,), param_dtype))
          for n, r in zip(counts[:-1], codec.radices[1:])])

  def _linear(self, layer: nnx.Linear, x: ArrayLike) -> jax.Array:
    """``layer(x)`` under the head's dtype, accumulated in float32."""
    return head_utils.dense(x, layer.kernel[...], layer.bias[...], self.dtype)

  def __call__(self, x_bd: ArrayLike) -> jax.Array:
    """Level-1 logits, float32 ``[B, r_1]`` (the group scores); the head's
    raw outputs (see :meth:`topk` for the label scores)."""
    return self._linear(self.first, x_bd)

  def child_logits(self, x_bd: ArrayLike, level: int,
                   prefixes: ArrayLike) -> jax.Array:
    """Logits of the children of given prefixes at one level.

    Args:
      x_bd: features ``[B, D]``.
      level: ``h`` in ``2 .. H``.
      prefixes: int ``[B, W]`` length-``(h-1)`` prefix codes, each in
        ``[0, n_{h-1})`` (the valid prefixes).

    Returns:
      float32 ``[B, W, r_h]``: ``W_h^T (P_h x * e_h[p]) + b_h`` (gated), or
      ``<P_h x, t_h[q]> + c_h[q]`` for the children ``q = p * r_h + j``
      (table).
    """
    if not 2 <= level <= self.codec.num_heads:
      raise ValueError(
          f"level must be in [2, {self.codec.num_heads}], got {level}")
    i = level - 2
    u_bk = self._linear(self.proj[i], x_bd)
    if self.child_embedding == "table":
      r = self.codec.radices[level - 1]
      codes_bwr = (jnp.asarray(prefixes, jnp.int32)[..., None] * r +
                   jnp.arange(r, dtype=jnp.int32))
      rows_bwrk = _lookup(self.child_table[i][...], codes_bwr)
      acc = head_utils.accumulation_dtype(u_bk, rows_bwrk)
      u_bk, rows_bwrk = self._compute(u_bk, rows_bwrk)
      logits_bwr = jnp.einsum("bk,bwrk->bwr", u_bk, rows_bwrk,
                              preferred_element_type=acc)
      bias_bwr = _lookup(self.child_bias[i][...], codes_bwr)
      return (logits_bwr + bias_bwr.astype(acc)).astype(jnp.float32)
    emb_bwk = _lookup(self.prefix_embed[i].embedding[...],
                      jnp.asarray(prefixes, jnp.int32))
    out = self.out[i]
    kernel_kr = out.kernel[...]
    acc = head_utils.accumulation_dtype(u_bk, emb_bwk, kernel_kr)
    u_bk, emb_bwk, kernel_kr = self._compute(u_bk, emb_bwk, kernel_kr)
    logits_bwr = jnp.einsum("bk,bwk,kr->bwr", u_bk, emb_bwk, kernel_kr,
                            preferred_element_type=acc)
    return (logits_bwr + out.bias[...].astype(acc)).astype(jnp.float32)

  def _leaf_rows(self) -> jax.Array:
    """int32 ``[C]``: label ``y``'s row of the last level's child table
    (its code: the last level's child ``p * r_H + d_H`` is the code)."""
    if self.child_embedding != "table":
      raise ValueError("label embeddings need child_embedding='table' (a "
                       f"vector per label), got {self.child_embedding!r}")
    return self.codec.to_codes(jnp.arange(self.num_classes, dtype=jnp.int32))

  def label_embeddings(self) -> jax.Array:
    """``[C, hidden]``: each label's last-level child vector ``t_H``, in
    label order (its last-level logit is ``<P_H x, t_H> + c_H``); what a
    tied encoder reads as its item table. child_embedding='table' only."""
    rows_c = self._leaf_rows()
    return _lookup(self.child_table[-1][...], rows_c)

  def set_label_embeddings(self, table_ck: ArrayLike) -> None:
    """Writes ``[C, hidden]`` label vectors into the last level's table."""
    rows_c = self._leaf_rows()
    table = self.child_table[-1][...]
    self.child_table[-1][...] = table.at[rows_c].set(
        jnp.asarray(table_ck, table.dtype))

  def _compute(self, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    """The arrays in the head's compute dtype (unchanged when None)."""
    if self.dtype is None:
      return arrays
    return tuple(a.astype(self.dtype) for a in arrays)

  def log_probs(self, x_bd: ArrayLike, labels: ArrayLike) -> jax.Array:
    """``score(y) = sum_h log p_h(d_h | prefix)`` of given labels.

    Args:
      x_bd: features ``[B, D]``.
      labels: int ``[B]`` or ``[B, L]``, -1 padded.

    Returns:
      float32 ``[B]`` or ``[B, L]``; ``-inf`` for padding (and, under
      ``jit``, for out-of-range labels).
    """
    self.codec.validate_labels(labels)
    labels = self.codec.to_codes(labels)  # the cascade works on codes
    squeeze = labels.ndim == 1
    labels_bl = labels[:, None] if squeeze else labels
    x_bd = jnp.asarray(x_bd)
    valid_bl = (labels_bl >= 0) & (labels_bl < self.num_classes)
    safe_bl = jnp.where(valid_bl, labels_bl, 0).astype(jnp.int32)
    total_bl = 0.
    for level, (r, s) in enumerate(
        zip(self.codec.radices, self.codec.strides), start=1):
      prefix_bl = safe_bl // (s * r)  # length h-1 prefix
      codes_blr = prefix_bl[..., None] * r + jnp.arange(r, dtype=jnp.int32)
      if level == 1:
        logits_blr = jnp.broadcast_to(
            self(x_bd)[:, None, :], codes_blr.shape)
      else:
        logits_blr = self.child_logits(x_bd, level, prefix_bl)
      logp_blr = cascade.level_log_probs(logits_blr, codes_blr, self.codec,
                                         level, multilabel=self.sigmoid,
                                         regression=self.regression)
      digit_bl = (safe_bl // s) % r
      picked_bl = jnp.take_along_axis(
          logp_blr, digit_bl[..., None], axis=-1)[..., 0]
      # Regression rule: the last level's logit alone.
      total_bl = picked_bl if self.regression else total_bl + picked_bl
    out = jnp.where(valid_bl, total_bl, -jnp.inf)
    return out[:, 0] if squeeze else out

  def beam_search(self, x_bd: ArrayLike,
                  labels: ArrayLike | None = None) -> cascade.CascadeBeam:
    """Runs the beam; with ``labels`` their prefixes are kept first.

    Args:
      x_bd: features ``[B, D]``.
      labels: optional int ``[B]`` or ``[B, L]`` (-1 padded) for teacher
        forcing: at every level the ground-truth prefixes are kept, then the
        best others fill the width. If an example has more distinct
        ground-truth prefixes at a level than the width, the best-scoring
        ones are kept.

    Returns:
      A :class:`~mhe_jax.ops.cascade.CascadeBeam`.
    """
    x_bd = jnp.asarray(x_bd)
    if labels is not None:
      self.codec.validate_labels(labels)
    return cascade.cascade_search(
        self(x_bd), lambda h, p: self.child_logits(x_bd, h, p), self.codec,
        self.beam, multilabel=self.sigmoid,
        forced_labels=None if labels is None else self.codec.to_codes(labels),
        regression=self.regression)

  def _labels(self, x_bd: ArrayLike, labels: ArrayLike
              ) -> tuple[jax.Array, jax.Array]:
    """Checked labels (``[B]``, or ``[B, L]`` with labels ``>= C`` as -1)
    and the examples the mean loss counts by their labels."""
    labels = head_utils.check_labels(labels, self.codec, jnp.shape(x_bd)[0],
                                     self.multilabel)
    if self.multilabel:
      labels = jnp.where(labels < self.num_classes, labels, -1)
      return labels, (labels >= 0).any(-1)
    return labels, head_utils.labelled(labels, self.num_classes, False)

  def _per_example(self, x_bd: ArrayLike, labels: jax.Array,
                   labelled_b: jax.Array) -> jax.Array:
    x_bd = jnp.asarray(x_bd)
    if not self.multilabel:
      loss_b = -self.log_probs(x_bd, labels)
    elif self.sigmoid or self.regression:
      loss_b = self._multilabel_loss(x_bd, labels)
    else:
      loss_b = self._label_set_softmax_loss(x_bd, labels)
    return jnp.where(labelled_b, loss_b, 0.)

  def per_example_loss(self, x_bd: ArrayLike, labels: ArrayLike, *,
                       rng: jax.Array | None = None) -> jax.Array:
    """The loss of each example, float32 ``[B]``.

    Args:
      x_bd: features ``[B, D]``.
      labels: int ``[B]`` (single-label) or ``[B, L]`` -1 padded
        (multi-label; ``[B]`` is read as ``L = 1``).
      rng: unused (the loss is deterministic); accepted for the shared head
        interface.

    Returns:
      Single-label: ``-score(y)`` (CE per level along the true path);
      multi-label: the sum of the levels' BCEs over the teacher-forced beam
      (``'bce'``) or the label-set cross-entropy (``'softmax'``). 0 for an
      example without a label (multi-label: a row without labels).
    """
    del rng
    labels, labelled_b = self._labels(x_bd, labels)
    return self._per_example(x_bd, labels, labelled_b)

  def loss(self, x_bd: ArrayLike, labels: ArrayLike, *,
           rng: jax.Array | None = None,
           where: ArrayLike | None = None) -> jax.Array:
    """Mean of :meth:`per_example_loss` over the counted examples.

    Args:
      x_bd: features ``[B, D]``.
      labels: int ``[B]`` (single-label) or ``[B, L]`` -1 padded
        (multi-label; ``[B]`` is read as ``L = 1``). An example counts if
        ``where`` allows it and it has a label (multi-label too: unlike the
        other heads, a row without labels does not count); others add
        nothing.
      rng: unused (the loss is deterministic); accepted for the shared head
        interface.
      where: optional bool ``[B]``.

    Returns:
      float32 scalar, ``masked_mean(per_example_loss, where & labelled)``:
      single-label, the mean of ``-score(y)``; multi-label, the mean
      per-example loss over the teacher-forced beam. 0 if no example counts.
    """
    del rng
    labels, labelled_b = self._labels(x_bd, labels)
    return losses.masked_mean(self._per_example(x_bd, labels, labelled_b),
                              head_utils.example_mask(labelled_b, where))

  def _multilabel_loss(self, x_bd: jax.Array, labels_bl: jax.Array
                       ) -> jax.Array:
    """Per-example sum over levels of BCE (squared error under
    ``'squared'``) over the teacher-forced beam."""
    search = self.beam_search(x_bd, labels_bl)
    codes_bl = self.codec.to_codes(labels_bl)
    counts = cascade.valid_prefix_counts(self.codec)
    b = x_bd.shape[0]
    loss_b = jnp.zeros((b,), jnp.float32)
    for level, (logits, codes, s) in enumerate(
        zip(search.logits, search.child_codes, self.codec.strides), start=1):
      logits_bn = logits.reshape(b, -1).astype(jnp.float32)
      codes_bn = codes.reshape(b, -1)
      truth_bl = jnp.where(codes_bl >= 0, codes_bl // s, -1)
      target_bn = cascade.is_member(codes_bn, truth_bl).astype(jnp.float32)
      if self.regression:
        err_bn = jnp.square(logits_bn - target_bn)
      else:
        err_bn = jax.nn.softplus(logits_bn) - target_bn * logits_bn
      loss_b = loss_b + jnp.where(codes_bn < counts[level - 1], err_bn,
                                  0.).sum(-1)
    return loss_b

  def _label_set_softmax_loss(self, x_bd: jax.Array, labels_bl: jax.Array
                              ) -> jax.Array:
    """Per-example ``-(1/|Y|) sum_y log P(y)`` over the labels the
    teacher-forced beam keeps (0 for a row without labels)."""
    search = self.beam_search(x_bd, labels_bl)
    codes_bl = self.codec.to_codes(labels_bl)
    b = x_bd.shape[0]
    kept_bl = codes_bl >= 0
    total_bl = jnp.zeros(codes_bl.shape, jnp.float32)
    for level, (logits, codes, s) in enumerate(
        zip(search.logits, search.child_codes, self.codec.strides), start=1):
      logp_bn = cascade.level_log_probs(logits, codes, self.codec, level,
                                        multilabel=False).reshape(b, -1)
      where_bl = cascade.positions(codes.reshape(b, -1),
                                   jnp.where(kept_bl, codes_bl // s, -1))
      kept_bl = kept_bl & (where_bl >= 0)
      total_bl = total_bl + jnp.take_along_axis(
          logp_bn, jnp.maximum(where_bl, 0), axis=-1)
    total_bl = jnp.where(kept_bl, total_bl, 0.)
    count_b = kept_bl.sum(-1).astype(jnp.float32)
    return -total_bl.sum(-1) / jnp.maximum(count_b, 1.)

  def topk(self, x_bd: ArrayLike, k: int) -> tuple[jax.Array, jax.Array]:
    """Top-k labels by ``score(y)`` among the labels the beam reaches.

    Exact for the head's scoring rule given the beam: the returned labels are
    the k best of the labels whose every prefix the (unforced) beam kept;
    when ``beam >= n_{H-1}`` that is the exact top-k over all ``C`` labels.

    Args:
      x_bd: features ``[B, D]``.
      k: ``1 <= k <= max_k`` (static).

    Returns:
      ``(scores [B, k] float32 descending, labels [B, k] int32)``, labels in
      ``[0, C)``; the scores are ``score(y)``, log-probabilities equal to
      :meth:`log_probs` of the labels.
    """
    x_bd = jnp.asarray(x_bd)
    scores_bk, codes_bk = cascade.cascade_topk(
        self(x_bd), lambda h, p: self.child_logits(x_bd, h, p), self.codec,
        self.beam, k, multilabel=self.sigmoid, regression=self.regression)
    return scores_bk, self.codec.to_labels(codes_bk)
