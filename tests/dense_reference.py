"""Dense references shared by test_chunked.py and test_vanilla.py.

A small random linear classifier problem, and its per-example losses
computed the obvious way with optax over the full B x C logits.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

B, D, C = 16, 8, 23  # C divisible by none of the chunk sizes below


def random_problem(seed, batch=B, dim=D, classes=C, num_labels=4):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(batch, dim)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(dim, classes)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(classes,)), jnp.float32)
  labels = rng.integers(0, classes, batch)
  label_sets = rng.integers(-1, classes, (batch, num_labels))
  where = np.ones(batch, bool)
  if batch >= 8:
    labels[[1, 5]] = -1  # unlabelled examples
    label_sets[2] = -1  # no positives
    label_sets[3, :2] = label_sets[3, 2]  # a duplicate counts once
    where[[0, 5, 7]] = False
  return (x, w, b, jnp.asarray(labels, jnp.int32),
          jnp.asarray(label_sets, jnp.int32), jnp.asarray(where))


def optax_ce(x, w, b, labels, where):
  loss = optax.softmax_cross_entropy_with_integer_labels(
      x @ w + b, jnp.maximum(labels, 0))
  return jnp.where(where & (labels >= 0), loss, 0.)


def optax_bce(x, w, b, label_sets, where):
  targets = jax.nn.one_hot(label_sets, w.shape[1]).max(1)  # -1 -> zeros
  loss = optax.sigmoid_binary_cross_entropy(x @ w + b, targets).sum(-1)
  return jnp.where(where, loss, 0.)


def optax_softmax_sets(x, w, b, label_sets, where):
  """Multi-label softmax: CE against the uniform distribution on the set."""
  targets = jax.nn.one_hot(label_sets, w.shape[1]).max(1)  # -1 -> zeros
  count = targets.sum(-1, keepdims=True)
  loss = optax.softmax_cross_entropy(x @ w + b,
                                     targets / jnp.maximum(count, 1.))
  return jnp.where(where & (count[:, 0] > 0), loss, 0.)
