"""Feature encoders, Flax NNX: inputs -> features ``[B, out_features]``.

The encoders turn a batch's inputs into the features a head
(:mod:`mhe_jax.nn.mhp`, :mod:`mhe_jax.nn.mhc`) classifies. Each one is an
``nnx.Module`` with ``__init__(..., *, rngs)``, an ``out_features`` attribute
and ``__call__(inputs, *, train=False) -> features_bo`` ``[B, out_features]``
(float32, or the ``dtype`` given for mixed precision; parameters are always
float32); ``train=True`` turns dropout on (drawing from the
``'dropout'`` stream of the ``rngs`` given at construction).

* :class:`SparseMLPEncoder` for bag-of-words XMC batches (``"feature_ids"``
  int32 ``[B, F]`` -1 padded, ``"feature_values"`` float32 ``[B, F]``, as
  :class:`mhe_jax.data.pipeline.SparseSource` makes them): an embedding bag,
  optionally over tf-idf weighted, L2-normalised values, then a ReLU MLP.
* :class:`TokenContextEncoder` for the next-token corpus task
  (``"features"`` int32 ``[B, n]``,
  :class:`~mhe_jax.data.pipeline.TokenSource`): embeds the n previous
  tokens, concatenates them and applies a ReLU MLP (a Bengio-style neural
  n-gram model).
* :class:`ResNet` for images ``[B, H, W, C]``: a small basic-block ResNet
  with GroupNorm and global average pooling.

Logical axis names. Parameters are annotated with ``nnx.with_partitioning``
(created unsharded, ``eager_sharding=False``, so the encoders build without a
mesh); a trainer reads them with ``nnx.get_partition_spec`` and maps them to
mesh axes with its logical axis rules:

* embedding tables ``[V, D]``: ``('vocab', 'embed')``;
* MLP kernels alternate ``('embed', 'mlp')`` (even layers) and
  ``('mlp', 'embed')`` (odd layers), so that two consecutive layers never
  shard the same dimension twice (the column-then-row split of Megatron
  MLPs); biases and LayerNorm scales carry the name of their layer's output
  axis (``('mlp',)`` or ``('embed',)``);
* convolution kernels ``[kh, kw, in, out]``: ``(None, None, 'conv_in',
  'conv_out')``, norms and biases ``('conv_out',)``; a ResNet this small is
  usually replicated (map both names to ``None``);
* the fixed tf-idf weights of :class:`SparseMLPEncoder` (an
  :class:`Idf` variable, not a ``nnx.Param``): ``('vocab',)``.

Example::

  from flax import nnx
  import numpy as np
  from mhe_jax.data import pipeline, synthetic
  from mhe_jax.nn.encoders import ResNet, SparseMLPEncoder, TokenContextEncoder

  train = synthetic.make_multi_label(1000, 50, 2000)          # X: [N, 2000]
  batch = pipeline.SparseSource(train).gather(np.arange(8))
  enc = SparseMLPEncoder(2000, 64, (256, 256),
                         tfidf_idf=SparseMLPEncoder.idf_from_csr(train.X),
                         dropout=0.1, rngs=nnx.Rngs(0))
  x_bo = enc(batch["feature_ids"], batch["feature_values"])    # [8, 256]
  x_bo = enc(batch["feature_ids"], batch["feature_values"], train=True)

  lm = TokenContextEncoder(10_000, 4, 32, (256,), rngs=nnx.Rngs(0))
  x_bo = lm(np.zeros((8, 4), np.int32))                        # [8, 256]

  net = ResNet((1, 1), (16, 32), rngs=nnx.Rngs(0))
  x_bo = net(np.zeros((8, 32, 32, 3), np.float32))             # [8, 32]
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from mhe_jax.data import formats

ArrayLike = jax.typing.ArrayLike

_RELU_INIT = nnx.initializers.he_normal()
_DENSE_INIT = nnx.initializers.lecun_normal()
_ZEROS = nnx.initializers.zeros_init()
_ONES = nnx.initializers.ones_init()


def _partitioned(init, names: tuple[str | None, ...]):
  """``init`` with logical axis names, creating unsharded values."""
  return nnx.with_partitioning(init, names, eager_sharding=False)


def _axis_metadata(names: tuple[str | None, ...]) -> dict[str, object]:
  """Variable metadata giving logical axis names (for ``*_metadata`` args)."""
  return {"out_sharding": names, "eager_sharding": False}


def _check_ids(ids: ArrayLike, name: str, width: int) -> jax.Array:
  """``ids`` as an array, checked to be integer ``[B, width]``."""
  ids_bw = jnp.asarray(ids)
  if not jnp.issubdtype(ids_bw.dtype, jnp.integer):
    raise TypeError(f"{name} must be integers, got {ids_bw.dtype}")
  if ids_bw.ndim != 2 or ids_bw.shape[1] != width:
    raise ValueError(f"{name} must be [B, {width}], got {ids_bw.shape}")
  return ids_bw


def _take_rows(table_vd: jax.Array, ids_bf: jax.Array) -> jax.Array:
  """``table_vd[ids_bf]`` ``[B, F, D...]``, sharded like ``ids_bf``.

  Under explicit sharding (``jax.make_mesh(..., axis_types=Explicit)``) a
  gather of a replicated table with batch-sharded indices has no unambiguous
  output sharding; the rows are then placed like the indices on their axes
  and like the table on the others (``table_vd`` must be unsharded along
  its rows). Without explicitly sharded indices this is plain indexing.
  """
  ids_sharding = jax.typeof(ids_bf).sharding
  ids_spec = tuple(ids_sharding.spec) if ids_sharding is not None else ()
  if not any(ids_spec):
    return table_vd[ids_bf]
  table_spec = tuple(jax.typeof(table_vd).sharding.spec)
  table_spec += (None,) * (table_vd.ndim - len(table_spec))
  ids_spec += (None,) * (ids_bf.ndim - len(ids_spec))
  out_sharding = jax.sharding.NamedSharding(
      ids_sharding.mesh, jax.sharding.PartitionSpec(*ids_spec, *table_spec[1:]))
  return table_vd.at[ids_bf].get(out_sharding=out_sharding)


class Idf(nnx.Variable):
  """Fixed inverse document frequencies ``[F]``; not trained (not a Param)."""


class MLP(nnx.Module):
  """A stack of ``Linear -> [LayerNorm] -> ReLU -> [Dropout]`` layers.

  Every layer, the last included, ends with the ReLU, so the output is a
  non-negative feature vector for a linear head (as in ``tests/learning.py``).
  With ``hidden=()`` the MLP is the identity.

  ``activation='bilinear'`` replaces ``ReLU(Linear(x))`` by the product of
  two linear maps, ``(x W + b) * (x V + c)`` (the "bilinear" GLU variant of
  Shazeer, "GLU Variants Improve Transformer", 2020, without a
  nonlinearity), the gate's bias ``c`` starting at 1: the layer starts as a
  linear map plus a small quadratic part, and a linear head on it scores
  with a quadratic form of ``x``. On bags of words this is the degree-2
  polynomial kernel's inductive bias (similar documents count
  quadratically), which a ReLU MLP on the same bag does not learn from few
  examples per label.

  Args:
    in_features: input width ``d``.
    hidden: widths of the layers; ``out_features = hidden[-1]`` (``d`` when
      empty).
    dropout: dropout rate after each ReLU (active only with ``train=True``).
    layer_norm: LayerNorm between each Linear and its ReLU (after the
      product with ``'bilinear'``).
    activation: ``'relu'`` or ``'bilinear'`` (see above).
    dtype: computation and output dtype (parameters stay float32).
    rngs: ``params`` for the weights, ``dropout`` for dropout masks.
  """

  def __init__(self, in_features: int, hidden: Sequence[int], *,
               dropout: float = 0.0, layer_norm: bool = False,
               activation: str = "relu",
               dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    hidden = tuple(int(h) for h in hidden)
    if any(h < 1 for h in hidden):
      raise ValueError(f"hidden widths must be >= 1, got {hidden}")
    if not 0.0 <= dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if activation not in ("relu", "bilinear"):
      raise ValueError(f"activation must be 'relu' or 'bilinear', got "
                       f"{activation!r}")
    widths = (in_features,) + hidden
    linears, gates, norms = [], [], []
    for i, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:])):
      names = ("embed", "mlp") if i % 2 == 0 else ("mlp", "embed")
      linears.append(nnx.Linear(
          d_in, d_out,
          kernel_init=_partitioned(_RELU_INIT, names),
          bias_init=_partitioned(_ZEROS, names[1:]), dtype=dtype,
          rngs=rngs))
      if activation == "bilinear":
        gates.append(nnx.Linear(
            d_in, d_out,
            kernel_init=_partitioned(_DENSE_INIT, names),
            bias_init=_partitioned(nnx.initializers.ones_init(), names[1:]),
            dtype=dtype, rngs=rngs))
      if layer_norm:
        norms.append(nnx.LayerNorm(
            d_out, scale_metadata=_axis_metadata(names[1:]),
            bias_metadata=_axis_metadata(names[1:]), dtype=dtype,
            rngs=rngs))
    self.linears = nnx.List(linears)
    self.gates = nnx.List(gates)
    self.norms = nnx.List(norms)
    self.activation = activation
    self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
    self.out_features = widths[-1]
    self.dtype = dtype

  def __call__(self, x_bd: ArrayLike, *, train: bool = False) -> jax.Array:
    """``[B, d] -> [B, out_features]`` in ``dtype``."""
    x_bd = jnp.asarray(x_bd, self.dtype)
    for i, linear in enumerate(self.linears):
      if self.gates:
        x_bd = linear(x_bd) * self.gates[i](x_bd)
      else:
        x_bd = linear(x_bd)
      if self.norms:
        x_bd = self.norms[i](x_bd)
      if not self.gates:
        x_bd = jax.nn.relu(x_bd)
      if self.dropout is not None:
        x_bd = self.dropout(x_bd, deterministic=not train)
    return x_bd


class SparseMLPEncoder(nnx.Module):
  """Embedding bag over sparse bag-of-words features, then a ReLU MLP.

  The input is a padded sparse row per example: ``feature_ids`` int
  ``[B, F]`` (negative = padding, the pipeline uses -1) and
  ``feature_values`` float ``[B, F]``. Padding entries are ignored whatever
  their value: they add nothing to the output and get no gradient.

  1. Weights. ``w_bj = values_bj`` or, with ``tfidf_idf``,
     ``w_bj = values_bj * idf[ids_bj]`` (term frequency times idf, the
     tf-idf of sklearn's ``TfidfTransformer`` on the given values). With
     ``sublinear_tf`` the values are first replaced by
     ``sign(v) * log(1 + |v|)`` (sklearn's ``sublinear_tf`` up to the +1
     inside the log, which keeps 0 at 0), for raw word counts.
  2. With ``normalize`` (default), each row of weights is divided by its L2
     norm (rows of norm 0 stay 0), so that the bag's scale does not depend on
     the document's length; this is sklearn's ``norm='l2'``.
  3. Bag. ``bag_bd = sum_j w_bj * E[ids_bj]``, i.e. ``X_w @ E`` for the
     dense weighted matrix ``X_w`` ``[B, num_features]``. It is computed as
     a gather ``E[ids]`` ``[B, F, D]`` and an einsum with ``w``; this is
     cheap for the ``F`` of bag-of-words XMC (a few hundred; Bibtex's longest
     row is ~300): the gathered block holds ``B * F * D`` floats (80 MB for
     ``B=256, F=300, D=256``), and the gradient is a scatter-add into the
     touched rows only. Feature ids ``>= V`` are not checked (under jit the
     gather clamps them).
  4. MLP (:class:`MLP`): ``Linear -> [LayerNorm] -> ReLU -> [Dropout]`` per
     ``hidden`` width; ``out_features = hidden[-1]`` (``embed_dim`` with
     ``hidden=()``, the bag itself).

  Args:
    num_features: vocabulary size ``V`` (feature ids are in ``[0, V)``).
    embed_dim: ``D``, the width of the embedding table ``E`` ``[V, D]``.
    hidden: MLP widths after the bag.
    dropout: dropout rate after each MLP ReLU, only with ``train=True``.
    input_dropout: with ``train=True``, drops each (non-padding) feature of
      an example with this probability before step 2 (word dropout; the
      kept weights are scaled by ``1 / (1 - rate)``, which the L2
      normalisation then cancels). It also regularises ``hidden=()``, where
      ``dropout`` has no layer to act on.
    tfidf_idf: optional float ``[V]`` idf weights, e.g.
      :meth:`idf_from_csr` of the training features; stored as a fixed
      :class:`Idf` variable (not trained).
    normalize: L2-normalise each example's (weighted) values.
    sublinear_tf: damp the values to ``sign(v) log(1 + |v|)`` first.
    layer_norm: LayerNorm before each MLP ReLU.
    activation: the MLP's ``'relu'`` or ``'bilinear'`` (see :class:`MLP`).
    embedding_init: optional float ``[V, D]`` start for the table instead of
      the random one, e.g. :meth:`svd_embedding` of the training rows.
    dtype: computation and output dtype, e.g. ``jnp.bfloat16`` on GPU/TPU.
      Parameters stay float32; the weights (idf, normalisation) are computed
      in float32, the gathered embedding rows are cast to ``dtype`` and the
      bag is accumulated in float32.
    rngs: ``params``, and ``dropout`` when ``dropout > 0``.

  Parameters: ``embedding`` ``[V, D]`` ``('vocab', 'embed')``, initialised
  ``N(0, 1/D)`` (a bag of L2-normalised values then has norm ~1); the
  MLP's as described in the module docstring.
  """

  def __init__(self, num_features: int, embed_dim: int,
               hidden: Sequence[int] = (), *, dropout: float = 0.0,
               tfidf_idf: ArrayLike | None = None, normalize: bool = True,
               layer_norm: bool = False, dtype: jnp.dtype = jnp.float32,
               input_dropout: float = 0.0, sublinear_tf: bool = False,
               activation: str = "relu",
               embedding_init: ArrayLike | None = None, rngs: nnx.Rngs):
    if num_features < 1 or embed_dim < 1:
      raise ValueError(f"num_features and embed_dim must be >= 1, got "
                       f"{num_features}, {embed_dim}")
    self.num_features = num_features
    self.embed_dim = embed_dim
    self.normalize = normalize
    self.sublinear_tf = bool(sublinear_tf)
    if not 0.0 <= input_dropout < 1.0:
      raise ValueError(f"input_dropout must be in [0, 1), got {input_dropout}")
    self.input_dropout = (nnx.Dropout(input_dropout, rngs=rngs)
                          if input_dropout > 0 else None)
    init = _partitioned(
        nnx.initializers.normal(1.0 / np.sqrt(embed_dim)),
        ("vocab", "embed"))
    table = init(rngs.params(), (num_features, embed_dim), jnp.float32)
    if embedding_init is not None:
      start = jnp.asarray(embedding_init, jnp.float32)
      if start.shape != (num_features, embed_dim):
        raise ValueError(f"embedding_init must have shape "
                         f"{(num_features, embed_dim)}, got "
                         f"{start.shape}")
      table = dataclasses.replace(table, raw_value=start)  # same metadata
    self.embedding = nnx.Param(table)
    if tfidf_idf is None:
      self.idf = None
    else:
      idf_v = jnp.asarray(tfidf_idf, jnp.float32)
      if idf_v.shape != (num_features,):
        raise ValueError(f"tfidf_idf must have shape ({num_features},), got "
                         f"{idf_v.shape}")
      self.idf = Idf(idf_v, **_axis_metadata(("vocab",)))
    self.dtype = dtype
    self.mlp = MLP(embed_dim, hidden, dropout=dropout, layer_norm=layer_norm,
                   activation=activation, dtype=dtype, rngs=rngs)
    self.out_features = self.mlp.out_features

  @staticmethod
  def idf_from_csr(X_csr: sp.spmatrix | ArrayLike) -> np.ndarray:
    """Smooth inverse document frequencies of a ``[N, V]`` feature matrix.

    :func:`mhe_jax.data.formats.smooth_idf` (sklearn's
    ``TfidfTransformer(smooth_idf=True)``), the weights a dataset loader
    computes from the training rows.

    Args:
      X_csr: scipy sparse (any format) or dense ``[N, V]`` features.

    Returns:
      float32 ``[V]``.
    """
    return formats.smooth_idf(X_csr)

  @staticmethod
  def svd_embedding(X_csr: sp.spmatrix, embed_dim: int, *,
                    idf: ArrayLike | None = None, normalize: bool = True,
                    sublinear_tf: bool = False, seed: int = 0,
                    power_iterations: int = 3) -> np.ndarray:
    """An LSA start for the table: the weighted rows' top right singular vectors.

    The training rows are weighted as :meth:`bag` weights them (steps 1-2:
    ``sublinear_tf``, ``idf``, ``normalize``), and the ``embed_dim`` leading
    right singular vectors of that ``[N, V]`` matrix become the columns of
    the table, so the bag of a row starts as its coordinates in the rank-
    ``embed_dim`` latent semantic subspace of the training set (Deerwester
    et al. 1990). Computed by a randomized range finder with
    ``power_iterations`` subspace iterations (Halko, Martinsson & Tropp
    2011, Alg. 4.4), oversampled by 10 columns.

    Args:
      X_csr: ``[N, V]`` training features (scipy sparse).
      embed_dim: ``D <= min(N, V)``.
      idf, normalize, sublinear_tf: the encoder's weighting.
      seed: seeds the random test matrix.
      power_iterations: subspace iterations (more: closer to the exact SVD).

    Returns:
      float32 ``[V, D]`` with orthonormal columns, leading vector first.
    """
    x = sp.csr_matrix(X_csr, dtype=np.float64, copy=True)
    n, v = x.shape
    if not 1 <= embed_dim <= min(n, v):
      raise ValueError(f"embed_dim={embed_dim} must be in [1, min(N, V) = "
                       f"{min(n, v)}] for an SVD start")
    if sublinear_tf:
      x.data = np.sign(x.data) * np.log1p(np.abs(x.data))
    if idf is not None:
      x = x @ sp.diags(np.asarray(idf, np.float64))
    if normalize:
      norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1))).ravel()
      x = sp.diags(np.where(norms > 0, 1.0 / np.maximum(norms, 1e-300),
                            0.0)) @ x
    x = sp.csr_matrix(x)
    width = min(embed_dim + 10, n, v)
    rng = np.random.default_rng(seed)
    q = np.linalg.qr(x.T @ rng.standard_normal((n, width)))[0]
    for _ in range(power_iterations):
      q = np.linalg.qr(x @ q)[0]
      q = np.linalg.qr(x.T @ q)[0]
    _, _, vt = np.linalg.svd(x @ q, full_matrices=False)
    return (q @ vt[:embed_dim].T).astype(np.float32)

  def bag(self, feature_ids: ArrayLike, feature_values: ArrayLike, *,
          train: bool = False) -> jax.Array:
    """The embedding bag (steps 1-3) alone: float32 ``[B, D]``.

    ``train=True`` applies ``input_dropout`` (if any) to the weights.
    """
    ids_bf = jnp.asarray(feature_ids)
    if not jnp.issubdtype(ids_bf.dtype, jnp.integer):
      raise TypeError(f"feature_ids must be integers, got {ids_bf.dtype}")
    values_bf = jnp.asarray(feature_values, jnp.float32)
    if ids_bf.ndim != 2 or values_bf.shape != ids_bf.shape:
      raise ValueError(
          f"feature_ids and feature_values must both be [B, F], got "
          f"{ids_bf.shape} and {values_bf.shape}")
    valid_bf = ids_bf >= 0
    safe_bf = jnp.where(valid_bf, ids_bf, 0)
    w_bf = jnp.where(valid_bf, values_bf, 0.0)
    if self.sublinear_tf:
      w_bf = jnp.sign(w_bf) * jnp.log1p(jnp.abs(w_bf))
    if self.idf is not None:
      w_bf = w_bf * _take_rows(self.idf[...], safe_bf)
    if self.input_dropout is not None:
      w_bf = self.input_dropout(w_bf, deterministic=not train)
    if self.normalize:
      norm_b1 = jnp.sqrt(jnp.sum(w_bf * w_bf, axis=-1, keepdims=True))
      w_bf = w_bf / jnp.where(norm_b1 > 0, norm_b1, 1.0)
    emb_bfd = _take_rows(self.embedding[...], safe_bf).astype(self.dtype)
    return jnp.einsum("bf,bfd->bd", w_bf.astype(self.dtype), emb_bfd,
                      preferred_element_type=jnp.float32)

  def __call__(self, feature_ids: ArrayLike, feature_values: ArrayLike, *,
               train: bool = False) -> jax.Array:
    """Encodes a padded sparse batch.

    Args:
      feature_ids: int ``[B, F]``, negative = padding.
      feature_values: float ``[B, F]``.
      train: enable dropout.

    Returns:
      ``[B, out_features]`` in ``dtype``.
    """
    return self.mlp(self.bag(feature_ids, feature_values, train=train),
                    train=train)


class TokenContextEncoder(nnx.Module):
  """Neural n-gram encoder: n previous tokens -> features.

  Each of the n context tokens is embedded with one shared table
  ``E`` ``[V, D]``; the n embeddings are concatenated in order into
  ``[B, n * D]`` (so the position of a token matters, through which block of
  the first Linear's kernel it meets) and passed through a ReLU :class:`MLP`
  (Bengio et al., "A Neural Probabilistic Language Model", JMLR 2003).
  This is a handful of small matmuls, fast on CPU.

  Args:
    vocab_size: ``V``; token ids in ``[0, V)`` (ids are not checked: under
      jit an out-of-range id gathers a clamped row).
    context: ``n``, the number of previous tokens.
    embed_dim: ``D``.
    hidden: MLP widths; ``out_features = hidden[-1]`` (``n * D`` when empty).
    dropout: dropout rate after the embeddings and each MLP ReLU, only with
      ``train=True``.
    layer_norm: LayerNorm before each MLP ReLU.
    dtype: computation and output dtype (parameters stay float32).
    rngs: ``params``, and ``dropout`` when ``dropout > 0``.

  Parameters: ``embedding`` ``[V, D]`` ``('vocab', 'embed')``, ``N(0, 1)``
  scaled by ``1/sqrt(D)``; the MLP's as described in the module docstring.
  """

  def __init__(self, vocab_size: int, context: int, embed_dim: int,
               hidden: Sequence[int] = (), *, dropout: float = 0.0,
               layer_norm: bool = False, dtype: jnp.dtype = jnp.float32,
               rngs: nnx.Rngs):
    if vocab_size < 1 or context < 1 or embed_dim < 1:
      raise ValueError(f"vocab_size, context and embed_dim must be >= 1, got "
                       f"{vocab_size}, {context}, {embed_dim}")
    self.vocab_size = vocab_size
    self.context = context
    init = _partitioned(nnx.initializers.normal(1.0 / np.sqrt(embed_dim)),
                        ("vocab", "embed"))
    self.embedding = nnx.Param(
        init(rngs.params(), (vocab_size, embed_dim), jnp.float32))
    self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
    self.dtype = dtype
    self.mlp = MLP(context * embed_dim, hidden, dropout=dropout,
                   layer_norm=layer_norm, dtype=dtype, rngs=rngs)
    self.out_features = self.mlp.out_features

  def __call__(self, tokens: ArrayLike, *, train: bool = False) -> jax.Array:
    """Encodes contexts.

    Args:
      tokens: int ``[B, n]`` previous token ids, oldest first.
      train: enable dropout.

    Returns:
      ``[B, out_features]`` in ``dtype``.
    """
    tokens_bn = _check_ids(tokens, "tokens", self.context)
    emb_bnd = _take_rows(self.embedding[...], tokens_bn).astype(self.dtype)
    x_bk = emb_bnd.reshape(tokens_bn.shape[0], -1)
    if self.dropout is not None:
      x_bk = self.dropout(x_bk, deterministic=not train)
    return self.mlp(x_bk, train=train)


def _num_groups(channels: int, max_groups: int) -> int:
  """The largest group count <= ``max_groups`` that divides ``channels``."""
  for g in range(min(max_groups, channels), 0, -1):
    if channels % g == 0:
      return g
  return 1


def _conv(d_in: int, d_out: int, kernel: int, stride: int, dtype: jnp.dtype,
          rngs: nnx.Rngs) -> nnx.Conv:
  return nnx.Conv(
      d_in, d_out, (kernel, kernel), strides=stride, padding="SAME",
      use_bias=False, dtype=dtype,
      kernel_init=_partitioned(_RELU_INIT, (None, None, "conv_in", "conv_out")),
      rngs=rngs)


def _group_norm(channels: int, max_groups: int, dtype: jnp.dtype,
                rngs: nnx.Rngs, *, zero_scale: bool = False) -> nnx.GroupNorm:
  return nnx.GroupNorm(
      channels, num_groups=_num_groups(channels, max_groups), dtype=dtype,
      scale_init=_ZEROS if zero_scale else _ONES,
      scale_metadata=_axis_metadata(("conv_out",)),
      bias_metadata=_axis_metadata(("conv_out",)), rngs=rngs)


class BasicBlock(nnx.Module):
  """``relu(x + GN(conv3x3(relu(GN(conv3x3(x))))))`` (He et al., 2016).

  The shortcut is the identity, or a strided 1x1 conv + GroupNorm when the
  stride or width changes. The second GroupNorm's scale starts at 0, so each
  block starts as (nearly) the identity (Goyal et al., 2017), which makes
  deep variants train without warm-up.
  """

  def __init__(self, d_in: int, d_out: int, stride: int, max_groups: int,
               *, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.conv1 = _conv(d_in, d_out, 3, stride, dtype, rngs)
    self.norm1 = _group_norm(d_out, max_groups, dtype, rngs)
    self.conv2 = _conv(d_out, d_out, 3, 1, dtype, rngs)
    self.norm2 = _group_norm(d_out, max_groups, dtype, rngs, zero_scale=True)
    if stride != 1 or d_in != d_out:
      self.proj = _conv(d_in, d_out, 1, stride, dtype, rngs)
      self.proj_norm = _group_norm(d_out, max_groups, dtype, rngs)
    else:
      self.proj = None
      self.proj_norm = None

  def __call__(self, x_bhwc: jax.Array) -> jax.Array:
    y_bhwc = jax.nn.relu(self.norm1(self.conv1(x_bhwc)))
    y_bhwc = self.norm2(self.conv2(y_bhwc))
    if self.proj is not None:
      x_bhwc = self.proj_norm(self.proj(x_bhwc))
    return jax.nn.relu(x_bhwc + y_bhwc)


class ResNet(nnx.Module):
  """A small basic-block ResNet with GroupNorm; images -> pooled features.

  Stem ``conv3x3 -> GroupNorm -> ReLU`` to ``widths[0]`` channels (stride 1,
  no max-pool: the CIFAR-style stem for small images), then one stage per
  width: stage ``s`` has ``num_blocks[s]`` :class:`BasicBlock` s of width
  ``widths[s]``, the first with stride 2 for ``s > 0``; finally a global
  average pool over H and W. ``out_features = widths[-1]``.
  ``ResNet((2, 2, 2, 2), (64, 128, 256, 512))`` is ResNet-18's layout;
  ``ResNet((1, 1), (8, 16))`` is a test-sized one.

  GroupNorm instead of BatchNorm: no batch statistics to carry as mutable
  state, so the encoder is a pure function of its parameters like the
  others, train and eval behave alike, and results do not depend on how the
  batch is split across devices (the same holds for the tiny per-device
  batches of large-label training, where BatchNorm degrades).

  Args:
    num_blocks: blocks per stage.
    widths: channels per stage, same length as ``num_blocks``.
    in_channels: ``C`` of the input images.
    max_groups: GroupNorm uses the largest divisor of the width not above
      this (32 by default, Wu & He 2018).
    dtype: computation and output dtype (parameters stay float32; the
      GroupNorm statistics and the final pooling are computed in float32).
    rngs: ``params``.
  """

  def __init__(self, num_blocks: Sequence[int], widths: Sequence[int], *,
               in_channels: int = 3, max_groups: int = 32,
               dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    num_blocks = tuple(int(n) for n in num_blocks)
    widths = tuple(int(w) for w in widths)
    if not widths or len(num_blocks) != len(widths):
      raise ValueError(f"num_blocks and widths must be non-empty and of the "
                       f"same length, got {num_blocks} and {widths}")
    if min(num_blocks) < 1 or min(widths) < 1:
      raise ValueError(f"num_blocks and widths must be >= 1, got "
                       f"{num_blocks} and {widths}")
    self.in_channels = in_channels
    self.dtype = dtype
    self.stem = _conv(in_channels, widths[0], 3, 1, dtype, rngs)
    self.stem_norm = _group_norm(widths[0], max_groups, dtype, rngs)
    blocks = []
    d_in = widths[0]
    for s, (n, d_out) in enumerate(zip(num_blocks, widths)):
      for i in range(n):
        stride = 2 if s > 0 and i == 0 else 1
        blocks.append(BasicBlock(d_in, d_out, stride, max_groups, dtype=dtype,
                                 rngs=rngs))
        d_in = d_out
    self.blocks = nnx.List(blocks)
    self.out_features = widths[-1]

  def __call__(self, images: ArrayLike, *, train: bool = False) -> jax.Array:
    """Encodes images.

    Args:
      images: ``[B, H, W, C]`` (NHWC), any real dtype; cast to ``dtype``.
      train: unused (no dropout or batch statistics); for the interface.

    Returns:
      ``[B, out_features]`` in ``dtype``.
    """
    del train
    x_bhwc = jnp.asarray(images, self.dtype)
    if x_bhwc.ndim != 4 or x_bhwc.shape[-1] != self.in_channels:
      raise ValueError(f"images must be [B, H, W, {self.in_channels}], got "
                       f"{x_bhwc.shape}")
    x_bhwc = jax.nn.relu(self.stem_norm(self.stem(x_bhwc)))
    for block in self.blocks:
      x_bhwc = block(x_bhwc)
    return x_bhwc.mean(axis=(1, 2), dtype=jnp.float32).astype(self.dtype)
