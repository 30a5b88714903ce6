"""Class-chunked (and class-sharded) losses and top-k of a linear classifier.

The full classifier ``logits_bc = x_bd @ kernel_dc + bias_c`` of an extreme
classification problem is too large to keep alive: with ``B = 256`` and
``C = 10^6`` its float32 logits take 1 GB, and their gradient as much again.
These ops never build it. They walk over the classes in chunks of
``chunk_size``, each chunk a ``[B, chunk_size]`` block of logits that is used
and dropped (the *vocabulary tiling* of large-vocabulary language models):

* softmax cross-entropy keeps a running max and sum of exponentials (an online
  logsumexp) and the logit of the true class; a ``jax.custom_vjp`` backward
  recomputes each chunk's logits and accumulates ``dW``, ``db`` and ``dx``
  from ``softmax(chunk) - onehot``, chunk by chunk. Given label sets it is
  the multi-label softmax: the target is uniform over the row's labels (the
  running sum and count of their logits replace the true-class logit).
* sigmoid binary cross-entropy (multi-label) sums ``softplus(z) - y z`` over
  chunks and uses the analytic gradient ``sigmoid(z) - y`` (as Renee does); the
  targets ``y`` of a chunk are scattered from the -1 padded label lists, so no
  dense ``[B, C]`` target is ever built.
* top-k keeps a running ``[B, k]`` top-k and merges each chunk's top-k into it.

The peak extra memory is ``O(B * chunk_size)`` instead of ``O(B * C)`` (the
``dW`` chunks are written in place into the gradient buffer), at the price of
one more ``[B, d] x [d, C]`` matmul: the backward recomputes the logits. Small
problems (unsharded classes and ``B * C <= DENSE_MAX_LOGITS``, or ``C <=
chunk_size`` when a chunk size is given) use one dense block with ordinary
autodiff instead, which is faster there (measurements at
``DEFAULT_CHUNK_SIZE``).

Sharding. The mesh is the ``mesh`` argument, else the context mesh
(``jax.set_mesh``), else the mesh of Explicit-sharded inputs. When it has an
axis ``class_axis`` (``'classes'``) of size ``S > 1``, the kernel ``[d, C]``
and bias ``[C]`` are split over it (``PartitionSpec(None, class_axis)``; ``S``
must divide ``C``: pad the kernel and pass the true ``num_classes``) and each
device walks its own ``C / S`` classes in chunks inside a ``jax.shard_map``.
The hand-written collectives are: ``pmax`` of the running maxima, then
``psum`` of the sums of exponentials rescaled to the global max (the
distributed logsumexp); ``psum`` of the true-class logit, of the BCE sums and
of the class-partial ``dx``; an all-gather of the per-shard top-k (labels
offset by ``shard index * C / S``), then a final ``top_k``. The batch may at
the same time be split over ``batch_axes`` (e.g. ``'data'``, by default the
axes of ``x``'s Explicit sharding); the hand-written backward then sums
``dW`` and ``db`` over them. A mesh with only batch axes runs the same code
per batch shard. Inputs are resharded to these layouts first (a no-op when
they already have them), as Explicit mesh axes require; on Explicit meshes,
call the ops under ``jax.jit`` inside ``jax.set_mesh``.

Ties in top-k go to the smaller label, exactly like ``jax.lax.top_k`` on the
dense logits: each chunk's top-k is stable, and when merging, the running
top-k (whose labels are all smaller) comes before the new chunk, and shard
``s`` before shard ``s + 1``.

Example::

  x_bd = jnp.ones((8, 32))
  kernel_dc, bias_c = jnp.zeros((32, 100_000)), jnp.zeros((100_000,))
  labels_b = jnp.arange(8)
  loss_b = chunked_softmax_cross_entropy(
      x_bd, kernel_dc, bias_c, labels_b)                # [8], chunks of 2048
  scores_bk, labels_bk = chunked_top_k(
      x_bd, kernel_dc, bias_c, 5)                       # [8, 5] each
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

ArrayLike = jax.typing.ArrayLike
MeshLike = Mesh | AbstractMesh

# Defaults for chunk_size=None, measured on this project's 2-core CPU (jax
# 0.10.2, float32 loss + gradient w.r.t. x, kernel and bias, min of 7-15 runs,
# B in {128, 256, 512}, d in {128, 256, 512}, C from 2^11 to 2^17):
# - chunk size: 1024..4096 were within a few percent of each other and 2048
#   within 4% of the best for CE and BCE everywhere; 8192 lost 6-60% (worst
#   at B=512) and 16384 14% (B=256, C=65536). Top-k likes 2048..4096 too.
# - dense vs chunked: one dense block (plain autodiff, one matmul fewer) beat
#   chunks by 25-40% for CE while B * C <= 2^21 (B=256, C=8192; B=128,
#   C=16384), broke even around 2^22 and lost beyond (x1.45 at B=256,
#   C=65536; x1.8 at B=512, C=16384). Dense BCE lost already at 2^22 (x1.25
#   to x1.6). Hence dense up to 2^21 logits (8 MB of float32).
# Accelerators likely prefer larger chunks; pass chunk_size there.
DEFAULT_CHUNK_SIZE = 2048
DENSE_MAX_LOGITS = 2**21


@dataclasses.dataclass(frozen=True)
class _Layout:
  """Static description of one call: chunking, validity and sharding."""

  chunk_size: int
  dense: bool                 # one dense block with plain autodiff
  num_classes: int            # valid classes; kernel columns beyond are masked
  width: int                  # kernel columns (global)
  mesh: MeshLike | None       # None: no shard_map
  class_axis: str | None      # None: classes not sharded
  batch_axes: tuple[str, ...]
  dtype: Any                  # matmul input dtype, None: the inputs' own

  @property
  def masked(self) -> bool:
    return self.num_classes < self.width

  @property
  def batch_spec(self):
    if not self.batch_axes:
      return None
    return self.batch_axes[0] if len(self.batch_axes) == 1 else self.batch_axes


# ---------------------------------------------------------------- arguments
def _layout(x_bd, kernel_dc, bias_c, *, chunk_size, num_classes, mesh,
            class_axis, batch_axes, dtype) -> _Layout:
  """Validates shapes and sharding arguments; returns the static layout."""
  if jnp.ndim(x_bd) != 2 or jnp.ndim(kernel_dc) != 2 or jnp.ndim(bias_c) != 1:
    raise ValueError(
        f"expected x [B, d], kernel [d, C], bias [C]; got shapes "
        f"{jnp.shape(x_bd)}, {jnp.shape(kernel_dc)}, {jnp.shape(bias_c)}")
  batch, dim = jnp.shape(x_bd)
  if jnp.shape(kernel_dc)[0] != dim or jnp.shape(bias_c)[0] != jnp.shape(
      kernel_dc)[1]:
    raise ValueError(
        f"shapes do not match: x {jnp.shape(x_bd)}, kernel "
        f"{jnp.shape(kernel_dc)}, bias {jnp.shape(bias_c)}")
  width = int(jnp.shape(kernel_dc)[1])
  num_classes = width if num_classes is None else int(num_classes)
  if not 1 <= num_classes <= width:
    raise ValueError(
        f"num_classes must be in [1, {width}] (the kernel width), got "
        f"{num_classes}")
  if chunk_size is not None and (int(chunk_size) != chunk_size or
                                 chunk_size < 1):
    raise ValueError(
        f"chunk_size must be None or a positive integer, got {chunk_size!r}")
  mesh = _find_mesh(mesh, x_bd, kernel_dc)
  if mesh is None:
    if batch_axes:
      raise ValueError(f"batch_axes={batch_axes} given without a mesh")
    class_axis, batch_axes = None, ()
  else:
    if class_axis not in mesh.axis_names or mesh.shape[class_axis] == 1:
      class_axis = None
    if batch_axes is None:
      batch_axes = _explicit_batch_axes(x_bd, class_axis)
    batch_axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(
        batch_axes)
    if (any(a not in mesh.axis_names for a in batch_axes) or
        class_axis in batch_axes):
      raise ValueError(
          f"batch_axes {batch_axes} must be axes of the mesh "
          f"{mesh.axis_names} other than the class axis {class_axis!r}")
    shards = 1 if class_axis is None else mesh.shape[class_axis]
    if width % shards:
      raise ValueError(
          f"the kernel's {width} classes do not divide evenly over the "
          f"{shards} devices of mesh axis {class_axis!r}; pad the kernel to a "
          f"multiple of {shards} columns and pass the true num_classes (the "
          f"padded ones are masked out)")
    data = math.prod(mesh.shape[a] for a in batch_axes)
    if batch % data:
      raise ValueError(
          f"batch size {batch} is not divisible by the {data} devices of "
          f"batch axes {batch_axes}")
    if class_axis is None and not batch_axes:
      mesh = None  # nothing is split: plain computation
  local_width = width // (1 if class_axis is None else mesh.shape[class_axis])
  if chunk_size is None:
    dense = (class_axis is None and
             batch * local_width <= DENSE_MAX_LOGITS)
    chunk_size = DEFAULT_CHUNK_SIZE
  else:
    dense = class_axis is None and local_width <= chunk_size
  return _Layout(int(chunk_size), dense, num_classes, width, mesh, class_axis,
                 batch_axes, None if dtype is None else jnp.dtype(dtype))


def _find_mesh(mesh, *arrays) -> MeshLike | None:
  """The given mesh, else the context mesh, else an Explicit input's mesh."""
  if mesh is not None:
    return None if mesh.empty else mesh
  context = jax.sharding.get_abstract_mesh()
  if not context.empty:
    return context
  for a in arrays:
    sharding = getattr(jax.typeof(a), "sharding", None)
    found = getattr(sharding, "mesh", None)
    if found is not None and not found.empty and any(
        t == jax.sharding.AxisType.Explicit for t in found.axis_types):
      return found
  return None


