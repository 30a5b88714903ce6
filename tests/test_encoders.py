"""Encoders: embedding bag against numpy, padding, idf, shapes, sharding,
learning."""

import time

import chex
from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import optax
import pytest
import scipy.sparse as sp

from mhe_jax.data import synthetic
from mhe_jax.data.pipeline import SparseSource
from mhe_jax.nn.encoders import ResNet, SparseMLPEncoder, TokenContextEncoder

# One set of shapes for all small modules: on CPU, initialising a parameter
# of a new shape compiles a random-number kernel (seconds on a loaded host).
V, D = 40, 6
HIDDEN = (8, 4)


@nnx.jit(static_argnames="train")
def apply(module, *inputs, train=False):
  """``module(*inputs, train=train)``, compiled (eager op-by-op is slow)."""
  return module(*inputs, train=train)


@nnx.jit
def bag(encoder, ids, values):
  return encoder.bag(ids, values)


def padded_batch(seed=0, batch=5, width=7, vocab=V):
  """Random -1 padded (ids [B, F], values [B, F]) and the dense X [B, V].

  Row lengths vary (one row is empty), ids within a row are distinct.
  """
  rng = np.random.default_rng(seed)
  ids = np.full((batch, width), -1, np.int32)
  values = np.zeros((batch, width), np.float32)
  dense = np.zeros((batch, vocab))
  for b in range(batch):
    n = 0 if b == 1 else int(rng.integers(1, width + 1))
    row = rng.choice(vocab, n, replace=False)
    vals = rng.uniform(0.5, 3.0, n)
    # Padding need not be at the end for the encoder; scatter it.
    pos = np.sort(rng.choice(width, n, replace=False))
    ids[b, pos] = row
    values[b, pos] = vals
    dense[b, row] = vals
  return ids, values, dense


def np_idf(dense):
  n = dense.shape[0]
  df = (dense != 0).sum(0)
  return np.log((1.0 + n) / (1.0 + df)) + 1.0


def np_bag(dense, emb, idf=None, normalize=True, sublinear=False):
  w = np.asarray(dense, np.float64)
  if sublinear:
    w = np.sign(w) * np.log1p(np.abs(w))
  if idf is not None:
    w = w * idf
  if normalize:
    norm = np.linalg.norm(w, axis=1, keepdims=True)
    w = w / np.where(norm > 0, norm, 1.0)
  return w @ np.asarray(emb, np.float64)


# ---------------------------------------------------------------- bag, idf


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("use_idf", [False, True])
@pytest.mark.parametrize("sublinear", [False, True])
def test_bag_equals_numpy(normalize, use_idf, sublinear):
  ids, values, dense = padded_batch()
  idf = np_idf(padded_batch(seed=3, batch=20)[2]) if use_idf else None
  enc = SparseMLPEncoder(V, D, (), tfidf_idf=idf, normalize=normalize,
                         sublinear_tf=sublinear, rngs=nnx.Rngs(0))
  assert enc.out_features == D
  want = np_bag(dense, enc.embedding[...], idf, normalize, sublinear)
  np.testing.assert_allclose(bag(enc, ids, values), want, rtol=1e-5,
                             atol=1e-6)
  # hidden=() makes the MLP the identity: the call is the bag.
  np.testing.assert_allclose(apply(enc, ids, values), want, rtol=1e-5,
                             atol=1e-6)


def test_full_encoder_equals_numpy():
  ids, values, dense = padded_batch(seed=1)
  idf = np_idf(dense)
  enc = SparseMLPEncoder(V, D, HIDDEN, tfidf_idf=idf, rngs=nnx.Rngs(1))
  assert enc.out_features == 4
  x = np_bag(dense, enc.embedding[...], idf)
  for layer in enc.mlp.linears:
    x = np.maximum(x @ np.asarray(layer.kernel[...], np.float64)
                   + np.asarray(layer.bias[...]), 0.0)
  np.testing.assert_allclose(apply(enc, ids, values), x, rtol=1e-5, atol=1e-6)


