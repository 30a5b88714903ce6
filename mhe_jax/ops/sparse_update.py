"""Sparse classifier updates for Multi-Head Sampling (MHS), pure JAX.

An MHS training step (Liang et al., TPAMI 2024, Sec. 3.4) scores only the
sampled groups of the full classifier ``W`` (``C x d``; stored as the kernel
``[d, P]``, one column per class, ``P = G * s`` for ``G`` groups of ``s``
consecutive classes). Its gradient is zero outside those ``S * s`` rows of
``W``, so a step can gather the rows, update them with their optimiser
state, and scatter them back, touching ``O(S * s * d)`` memory instead of
``O(C * d)``. This module holds that step's array functions:

* :func:`gather_blocks` / :func:`scatter_blocks`: the ``S`` blocks of
  ``block_size`` consecutive entries of the last axis (a group's kernel
  columns, bias entries or optimiser moments), read and written in place
  (under ``jit`` with the table donated no copy is made). Off a
  multi-device mesh the scatter of a 32-bit table writes a block at a time
  (``dynamic_update_slice`` in a ``fori_loop``; on a 2-core CPU, 64 blocks
  of a ``[256, 10^6]`` float32 kernel in about 1/6 of the time of XLA's
  scatter op). On a mesh whose class axis shards the table, each device
  writes the blocks it holds and the gathered block is replicated over the
  class axis. XLA:CPU has no bfloat16 scatter or ``dynamic_update_slice``:
  it converts a bfloat16 table to float32 and back around either (a float32
  copy of the whole table and two passes over it per scatter; per block in
  a loop), so on CPU a bfloat16 table is not updated sparsely.
* :func:`lazy_adam`: Adam on the gathered rows. A row's moments advance
  only on the steps that sample it (as PyTorch ``SparseAdam`` and TF
  ``LazyAdam``); the bias correction takes whatever step count the caller
  passes, per row or (as those two, and
  :class:`mhe_jax.nn.mhs.SparseUpdateOptimizer`) the global step.
* :func:`lazy_momentum`: SGD with heavy-ball momentum on the gathered rows
  (``optax.sgd(lr, momentum)``); a row's trace decays only when sampled.
* :func:`sgd`: plain SGD on the gathered rows (``optax.sgd(lr)``). It has
  no state, and an unsampled row's gradient is zero, so this sparse step is
  exactly the dense one, not a lazy approximation of it.

Rows never sampled, and their state, are never read or written.

Example::

  ids_s = jnp.array([3, 17], jnp.int32)                 # sampled groups
  w_dn = gather_blocks(kernel_dp, ids_s, s)            # [d, 2 * s]
  mu_dn, nu_dn = (gather_blocks(m, ids_s, s) for m in (mu_dp, nu_dp))
  w_dn, mu_dn, nu_dn = lazy_adam(w_dn, grad_dn, mu_dn, nu_dn, step,
                                 learning_rate=1e-3)  # step: 1, 2, ...
  kernel_dp = scatter_blocks(kernel_dp, ids_s, w_dn, s)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

ArrayLike = jax.typing.ArrayLike


def block_columns(block_ids: ArrayLike, block_size: int) -> jax.Array:
  """Indices ``[S * block_size]`` of the blocks' entries, block by block.

  Entry ``t * block_size + p`` is ``block_ids[t] * block_size + p``.
  """
  ids_s = jnp.asarray(block_ids, jnp.int32)
  return (ids_s[:, None] * block_size +
          jnp.arange(block_size, dtype=jnp.int32)).reshape(-1)


def _last_axis_sharding(table: jax.Array):
  """``(mesh, spec)`` of an Explicit-mesh table sharded anywhere, else None."""
  sharding = jax.typeof(table).sharding
  spec = tuple(getattr(sharding, "spec", ()) or ())
  if not any(axis is not None for axis in spec):
    return None
  return sharding.mesh, spec + (None,) * (table.ndim - len(spec))


def _shards(mesh, axis) -> int:
  axes = axis if isinstance(axis, tuple) else (axis,)
  return int(np.prod([mesh.shape[a] for a in axes if a is not None]))


def _windowed(table: jax.Array, block_size: int):
  """The table viewed ``[..., G, block_size]`` if a block never straddles
  shards (always off a mesh), with the gather's and scatter's shardings."""
  num_blocks = table.shape[-1] // block_size
  placed = _last_axis_sharding(table)
  if placed is None:
    return table.reshape(*table.shape[:-1], num_blocks, block_size), None, None
  mesh, spec = placed
  if num_blocks % _shards(mesh, spec[-1]):
    return None, None, None
  view = table.reshape(*table.shape[:-1], num_blocks, block_size)
  gathered = NamedSharding(mesh, P(*spec[:-1], None, None))
  return view, gathered, NamedSharding(mesh, P(*spec[:-1], spec[-1], None))


def _on_one_device(table: jax.Array) -> bool:
  """No mesh in sight: the table is unsharded and no context mesh splits it.

  (Under ``jit`` on an Auto mesh the table's sharding is not visible; the
  context mesh, ``jax.set_mesh``, tells.)
  """
  if _last_axis_sharding(table) is not None:
    return False
  mesh = jax.sharding.get_abstract_mesh()
  return mesh.empty or mesh.size == 1


def _loop_scatter(table: jax.Array, ids_s: jax.Array, values: jax.Array,
                  block_size: int) -> jax.Array:
  lead = table.shape[:-1]
  zero = (0,) * len(lead)

  def body(t, table):
    block = jax.lax.dynamic_slice(values, (*zero, t * block_size),
                                  (*lead, block_size))
    return jax.lax.dynamic_update_slice(table, block,
                                        (*zero, ids_s[t] * block_size))

  return jax.lax.fori_loop(0, ids_s.shape[0], body, table)


def _check(table: jax.Array, block_size: int) -> None:
  if block_size < 1 or table.shape[-1] % block_size:
    raise ValueError(f"the last axis ({table.shape[-1]}) must be a multiple "
                     f"of block_size={block_size}")


def gather_blocks(table: ArrayLike, block_ids: ArrayLike,
                  block_size: int) -> jax.Array:
  """The blocks ``block_ids`` of the last axis, ``[..., S * block_size]``.

  Args:
    table: ``[..., G * block_size]``, e.g. the kernel ``[d, P]``, the bias
      ``[P]`` or an optimiser moment shaped like them.
    block_ids: int ``[S]`` in ``[0, G)``.
    block_size: entries per block (``s``, the classes of a group).

  Returns:
    ``[..., S * block_size]``: entry ``t * block_size + p`` is
    ``table[..., block_ids[t] * block_size + p]``. On an Explicit mesh the
    leading axes keep their sharding and the last one is replicated.
  """
  table = jnp.asarray(table)
  _check(table, block_size)
  ids_s = jnp.asarray(block_ids, jnp.int32)
  lead = (slice(None),) * (table.ndim - 1)
  view, gathered, _ = _windowed(table, block_size)
  if view is not None:  # whole windows: a contiguous copy per block
    out = view.at[(*lead, ids_s)].get(out_sharding=gathered)
    return out.reshape(*table.shape[:-1], -1)
  mesh, spec = _last_axis_sharding(table)
  return table.at[(*lead, block_columns(ids_s, block_size))].get(
      out_sharding=NamedSharding(mesh, P(*spec[:-1], None)))


def scatter_blocks(table: ArrayLike, block_ids: ArrayLike, values: ArrayLike,
                   block_size: int) -> jax.Array:
  """``table`` with the blocks ``block_ids`` of its last axis set to ``values``.

  The inverse of :func:`gather_blocks`: ``values`` is
  ``[..., S * block_size]`` in its layout. Under ``jit`` with ``table``
  donated the write is in place; on a class-sharded mesh each device writes
  the blocks it holds, and the result keeps ``table``'s sharding. Block ids
  must be distinct (else which value lands is unspecified).
  """
  table = jnp.asarray(table)
  _check(table, block_size)
  ids_s = jnp.asarray(block_ids, jnp.int32)
  values = jnp.asarray(values, table.dtype)
  if table.dtype.itemsize >= 4 and _on_one_device(table):
    return _loop_scatter(table, ids_s, values, block_size)
  lead = (slice(None),) * (table.ndim - 1)
  view, _, placed = _windowed(table, block_size)
  if view is not None:
    values = values.reshape(*table.shape[:-1], ids_s.shape[0], block_size)
    return view.at[(*lead, ids_s)].set(values, out_sharding=placed).reshape(
        table.shape)
  return table.at[(*lead, block_columns(ids_s, block_size))].set(
      values, out_sharding=jax.typeof(table).sharding)


def lazy_adam(param: ArrayLike, grad: ArrayLike, mu: ArrayLike,
              nu: ArrayLike, count: ArrayLike, *, learning_rate: ArrayLike,
              b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
              weight_decay: float = 0.0
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One Adam (or AdamW) step of gathered rows.

  The same arithmetic as ``optax.adam`` / ``optax.adamw`` (``eps_root=0``),
  with the bias correction taken at ``count`` (``t``)::

    mu' = (1 - b1) g + b1 mu          nu' = (1 - b2) g^2 + b2 nu
    p'  = p - lr * (mu' / (1 - b1^t)) / (sqrt(nu' / (1 - b2^t)) + eps)
            - lr * weight_decay * p

  Args:
    param, grad, mu, nu: the gathered rows, all the same shape.
    count: int ``>= 1``, broadcastable to ``param``: the step count of the
      bias correction, this step included; the global step (a scalar: lazy
      Adam as TF ``LazyAdam``) or a count per row (``[S * s]`` for
      ``[d, S * s]`` rows: each row follows Adam over its own gradients).
    learning_rate: this step's learning rate (a scalar).
    b1, b2, eps: Adam's constants (optax's defaults).
    weight_decay: AdamW's decoupled decay (``optax.adamw``); 0: Adam.

  Returns:
    ``(param', mu', nu')``.
  """
  param, grad = jnp.asarray(param), jnp.asarray(grad)
  mu = (1 - b1) * grad + b1 * jnp.asarray(mu)
  nu = (1 - b2) * grad ** 2 + b2 * jnp.asarray(nu)
  t = jnp.asarray(count, jnp.int32)
  mu_hat = mu / (1 - b1 ** t).astype(mu.dtype)  # as optax: decay ** int count
  nu_hat = nu / (1 - b2 ** t).astype(nu.dtype)
  update = mu_hat / (jnp.sqrt(nu_hat) + eps)
  if weight_decay:
    update = update + weight_decay * param
  lr = jnp.asarray(learning_rate, jnp.float32)
  return (param + (-lr * update).astype(param.dtype), mu.astype(param.dtype),
          nu.astype(param.dtype))


