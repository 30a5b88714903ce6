"""Classifier = encoder + head, the model the trainer builds.

Example::

  model = Classifier(encoder, head, ("feature_ids", "feature_values"))
  loss = model.loss(batch, rng=jax.random.key(0))        # scalar
  scores_bk, labels_bk = model.topk(batch, 5)

Sequence encoders (features ``[B, T, d]``, e.g.
:class:`~mhe_jax.nn.sequence.SASRecEncoder`) train every position: the
positions are flattened into ``B * T`` rows with labels ``[B * T]`` and the
rows without a label (-1, padding) or of a masked example left out, so each
head's own single-label loss becomes the mean over labelled positions.
Top-k and :meth:`Classifier.label_scores` use the last position (the
latest item of a left-padded sequence).
"""

from __future__ import annotations

from typing import Any, Mapping

from flax import nnx
import jax
import jax.numpy as jnp

from mhe_jax.nn.encoders import _take_rows  # pylint: disable=protected-access
from mhe_jax.ops.topk import product_log_probs


def _last_position(x: jax.Array) -> jax.Array:
  """``[B, T, d] -> [B, d]`` (position T - 1); ``[B, d]`` unchanged."""
  return x[:, -1] if x.ndim == 3 else x


class Classifier(nnx.Module):
  """Runs ``encoder(*batch[input_keys])`` and hands the features to ``head``.

  Batches are dicts with the encoder's input keys, ``"labels"`` (int ``[B]``
  or ``[B, L]``, -1 padded; ``[B, T]`` next-item targets for a sequence
  encoder) and ``"mask"`` (bool ``[B]``, False on padding).
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
    """Mean head loss over the batch's unmasked examples (or positions)."""
    x = self.features(batch, train=train)
    labels, where = batch["labels"], batch.get("mask")
    if x.ndim == 3:  # [B, T, d] with [B, T] next-item labels
      b, t, d = x.shape
      if labels.shape != (b, t):
        raise ValueError(f"sequence features {x.shape} need labels [B, T] = "
                         f"{(b, t)}, got {labels.shape}")
      valid_bt = labels >= 0
      if where is not None:
        valid_bt = valid_bt & jnp.asarray(where, bool)[:, None]
      x, labels, where = (x.reshape(b * t, d), labels.reshape(b * t),
                          valid_bt.reshape(b * t))
    return self.head.loss(x, labels, rng=rng, where=where)

  def topk(self, batch: Mapping[str, Any], k: int):
    """``(scores [B, k], labels [B, k])`` from the head's decoder."""
    return self.head.topk(_last_position(self.features(batch)), k)

  def label_scores(self, batch: Mapping[str, Any],
                   labels_bl: jax.Array) -> jax.Array:
    """Scores of given labels, float32 ``[B, L]``, ranked like :meth:`topk`.

    The head's ``log_probs`` where it has one (MHC); MHP: the product-space
    log-probability; a full classifier (vanilla, MHS): the logits of the
    given classes only (gathered kernel columns, no ``[B, C]`` array; the
    kernel's classes must not be sharded).

    Args:
      batch: the inputs.
      labels_bl: int ``[B, L]`` in ``[0, C)``.
    """
    x_bd = _last_position(self.features(batch))
    head = self.head
    if hasattr(head, "log_probs"):
      return head.log_probs(x_bd, labels_bl)
    codec = getattr(head, "codec", None)
    if codec is not None and hasattr(head, "fused_logits"):  # MHP
      return product_log_probs(head(x_bd), labels_bl, codec)
    if not hasattr(head, "kernel"):
      raise ValueError(f"no label scores for a {type(head).__name__}")
    columns_bl = labels_bl if codec is None else codec.to_codes(labels_bl)
    kernel_pd = head.kernel[...].T  # [P, d], P >= C columns in code order
    w_bld = _take_rows(kernel_pd, columns_bl)
    bias_bl = _take_rows(head.bias[...][:, None], columns_bl)[..., 0]
    scores_bl = jnp.einsum("bd,bld->bl", x_bd.astype(jnp.float32),
                           w_bld.astype(jnp.float32))
    return scores_bl + bias_bl.astype(jnp.float32)
