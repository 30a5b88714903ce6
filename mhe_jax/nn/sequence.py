"""Causal self-attention over item sequences (SASRec), Flax NNX.

:class:`SASRecEncoder` follows Kang & McAuley, "Self-Attentive Sequential
Recommendation" (ICDM 2018), with pre-LayerNorm blocks as in its later
reimplementations (e.g. Klenitskiy & Vasilev, RecSys 2023, "Turning Dross
Into Gold Loss: is BERT4Rec really better than SASRec?"):

* input ``e_t = sqrt(d) * E[item_t] + P[t]`` (item table ``E [C, d]``,
  learned positions ``P [T, d]``), dropout, zero at padded positions;
* ``num_blocks`` times: ``x = x + Dropout(MHA(LN(x)))`` (causal, padded keys
  masked), ``x = x + Dropout(FFN(LN(x)))`` with ``FFN = Linear(d, f) -> ReLU
  -> Dropout -> Linear(f, d)``, padded positions zeroed after each block
  (``layout='sasrec'``: the original SASRec block instead, whose residuals
  add the normalised input, see :class:`SelfAttentionBlock`);
* a final LayerNorm.

The output ``[B, T, d]`` has a feature vector per position: position ``t``
has seen items ``0 .. t`` only, so a head trained on it predicts the item at
``t + 1`` (:class:`~mhe_jax.nn.models.Classifier` flattens the positions
into rows). Sequences are left-padded with ``-1``
(:class:`~mhe_jax.data.pipeline.SequenceSource`), so the latest item is at
position ``T - 1``. A padded query position attends to nothing; its
output is 0 and it carries no loss.

Initialisation: the item table and the positions are drawn from
``N(0, init_std^2)``; ``init_std`` defaults to ``1/sqrt(d)`` (input
components of unit scale after the ``sqrt(d)`` factor); SASRec's
reimplementations draw both with std 0.02.

Tied embeddings (:meth:`SASRecEncoder.tie`): the encoder reads its item table
from the head's label vectors instead of a table of its own: a
:class:`~mhe_jax.nn.vanilla.VanillaHead`'s kernel ``[d, C]`` (the score of
item ``c`` is ``<x, E[c]> + b_c``, as the original SASRec scores with the
input embeddings), or a :class:`~mhe_jax.nn.mhc.MHCHead`'s last-level child
vectors (``child_embedding='table'``, ``hidden = d``: item ``c``'s leaf
logit is ``<P x, E[c]> + c_c``). The shared table starts from the encoder's
draw (copied into the head). Needs the head's classes unsharded (a
class-sharded kernel would be gathered per lookup).

Logical axis names: the item table ``('vocab', 'embed')``, positions
``(None, 'embed')``, attention projections ``('embed', 'mlp')`` /
``('mlp', 'embed')``, FFN ``('embed', 'mlp')`` / ``('mlp', 'embed')``,
LayerNorms ``('embed',)``.

Example::

  enc = SASRecEncoder(54_542, 50, 64, num_blocks=2, num_heads=1,
                      dropout=0.2, rngs=nnx.Rngs(0))
  items_bt = jnp.full((8, 50), -1).at[:, -3:].set(jnp.array([4, 9, 2]))
  x_btd = enc(items_bt)                     # [8, 50, 64]
  x_btd = enc(items_bt, train=True)         # with dropout
"""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from mhe_jax.nn.encoders import _axis_metadata  # pylint: disable=protected-access
from mhe_jax.nn.encoders import _check_ids  # pylint: disable=protected-access
from mhe_jax.nn.encoders import _partitioned  # pylint: disable=protected-access
from mhe_jax.nn.encoders import _take_rows  # pylint: disable=protected-access

ArrayLike = jax.typing.ArrayLike

_DENSE_INIT = nnx.initializers.lecun_normal()
_RELU_INIT = nnx.initializers.he_normal()
_ZEROS = nnx.initializers.zeros_init()


def _linear(d_in: int, d_out: int, names: tuple[str, str], init, rngs,
            dtype) -> nnx.Linear:
  return nnx.Linear(d_in, d_out, kernel_init=_partitioned(init, names),
                    bias_init=_partitioned(_ZEROS, names[1:]), dtype=dtype,
                    rngs=rngs)