def _explicit_batch_axes(x_bd, class_axis) -> tuple[str, ...]:
  """Mesh axes that an Explicit-sharded ``x``'s batch dimension uses."""
  sharding = getattr(jax.typeof(x_bd), "sharding", None)
  spec = getattr(sharding, "spec", None)
  if not spec or spec[0] is None:
    return ()
  axes = (spec[0],) if isinstance(spec[0], str) else tuple(spec[0])
  return tuple(a for a in axes if a != class_axis)


def _check_labels(labels, batch: int, ndims: int | tuple[int, ...],
                  what: str):
  labels = jnp.asarray(labels)
  ndims = (ndims,) if isinstance(ndims, int) else ndims
  if labels.ndim not in ndims or labels.shape[0] != batch:
    shape = " or ".join("[B]" if n == 1 else "[B, L]" for n in ndims)
    raise ValueError(
        f"{what} labels must be int {shape} with B={batch}, got shape "
        f"{labels.shape}")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
  return labels.astype(jnp.int32)


# ------------------------------------------------------- per-chunk building
def _acc_dtype(x, w):
  """float32, or float64 for float64 inputs (used by gradient checks)."""
  return jnp.promote_types(jnp.result_type(x, w), jnp.float32)


def _vma(layout: _Layout) -> tuple[str, ...]:
  """Mesh axes that per-device values vary over inside the shard_map.

  Anything computed from both the features (split over the batch axes) and
  the kernel (split over the class axis) varies over all of them; empty when
  nothing is sharded.
  """
  if layout.class_axis is None:
    return layout.batch_axes
  return (layout.class_axis,) + layout.batch_axes


