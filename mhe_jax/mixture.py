"""A small learning check for heads: Gaussian mixture + MLP encoder + adam.

The heads' tests (tests/test_mhp.py, tests/test_mhc.py, ...) hold every head
to a full softmax on this task, and benchmarks/claims.py measures the
paper's label-order and low-rank claims with it: a ``hidden``-wide ReLU MLP
on :class:`mhe_jax.data.gaussian.GaussianMixture` samples, any head on top
(``loss(x, y, rng=)`` and ``topk(x, k)``), adam, test top-1 accuracy.
"""

from __future__ import annotations

from typing import Callable

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mhe_jax.data.gaussian import GaussianMixture


class MLPClassifier(nnx.Module):
  """``hidden``-wide ReLU MLP encoder followed by any head."""

  def __init__(self, dim: int, hidden: int, depth: int,
               make_head: Callable[[int, nnx.Rngs], nnx.Module], rngs: nnx.Rngs):
    dims = [dim] + [hidden] * depth
    self.layers = nnx.List(
        [nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])
    self.head = make_head(hidden, rngs)

  def features(self, x):
    for layer in self.layers:
      x = jax.nn.relu(layer(x))
    return x


def train_and_eval(make_head, *, num_classes=2000, dim=64, noise=0.5,
                   hidden=512, depth=2, steps=300, batch=256, lr=1e-3,
                   num_test=2048, seed=0, k=1):
  """Trains encoder + head on the mixture; returns test top-1 accuracy.

  Args:
    make_head: ``(in_features, rngs) -> head`` with ``loss(x, y, rng=)`` and
      ``topk(x, k)``.
  """
  task = GaussianMixture(num_classes, dim, noise, seed)
  centres = task.centres
  model = MLPClassifier(dim, hidden, depth, make_head, nnx.Rngs(seed))
  optimizer = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, x, y, rng):
    def loss_fn(model):
      return model.head.loss(model.features(x), y, rng=rng)
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  @nnx.jit
  def predict(model, x):
    return model.head.topk(model.features(x), k)[1]

  key = jax.random.key(seed)
  for i in range(steps):
    x, y = task.sample(batch, seed=1000 + i, centres=centres)
    step(model, optimizer, jnp.asarray(x), jnp.asarray(y),
         jax.random.fold_in(key, i))
  x, y = task.sample(num_test, seed=1, centres=centres)
  pred = np.asarray(predict(model, jnp.asarray(x)))
  return float((pred[:, 0] == y).mean())