def _layer_norm(d: int, rngs, dtype) -> nnx.LayerNorm:
  return nnx.LayerNorm(d, scale_metadata=_axis_metadata(("embed",)),
                       bias_metadata=_axis_metadata(("embed",)), dtype=dtype,
                       rngs=rngs)


def causal_attention(q_bthk: jax.Array, k_bthk: jax.Array, v_bthk: jax.Array,
                     valid_bt: jax.Array, weight_dropout=None) -> jax.Array:
  """Scaled dot-product attention, query ``t`` over valid keys ``s <= t``.

  Args:
    q_bthk, k_bthk, v_bthk: ``[B, T, heads, d_head]``.
    valid_bt: bool ``[B, T]``, False at padded positions (masked as keys).
    weight_dropout: None, or a callable applied to the attention weights
      ``[B, heads, T, T]`` (dropout on the weights, training only).

  Returns:
    ``[B, T, heads, d_head]``; 0 for a query with no allowed key.
  """
  t = q_bthk.shape[1]
  scale = 1.0 / np.sqrt(q_bthk.shape[-1])
  logits_bhts = jnp.einsum("bthk,bshk->bhts", q_bthk, k_bthk,
                           preferred_element_type=jnp.float32) * scale
  causal_ts = jnp.tril(jnp.ones((t, t), bool))
  allowed_bhts = causal_ts[None, None] & valid_bt[:, None, None, :]
  logits_bhts = jnp.where(allowed_bhts, logits_bhts, -1e30)
  weights_bhts = jax.nn.softmax(logits_bhts, axis=-1)
  weights_bhts = jnp.where(allowed_bhts, weights_bhts, 0.)
  if weight_dropout is not None:
    weights_bhts = weight_dropout(weights_bhts)
  return jnp.einsum("bhts,bshk->bthk", weights_bhts.astype(v_bthk.dtype),
                    v_bthk)


LAYOUTS = ("pre_ln", "sasrec")