def _varying(init, axes: tuple[str, ...]):
  """Casts fresh loop-carry initial values to vary over ``axes`` (check_vma)."""
  if not axes:
    return init
  return jax.tree.map(lambda a: jax.lax.pcast(a, axes, to="varying"), init)


def _class_offset(layout: _Layout):
  """First global class id held by this device."""
  if layout.class_axis is None:
    return 0
  local = layout.width // layout.mesh.shape[layout.class_axis]
  return jax.lax.axis_index(layout.class_axis) * local


def _chunk_logits(layout, x_bd, w_dk, b_k, ids_k, acc):
  """float ``[B, k]`` logits of a chunk; masked classes get -inf."""
  if layout.dtype is not None:
    x_bd, w_dk = x_bd.astype(layout.dtype), w_dk.astype(layout.dtype)
  z_bk = jnp.dot(x_bd, w_dk, preferred_element_type=acc) + b_k.astype(acc)
  if layout.masked:
    z_bk = jnp.where(ids_k < layout.num_classes, z_bk, -jnp.inf)
  return z_bk


def _chunk_targets(labels_bl, ids_k, num_classes):
  """bool ``[B, k]``: class ``ids_k[j]`` is among row b's labels.

  Scattered from the label lists (O(B L) work per chunk, not O(B L k)).
  """
  start, size = ids_k[0], ids_k.shape[0]
  cols_bl = labels_bl - start
  inside = (cols_bl >= 0) & (cols_bl < size) & (labels_bl < num_classes)
  cols_bl = jnp.where(inside, cols_bl, size)  # out of bounds: dropped
  rows_bl = jnp.broadcast_to(
      jnp.arange(labels_bl.shape[0])[:, None], labels_bl.shape)
  return jnp.zeros((labels_bl.shape[0], size), bool).at[rows_bl, cols_bl].set(
      True, mode="drop")


def _dot_t(a_nm, b_nk, acc, dtype):
  """``a^T b`` contracting the batch axis, accumulated in ``acc``."""
  if dtype is not None:
    a_nm, b_nk = a_nm.astype(dtype), b_nk.astype(dtype)
  return jax.lax.dot_general(a_nm, b_nk, (((0,), (0,)), ((), ())),
                             preferred_element_type=acc)


def _fold(step: Callable, carry, w_dc, b_c, chunk: int, offset):
  """Folds ``step(carry, w_dk, b_k, ids_k)`` over the kernel's column chunks.

  Full chunks run in a ``fori_loop`` (slices of the kernel, no copy of it);
  a last, narrower chunk covers the remainder, so no padding is needed.
  """
  width = w_dc.shape[1]
  chunk = min(chunk, width)
  n_full, rem = divmod(width, chunk)
  arange = jnp.arange(chunk, dtype=jnp.int32)

  def body(i, carry):
    start = i * chunk
    w_dk = jax.lax.dynamic_slice_in_dim(w_dc, start, chunk, axis=1)
    b_k = jax.lax.dynamic_slice_in_dim(b_c, start, chunk, axis=0)
    return step(carry, w_dk, b_k, offset + start + arange)

  if n_full == 1:
    carry = step(carry, w_dc[:, :chunk], b_c[:chunk], offset + arange)
  else:
    carry = jax.lax.fori_loop(0, n_full, body, carry)
  if rem:
    start = n_full * chunk
    carry = step(carry, w_dc[:, start:], b_c[start:],
                 offset + start + jnp.arange(rem, dtype=jnp.int32))
  return carry