def lazy_momentum(param: ArrayLike, grad: ArrayLike, trace: ArrayLike, *,
                  learning_rate: ArrayLike, momentum: float = 0.9
                  ) -> tuple[jax.Array, jax.Array]:
  """One heavy-ball SGD step of gathered rows (``optax.sgd(lr, momentum)``).

  ``trace' = g + momentum * trace``, ``p' = p - lr * trace'``; a row's trace
  decays only on the steps that sample it.

  Returns:
    ``(param', trace')``.
  """
  param = jnp.asarray(param)
  trace = jnp.asarray(grad) + momentum * jnp.asarray(trace)
  lr = jnp.asarray(learning_rate, jnp.float32)
  return param + (-lr * trace).astype(param.dtype), trace.astype(param.dtype)


def sgd(param: ArrayLike, grad: ArrayLike, *, learning_rate: ArrayLike
        ) -> jax.Array:
  """One plain SGD step of gathered rows (``optax.sgd(lr)``): ``p - lr * g``.

  Stateless, and the dense gradient is zero off the gathered rows, so
  scattering the result back is the dense ``optax.sgd`` step exactly.
  """
  param = jnp.asarray(param)
  lr = jnp.asarray(learning_rate, jnp.float32)
  return param + (-lr * jnp.asarray(grad)).astype(param.dtype)