def test_bilinear_mlp_equals_numpy_and_starts_linear():
  ids, values, dense = padded_batch(seed=2)
  idf = np_idf(dense)
  enc = SparseMLPEncoder(V, D, HIDDEN, tfidf_idf=idf, activation="bilinear",
                         rngs=nnx.Rngs(1))
  x = np_bag(dense, enc.embedding[...], idf)
  for layer, gate in zip(enc.mlp.linears, enc.mlp.gates):
    # At init the gate is x V + 1: the product is the linear map plus a
    # quadratic part.
    np.testing.assert_array_equal(np.asarray(gate.bias[...]), 1.0)
    x = ((x @ np.asarray(layer.kernel[...], np.float64)
          + np.asarray(layer.bias[...]))
         * (x @ np.asarray(gate.kernel[...], np.float64)
            + np.asarray(gate.bias[...])))
  np.testing.assert_allclose(apply(enc, ids, values), x, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="activation must be 'relu' or "
                     "'bilinear', got 'gelu'"):
    SparseMLPEncoder(V, D, HIDDEN, activation="gelu", rngs=nnx.Rngs(1))


def test_svd_embedding_spans_the_top_singular_subspace():
  # 30 rows drawn from 3 word topics (disjoint blocks of the vocabulary) plus
  # a few stray words: the weighted rows have 3 dominant singular values.
  rng = np.random.default_rng(4)
  dense = np.zeros((30, V))
  for i in range(30):
    topic = i % 3
    dense[i, rng.choice(np.arange(topic * 10, topic * 10 + 10), 5,
                        replace=False)] = rng.integers(1, 4, 5)
    dense[i, rng.integers(30, V)] = 1
  width = int((dense > 0).sum(1).max())
  ids = np.full((30, width), -1, np.int32)
  values = np.zeros((30, width), np.float32)
  for i, row in enumerate(dense):
    nz = np.flatnonzero(row)
    ids[i, :nz.size], values[i, :nz.size] = nz, row[nz]
  idf = np_idf(dense)
  x = sp.csr_matrix(dense)
  # numpy's exact SVD of the weighted, normalised rows.
  w = np_bag(dense, np.eye(V), idf)
  _, sv, vt = np.linalg.svd(w)
  d = 3
  assert sv[d - 1] > 1.3 * sv[d]  # a gap: the top-d subspace is well defined
  start = SparseMLPEncoder.svd_embedding(x, d, idf=idf, power_iterations=8)
  assert start.shape == (V, d)
  np.testing.assert_allclose(start.T @ start, np.eye(d), atol=1e-5)
  np.testing.assert_allclose(start @ start.T, vt[:d].T @ vt[:d], atol=1e-4)
  # The encoder starts from it: the bag is each row's LSA coordinates.
  enc = SparseMLPEncoder(V, d, (), tfidf_idf=idf, embedding_init=start,
                         rngs=nnx.Rngs(0))
  np.testing.assert_allclose(bag(enc, ids, values), w @ start, rtol=1e-5,
                             atol=1e-6)
  with pytest.raises(ValueError, match=r"embedding_init must have shape"):
    SparseMLPEncoder(V, d + 1, (), embedding_init=start, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"embed_dim=99 must be in"):
    SparseMLPEncoder.svd_embedding(x, 99)


def test_padding_ignored_and_gets_no_gradient():
  ids, values, _ = padded_batch(seed=2)
  enc = SparseMLPEncoder(V, D, HIDDEN, tfidf_idf=np.linspace(1, 2, V),
                         layer_norm=True, rngs=nnx.Rngs(2))
  pad = ids < 0
  # Garbage in the padding: other negative ids and large values.
  ids2 = np.where(pad, -7, ids)
  values2 = np.where(pad, 1e3, values).astype(np.float32)
  np.testing.assert_array_equal(apply(enc, ids, values),
                                apply(enc, ids2, values2))

  @jax.jit
  def loss(params, values):
    model = nnx.merge(graphdef, params, rest)
    return jnp.sum(model(ids2, values) ** 2)

  graphdef, params, rest = nnx.split(enc, nnx.Param, ...)
  g_params, g_values = jax.grad(loss, argnums=(0, 1))(params, values2)
  np.testing.assert_array_equal(np.asarray(g_values)[pad], 0.0)
  assert np.abs(np.asarray(g_values)[~pad]).sum() > 0
  # Only embedding rows of real ids get gradient; padding is gathered from
  # row 0 internally, which must stay untouched unless 0 is a real id.
  g_emb = np.asarray(g_params["embedding"][...])
  touched = np.zeros(V, bool)
  touched[ids[~pad]] = True
  np.testing.assert_array_equal(g_emb[~touched], 0.0)
  assert (np.abs(g_emb[touched]).sum(1) > 0).all()