def _fold_grads(step: Callable, carry, w_dc, b_c, chunk: int, offset, vma):
  """Like :func:`_fold` for a backward ``step -> (carry, dw_dk, db_k)``.

  The chunks' ``dw_dk`` and ``db_k`` are written in place into ``dW [d, C]``
  and ``db [C]`` buffers (in the parameters' dtypes) carried by the loop.
  """
  width = w_dc.shape[1]
  chunk = min(chunk, width)
  n_full, rem = divmod(width, chunk)
  arange = jnp.arange(chunk, dtype=jnp.int32)
  if n_full == 1 and not rem:
    carry, dw_dc, db_c = step(carry, w_dc, b_c, offset + arange)
    return carry, dw_dc.astype(w_dc.dtype), db_c.astype(b_c.dtype)

  def body(i, state):
    carry, dw_dc, db_c = state
    start = i * chunk
    w_dk = jax.lax.dynamic_slice_in_dim(w_dc, start, chunk, axis=1)
    b_k = jax.lax.dynamic_slice_in_dim(b_c, start, chunk, axis=0)
    carry, dw_dk, db_k = step(carry, w_dk, b_k, offset + start + arange)
    dw_dc = jax.lax.dynamic_update_slice_in_dim(
        dw_dc, dw_dk.astype(dw_dc.dtype), start, axis=1)
    db_c = jax.lax.dynamic_update_slice_in_dim(
        db_c, db_k.astype(db_c.dtype), start, axis=0)
    return carry, dw_dc, db_c

  state = (carry, *_varying(
      (jnp.zeros(w_dc.shape, w_dc.dtype), jnp.zeros(b_c.shape, b_c.dtype)),
      vma))
  state = jax.lax.fori_loop(0, n_full, body, state)
  if rem:
    carry, dw_dc, db_c = state
    start = n_full * chunk
    carry, dw_dk, db_k = step(carry, w_dc[:, start:], b_c[start:],
                              offset + start + jnp.arange(rem, dtype=jnp.int32))
    dw_dc = jax.lax.dynamic_update_slice_in_dim(
        dw_dc, dw_dk.astype(dw_dc.dtype), start, axis=1)
    db_c = jax.lax.dynamic_update_slice_in_dim(
        db_c, db_k.astype(db_c.dtype), start, axis=0)
    state = carry, dw_dc, db_c
  return state


# ------------------------------------------------------ local (per device)
def _psum(x, axes):
  return jax.lax.psum(x, axes) if axes else x


def _hits(labels, ids_k, num_classes):
  """bool ``[B, k]``: chunk class ``ids_k[j]`` is a label of row b.

  ``labels`` is int ``[B]`` (one class, compared; a label in the masked
  padding may hit, its row is invalid anyway) or ``[B, L]`` (a -1 padded
  set, scattered by :func:`_chunk_targets`: only valid labels, duplicates
  once).
  """
  if labels.ndim == 2:
    return _chunk_targets(labels, ids_k, num_classes)
  return ids_k[None, :] == labels[:, None]


def _single_label_count(labels, num_classes, dtype):
  """``[B]`` 1 where a single label is valid, else 0 (no fold needed)."""
  return ((labels >= 0) & (labels < num_classes)).astype(dtype)


def _ce_fwd_local(layout: _Layout, x_bd, w_dc, b_c, labels):
  """Per-example CE, logsumexp and label count over this device's classes.

  CE against the uniform distribution over the row's labels: ``lse -
  mean_{label} z``; 0 for a row without a valid label. One label per row
  (``[B]``) is plain softmax CE.
  """
  acc = _acc_dtype(x_bd, w_dc)
  vma = _vma(layout)
  batch = x_bd.shape[0]

  def step(carry, w_dk, b_k, ids_k):
    max_b, sum_b, picked_b, count_b = carry
    z_bk = _chunk_logits(layout, x_bd, w_dk, b_k, ids_k, acc)
    new_max_b = jnp.maximum(max_b, z_bk.max(-1))
    # All-masked so far: max is -inf; shift by 0 instead (sums stay 0).
    ref_b = jnp.where(jnp.isfinite(new_max_b), new_max_b, 0.)
    sum_b = sum_b * jnp.exp(max_b - ref_b) + jnp.exp(
        z_bk - ref_b[:, None]).sum(-1)
    hit_bk = _hits(labels, ids_k, layout.num_classes)
    picked_b = picked_b + jnp.where(hit_bk, z_bk, 0.).sum(-1)
    if labels.ndim == 2:  # label sets: count their valid distinct labels
      count_b = count_b + hit_bk.sum(-1, dtype=acc)
    return new_max_b, sum_b, picked_b, count_b

  init = (jnp.full((batch,), -jnp.inf, acc), jnp.zeros((batch,), acc),
          jnp.zeros((batch,), acc), jnp.zeros((batch,), acc))
  max_b, sum_b, picked_b, count_b = _fold(
      step, _varying(init, vma), w_dc, b_c, layout.chunk_size,
      _class_offset(layout))
  if layout.class_axis is not None:
    global_max_b = jax.lax.pmax(max_b, layout.class_axis)
    sum_b = jax.lax.psum(sum_b * jnp.exp(max_b - global_max_b),
                         layout.class_axis)
    picked_b = jax.lax.psum(picked_b, layout.class_axis)
    if labels.ndim == 2:
      count_b = jax.lax.psum(count_b, layout.class_axis)
    max_b = global_max_b
  if labels.ndim == 1:
    count_b = _single_label_count(labels, layout.num_classes, acc)
  lse_b = max_b + jnp.log(sum_b)
  loss_b = jnp.where(count_b > 0, lse_b - picked_b / jnp.maximum(count_b, 1.),
                     0.)
  return loss_b, lse_b, count_b


