"""VanillaHead: vs optax, class-sharded == unsharded, learning checks.

The chunked ops themselves (gradient checks, top-k ties, memory) are tested
in test_chunked.py.

Everything runs under jit, and tests share compiled functions where they can:
compilation dominates the time of these small problems.
"""

import functools
import math

import chex
from dense_reference import C, D, optax_bce, optax_ce, optax_softmax_sets
from dense_reference import random_problem
from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import learning
import numpy as np
import optax
import pytest

from mhe_jax.nn.vanilla import VanillaHead


def assert_close(a, b, tol=1e-5):
  chex.assert_trees_all_close(a, b, rtol=tol, atol=tol)


@nnx.jit(static_argnums=4)
def head_outputs(head, x, y, where, k):
  """Mean loss, its gradients w.r.t. params and x, top-k, logits."""
  loss, (grads, dx) = nnx.value_and_grad(
      lambda h, x: h.loss(x, y, where=where), argnums=(0, 1))(head, x)
  return loss, nnx.state(grads), dx, head.topk(x, k), head(x)


@functools.partial(jax.jit, static_argnames=("multilabel", "multilabel_loss"))
def optax_head_outputs(w, b, x, y, where, *, multilabel,
                       multilabel_loss="bce"):
  """What head_outputs must give, from the dense optax losses."""
  def loss_fn(w, b, x):
    if multilabel:
      ref = optax_bce if multilabel_loss == "bce" else optax_softmax_sets
      return ref(x, w, b, y, where).sum() / where.sum()
    return optax_ce(x, w, b, y, where).sum() / (where & (y >= 0)).sum()
  loss, grads = jax.value_and_grad(loss_fn, (0, 1, 2))(w, b, x)
  return loss, grads, jax.lax.top_k(x @ w + b, 4), x @ w + b


def test_head_equals_optax():
  head = VanillaHead(D, C, chunk_size=5, rngs=nnx.Rngs(5))
  assert head.num_classes == C and head.padded_classes == C
  assert head.kernel.shape == (D, C) and head.bias.shape == (C,)
  x, _, _, labels, _, where = random_problem(6)
  loss, grads, dx, (scores, top), logits = head_outputs(
      head, x, labels, where, 4)
  w, b = head.kernel[...], head.bias[...]
  ref_loss, ref_grads, ref_top, ref_logits = optax_head_outputs(
      w, b, x, labels, where, multilabel=False)
  assert_close((loss, grads["kernel"][...], grads["bias"][...], dx),
               (ref_loss, *ref_grads))
  assert_close(logits, ref_logits)
  np.testing.assert_array_equal(top, ref_top[1])
  assert_close(scores, ref_top[0])


def test_label_shape_errors():
  x, _, _, labels, label_sets, _ = random_problem(4)
  with pytest.raises(ValueError, match="single-label head"):
    VanillaHead(D, C, rngs=nnx.Rngs(0)).loss(x, label_sets)
  with pytest.raises(ValueError, match="multilabel head"):
    VanillaHead(D, C, multilabel=True, rngs=nnx.Rngs(0)).loss(x, labels)
  with pytest.raises(ValueError, match="multilabel_loss must be 'bce', "
                     "'softmax' or 'squared', got 'pal'"):
    VanillaHead(D, C, multilabel=True, multilabel_loss="pal",
                rngs=nnx.Rngs(0))


def test_parameters_carry_logical_axes():
  head = VanillaHead(D, C, rngs=nnx.Rngs(0))
  with nnx.logical_axis_rules([("embed", None), ("classes", "classes")]):
    specs = nnx.get_partition_spec(nnx.state(head))
  assert specs["kernel"].get_value() == P(None, "classes")
  assert specs["bias"].get_value() == P("classes")


# multilabel_loss None: single-label.
@pytest.mark.parametrize("mesh_shape,num_classes,multilabel_loss,chunk_size", [
    (((8,), ("classes",)), 45, None, 2),  # 45 -> 48: 6 per device, 3 chunks
    (((2, 4), ("data", "classes")), 46, "bce", 8),  # 12 per device: 8 + 4
    (((2, 4), ("data", "classes")), 47, "softmax", 8)])
def test_sharded_head_equals_unsharded(mesh_shape, num_classes,
                                       multilabel_loss, chunk_size):
  shape, names = mesh_shape
  mesh = jax.make_mesh(shape, names,
                       axis_types=(AxisType.Explicit,) * len(shape))
  kw = dict(multilabel=multilabel_loss is not None,
            multilabel_loss=multilabel_loss or "bce")
  sharded = VanillaHead(D, num_classes, chunk_size=chunk_size, mesh=mesh,
                        rngs=nnx.Rngs(3), **kw)
  assert sharded.padded_classes == 48
  assert sharded.kernel[...].sharding.spec == P(None, "classes")
  # The unsharded reference: the same parameters, one dense block.
  plain = VanillaHead(D, num_classes, rngs=nnx.Rngs(3), **kw)
  kernel, bias = np.asarray(sharded.kernel[...]), np.asarray(sharded.bias[...])
  np.testing.assert_array_equal(kernel[:, num_classes:], 0)
  plain.kernel[...] = jnp.asarray(kernel[:, :num_classes])
  plain.bias[...] = jnp.asarray(bias[:num_classes] + 0.1)
  sharded.bias[...] = sharded.bias[...] + 0.1

  x, _, _, labels, label_sets, where = random_problem(8, classes=num_classes)
  y = labels if multilabel_loss is None else label_sets
  batch = NamedSharding(mesh, P(names[0] if len(shape) == 2 else None))
  with jax.set_mesh(mesh):
    out = head_outputs(
        sharded, *(jax.device_put(a, batch) for a in (x, y, where)), 7)
    assert out[1]["kernel"][...].sharding.spec == P(None, "classes")
    loss, grads, dx, top, logits = jax.device_get(out)
  ref_loss, ref_grads, ref_dx, ref_top, ref_logits = head_outputs(
      plain, x, y, where, 7)
  assert_close((loss, dx, top[0], logits), (ref_loss, ref_dx, ref_top[0],
                                            ref_logits))
  assert_close(grads["kernel"][...][:, :num_classes], ref_grads["kernel"][...])
  assert_close(grads["bias"][...][:num_classes], ref_grads["bias"][...])
  assert not grads["kernel"][...][:, num_classes:].any()
  np.testing.assert_array_equal(top[1], ref_top[1])