class SelfAttentionBlock(nnx.Module):
  """Causal self-attention + feed-forward block, in one of two layouts.

  ``layout='pre_ln'``: ``x = x + Dropout(MHA(LN(x)))``, then
  ``x = x + Dropout(FFN(LN(x)))``.

  ``layout='sasrec'``, the block of the original SASRec code (Kang &
  McAuley; also the PyTorch port that SASRec+ builds on): the queries are
  normalised, the keys and values are not, and each residual adds the
  normalised input: ``q = LN(x)``, ``x = q + MHA(q, x, x)`` with dropout on
  the attention weights, then ``y = LN(x)``, ``x = y + Dropout(FFN(y))``.

  ``FFN = Linear(d, f) -> ReLU -> Dropout -> Linear(f, d)`` in both.

  Args:
    dim: d.
    num_heads: attention heads (divides d).
    ffn_dim: feed-forward inner width.
    dropout: rate after attention (``sasrec``: on its weights), inside and
      after the feed-forward.
    layout: ``'pre_ln'`` or ``'sasrec'``.
    dense_init_std: None (lecun-normal projections, he-normal FFN input), or
      the std of a normal init of every projection kernel.
    dtype: computation dtype.
    rngs: ``params`` and, with dropout, ``dropout``.
  """

  def __init__(self, dim: int, num_heads: int, ffn_dim: int, *,
               dropout: float = 0.0, layout: str = "pre_ln",
               dense_init_std: float | None = None, dtype=jnp.float32,
               rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f"num_heads={num_heads} does not divide the width "
                       f"{dim}")
    if layout not in LAYOUTS:
      raise ValueError(f"layout={layout!r}; known: {list(LAYOUTS)}")
    if dense_init_std is None:
      dense_init, relu_init = _DENSE_INIT, _RELU_INIT
    else:
      dense_init = relu_init = nnx.initializers.normal(dense_init_std)
    self.num_heads = num_heads
    self.layout = layout
    self.norm1 = _layer_norm(dim, rngs, dtype)
    self.qkv = _linear(dim, 3 * dim, ("embed", "mlp"), dense_init, rngs, dtype)
    self.out = _linear(dim, dim, ("mlp", "embed"), dense_init, rngs, dtype)
    self.norm2 = _layer_norm(dim, rngs, dtype)
    self.ffn_in = _linear(dim, ffn_dim, ("embed", "mlp"), relu_init, rngs,
                          dtype)
    self.ffn_out = _linear(ffn_dim, dim, ("mlp", "embed"), dense_init, rngs,
                           dtype)
    self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None

  def _drop(self, x, train):
    return x if self.dropout is None else self.dropout(x, deterministic=not train)

  def _attend(self, q_btd, kv_btd, valid_bt, train):
    b, t, d = q_btd.shape
    h, dh = self.num_heads, d // self.num_heads
    dtype = self.qkv.dtype or q_btd.dtype
    q_btd, kv_btd = q_btd.astype(dtype), kv_btd.astype(dtype)
    w_qkv = self.qkv.kernel[...].astype(dtype)
    bias = self.qkv.bias[...].astype(dtype)
    q = (q_btd @ w_qkv[:, :d] + bias[:d]).reshape(b, t, h, dh)
    kv = (kv_btd @ w_qkv[:, d:] + bias[d:]).reshape(b, t, 2, h, dh)
    drop = None
    if self.layout == "sasrec" and self.dropout is not None and train:
      drop = lambda w: self.dropout(w, deterministic=False)  # pylint: disable=unnecessary-lambda-assignment
    att_bthk = causal_attention(q, kv[:, :, 0], kv[:, :, 1], valid_bt,
                                weight_dropout=drop)
    return self.out(att_bthk.reshape(b, t, d))

  def __call__(self, x_btd: jax.Array, valid_bt: jax.Array, *,
               train: bool = False) -> jax.Array:
    """``[B, T, d] -> [B, T, d]``."""
    if self.layout == "sasrec":
      q_btd = self.norm1(x_btd)
      x_btd = q_btd + self._attend(q_btd, x_btd, valid_bt, train)
      resid_btd = y_btd = self.norm2(x_btd)
    else:
      y_btd = self.norm1(x_btd)
      resid_btd = x_btd + self._drop(
          self._attend(y_btd, y_btd, valid_bt, train), train)
      y_btd = self.norm2(resid_btd)
    h_btf = self._drop(jax.nn.relu(self.ffn_in(y_btd)), train)
    return resid_btd + self._drop(self.ffn_out(h_btf), train)