def _ce_bwd_local(layout: _Layout, x_bd, w_dc, b_c, labels, lse_b, count_b,
                  g_b):
  """Chunk by chunk: dz = g (softmax - labels / count); returns dx, dW, db."""
  acc = _acc_dtype(x_bd, w_dc)
  vma = _vma(layout)
  g_b = jnp.where(count_b > 0, g_b.astype(acc), 0.)
  share_b = 1. / jnp.maximum(count_b, 1.)

  def step(dx_bd, w_dk, b_k, ids_k):
    z_bk = _chunk_logits(layout, x_bd, w_dk, b_k, ids_k, acc)
    p_bk = jnp.exp(z_bk - lse_b[:, None])
    hit_bk = _hits(labels, ids_k, layout.num_classes)
    dz_bk = g_b[:, None] * (p_bk - jnp.where(hit_bk, share_b[:, None], 0.))
    return _grads(layout, x_bd, w_dk, dx_bd, dz_bk, acc)

  dx_bd = _varying(jnp.zeros(x_bd.shape, acc), vma)
  dx_bd, dw_dc, db_c = _fold_grads(step, dx_bd, w_dc, b_c, layout.chunk_size,
                                   _class_offset(layout), vma)
  return _reduce_grads(layout, x_bd, dx_bd, dw_dc, db_c)


def _grads(layout, x_bd, w_dk, dx_bd, dz_bk, acc):
  dw_dk = _dot_t(x_bd, dz_bk, acc, layout.dtype)
  db_k = dz_bk.sum(0)
  if layout.dtype is not None:
    w_dk, dz_bk = w_dk.astype(layout.dtype), dz_bk.astype(layout.dtype)
  dx_bd = dx_bd + jax.lax.dot_general(
      dz_bk, w_dk, (((1,), (1,)), ((), ())), preferred_element_type=acc)
  return dx_bd, dw_dk, db_k


def _reduce_grads(layout, x_bd, dx_bd, dw_dc, db_c):
  """Class-partial dx summed over classes; dW, db summed over the batch."""
  if layout.class_axis is not None:
    dx_bd = jax.lax.psum(dx_bd, layout.class_axis)
  dw_dc = _psum(dw_dc, layout.batch_axes)
  db_c = _psum(db_c, layout.batch_axes)
  return dx_bd.astype(x_bd.dtype), dw_dc, db_c


def _bce_fwd_local(layout: _Layout, x_bd, w_dc, b_c, labels_bl):
  """Per-example sum over classes of softplus(z) - y z."""
  acc = _acc_dtype(x_bd, w_dc)
  vma = _vma(layout)

  def step(total_b, w_dk, b_k, ids_k):
    z_bk = _chunk_logits(layout, x_bd, w_dk, b_k, ids_k, acc)
    y_bk = _chunk_targets(labels_bl, ids_k, layout.num_classes)
    # softplus(-inf) = 0: masked classes add nothing.
    return total_b + (jax.nn.softplus(z_bk) - jnp.where(y_bk, z_bk, 0.)).sum(-1)

  init = _varying(jnp.zeros((x_bd.shape[0],), acc), vma)
  total_b = _fold(step, init, w_dc, b_c, layout.chunk_size,
                  _class_offset(layout))
  if layout.class_axis is not None:
    total_b = jax.lax.psum(total_b, layout.class_axis)
  return total_b


def _bce_bwd_local(layout: _Layout, x_bd, w_dc, b_c, labels_bl, g_b):
  """Chunk by chunk: dz = g (sigmoid(z) - y); returns dx, dW, db."""
  acc = _acc_dtype(x_bd, w_dc)
  vma = _vma(layout)
  g_b = g_b.astype(acc)

  def step(dx_bd, w_dk, b_k, ids_k):
    z_bk = _chunk_logits(layout, x_bd, w_dk, b_k, ids_k, acc)
    y_bk = _chunk_targets(labels_bl, ids_k, layout.num_classes)
    dz_bk = g_b[:, None] * (jax.nn.sigmoid(z_bk) - y_bk)
    return _grads(layout, x_bd, w_dk, dx_bd, dz_bk, acc)

  dx_bd = _varying(jnp.zeros(x_bd.shape, acc), vma)
  dx_bd, dw_dc, db_c = _fold_grads(step, dx_bd, w_dc, b_c, layout.chunk_size,
                                   _class_offset(layout), vma)
  return _reduce_grads(layout, x_bd, dx_bd, dw_dc, db_c)


def _merge_top_k(a, b, k):
  """Top-k of two (scores, labels) lists; ties go to ``a`` (put first)."""
  scores = jnp.concatenate([a[0], b[0]], axis=-1)
  labels = jnp.concatenate([a[1], b[1]], axis=-1)
  top_scores, idx = jax.lax.top_k(scores, k)
  return top_scores, jnp.take_along_axis(labels, idx, axis=-1)


