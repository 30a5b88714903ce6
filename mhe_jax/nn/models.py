"""Classifier = encoder + head, the model the trainer builds.

Example::

  model = Classifier(encoder, head, ("feature_ids", "feature_values"))
  loss = model.loss(batch, rng=jax.random.key(0))        # scalar
  scores_bk, labels_bk = model.topk(batch, 5)
"""

from __future__ import annotations

from typing import Any, Mapping

from flax import nnx
import jax


class Classifier(nnx.Module):
  """Runs ``encoder(*batch[input_keys])`` and hands the features to ``head``.

  Batches are dicts with the encoder's input keys, ``"labels"`` (int ``[B]``
  or ``[B, L]``, -1 padded) and ``"mask"`` (bool ``[B]``, False on padding).
  """

  def __init__(self, encoder: nnx.Module, head: nnx.Module,
               input_keys: tuple[str, ...]):
    self.encoder = encoder
    self.head = head
    self.input_keys = tuple(input_keys)

  def features(self, batch: Mapping[str, Any], *, train: bool = False) -> jax.Array:
    return self.encoder(*(batch[k] for k in self.input_keys), train=train)

  def loss(self, batch: Mapping[str, Any], *, rng: jax.Array | None = None,
           train: bool = True) -> jax.Array:
    """Mean head loss over the batch's unmasked examples."""
    return self.head.loss(self.features(batch, train=train), batch["labels"],
                          rng=rng, where=batch.get("mask"))

  def topk(self, batch: Mapping[str, Any], k: int):
    """``(scores [B, k], labels [B, k])`` from the head's decoder."""
    return self.head.topk(self.features(batch), k)