class SASRecEncoder(nnx.Module):
  """Item sequences -> per-position features (see the module docstring).

  Args:
    num_items: C; item ids in ``[0, C)``, -1 for padding.
    max_len: T, the positions (the sequences' fixed length).
    embed_dim: d = ``out_features``.
    num_blocks: self-attention blocks (>= 0).
    num_heads: attention heads per block.
    ffn_dim: feed-forward inner width; None: d.
    dropout: dropout rate (embeddings, attention output, feed-forward).
    init_std: std of the item and position tables at init; None:
      ``1/sqrt(embed_dim)``.
    layout: the blocks' layout, ``'pre_ln'`` or ``'sasrec'``
      (:class:`SelfAttentionBlock`).
    dense_init_std: None, or the std of a normal init of the blocks'
      projection kernels (:class:`SelfAttentionBlock`).
    dtype: computation dtype (parameters stay float32).
    rngs: ``params`` and, with dropout, ``dropout``.

  Attributes:
    out_features: d.
    item_embedding: ``nnx.Param [C, d]``, or None once :meth:`tie` is called.
  """

  def __init__(self, num_items: int, max_len: int, embed_dim: int, *,
               num_blocks: int = 2, num_heads: int = 1,
               ffn_dim: int | None = None, dropout: float = 0.0,
               init_std: float | None = None, layout: str = "pre_ln",
               dense_init_std: float | None = None, dtype=jnp.float32,
               rngs: nnx.Rngs):
    if init_std is not None and not init_std > 0:
      raise ValueError(f"init_std must be > 0 (or None), got {init_std}")
    if dense_init_std is not None and not dense_init_std > 0:
      raise ValueError("dense_init_std must be > 0 (or None), got "
                       f"{dense_init_std}")
    if layout not in LAYOUTS:
      raise ValueError(f"layout={layout!r}; known: {list(LAYOUTS)}")
    if num_items < 1 or max_len < 1 or embed_dim < 1 or num_heads < 1:
      raise ValueError("num_items, max_len, embed_dim and num_heads must be "
                       f">= 1, got {num_items}, {max_len}, {embed_dim}, "
                       f"{num_heads}")
    if num_blocks < 0:
      raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
    if not 0.0 <= dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    self.num_items = int(num_items)
    self.max_len = int(max_len)
    self.out_features = int(embed_dim)
    self.dtype = dtype
    std = 1.0 / np.sqrt(embed_dim) if init_std is None else float(init_std)
    init = _partitioned(nnx.initializers.normal(std), ("vocab", "embed"))
    self.item_embedding = nnx.Param(
        init(rngs.params(), (num_items, embed_dim), jnp.float32))
    pos_init = _partitioned(nnx.initializers.normal(std), (None, "embed"))
    self.position_embedding = nnx.Param(
        pos_init(rngs.params(), (max_len, embed_dim), jnp.float32))
    ffn = int(ffn_dim or embed_dim)
    self.blocks = nnx.List([
        SelfAttentionBlock(embed_dim, num_heads, ffn, dropout=dropout,
                           layout=layout, dense_init_std=dense_init_std,
                           dtype=dtype, rngs=rngs)
        for _ in range(num_blocks)])
    self.final_norm = _layer_norm(embed_dim, rngs, dtype)
    self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
    self.tied_head = nnx.data(None)

  def tie(self, head: nnx.Module) -> None:
    """Reads the item table from ``head.label_embeddings()`` from now on.

    ``head`` has ``label_embeddings() -> [C, d]`` and
    ``set_label_embeddings``: a vanilla head, or an MHC head with
    ``child_embedding='table'`` and ``hidden = d``. The encoder's table is
    copied into the head (the shared table starts from the encoder's init)
    and deleted; ``head`` stays the one owner of the shared weights (the
    model's state holds them once).
    """
    if not hasattr(head, "label_embeddings"):
      raise ValueError(f"cannot tie the item table to a {type(head).__name__}"
                       ": it has no label vectors (label_embeddings)")
    if self.item_embedding is None:
      raise ValueError("this encoder's item table is tied already")
    shape = tuple(head.label_embeddings().shape)
    if shape != (self.num_items, self.out_features):
      raise ValueError(f"cannot tie a [{self.num_items}, {self.out_features}]"
                       f" item table to the {type(head).__name__}'s label "
                       f"vectors of shape {shape}")
    head.set_label_embeddings(self.item_embedding[...])
    self.item_embedding = nnx.data(None)
    self.tied_head = nnx.data(head)

  def item_table(self) -> jax.Array:
    """float32 ``[C, d]``: the item embeddings (the head's, when tied)."""
    if self.tied_head is None:
      return self.item_embedding[...]
    return self.tied_head.label_embeddings()

  def __call__(self, items: ArrayLike, *, train: bool = False) -> jax.Array:
    """Encodes left-padded item sequences.

    Args:
      items: int ``[B, T]`` item ids, oldest first, -1 on padding.
      train: enable dropout.

    Returns:
      ``[B, T, d]`` in ``dtype``, 0 at padded positions.
    """
    items_bt = _check_ids(items, "items", self.max_len)
    valid_bt = items_bt >= 0
    emb_btd = _take_rows(self.item_table(), jnp.where(valid_bt, items_bt, 0))
    x_btd = (emb_btd * np.sqrt(self.out_features)
             + self.position_embedding[...]).astype(self.dtype)
    keep_bt1 = valid_bt[..., None].astype(self.dtype)
    if self.dropout is not None:
      x_btd = self.dropout(x_btd, deterministic=not train)
    x_btd = x_btd * keep_bt1
    for block in self.blocks:
      x_btd = block(x_btd, valid_bt, train=train) * keep_bt1
    return self.final_norm(x_btd) * keep_bt1