def _all_gather_replicated(layout: _Layout, arrays):
  """All-gathers ``[B, k]`` blocks over the class axis into ``[B, S k]``.

  Blocks are in shard order (shard s holds smaller labels than shard s + 1).
  Written as a psum of blocks placed at their shard's slot (zeros elsewhere,
  so the sums are exact) because the result must be typed replicated over
  the class axis for the out_specs, and ``jax.lax.all_gather`` types it as
  varying. The extra traffic is negligible at top-k sizes.
  """
  shards = layout.mesh.shape[layout.class_axis]
  mine_s = jnp.arange(shards) == jax.lax.axis_index(layout.class_axis)

  def gather(a_bk):
    placed_bsk = jnp.where(mine_s[None, :, None], a_bk[:, None, :],
                           jnp.zeros((), a_bk.dtype))
    out_bsk = jax.lax.psum(placed_bsk, layout.class_axis)
    return out_bsk.reshape(a_bk.shape[0], shards * a_bk.shape[1])

  return jax.tree.map(gather, arrays)


def _top_k_local(layout: _Layout, x_bd, w_dc, b_c, *, k: int):
  """Running top-k over this device's chunks, then merged across shards."""
  acc = _acc_dtype(x_bd, w_dc)
  vma = _vma(layout)
  batch = x_bd.shape[0]

  def step(carry, w_dk, b_k, ids_k):
    z_bk = _chunk_logits(layout, x_bd, w_dk, b_k, ids_k, acc)
    kk = min(k, z_bk.shape[1])
    s_bk, i_bk = jax.lax.top_k(z_bk, kk)
    return _merge_top_k(carry, (s_bk, ids_k[i_bk]), k)

  if w_dc.shape[1] <= layout.chunk_size and w_dc.shape[1] >= k:
    # One block: a plain top_k.
    ids_c = _class_offset(layout) + jnp.arange(w_dc.shape[1], dtype=jnp.int32)
    z_bc = _chunk_logits(layout, x_bd, w_dc, b_c, ids_c, acc)
    scores_bk, i_bk = jax.lax.top_k(z_bc, k)
    labels_bk = ids_c[i_bk]
  else:
    # Placeholders lose to every finite logit; k <= num_classes real ones
    # exist, so they are never returned.
    init = (jnp.full((batch, k), -jnp.inf, acc),
            jnp.full((batch, k), -1, jnp.int32))
    scores_bk, labels_bk = _fold(step, _varying(init, vma), w_dc, b_c,
                                 layout.chunk_size, _class_offset(layout))
  if layout.class_axis is not None:
    all_s, all_l = _all_gather_replicated(layout, (scores_bk, labels_bk))
    scores_bk, idx_bk = jax.lax.top_k(all_s, k)
    labels_bk = jnp.take_along_axis(all_l, idx_bk, axis=-1)
  return scores_bk.astype(jnp.float32), labels_bk


# ------------------------------------------------------ dense (one block)
def _dense_logits(layout, x_bd, w_dc, b_c):
  acc = _acc_dtype(x_bd, w_dc)
  ids_c = jnp.arange(w_dc.shape[1], dtype=jnp.int32)
  return _chunk_logits(layout, x_bd, w_dc, b_c, ids_c, acc), ids_c


def _ce_dense_local(layout: _Layout, x_bd, w_dc, b_c, labels):
  """Plain CE on all (local) classes; differentiated by autodiff."""
  z_bc, ids_c = _dense_logits(layout, x_bd, w_dc, b_c)
  lse_b = jax.nn.logsumexp(z_bc, axis=-1)
  if labels.ndim == 1:
    valid_b = _single_label_count(labels, layout.num_classes, bool)
    picked_b = jnp.take_along_axis(
        z_bc, jnp.where(valid_b, labels, 0)[:, None], axis=1)[:, 0]
    return jnp.where(valid_b, lse_b - picked_b, 0.)
  y_bc = _chunk_targets(labels, ids_c, layout.num_classes)
  count_b = y_bc.sum(-1, dtype=z_bc.dtype)
  mean_b = jnp.where(y_bc, z_bc, 0.).sum(-1) / jnp.maximum(count_b, 1.)
  return jnp.where(count_b > 0, lse_b - mean_b, 0.)


def _bce_dense_local(layout: _Layout, x_bd, w_dc, b_c, labels_bl):
  """Plain BCE on all (local) classes; differentiated by autodiff."""
  z_bc, ids_c = _dense_logits(layout, x_bd, w_dc, b_c)
  y_bc = _chunk_targets(labels_bl, ids_c, layout.num_classes)
  return (jax.nn.softplus(z_bc) - jnp.where(y_bc, z_bc, 0.)).sum(-1)


# ------------------------------------------------------------- dispatching
def _run(layout: _Layout, fn, in_specs, out_specs, *args):
  """Runs ``fn(layout, *args)`` directly, or per device in a shard_map.

  In the shard_map, check_vma is on: values' replication over mesh axes is
  typed, so a forgotten collective is an error, and autodiff through it (the
  dense path) already sums the gradients of replicated inputs over the
  devices; nothing must be averaged on top.
  """
  if layout.mesh is None:
    return fn(layout, *args)
  mesh = layout.mesh
  if any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
    # Explicit axes: shard_map wants inputs already laid out as in_specs.
    args = [jax.sharding.reshard(a, NamedSharding(mesh, s))
            for a, s in zip(args, in_specs)]
  return jax.shard_map(functools.partial(fn, layout), mesh=mesh,
                       in_specs=in_specs, out_specs=out_specs)(*args)