@pytest.mark.parametrize("multilabel_loss", ["bce", "softmax"])
def test_data_parallel_multilabel_head(multilabel_loss):
  # Classes unsharded, the batch over 'data' (inferred from x's sharding).
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
  head = VanillaHead(D, C, multilabel=True, multilabel_loss=multilabel_loss,
                     chunk_size=5, mesh=mesh, rngs=nnx.Rngs(5))
  x, _, _, _, label_sets, where = random_problem(6)
  with jax.set_mesh(mesh):
    loss, grads, dx, top, logits = jax.device_get(head_outputs(
        head, jax.device_put(x, NamedSharding(mesh, P("data"))), label_sets,
        where, 4))
  ref_loss, ref_grads, ref_top, ref_logits = optax_head_outputs(
      head.kernel[...], head.bias[...], x, label_sets, where, multilabel=True,
      multilabel_loss=multilabel_loss)
  assert_close((loss, grads["kernel"][...], grads["bias"][...], dx, logits),
               (ref_loss, *ref_grads, ref_logits))
  np.testing.assert_array_equal(top[1], ref_top[1])


def test_learns_gaussian_mixture():
  acc = learning.train_and_eval(
      make_head=lambda d, rngs: VanillaHead(d, 2000, rngs=rngs), noise=0.5)
  assert acc >= 0.98, acc


@pytest.mark.parametrize("multilabel_loss", ["bce", "softmax"])
def test_multilabel_head_learns_label_sets_without_retracing(multilabel_loss):
  # Each example is the sum of its 1-3 labels' centres plus noise.
  num_classes, dim, steps = 60, 24, 100
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(num_classes, dim)).astype(np.float32)

  def sample(n):
    labels = rng.integers(0, num_classes, (n, 3))
    labels[:, 1:][rng.random((n, 2)) < 0.4] = -1
    multi_hot = np.zeros((n, num_classes + 1), np.float32)
    np.put_along_axis(multi_hot, labels, 1., axis=1)  # -1: the extra column
    x = multi_hot[:, :-1] @ centres + 0.3 * rng.normal(size=(n, dim))
    return jnp.asarray(x, jnp.float32), jnp.asarray(labels, jnp.int32)

  head = VanillaHead(dim, num_classes, multilabel=True, chunk_size=16,
                     multilabel_loss=multilabel_loss, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(head, optax.adam(3e-2), wrt=nnx.Param)

  @nnx.jit
  @chex.assert_max_traces(n=1)  # one compilation for the whole loop
  def step(head, optimizer, x, y):
    loss, grads = nnx.value_and_grad(lambda h: h.loss(x, y))(head)
    optimizer.update(head, grads)
    return loss

  def excess_loss(x, y):
    # The label-set softmax cannot go below the entropy of its target, the
    # mean log of the number of distinct labels; BCE's floor is 0.
    floor = 0.
    if multilabel_loss == "softmax":
      floor = np.mean([np.log(len(set(row) - {-1})) for row in np.asarray(y)])
    return float(step(head, optimizer, x, y)) - floor

  chex.clear_trace_counter()
  first = excess_loss(*sample(128))
  for _ in range(steps):
    last = excess_loss(*sample(128))
  assert last < first / 5, (first, last)
  x, y = sample(512)
  _, top1 = nnx.jit(lambda h, x: h.topk(x, 1))(head, x)
  precision_at_1 = (np.asarray(y) == np.asarray(top1)).any(1).mean()
  assert precision_at_1 >= 0.95, precision_at_1


@pytest.mark.parametrize("loss", ["bce", "softmax"])
def test_prior_bias_init_from_the_label_counts(loss):
  import types  # pylint: disable=g-import-not-at-top
  from mhe_jax import config_lib, registry  # pylint: disable=g-import-not-at-top
  counts = np.array([0, 1, 5, 19])
  data = types.SimpleNamespace(num_classes=4, multilabel=True,
                               label_counts=counts, num_train=20)
  cfg = config_lib.base_config().head
  cfg.bias_init, cfg.multilabel_loss = "prior", loss
  head = registry._vanilla(cfg, 3, data, nnx.Rngs(0))  # pylint: disable=protected-access
  p = [(n + 0.5) / 21 for n in counts]
  expected = [math.log(q / (1 - q)) if loss == "bce" else math.log(q)
              for q in p]
  np.testing.assert_allclose(head.bias[...], expected, rtol=1e-6)
  cfg.bias_init = "zeros"
  zero = registry._vanilla(cfg, 3, data, nnx.Rngs(0))  # pylint: disable=protected-access
  np.testing.assert_array_equal(zero.bias[...], np.zeros(4))
  cfg.bias_init = "mean"
  with pytest.raises(ValueError, match="bias_init='mean'; known"):
    registry._vanilla(cfg, 3, data, nnx.Rngs(0))  # pylint: disable=protected-access
