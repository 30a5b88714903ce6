"""Mesh construction and logical-to-mesh mapping."""

import jax
from jax.sharding import PartitionSpec as P
import pytest

from mhe_jax import sharding


def test_resolve_mesh_shape():
  assert sharding.resolve_mesh_shape((-1, 1), 8) == (8, 1)
  assert sharding.resolve_mesh_shape((2, -1), 8) == (2, 4)
  assert sharding.resolve_mesh_shape((2, 4), 8) == (2, 4)
  with pytest.raises(ValueError, match="does not divide the 8 devices"):
    sharding.resolve_mesh_shape((3, -1), 8)
  with pytest.raises(ValueError, match="has 6 devices but 8 are available"):
    sharding.resolve_mesh_shape((2, 3), 8)
  with pytest.raises(ValueError, match="more than one -1"):
    sharding.resolve_mesh_shape((-1, -1), 8)


def test_make_mesh_explicit():
  mesh = sharding.make_mesh((-1, 2), ("data", "classes"))
  assert dict(mesh.shape) == {"data": 4, "classes": 2}
  assert all(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types)
  with pytest.raises(ValueError, match="unknown mesh axis_type 'bogus'"):
    sharding.make_mesh((-1,), ("data",), axis_type="bogus")


def test_logical_to_mesh():
  rules = sharding.DEFAULT_RULES
  assert sharding.logical_to_mesh(P("embed", "classes"), rules) == P(None, "classes")
  assert sharding.logical_to_mesh(P("batch", None), rules) == P("data", None)
  assert sharding.logical_to_mesh(P("unknown"), rules) == P(None)
  with pytest.raises(ValueError, match="used twice"):
    sharding.logical_to_mesh(P("classes", "classes"), rules)


def test_tree_shardings_drop_trivial_axes():
  mesh = sharding.make_mesh((8, 1), ("data", "classes"))
  tree = {"w": P("embed", "classes"), "b": P("classes"), "x": None}
  out = sharding.tree_shardings(tree, mesh, sharding.DEFAULT_RULES)
  assert out["w"].spec == P(None, None)  # classes axis has size 1
  mesh = sharding.make_mesh((2, 4), ("data", "classes"))
  out = sharding.tree_shardings(tree, mesh, sharding.DEFAULT_RULES)
  assert out["w"].spec == P(None, "classes") and out["x"].spec == P()
  assert sharding.batch_sharding(mesh, sharding.DEFAULT_RULES, 2).spec == P("data", None)
  sharding.check_divisible(8, mesh, sharding.DEFAULT_RULES)
  with pytest.raises(ValueError, match="batch_size=7 is not divisible by the 2"):
    sharding.check_divisible(7, mesh, sharding.DEFAULT_RULES)