def _like_primals(layout: _Layout, grads, primals):
  """Gives each gradient its primal's sharding (Explicit meshes type it).

  The shard_map returns them laid out as its in_specs; a parameter kept
  replicated over the class axis must get a replicated gradient back.
  """
  if layout.mesh is None or not any(
      t == jax.sharding.AxisType.Explicit for t in layout.mesh.axis_types):
    return grads
  return tuple(
      jax.sharding.reshard(
          g, NamedSharding(layout.mesh, jax.typeof(p).sharding.spec))
      for g, p in zip(grads, primals))


def _specs(layout: _Layout):
  bat, cls = layout.batch_spec, layout.class_axis
  return dict(x=P(bat, None), w=P(None, cls), b=P(cls), b1=P(bat),
              b2=P(bat, None))


def _label_spec(s, labels):
  return s["b1"] if labels.ndim == 1 else s["b2"]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ce(layout, x_bd, w_dc, b_c, labels):
  return _ce_fwd(layout, x_bd, w_dc, b_c, labels)[0]


def _ce_fwd(layout, x_bd, w_dc, b_c, labels):
  s = _specs(layout)
  loss_b, lse_b, count_b = _run(
      layout, _ce_fwd_local,
      (s["x"], s["w"], s["b"], _label_spec(s, labels)),
      (s["b1"], s["b1"], s["b1"]), x_bd, w_dc, b_c, labels)
  return loss_b, (x_bd, w_dc, b_c, labels, lse_b, count_b)


def _ce_bwd(layout, res, g_b):
  s = _specs(layout)
  grads = _run(
      layout, _ce_bwd_local,
      (s["x"], s["w"], s["b"], _label_spec(s, res[3]), s["b1"], s["b1"],
       s["b1"]),
      (s["x"], s["w"], s["b"]), *res, g_b)
  return (*_like_primals(layout, grads, res[:3]), None)


