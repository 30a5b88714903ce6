"""ops.chunked: chunked losses, gradients and top-k vs optax / lax.top_k.

The class-sharded paths are tested here once and through VanillaHead in
test_vanilla.py. Everything runs under jit, and tests share compiled
functions where they can: compilation dominates these small problems.
"""

import functools

import chex
from dense_reference import B, optax_bce, optax_ce, optax_softmax_sets
from dense_reference import random_problem
import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from jax.test_util import check_grads
import numpy as np
import pytest

from mhe_jax.ops import chunked

def losses_and_grads(ce_fn, bce_fn, sets_fn, x, w, b, labels, label_sets,
                     where):
  """Per-example CE, BCE and label-set softmax CE, and their sums' gradients."""
  out = []
  for fn, y in ((ce_fn, labels), (bce_fn, label_sets), (sets_fn, label_sets)):
    loss_b, vjp = jax.vjp(lambda x, w, b: fn(x, w, b, y, where), x, w, b)
    out.append((loss_b, vjp(jnp.ones_like(loss_b))))
  return out


@jax.jit
def optax_losses_and_grads(*args):
  return losses_and_grads(optax_ce, optax_bce, optax_softmax_sets, *args)


@functools.partial(jax.jit, static_argnames=("chunk_size", "num_classes"))
def chunked_losses_and_grads(*args, chunk_size, num_classes=None):
  kw = dict(chunk_size=chunk_size, num_classes=num_classes)
  ce = lambda *a: chunked.chunked_softmax_cross_entropy(
      *a[:4], where=a[4], **kw)
  return losses_and_grads(
      ce, lambda *a: chunked.chunked_sigmoid_binary_cross_entropy(
          *a[:4], where=a[4], **kw), ce, *args)


def assert_close(a, b, tol=1e-5):
  chex.assert_trees_all_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("chunk_size", [7, None])  # 3 chunks + a tail; dense
def test_chunked_losses_equal_optax(chunk_size):
  problem = random_problem(0)
  ours = chunked_losses_and_grads(*problem, chunk_size=chunk_size)
  assert_close(ours, optax_losses_and_grads(*problem))
  (ce_b, _), (bce_b, _), (sets_b, _) = ours
  assert ce_b.shape == bce_b.shape == sets_b.shape == (B,)
  assert ce_b.dtype == sets_b.dtype == jnp.float32
  assert ce_b[1] == 0 and ce_b[0] == 0 and (ce_b >= 0).all()
  assert sets_b[2] == 0 and sets_b[0] == 0 and (sets_b > 0).sum() == B - 4


def test_check_grads():
  with jax.enable_x64(True):
    x, w, b, labels, label_sets, _ = random_problem(
        2, batch=3, dim=4, classes=7)
    x, w, b = (a.astype(jnp.float64) for a in (x, w, b))

    @jax.jit
    def losses(x, w, b):  # chunks of 3 + 3 + 1 classes
      return (chunked.chunked_softmax_cross_entropy(
          x, w, b, labels, chunk_size=3),
              chunked.chunked_sigmoid_binary_cross_entropy(
          x, w, b, label_sets, chunk_size=3),
              chunked.chunked_softmax_cross_entropy(
          x, w, b, label_sets, chunk_size=3))

    assert losses(x, w, b)[0].dtype == jnp.float64
    check_grads(losses, (x, w, b), order=1, modes=["rev"])


@pytest.mark.parametrize("chunk_size,k", [(4, 9), (7, 23), (None, 6)])
def test_chunked_top_k_equals_lax_top_k(chunk_size, k):
  x, w, b, *_ = random_problem(3)
  top_k = jax.jit(functools.partial(
      chunked.chunked_top_k, k=k, chunk_size=chunk_size))
  scores, labels = top_k(x, w, b)
  ref_scores, ref_labels = jax.lax.top_k(x @ w + b, k)
  assert scores.dtype == jnp.float32 and labels.dtype == jnp.int32
  np.testing.assert_array_equal(labels, ref_labels)
  np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)
  # Integer logits, many equal: ties go to the smaller label, as in lax.top_k.
  x, w, b = jnp.round(x), jnp.round(w), jnp.zeros_like(b)
  scores, labels = top_k(x, w, b)
  ref_scores, ref_labels = jax.lax.top_k(x @ w + b, k)
  np.testing.assert_array_equal(labels, ref_labels)
  np.testing.assert_array_equal(scores, ref_scores)
  # All logits equal: the first k labels.
  _, labels = top_k(x, jnp.zeros_like(w), b)
  np.testing.assert_array_equal(labels, np.tile(np.arange(k), (B, 1)))


