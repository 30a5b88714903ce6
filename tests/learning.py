"""Shared learning check for the heads' tests (see mhe_jax.mixture).

Not a test module itself: re-exports the mixture loop and adds the plain
full-softmax head the real heads are held to.
"""

from __future__ import annotations

from flax import nnx
import jax
import optax

from mhe_jax.mixture import MLPClassifier  # pylint: disable=unused-import
from mhe_jax.mixture import train_and_eval  # pylint: disable=unused-import


class ReferenceSoftmaxHead(nnx.Module):
  """A plain full-softmax head, the reference the real heads are held to."""

  def __init__(self, in_features, num_classes, rngs):
    self.linear = nnx.Linear(in_features, num_classes, rngs=rngs)

  def loss(self, x, y, *, rng=None):
    del rng
    return optax.softmax_cross_entropy_with_integer_labels(
        self.linear(x), y).mean()

  def topk(self, x, k):
    return jax.lax.top_k(self.linear(x), k)