_ce.defvjp(_ce_fwd, _ce_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _bce(layout, x_bd, w_dc, b_c, labels_bl):
  return _bce_fwd(layout, x_bd, w_dc, b_c, labels_bl)[0]


def _bce_fwd(layout, x_bd, w_dc, b_c, labels_bl):
  s = _specs(layout)
  loss_b = _run(layout, _bce_fwd_local, (s["x"], s["w"], s["b"], s["b2"]),
                s["b1"], x_bd, w_dc, b_c, labels_bl)
  return loss_b, (x_bd, w_dc, b_c, labels_bl)


def _bce_bwd(layout, res, g_b):
  s = _specs(layout)
  grads = _run(
      layout, _bce_bwd_local, (s["x"], s["w"], s["b"], s["b2"], s["b1"]),
      (s["x"], s["w"], s["b"]), *res, g_b)
  return (*_like_primals(layout, grads, res[:3]), None)


_bce.defvjp(_bce_fwd, _bce_bwd)


def _apply_where(loss_b, where):
  if where is None:
    return loss_b
  return jnp.where(jnp.asarray(where, bool), loss_b, 0.)


# ------------------------------------------------------------------ public
_SHARED_ARGS_DOC = """
    chunk_size: classes per chunk (per device when the classes are sharded).
      With ``C <= chunk_size`` and unsharded classes, one dense block with
      plain autodiff is used instead. None (default): chunks of
      ``DEFAULT_CHUNK_SIZE``, and the dense block when ``B * C <=
      DENSE_MAX_LOGITS`` (both measured, see there).
    num_classes: the valid classes ``0 .. num_classes-1`` (default ``C``);
      kernel columns beyond it are padding: excluded from losses and top-k.
    mesh: the device mesh. None (default): the context mesh
      (``jax.set_mesh``), else the mesh of Explicit-sharded inputs, else no
      mesh. The classes are sharded when it has an axis ``class_axis`` of
      size > 1.
    class_axis: the mesh axis name of the classes.
    batch_axes: mesh axes the batch is split over (e.g. ``'data'``). None
      (default): those of ``x``'s Explicit sharding, else none (the batch is
      then replicated: pass them for Auto meshes).
    dtype: dtype of the matmul inputs (e.g. ``jnp.bfloat16``); accumulation,
      softmax and sigmoid are float32 (float64 for float64 inputs)."""


def chunked_softmax_cross_entropy(
    x_bd: ArrayLike, kernel_dc: ArrayLike, bias_c: ArrayLike,
    labels: ArrayLike, *, chunk_size: int | None = None,
    num_classes: int | None = None, where: ArrayLike | None = None,
    mesh: MeshLike | None = None, class_axis: str = "classes",
    batch_axes: str | Sequence[str] | None = None,
    dtype: Any = None) -> jax.Array:
  """Softmax cross-entropy of ``x @ kernel + bias`` without the full logits.

  With label sets ``[B, L]`` this is the multi-label softmax ("pick all
  labels", normalised): cross-entropy against the uniform distribution over
  the row's labels, ``logsumexp_c z_bc - mean_{{c in y_b}} z_bc``.

  Args:
    x_bd: features ``[B, d]``.
    kernel_dc: ``[d, C]``.
    bias_c: ``[C]``.
    labels: int ``[B]``, the true class in ``[0, num_classes)``, -1 (or any
      out-of-range value) meaning "no label"; or int ``[B, L]``, each row a
      set of labels padded with -1 (duplicates count once, out-of-range
      values are ignored). A row with no valid label has loss 0 and no
      gradient.
    where: optional bool ``[B]``; False gives loss 0.
    {shared}

  Returns:
    float32 ``[B]``: ``logsumexp_c z_bc - z_{{b, label_b}}``, or with label
    sets ``logsumexp_c z_bc - mean_{{c in y_b}} z_bc``.
  """
  x_bd, kernel_dc, bias_c = map(jnp.asarray, (x_bd, kernel_dc, bias_c))
  layout = _layout(x_bd, kernel_dc, bias_c, chunk_size=chunk_size,
                   num_classes=num_classes, mesh=mesh, class_axis=class_axis,
                   batch_axes=batch_axes, dtype=dtype)
  labels = _check_labels(labels, x_bd.shape[0], (1, 2), "softmax CE")
  if layout.dense:
    s = _specs(layout)
    loss_b = _run(layout, _ce_dense_local,
                  (s["x"], s["w"], s["b"], _label_spec(s, labels)),
                  s["b1"], x_bd, kernel_dc, bias_c, labels)
  else:
    loss_b = _ce(layout, x_bd, kernel_dc, bias_c, labels)
  return _apply_where(loss_b, where)


def chunked_sigmoid_binary_cross_entropy(
    x_bd: ArrayLike, kernel_dc: ArrayLike, bias_c: ArrayLike,
    labels_bl: ArrayLike, *, chunk_size: int | None = None,
    num_classes: int | None = None, where: ArrayLike | None = None,
    mesh: MeshLike | None = None, class_axis: str = "classes",
    batch_axes: str | Sequence[str] | None = None,
    dtype: Any = None) -> jax.Array:
  """Per-label sigmoid BCE of ``x @ kernel + bias``, summed over classes.

  The target ``y_bc`` is 1 iff ``c`` is in row b of ``labels_bl``.

  Args:
    x_bd: features ``[B, d]``.
    kernel_dc: ``[d, C]``.
    bias_c: ``[C]``.
    labels_bl: int ``[B, L]``, each row a set of labels padded with -1
      (duplicates count once; out-of-range values are ignored). A row of
      only -1 is an example with no positive label.
    where: optional bool ``[B]``; False gives loss 0.
    {shared}

  Returns:
    float32 ``[B]``: ``sum_c softplus(z_bc) - y_bc z_bc``.
  """
  x_bd, kernel_dc, bias_c = map(jnp.asarray, (x_bd, kernel_dc, bias_c))
  layout = _layout(x_bd, kernel_dc, bias_c, chunk_size=chunk_size,
                   num_classes=num_classes, mesh=mesh, class_axis=class_axis,
                   batch_axes=batch_axes, dtype=dtype)
  labels_bl = _check_labels(labels_bl, x_bd.shape[0], 2, "multi-label")
  if layout.dense:
    s = _specs(layout)
    loss_b = _run(layout, _bce_dense_local, (s["x"], s["w"], s["b"], s["b2"]),
                  s["b1"], x_bd, kernel_dc, bias_c, labels_bl)
  else:
    loss_b = _bce(layout, x_bd, kernel_dc, bias_c, labels_bl)
  return _apply_where(loss_b, where)


def chunked_top_k(
    x_bd: ArrayLike, kernel_dc: ArrayLike, bias_c: ArrayLike, k: int, *,
    chunk_size: int | None = None, num_classes: int | None = None,
    mesh: MeshLike | None = None, class_axis: str = "classes",
    batch_axes: str | Sequence[str] | None = None,
    dtype: Any = None) -> tuple[jax.Array, jax.Array]:
  """Top-k classes of ``x @ kernel + bias`` without the full logits.

  Args:
    x_bd: features ``[B, d]``.
    kernel_dc: ``[d, C]``.
    bias_c: ``[C]``.
    k: static int in ``[1, num_classes]``.
    {shared}

  Returns:
    ``(scores [B, k] float32, labels [B, k] int32)``: the k largest logits,
    descending; equal logits are ordered smaller label first, exactly like
    ``jax.lax.top_k`` on the dense logits. Padded classes are never returned.
  """
  x_bd, kernel_dc, bias_c = map(jnp.asarray, (x_bd, kernel_dc, bias_c))
  layout = _layout(x_bd, kernel_dc, bias_c, chunk_size=chunk_size,
                   num_classes=num_classes, mesh=mesh, class_axis=class_axis,
                   batch_axes=batch_axes, dtype=dtype)
  if int(k) != k or not 1 <= k <= layout.num_classes:
    raise ValueError(
        f"k must be an integer in [1, {layout.num_classes}], got {k!r}")
  s = _specs(layout)
  return _run(layout, functools.partial(_top_k_local, k=int(k)),
              (s["x"], s["w"], s["b"]), (s["b2"], s["b2"]),
              x_bd, kernel_dc, bias_c)


for _f in (chunked_softmax_cross_entropy, chunked_sigmoid_binary_cross_entropy,
           chunked_top_k):
  _f.__doc__ = _f.__doc__.format(shared=_SHARED_ARGS_DOC.strip())
del _f
