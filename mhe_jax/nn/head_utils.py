"""What the classifier heads share: parameters, the dense layer, label checks
and the examples their mean loss counts.

The heads' contract (see :mod:`mhe_jax.nn.heads`) is written once here where
it is code: :func:`dense` is every head's matmul under its ``dtype`` (inputs
in ``dtype``, float32 accumulation), :func:`example_mask` and
:func:`mhe_jax.ops.losses.masked_mean` are every head's ``loss`` given its
``per_example_loss``.
"""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from mhe_jax.ops.codec import LabelCodec

ArrayLike = jax.typing.ArrayLike


def param(init: nnx.Initializer, rngs: nnx.Rngs, shape: tuple[int, ...],
          names: tuple[str, ...], param_dtype: Any) -> nnx.Param:
  """A parameter annotated with logical axis names, created unsharded."""
  init = nnx.with_partitioning(init, names, eager_sharding=False)
  return nnx.Param(init(rngs.params(), shape, param_dtype))


def accumulation_dtype(*arrays: ArrayLike) -> Any:
  """float32, or the arrays' wider float: what logits are accumulated in."""
  return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def dense(x: ArrayLike, kernel: ArrayLike, bias: ArrayLike | None,
          dtype: Any) -> jax.Array:
  """``x @ kernel + bias`` with the matmul in ``dtype``, accumulated in float32.

  Args:
    x: ``[..., d]`` features.
    kernel: ``[d, n]``.
    bias: ``[n]`` or None.
    dtype: the matmul inputs' dtype (e.g. ``jnp.bfloat16``); None: the
      promoted dtype of ``x`` and ``kernel``.

  Returns:
    ``[..., n]`` in :func:`accumulation_dtype` (float32 unless an input is
    wider); the bias is added in that dtype.
  """
  x, kernel = jnp.asarray(x), jnp.asarray(kernel)
  acc = accumulation_dtype(x, kernel)
  if dtype is not None:
    x, kernel = x.astype(dtype), kernel.astype(dtype)
  y = jnp.dot(x, kernel, preferred_element_type=acc)
  return y if bias is None else y + jnp.asarray(bias).astype(acc)


def check_labels(labels: ArrayLike, codec: LabelCodec, batch: int,
                 multilabel: bool) -> jax.Array:
  """Validates labels; returns ``[B]`` (single-label) or ``[B, L]`` int32.

  A multi-label head reads ``[B]`` labels as ``L = 1``.
  """
  codec.validate_labels(labels)
  labels = jnp.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
  if multilabel:
    if labels.ndim == 1:
      labels = labels[:, None]
    if labels.ndim != 2:
      raise ValueError(
          f"multi-label labels must be [B, L] (-1 padded), got shape "
          f"{labels.shape}")
  elif labels.ndim != 1:
    raise ValueError(
        f"single-label labels must be [B], got shape {labels.shape}; build the "
        "head with multilabel=True for [B, L] label sets")
  if labels.shape[0] != batch:
    raise ValueError(
        f"labels have batch size {labels.shape[0]}, features have {batch}: "
        "the batch sizes differ")
  return labels.astype(jnp.int32)


def labelled(labels: jax.Array, num_classes: int,
             multilabel: bool) -> jax.Array:
  """bool ``[B]``: the examples a loss counts by their labels.

  Single-label: a label in ``[0, C)`` (-1, and under ``jit`` an out-of-range
  label, is no label). Multi-label: every row, also one without labels.
  """
  if multilabel:
    return jnp.ones(labels.shape[:1], bool)
  return (labels >= 0) & (labels < num_classes)


def example_mask(labelled_b: jax.Array, where: ArrayLike | None) -> jax.Array:
  """bool ``[B]``: the examples a head's mean loss counts.

  Args:
    labelled_b: bool ``[B]``, the examples with a label (see
      :func:`labelled`).
    where: optional bool ``[B]`` from the caller; False excludes an example.
  """
  if where is None:
    return labelled_b
  where = jnp.asarray(where, bool)
  if where.shape != labelled_b.shape:
    raise ValueError(
        f"where must be bool [B]={labelled_b.shape}, got shape {where.shape}")
  return labelled_b & where


def replicate_last_axis(x: jax.Array) -> jax.Array:
  """Unshards the last axis of an Explicit-sharded array (no-op otherwise).

  On Explicit meshes a class- or head-sharded axis cannot be sliced unevenly
  or gathered from without saying where the result lives; the heads gather
  it first (the batch axes keep their sharding).
  """
  sharding = jax.typeof(x).sharding
  spec = tuple(getattr(sharding, "spec", ()) or ())
  if len(spec) < x.ndim or spec[-1] is None:
    return x
  return jax.sharding.reshard(
      x, jax.sharding.NamedSharding(sharding.mesh, P(*spec[:-1], None)))
