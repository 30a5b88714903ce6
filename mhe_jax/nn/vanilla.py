"""The vanilla (full) classifier head: the baseline of every MHE comparison.

One linear layer ``logits_bc = x_bd @ kernel_dc + bias_c`` over all ``C``
classes, trained with softmax cross-entropy (single-label) or, multi-label,
per-label sigmoid binary cross-entropy summed over the classes (Liang et
al., TPAMI 2024, Sec. 2 "vanilla classifier") or the multi-label softmax
(cross-entropy against the uniform distribution over the example's labels;
``multilabel_loss='softmax'``) or the squared error of the 0/1 label row
(``multilabel_loss='squared'``: one-vs-rest least squares, what
:mod:`mhe_jax.fit` solves in closed form). It is written the way a
performance-minded user would write it, so that comparisons with the
multi-head heads are fair:

* The loss, its gradient and top-k walk over the classes in chunks
  (:mod:`mhe_jax.ops.chunked`): the ``[B, C]`` logits and their gradient are
  never alive at once; one ``[B, chunk_size]`` block is. Small problems use
  one dense block with plain autodiff, which is faster there.
* The class axis can be sharded over a mesh axis (``'classes'``) with a
  distributed logsumexp and top-k, while the batch is split over others
  (``'data'``).

Sharding contract. The kernel ``[in_features, C]`` and bias ``[C]`` carry the
logical axis names ``('embed', 'classes')`` and ``('classes',)`` as
``out_sharding`` metadata (never applied eagerly, so the head builds without
any mesh). A trainer maps them to its mesh with rules, e.g.::

  with nnx.logical_axis_rules([("embed", None), ("classes", "classes")]):
    specs = nnx.get_partition_spec(nnx.state(abstract_model))

and creates the state with those shardings (``jit(init, out_shardings=...)``).
The head then shards its computation over the mesh that is, in order: the
``mesh`` constructor argument; the context mesh (``jax.set_mesh``); the mesh of
Explicit-sharded inputs. The classes are split over its axis ``class_axis``
when that axis exists with size > 1; the batch over ``batch_axes`` (default:
the axes the features' Explicit sharding already uses; pass them for Auto
meshes). If ``C`` is not divisible by the class-axis size known at
construction (``mesh`` or the context mesh), the parameters get
``padded_classes`` columns, the extra ones masked out of losses and top-k
and never returned. On Explicit meshes, run the head under ``jax.jit`` inside
``jax.set_mesh(mesh)``, as JAX requires.

Outputs and scores (the heads' contract, :mod:`mhe_jax.nn.heads`):
``head(x)`` is the logits ``[B, C]``, the head's raw outputs;
:meth:`VanillaHead.topk` scores are those logits, not log-probabilities
(normalising them would cost a second pass over the ``C`` classes; the
order is the same). With ``dtype=jnp.bfloat16`` the matmuls run in bfloat16
and the logits, log-sum-exps and losses are float32.

Example::

  head = VanillaHead(512, 100_000, rngs=nnx.Rngs(0))
  x_bd, labels_b = jnp.ones((8, 512)), jnp.arange(8)
  loss = head.loss(x_bd, labels_b)                 # scalar
  scores_bk, labels_bk = head.topk(x_bd, 5)        # [8, 5] each

  mesh = jax.make_mesh((2, 4), ("data", "classes"),
                       axis_types=(jax.sharding.AxisType.Explicit,) * 2)
  sharded = VanillaHead(512, 100_000, mesh=mesh, rngs=nnx.Rngs(0))
  with jax.set_mesh(mesh):                          # classes over 4 devices
    loss = nnx.jit(lambda h, x, y: h.loss(x, y))(sharded, x_bd, labels_b)
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mhe_jax.nn import head_utils
from mhe_jax.ops import chunked
from mhe_jax.ops import losses

ArrayLike = jax.typing.ArrayLike

KERNEL_AXES = ("embed", "classes")
BIAS_AXES = ("classes",)


class VanillaHead(nnx.Module):
  """Full linear classifier over ``num_classes`` classes, chunked and shardable.

  Attributes:
    num_classes: ``C``, the number of classes.
    padded_classes: columns of the kernel, ``C`` rounded up to a multiple of
      the class-axis size (``C`` when not sharded or divisible).
    multilabel: label sets instead of one label per example.
    multilabel_loss: ``'bce'``, ``'softmax'`` or ``'squared'``, the loss on
      label sets.
    dtype: the matmuls' input dtype, None: the features' and parameters'.
    kernel: ``nnx.Param [in_features, padded_classes]``.
    bias: ``nnx.Param [padded_classes]``.
  """

  def __init__(self, in_features: int, num_classes: int, *,
               multilabel: bool = False,
               multilabel_loss: Literal["bce", "softmax", "squared"] = "bce",
               chunk_size: int | None = None,
               mesh: Mesh | AbstractMesh | None = None,
               class_axis: str = "classes",
               batch_axes: str | Sequence[str] | None = None,
               dtype: Any = None, param_dtype: Any = jnp.float32,
               kernel_init: nnx.Initializer = nnx.initializers.lecun_normal(),
               bias_init: nnx.Initializer = nnx.initializers.zeros_init(),
               rngs: nnx.Rngs):
    """Builds the head.

    Args:
      in_features: ``d``, the feature size.
      num_classes: ``C >= 2``.
      multilabel: labels are ``[B, L]`` -1 padded sets (loss:
        ``multilabel_loss``); otherwise labels are ``[B]`` and the loss is
        softmax CE.
      multilabel_loss: with ``multilabel``, ``'bce'`` (default): per-label
        sigmoid BCE summed over the classes; ``'softmax'``: softmax CE
        against the row's labels normalised to sum 1, ``logsumexp(z) -
        mean_{label} z`` (0 for a row without labels). Both rank by the
        logits. BCE is the default by measurement: configs/delicious.py
        (head=best) on its validation tail, P@1 / P@5 69.4 / 58.7 with BCE, 67.5 / 57.9
        with the softmax (benchmarks/results/xmc_tuning.json).
        ``'squared'``: ``sum_c (z_c - y_c)^2`` against the 0/1 label row
        (materialises the ``[B, C]`` logits; for the closed-form fit of
        :mod:`mhe_jax.fit` and its evaluation, not for sharded training).
      chunk_size: classes per chunk (per device when sharded). None: the
        measured default of :mod:`mhe_jax.ops.chunked` (dense block for small
        ``B * C``, else chunks of ``DEFAULT_CHUNK_SIZE``). An int: one dense
        block when ``C <= chunk_size``, else chunks of that size.
      mesh: the device mesh to shard over; None: the context mesh at call
        time (see the module docstring). A concrete ``Mesh`` also places the
        parameters on it, classes split over ``class_axis``.
      class_axis: the mesh axis the classes are split over.
      batch_axes: the mesh axes the batch is split over; None: inferred from
        the features' Explicit sharding.
      dtype: matmul input dtype (e.g. ``jnp.bfloat16``); None: the promoted
        dtype of the features and parameters. Logits are accumulated, and
        log-sum-exps, sigmoids and losses computed, in float32.
      param_dtype: dtype of the kernel and bias.
      kernel_init: initializer of the kernel (as ``nnx.Linear``).
      bias_init: initializer of the bias.
      rngs: ``rngs.params()`` draws the kernel and the bias.
    """
    if int(num_classes) != num_classes or num_classes < 2:
      raise ValueError(
          f"num_classes must be an integer >= 2, got {num_classes!r}")
    if multilabel_loss not in ("bce", "softmax", "squared"):
      raise ValueError(f"multilabel_loss must be 'bce', 'softmax' or "
                       f"'squared', got {multilabel_loss!r}")
    if int(in_features) != in_features or in_features < 1:
      raise ValueError(
          f"in_features must be a positive integer, got {in_features!r}")
    if chunk_size is not None and (int(chunk_size) != chunk_size or
                                   chunk_size < 1):
      raise ValueError(
          f"chunk_size must be None or a positive integer, got {chunk_size!r}")
    self.in_features = int(in_features)
    self.num_classes = int(num_classes)
    self.multilabel = bool(multilabel)
    self.multilabel_loss = multilabel_loss
    self.chunk_size = None if chunk_size is None else int(chunk_size)
    self.mesh = mesh
    self.class_axis = class_axis
    self.batch_axes = (batch_axes if batch_axes is None or isinstance(
        batch_axes, str) else tuple(batch_axes))
    self.dtype = dtype

    layout_mesh = mesh if mesh is not None else jax.sharding.get_abstract_mesh()
    shards = 1
    if not layout_mesh.empty and class_axis in layout_mesh.axis_names:
      shards = layout_mesh.shape[class_axis]
    self.padded_classes = -(-self.num_classes // shards) * shards

    # Initialise the C real columns alone and pad with zeros, so the initial
    # model is the same whatever mesh (and so padding) it is built for.
    kernel_dc = kernel_init(rngs.params(), (self.in_features, self.num_classes),
                            param_dtype)
    bias_c = bias_init(rngs.params(), (self.num_classes,), param_dtype)
    if self.padded_classes > self.num_classes:  # inert padding columns
      extra = self.padded_classes - self.num_classes
      kernel_dc = jnp.pad(kernel_dc, ((0, 0), (0, extra)))
      bias_c = jnp.pad(bias_c, (0, extra))
    if isinstance(mesh, Mesh) and shards > 1:
      kernel_dc = jax.device_put(kernel_dc,
                                 NamedSharding(mesh, P(None, class_axis)))
      bias_c = jax.device_put(bias_c, NamedSharding(mesh, P(class_axis)))
    self.kernel = nnx.Param(kernel_dc, out_sharding=KERNEL_AXES,
                            eager_sharding=False)
    self.bias = nnx.Param(bias_c, out_sharding=BIAS_AXES, eager_sharding=False)

  def label_embeddings(self) -> jax.Array:
    """``[C, in_features]``: label ``c``'s kernel column (its score is
    ``<x, row c> + b_c``); what a tied encoder reads as its item table."""
    return self.kernel[...][:, :self.num_classes].T

  def set_label_embeddings(self, table_cd: ArrayLike) -> None:
    """Writes ``[C, in_features]`` rows into the kernel's ``C`` columns."""
    kernel = self.kernel[...]
    self.kernel[...] = kernel.at[:, :self.num_classes].set(
        jnp.asarray(table_cd, kernel.dtype).T)

  def _op_kwargs(self) -> dict[str, Any]:
    return dict(chunk_size=self.chunk_size, num_classes=self.num_classes,
                mesh=self.mesh, class_axis=self.class_axis,
                batch_axes=self.batch_axes, dtype=self.dtype)

  def __call__(self, x_bd: ArrayLike) -> jax.Array:
    """Raw logits ``[B, C]`` (materialised; for small C or inspection).

    Args:
      x_bd: features ``[B, in_features]``.

    Returns:
      float32 (or the inputs' wider float) ``[B, num_classes]``.
    """
    logits_bc = head_utils.dense(x_bd, self.kernel[...], self.bias[...],
                                 self.dtype)
    if self.padded_classes > self.num_classes:
      sharding = jax.typeof(logits_bc).sharding
      if (not sharding.mesh.empty and sharding.spec[1:2] != (None,) and
          any(t == jax.sharding.AxisType.Explicit
              for t in sharding.mesh.axis_types)):
        # Explicit axes cannot slice a class-sharded dimension unevenly.
        logits_bc = jax.sharding.reshard(
            logits_bc, NamedSharding(sharding.mesh, P(sharding.spec[0], None)))
      logits_bc = logits_bc[:, :self.num_classes]
    return logits_bc

  def _labels(self, labels: ArrayLike) -> jax.Array:
    labels = jnp.asarray(labels)
    if self.multilabel and labels.ndim != 2:
      raise ValueError(
          f"multilabel head: labels must be int [B, L], -1 padded; got "
          f"shape {labels.shape}")
    if not self.multilabel and labels.ndim != 1:
      raise ValueError(
          f"single-label head: labels must be int [B]; got shape "
          f"{labels.shape} (pass multilabel=True for label sets)")
    return labels

  def _per_example(self, x_bd: ArrayLike, labels: jax.Array) -> jax.Array:
    if self.multilabel and self.multilabel_loss == "squared":
      return self._squared_error(x_bd, labels)
    if not self.multilabel or self.multilabel_loss == "softmax":
      loss_fn = chunked.chunked_softmax_cross_entropy
    else:
      loss_fn = chunked.chunked_sigmoid_binary_cross_entropy
    # Single-label: 0 for a label outside [0, C) (no label).
    return loss_fn(jnp.asarray(x_bd), self.kernel[...], self.bias[...],
                   labels, **self._op_kwargs())

  def _squared_error(self, x_bd: ArrayLike, labels_bl: jax.Array
                     ) -> jax.Array:
    """``sum_c (z_c - y_c)^2 = sum_c z_c^2 - sum_{l in Y} (2 z_l - 1)``."""
    z_bc = self(x_bd).astype(jnp.float32)
    valid_bl = (labels_bl >= 0) & (labels_bl < self.num_classes)
    # A label listed twice is one positive: count each distinct label once.
    sorted_bl = jnp.sort(jnp.where(valid_bl, labels_bl, -1), axis=-1)
    first_bl = jnp.concatenate(
        [jnp.ones_like(sorted_bl[:, :1], bool),
         sorted_bl[:, 1:] != sorted_bl[:, :-1]], axis=-1) & (sorted_bl >= 0)
    z_bl = jnp.take_along_axis(z_bc, jnp.maximum(sorted_bl, 0), axis=-1)
    return (jnp.square(z_bc).sum(-1)
            - jnp.where(first_bl, 2. * z_bl - 1., 0.).sum(-1))

  def per_example_loss(self, x_bd: ArrayLike, labels: ArrayLike, *,
                       rng: jax.Array | None = None) -> jax.Array:
    """The loss of each example, float32 ``[B]``, in class chunks.

    Args:
      x_bd: features ``[B, in_features]``.
      labels: single-label: int ``[B]`` in ``[0, C)``, -1 for an unlabelled
        example; multi-label: int ``[B, L]`` label sets padded with -1.
      rng: unused (the vanilla loss is deterministic); part of the head
        interface.

    Returns:
      Softmax CE, 0 for an example without a label; multi-label: BCE summed
      over the C classes, the label-set softmax CE (0 for a row without
      labels), or the squared error of the 0/1 label row.
    """
    del rng
    return self._per_example(x_bd, self._labels(labels))

  def loss(self, x_bd: ArrayLike, labels: ArrayLike, *,
           rng: jax.Array | None = None,
           where: ArrayLike | None = None) -> jax.Array:
    """Mean of :meth:`per_example_loss` over the counted examples.

    Args:
      x_bd: features ``[B, in_features]``.
      labels: single-label: int ``[B]`` in ``[0, C)``, -1 for an unlabelled
        example (not counted); multi-label: int ``[B, L]`` label sets padded
        with -1 (a row of only -1 is a valid example with no positives).
      rng: unused (the vanilla loss is deterministic); part of the head
        interface.
      where: optional bool ``[B]``; False excludes an example.

    Returns:
      float32 scalar, ``masked_mean(per_example_loss, where & labelled)``:
      the sum of per-example losses over the counted examples divided by
      their number (0 when there is none; a multi-label row without labels
      counts).
    """
    del rng
    labels = self._labels(labels)
    counted_b = head_utils.example_mask(
        head_utils.labelled(labels, self.num_classes, self.multilabel), where)
    return losses.masked_mean(self._per_example(x_bd, labels), counted_b)

  def topk(self, x_bd: ArrayLike, k: int) -> tuple[jax.Array, jax.Array]:
    """The k highest-scoring classes, streamed over class chunks.

    Args:
      x_bd: features ``[B, in_features]``.
      k: static int in ``[1, num_classes]``.

    Returns:
      ``(scores [B, k] float32, labels [B, k] int32)``: the logits
      (unnormalised, unlike the other heads' log-probabilities) descending;
      equal logits are ordered smaller label first (as ``jax.lax.top_k``).
    """
    return chunked.chunked_top_k(x_bd, self.kernel[...], self.bias[...], k,
                                 **self._op_kwargs())
