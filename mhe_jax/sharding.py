"""Meshes, logical axis rules and NamedShardings.

Modules annotate parameters with *logical* axis names (``nnx.with_partitioning``):
``'embed'`` (feature width), ``'mlp'`` (hidden width), ``'vocab'`` (input
vocabulary / feature ids), ``'classes'`` (the output classes of the vanilla and
MHS classifiers), ``'heads'`` (the fused MHE head outputs), ``'prefixes'`` (MHC
prefix embeddings). The config maps logical names to mesh axes
(``config.mesh.rules``), maxtext-style; activations use ``'batch'``.

Inside jitted code on an Explicit mesh, an op whose output layout cannot be
inferred must be told it: :func:`batch_axis_sharding` (sharded like an
input's batch axis) and :func:`replicated` say the two layouts the ops and
heads need.

Example::

  mesh = make_mesh((-1, 1), ("data", "classes"))        # all devices on data
  rules = (("batch", "data"), ("classes", "classes"))
  spec = logical_to_mesh(P("embed", "classes"), rules)   # P(None, "classes")
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

# Logical name -> mesh axis (or None: replicated). Names not listed replicate.
DEFAULT_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", "data"),
    ("classes", "classes"),
    ("embed", None),
    ("mlp", None),
    ("vocab", None),
    ("heads", None),
    ("prefixes", None),
)

AXIS_TYPES = {"explicit": jax.sharding.AxisType.Explicit,
              "auto": jax.sharding.AxisType.Auto}


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Replaces one -1 in ``shape`` by what is left; checks the product."""
  shape = [int(s) for s in shape]
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {tuple(shape)} has more than one -1")
  if any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh shape {tuple(shape)} has a size below 1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(
          f"mesh shape {tuple(shape)} does not divide the {num_devices} "
          f"devices: {num_devices} is not a multiple of {known}")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ValueError(
        f"mesh shape {tuple(shape)} has {math.prod(shape)} devices but "
        f"{num_devices} are available")
  return tuple(shape)


def make_mesh(shape: Sequence[int], axes: Sequence[str], *,
              axis_type: str = "explicit",
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A device mesh with explicit axis types over all (or given) devices."""
  if len(shape) != len(axes):
    raise ValueError(f"mesh shape {tuple(shape)} and axes {tuple(axes)} differ "
                     "in length")
  if axis_type not in AXIS_TYPES:
    raise ValueError(f"unknown mesh axis_type {axis_type!r}; known: "
                     f"{sorted(AXIS_TYPES)}")
  devices = list(devices if devices is not None else jax.devices())
  shape = resolve_mesh_shape(shape, len(devices))
  return jax.make_mesh(shape, tuple(axes), devices=devices,
                       axis_types=(AXIS_TYPES[axis_type],) * len(axes))


def logical_to_mesh(spec: P | Sequence[Any] | None,
                    rules: Sequence[tuple[str, str | None]]) -> P:
  """Maps a PartitionSpec of logical names to one of mesh axes."""
  if spec is None:
    return P()
  table = dict(rules)
  out = []
  for name in spec:
    if name is None:
      out.append(None)
    elif isinstance(name, (tuple, list)):
      axes = tuple(a for a in (table.get(n) for n in name) if a is not None)
      out.append(axes if axes else None)
    else:
      out.append(table.get(name))
  # A mesh axis may appear only once in a spec.
  seen = set()
  for i, a in enumerate(out):
    for ax in (a if isinstance(a, tuple) else (a,)):
      if ax is not None and ax in seen:
        raise ValueError(f"mesh axis {ax!r} used twice in {tuple(spec)} -> "
                         f"{tuple(out)}")
      if ax is not None:
        seen.add(ax)
  return P(*out)


def tree_shardings(logical_specs: Any, mesh: Mesh,
                   rules: Sequence[tuple[str, str | None]]) -> Any:
  """NamedShardings for a pytree of logical PartitionSpecs.

  Mesh axes of size 1 are dropped, so small meshes give replicated layouts.
  """
  def one(spec):
    mspec = logical_to_mesh(spec, rules)
    mspec = P(*[_drop_trivial(a, mesh) for a in mspec])
    return NamedSharding(mesh, mspec)
  return jax.tree.map(one, logical_specs,
                      is_leaf=lambda x: isinstance(x, P) or x is None)


def _drop_trivial(axes, mesh: Mesh):
  if axes is None:
    return None
  if isinstance(axes, tuple):
    kept = tuple(a for a in axes if mesh.shape[a] > 1)
    return kept or None
  return axes if mesh.shape[axes] > 1 else None


def batch_sharding(mesh: Mesh, rules: Sequence[tuple[str, str | None]],
                   ndim: int) -> NamedSharding:
  """Sharding of a ``[B, ...]`` batch array: batch over its mesh axis."""
  axis = _drop_trivial(dict(rules).get("batch"), mesh)
  return NamedSharding(mesh, P(axis, *([None] * (ndim - 1))))


def batch_shards(mesh: Mesh, rules: Sequence[tuple[str, str | None]]) -> int:
  """How many shards the batch axis is cut into on ``mesh``."""
  axis = dict(rules).get("batch")
  return int(np.prod([mesh.shape[a] for a in
                      (axis if isinstance(axis, tuple) else (axis,))
                      if a is not None]))


def check_divisible(batch_size: int, mesh: Mesh,
                    rules: Sequence[tuple[str, str | None]],
                    what: str = "batch_size") -> None:
  axis = dict(rules).get("batch")
  size = batch_shards(mesh, rules)
  if batch_size % size:
    raise ValueError(f"{what}={batch_size} is not divisible by the {size} "
                     f"devices of the batch mesh axis {axis!r}")


def batch_axis_sharding(x: jax.Array, ndim: int) -> NamedSharding | None:
  """An ``ndim``-axis layout sharded like ``x``'s batch (first) axis.

  For the ``out_sharding`` of a scatter or gather whose output has ``x``'s
  batch axis first and unsharded axes after it (Explicit meshes need it
  said). None when ``x``'s first axis is not sharded, where nothing needs
  saying.
  """
  sharding = jax.typeof(x).sharding
  spec = tuple(getattr(sharding, "spec", ()) or ())
  if not spec or spec[0] is None:
    return None
  return NamedSharding(sharding.mesh, P(spec[0], *([None] * (ndim - 1))))


def explicit_sharding(x: jax.Array) -> NamedSharding | None:
  """``x``'s sharding when some axis of it is sharded, else None.

  Inside ``jit`` only Explicit mesh axes show in an array's type, so this is
  None on Auto meshes and without a mesh.
  """
  sharding = jax.typeof(x).sharding
  if (sharding is None or sharding.mesh.empty or
      not any(a is not None for a in sharding.spec)):
    return None
  return sharding


def replicated(x: ArrayLike | None) -> jax.Array | None:
  """``x`` resharded to fully replicated if it is Explicit-sharded.

  A no-op (and no collective) for arrays with no sharded axis; None stays
  None. Used where a whole-batch computation (a sample or candidate set
  shared by the batch) reads batch-sharded values.
  """
  if x is None:
    return None
  x = jnp.asarray(x)
  sharding = explicit_sharding(x)
  if sharding is None:
    return x
  return jax.sharding.reshard(x, NamedSharding(sharding.mesh, P()))