def test_idf_from_csr_equals_plain_computation():
  rng = np.random.default_rng(0)
  dense = rng.integers(0, 3, (9, 12)) * (rng.random((9, 12)) < 0.3)
  dense[:, 4] = 0  # a feature no document has
  x_csr = sp.csr_matrix(dense.astype(np.float32))
  # An explicit zero and a duplicate entry must not change df.
  x_coo = sp.coo_matrix(
      (np.r_[x_csr.tocoo().data, 0.0, 1.0],
       (np.r_[x_csr.tocoo().row, 0, 2], np.r_[x_csr.tocoo().col, 4, 0])),
      shape=dense.shape)
  want = np.array([
      np.log((1 + 9) / (1 + sum(dense[i, j] != 0 for i in range(9)))) + 1
      for j in range(12)])
  dense_dup = dense.copy()
  dense_dup[2, 0] += 1
  want_dup = np_idf(dense_dup)
  got = SparseMLPEncoder.idf_from_csr(x_csr)
  assert got.dtype == np.float32 and got.shape == (12,)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(got[4], np.log(10) + 1, rtol=1e-6)
  np.testing.assert_allclose(SparseMLPEncoder.idf_from_csr(x_coo), want_dup,
                             rtol=1e-6)
  np.testing.assert_allclose(SparseMLPEncoder.idf_from_csr(dense), want,
                             rtol=1e-6)


def test_pipeline_batch_and_errors():
  data, _ = synthetic.make_single_label(32, 5, V, seed=0)
  batch = SparseSource(data, single_label=True).gather(np.arange(8))
  enc = SparseMLPEncoder(V, D, HIDDEN, rngs=nnx.Rngs(0))
  out = apply(enc, batch["feature_ids"], batch["feature_values"])
  assert out.shape == (8, 4) and out.dtype == jnp.float32
  np.testing.assert_allclose(
      bag(enc, batch["feature_ids"], batch["feature_values"]),
      np_bag(data.X[:8].toarray(), enc.embedding[...]), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="tfidf_idf"):
    SparseMLPEncoder(V, D, tfidf_idf=np.ones(V + 1), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"\[B, F\]"):
    enc(batch["feature_ids"], batch["feature_values"][:, :1])
  with pytest.raises(TypeError, match="integers"):
    enc(batch["feature_values"], batch["feature_values"])


