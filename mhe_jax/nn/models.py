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
With ``max_rows`` the labelled positions are first compacted into that many
rows (``lax.top_k`` of the labelled flags keeps every labelled row, in
order, while there are at most ``max_rows``), so a head scores ``max_rows``
rows instead of ``B * T``: left-padded histories are mostly padding (Amazon
Beauty: ~720 labelled of 6,400 positions in a batch of 128 users, T=50).
On a data-parallel mesh each batch shard compacts its own rows into
``max_rows / shards``. The caller guarantees the bound (the trainer checks
every batch on the host, :func:`labelled_rows`); beyond it rows would be
dropped.
Top-k and :meth:`Classifier.label_scores` use the last position (the
latest item of a left-padded sequence).
"""

from __future__ import annotations

from typing import Any, Mapping

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from mhe_jax.nn.encoders import _take_rows  # pylint: disable=protected-access
from mhe_jax.ops.topk import product_log_probs


def _last_position(x: jax.Array) -> jax.Array:
  """``[B, T, d] -> [B, d]`` (position T - 1); ``[B, d]`` unchanged."""
  return x[:, -1] if x.ndim == 3 else x


def labelled_rows(labels: Any, mask: Any = None, shards: int = 1) -> int:
  """Labelled positions of a host batch of ``[B, T]`` next-item targets.

  With ``shards``, the batch is cut into that many equal blocks of examples
  (the batch shards of a data-parallel mesh) and the largest block's count
  is returned.
  """
  valid = np.asarray(labels) >= 0
  if mask is not None:
    valid = valid & np.asarray(mask, bool).reshape(-1, *([1] * (valid.ndim - 1)))
  return int(valid.reshape(shards, -1).sum(axis=1).max())


def _batch_shards(x: jax.Array) -> int:
  """Shards of ``x``'s leading axis on an Explicit mesh (1 otherwise)."""
  sharding = jax.typeof(x).sharding
  spec = tuple(getattr(sharding, "spec", ()) or ())
  if not spec or spec[0] is None:
    return 1
  axes = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
  return int(np.prod([sharding.mesh.shape[a] for a in axes]))


def _compact_rows(x_nd: jax.Array, labels_n: jax.Array, where_n: jax.Array,
                  max_rows: int):
  """The labelled rows first, ``max_rows`` of them, per batch shard.

  Each of the ``S`` shards of the row axis keeps ``max_rows // S`` rows of
  its own (``lax.top_k`` of its labelled flags: every labelled row, in order,
  while there are at most that many), so nothing crosses devices.
  """
  n = x_nd.shape[0]
  shards = _batch_shards(where_n)
  if max_rows % shards:
    raise ValueError(f"max_rows={max_rows} is not divisible by the {shards} "
                     "batch shards")
  per, keep = n // shards, max_rows // shards
  if keep >= per:
    return x_nd, labels_n, where_n
  _, rows_sr = jax.lax.top_k(where_n.reshape(shards, per).astype(jnp.int32),
                             keep)
  take = lambda a: jnp.take_along_axis(  # pylint: disable=g-long-lambda
      a.reshape(shards, per, *a.shape[1:]),
      rows_sr.reshape(shards, keep, *([1] * (a.ndim - 1))), axis=1
  ).reshape(shards * keep, *a.shape[1:])
  return take(x_nd), take(labels_n), take(where_n)


class Classifier(nnx.Module):
  """Runs ``encoder(*batch[input_keys])`` and hands the features to ``head``.

  Batches are dicts with the encoder's input keys, ``"labels"`` (int ``[B]``
  or ``[B, L]``, -1 padded; ``[B, T]`` next-item targets for a sequence
  encoder) and ``"mask"`` (bool ``[B]``, False on padding).

  Args:
    encoder, head: the modules.
    input_keys: the batch keys the encoder reads, in order.
    max_rows: sequence features only: compact the labelled positions of a
      batch into this many rows before the head's loss (see the module
      docstring); 0 scores all ``B * T`` rows.
  """

  def __init__(self, encoder: nnx.Module, head: nnx.Module,
               input_keys: tuple[str, ...], max_rows: int = 0):
    if max_rows < 0:
      raise ValueError(f"max_rows must be >= 0, got {max_rows}")
    self.encoder = encoder
    self.head = head
    self.input_keys = tuple(input_keys)
    self.max_rows = int(max_rows)

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
      if 0 < self.max_rows < b * t:
        x, labels, where = _compact_rows(x, labels, where, self.max_rows)
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