def test_argument_errors():
  x, w, b, labels, label_sets, _ = random_problem(4)
  with pytest.raises(ValueError, match=r"k must be an integer in \[1, 23\]"):
    chunked.chunked_top_k(x, w, b, 24)
  with pytest.raises(ValueError, match="shapes do not match"):
    chunked.chunked_top_k(x, w[1:], b, 2)
  with pytest.raises(ValueError,
                     match=r"softmax CE labels must be int \[B\] or \[B, L\]"):
    chunked.chunked_softmax_cross_entropy(x, w, b, label_sets[..., None])
  with pytest.raises(ValueError, match=r"multi-label labels must be int"):
    chunked.chunked_sigmoid_binary_cross_entropy(x, w, b, labels)
  with pytest.raises(ValueError, match="chunk_size"):
    chunked.chunked_softmax_cross_entropy(x, w, b, labels, chunk_size=0)
  mesh = jax.make_mesh((8,), ("classes",), axis_types=(AxisType.Explicit,))
  with pytest.raises(ValueError, match="do not divide evenly"):
    chunked.chunked_softmax_cross_entropy(x, w, b, labels, mesh=mesh)


def test_chunked_memory_stays_below_the_logits():
  # Structural, not a timing: XLA's buffer assignment of the compiled step.
  batch, dim, classes = 64, 32, 200_000
  args = (jax.ShapeDtypeStruct((batch, dim), jnp.float32),
          jax.ShapeDtypeStruct((dim, classes), jnp.float32),
          jax.ShapeDtypeStruct((classes,), jnp.float32),
          jax.ShapeDtypeStruct((batch,), jnp.int32))

  def temp_bytes(loss_b_fn):
    step = jax.jit(jax.value_and_grad(
        lambda x, w, b, y: loss_b_fn(x, w, b, y).mean(), argnums=(0, 1, 2)))
    return step.lower(*args).compile().memory_analysis().temp_size_in_bytes

  logits_bytes = batch * classes * 4
  naive = temp_bytes(lambda x, w, b, y: optax_ce(x, w, b, y, True))
  ours = temp_bytes(lambda x, w, b, y: chunked.chunked_softmax_cross_entropy(
      x, w, b, y))
  assert naive > logits_bytes
  assert ours < logits_bytes / 8, (ours, logits_bytes)


def test_class_sharded_ops_with_replicated_parameters():
  # A 'classes' mesh axis shards the computation even if the parameters are
  # replicated; their gradients must come back replicated (Explicit types).
  mesh = jax.make_mesh((2, 4), ("data", "classes"),
                       axis_types=(AxisType.Explicit,) * 2)
  x, w, b, *rest = random_problem(5, classes=24)
  with jax.set_mesh(mesh):
    x_sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
    ours = chunked_losses_and_grads(x_sharded, w, b, *rest, chunk_size=4)
    scores, labels = jax.jit(functools.partial(
        chunked.chunked_top_k, k=5, chunk_size=4))(x_sharded, w, b)
  assert len(ours) == 3
  for _, (dx, dw, db) in ours:
    assert dx.sharding.spec == P("data", None)
    assert dw.sharding.spec == P(None, None) and db.sharding.spec == P(None)
  assert_close(jax.device_get(ours), optax_losses_and_grads(x, w, b, *rest))
  ref_scores, ref_labels = jax.lax.top_k(x @ w + b, 5)
  np.testing.assert_array_equal(labels, ref_labels)
  np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)