def test_dropout_only_in_training():
  ids, values, _ = padded_batch()
  enc = SparseMLPEncoder(V, D, HIDDEN, dropout=0.5, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(apply(enc, ids, values),
                                apply(enc, ids, values))
  a = apply(enc, ids, values, train=True)
  b = apply(enc, ids, values, train=True)
  assert not np.array_equal(a, b)


def test_input_dropout_drops_whole_features_before_normalising():
  # With an identity embedding the bag is the normalised weight row itself,
  # so the kept features can be read off and compared with numpy.
  ids, values, dense = padded_batch(seed=3, batch=64, width=12)
  enc = SparseMLPEncoder(V, V, (), input_dropout=0.5, rngs=nnx.Rngs(0))
  enc.embedding[...] = jnp.eye(V)
  np.testing.assert_allclose(apply(enc, ids, values), np_bag(dense, np.eye(V)),
                             rtol=1e-5, atol=1e-6)  # eval: no dropout
  out = np.asarray(apply(enc, ids, values, train=True))
  kept = out != 0
  assert not np.any(kept & (dense == 0))  # only present features survive
  np.testing.assert_allclose(out, np_bag(dense * kept, np.eye(V)),
                             rtol=1e-5, atol=1e-6)
  frac = kept.sum() / (dense != 0).sum()
  assert 0.4 < frac < 0.6, frac  # ~ 1 - rate of ~390 present features
  with pytest.raises(ValueError, match="input_dropout"):
    SparseMLPEncoder(V, D, (), input_dropout=1.0, rngs=nnx.Rngs(0))


def test_logical_axis_names():
  # As a trainer reads them: from an abstract module, before placing it.
  enc = nnx.eval_shape(lambda: SparseMLPEncoder(
      V, D, (8, 8, 4), tfidf_idf=np.ones(V), layer_norm=True,
      rngs=nnx.Rngs(0)))
  specs = nnx.get_partition_spec(nnx.state(enc))
  assert specs["embedding"].get_value() == P("vocab", "embed")
  assert specs["idf"].get_value() == P("vocab")
  kernels = [specs["mlp"]["linears"][i]["kernel"].get_value()
             for i in range(3)]
  assert kernels == [P("embed", "mlp"), P("mlp", "embed"), P("embed", "mlp")]
  assert specs["mlp"]["linears"][1]["bias"].get_value() == P("embed")
  assert specs["mlp"]["norms"][1]["scale"].get_value() == P("embed")
  net = nnx.eval_shape(lambda: ResNet((1,), (4,), rngs=nnx.Rngs(0)))
  specs = nnx.get_partition_spec(nnx.state(net))
  assert specs["stem"]["kernel"].get_value() == P(None, None, "conv_in",
                                                  "conv_out")
  # The idf is not a Param: optimizers built with wrt=nnx.Param skip it.
  assert "idf" not in nnx.state(enc, nnx.Param)


def test_bfloat16_compute_close_to_float32():
  ids, values, _ = padded_batch()
  tokens = np.random.default_rng(0).integers(0, V, (5, 3)).astype(np.int32)
  images = jax.random.normal(jax.random.key(0), (2, 5, 5, 4))
  for make, inputs in [
      (lambda dt: SparseMLPEncoder(V, D, HIDDEN, tfidf_idf=np.ones(V),
                                   layer_norm=True, dtype=dt,
                                   rngs=nnx.Rngs(0)), (ids, values)),
      (lambda dt: TokenContextEncoder(V, 3, D, HIDDEN, dtype=dt,
                                      rngs=nnx.Rngs(0)), (tokens,)),
      (lambda dt: ResNet((1, 1), (4, 4), in_channels=4, dtype=dt,
                         rngs=nnx.Rngs(0)), (images,)),
  ]:
    low = make(jnp.bfloat16)
    out_low = apply(low, *inputs)
    out = apply(make(jnp.float32), *inputs)
    assert out_low.dtype == jnp.bfloat16 and out.dtype == jnp.float32
    np.testing.assert_allclose(out_low.astype(np.float32), out, rtol=5e-2,
                               atol=5e-2)
    params = jax.tree.leaves(nnx.state(low, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)


# ---------------------------------------------------------------- sharding


def test_batch_sharded_equals_unsharded():
  mesh = jax.make_mesh((8,), ("data",),
                       axis_types=(jax.sharding.AxisType.Explicit,))
  sharding = NamedSharding(mesh, P("data"))
  ids, values, _ = padded_batch(seed=4, batch=16)
  enc = SparseMLPEncoder(V, D, HIDDEN, tfidf_idf=np.linspace(1, 3, V),
                         layer_norm=True, rngs=nnx.Rngs(0))
  want = apply(enc, ids, values)
  ids_sharded = jax.device_put(ids, sharding)
  values_sharded = jax.device_put(values, sharding)
  got = apply(enc, ids_sharded, values_sharded)
  assert got.sharding.spec == P("data", None)
  chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-6)
  # Parameters replicated on the mesh, as a trainer places them.
  graphdef, state = nnx.split(enc)
  replicated = nnx.merge(graphdef,
                         jax.device_put(state, NamedSharding(mesh, P())))
  with jax.set_mesh(mesh):
    got = apply(replicated, ids_sharded, values_sharded)
  chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-6)

  tokens = np.random.default_rng(0).integers(0, V, (16, 3)).astype(np.int32)
  lm = TokenContextEncoder(V, 3, D, HIDDEN, rngs=nnx.Rngs(0))
  chex.assert_trees_all_close(apply(lm, jax.device_put(tokens, sharding)),
                              apply(lm, tokens), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- tokens


def test_token_context_encoder():
  enc = TokenContextEncoder(V, 3, D, HIDDEN, rngs=nnx.Rngs(0))
  assert enc.out_features == 4
  tokens = np.random.default_rng(0).integers(0, V, (6, 3)).astype(np.int32)
  out = apply(enc, tokens)
  assert out.shape == (6, 4) and out.dtype == jnp.float32
  # Every position matters, and order matters (concatenation, not a bag).
  for pos in range(3):
    changed = tokens.copy()
    changed[0, pos] = (changed[0, pos] + 1) % V
    out2 = apply(enc, changed)
    assert not np.allclose(out2[0], out[0])
    np.testing.assert_array_equal(out2[1:], out[1:])
  swapped = tokens.copy()
  swapped[0] = [7, 8, 9]
  reversed_ = swapped.copy()
  reversed_[0] = [9, 8, 7]
  assert not np.allclose(apply(enc, swapped)[0], apply(enc, reversed_)[0])
  assert nnx.eval_shape(lambda: TokenContextEncoder(
      V, 3, D, rngs=nnx.Rngs(0))).out_features == 3 * D
  with pytest.raises(ValueError, match=r"\[B, 3\]"):
    enc(tokens[:, :2])


# ---------------------------------------------------------------- ResNet


def test_resnet_shapes_grads_jit():
  # Two stages: the second block has stride 2 and a projection shortcut; the
  # odd size checks SAME padding (5 -> 3).
  num_blocks, widths, hw = (1, 1), (4, 4), 5
  net = ResNet(num_blocks, widths, in_channels=4, rngs=nnx.Rngs(0))
  assert net.out_features == widths[-1]
  assert net.blocks[0].proj is None and net.blocks[1].proj is not None
  images = jax.random.normal(jax.random.key(0), (2, hw, hw, 4))
  graphdef, params = nnx.split(net, nnx.Param)

  @jax.jit
  def loss_and_grad(params, images):
    def loss(params):
      out = nnx.merge(graphdef, params)(images, train=True)
      return jnp.sum(out ** 2), out
    return jax.grad(loss, has_aux=True)(params)

  grads, out = loss_and_grad(params, images)
  assert out.shape == (2, widths[-1]) and out.dtype == jnp.float32
  assert np.isfinite(np.asarray(out)).all()
  leaves = jax.tree.leaves(grads)
  assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
  assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0
  # Examples are independent (GroupNorm, no batch statistics).
  other = jax.random.normal(jax.random.key(1), (hw, hw, 4))
  _, out2 = loss_and_grad(params, images.at[1].set(other))
  np.testing.assert_allclose(out2[0], out[0], rtol=1e-5, atol=1e-6)
  assert not np.allclose(out2[1], out[1])


def test_resnet_errors():
  with pytest.raises(ValueError, match="same length"):
    ResNet((1, 1), (8,), rngs=nnx.Rngs(0))
  net = ResNet((1,), (4,), in_channels=4, rngs=nnx.Rngs(0))
  out = apply(net, np.zeros((1, 4, 4, 4), np.uint8))
  assert out.shape == (1, 4)
  with pytest.raises(ValueError, match="images"):
    net(np.zeros((1, 4, 4, 3)))


# ---------------------------------------------------------------- learning


class _Classifier(nnx.Module):

  def __init__(self, encoder, num_classes, rngs):
    self.encoder = encoder
    self.linear = nnx.Linear(encoder.out_features, num_classes, rngs=rngs)

  def __call__(self, ids, values, train=False):
    return self.linear(self.encoder(ids, values, train=train))


def test_sparse_encoder_learns_bag_of_words():
  """SparseMLPEncoder + linear softmax: >= 90% test accuracy on a synthetic
  20-class bag-of-words task (chance 5%, majority class ~28%) in 150 adam
  steps; takes about a second on CPU."""
  num_classes, num_features = 20, 500
  kwargs = dict(signature_size=8, tokens_per_label=4, noise_tokens=20.0,
                task_seed=0)
  train, y_train = synthetic.make_single_label(
      4096, num_classes, num_features, seed=0, **kwargs)
  test, y_test = synthetic.make_single_label(
      1024, num_classes, num_features, seed=1, **kwargs)
  idf = SparseMLPEncoder.idf_from_csr(train.X)
  width = max(int(np.diff(d.X.indptr).max()) for d in (train, test))
  src_train = SparseSource(train, max_features=width, single_label=True)
  src_test = SparseSource(test, max_features=width, single_label=True)
  model = _Classifier(
      SparseMLPEncoder(num_features, 32, (64,), dropout=0.1, tfidf_idf=idf,
                       rngs=nnx.Rngs(0)), num_classes, nnx.Rngs(1))
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, ids, values, labels):
    def loss_fn(model):
      logits = model(ids, values, train=True)
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, labels).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  start = time.perf_counter()
  rng = np.random.default_rng(0)
  for _ in range(150):
    batch = src_train.gather(rng.choice(len(src_train), 128, replace=False))
    step(model, optimizer, batch["feature_ids"], batch["feature_values"],
         batch["labels"])
  batch = src_test.gather(np.arange(len(src_test)))
  pred = np.asarray(nnx.jit(lambda m, i, v: m(i, v).argmax(-1))(
      model, batch["feature_ids"], batch["feature_values"]))
  accuracy = float((pred == y_test).mean())
  elapsed = time.perf_counter() - start
  assert accuracy >= 0.9, accuracy
  assert elapsed < 20, elapsed
