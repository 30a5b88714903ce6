"""Next-item pipeline: sequence sources, SASRec, per-position heads, metrics,
the sampled protocol and the trainer end to end on a small interaction log."""

import math
import random

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mhe_jax import config_lib
from mhe_jax import metrics
from mhe_jax import sequence_eval
from mhe_jax import train
from mhe_jax.data import interactions
from mhe_jax.data import pipeline
from mhe_jax.nn import heads
from mhe_jax.nn import models
from mhe_jax.nn.models import Classifier
from mhe_jax.nn.sequence import SASRecEncoder
from mhe_jax.nn.sequence import causal_attention
from mhe_jax.ops.codec import LabelCodec


def left_pad(seq, width):
  seq = list(seq)[-width:]
  return [-1] * (width - len(seq)) + seq


# ------------------------------------------------------------------ sources
def test_sequence_source_matches_plain_python():
  hist = [[3, 1, 4, 1, 5, 9, 2], [7], [2, 6], [8, 8, 0, 5]]
  src = pipeline.SequenceSource(interactions.Sequences.from_lists(hist), 4)
  assert len(src) == 3 and src.num_skipped == 1  # [7] gives no pair
  batch = src.gather(np.array([0, 2, -1, 1]))
  kept = [hist[0], hist[3], None, hist[2]]
  for b, h in enumerate(kept):
    if h is None:
      assert (batch["items"][b] == -1).all() and (batch["labels"][b] == -1).all()
      continue
    assert batch["items"][b].tolist() == left_pad(h[:-1], 4)
    assert batch["labels"][b].tolist() == left_pad(h[1:], 4)
  counts = src.target_counts(10)
  expected = np.bincount([i for h in hist for i in h[1:]], minlength=10)
  np.testing.assert_array_equal(counts, expected)


def test_sequence_eval_source_and_loader_padding():
  examples = interactions.EvalExamples(
      np.arange(3), interactions.Sequences.from_lists([[1, 2, 3, 4], [5], [6, 7]]),
      np.array([9, 8, 0], np.int32))
  src = pipeline.SequenceEvalSource(examples, 3)
  assert src.max_history == 4
  batches = list(pipeline.eval_loader(src, 2, process_index=0,
                                      process_count=1, num_threads=0))
  assert len(batches) == 2
  last = batches[1]
  assert last["mask"].tolist() == [True, False]
  assert last["items"].tolist() == [[-1, 6, 7], [-1, -1, -1]]
  assert last["labels"].tolist() == [0, -1]
  assert batches[0]["items"].tolist() == [[2, 3, 4], [-1, -1, 5]]
  assert batches[0]["history"].tolist() == [[1, 2, 3, 4], [-1, -1, -1, 5]]


def test_sequence_train_loader_resumes_exactly():
  rng = np.random.default_rng(0)
  hist = [rng.integers(0, 20, rng.integers(2, 9)).tolist() for _ in range(37)]
  src = pipeline.SequenceSource(interactions.Sequences.from_lists(hist), 5)
  it = pipeline.train_loader(src, 8, seed=3, process_index=0, process_count=1,
                             num_threads=0)
  for _ in range(5):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]
  it2 = pipeline.train_loader(src, 8, seed=3, process_index=0,
                              process_count=1, num_threads=0)
  it2.set_state(state)
  for a in expected:
    b = next(it2)
    for key in ("items", "labels", "index"):
      np.testing.assert_array_equal(a[key], b[key])


# ------------------------------------------------------------------ SASRec
def test_causal_attention_matches_numpy():
  rng = np.random.default_rng(1)
  q, k, v = (rng.normal(size=(2, 5, 2, 3)).astype(np.float32) for _ in range(3))
  valid = np.array([[False, False, True, True, True], [True] * 5])
  out = np.asarray(causal_attention(q, k, v, valid))
  for b in range(2):
    for h in range(2):
      for t in range(5):
        keys = [s for s in range(t + 1) if valid[b, s]]
        if not keys:
          np.testing.assert_array_equal(out[b, t, h], 0.)
          continue
        logit = np.array([q[b, t, h] @ k[b, s, h] for s in keys]) / math.sqrt(3)
        w = np.exp(logit - logit.max())
        w /= w.sum()
        np.testing.assert_allclose(out[b, t, h], w @ v[b, keys, h], atol=1e-5)


run = nnx.jit(lambda m, x, train: m(x, train=train), static_argnums=2)


def test_sasrec_is_causal_and_ignores_padding():
  enc = SASRecEncoder(30, 6, 16, num_blocks=2, num_heads=2, dropout=0.1,
                      rngs=nnx.Rngs(0))
  items = np.array([[-1, -1, 4, 7, 1, 9], [3, 5, 8, 2, 0, 6]], np.int32)
  changed = items.copy()
  changed[:, 4] = 11  # a later item changes positions >= 4 only
  x, y = np.split(np.asarray(run(enc, np.concatenate([items, changed]),
                                 False)), 2)
  assert x.shape == (2, 6, 16)
  np.testing.assert_array_equal(x[0, :2], 0.)  # padded positions
  np.testing.assert_allclose(x[:, :4], y[:, :4], atol=1e-6)
  assert np.abs(x[:, 4:] - y[:, 4:]).max() > 1e-3
  # Dropout only with train=True.
  assert np.abs(np.asarray(run(enc, np.concatenate([items, changed]), True))[:2]
                - x).max() > 1e-3


def test_init_std_sets_the_item_and_position_tables():
  for std, want in ((None, 1 / math.sqrt(32)), (0.02, 0.02)):
    enc = SASRecEncoder(4000, 50, 32, num_blocks=0, init_std=std,
                        rngs=nnx.Rngs(0))
    items = np.asarray(enc.item_embedding[...])
    pos = np.asarray(enc.position_embedding[...])
    # 128,000 and 1,600 N(0, want^2) draws: sample std within 2% and 10%.
    assert abs(items.std() / want - 1) < 0.02, (std, items.std())
    assert abs(pos.std() / want - 1) < 0.1, (std, pos.std())
  with pytest.raises(ValueError, match="init_std"):
    SASRecEncoder(10, 4, 8, init_std=0.0, rngs=nnx.Rngs(0))


def _np_layer_norm(x, ln):
  mean = x.mean(-1, keepdims=True)
  var = x.var(-1, keepdims=True)
  return ((x - mean) / np.sqrt(var + ln.epsilon) * np.asarray(ln.scale[...])
          + np.asarray(ln.bias[...]))


def _np_block(blk, x, valid, layout):
  """One block in numpy, written from the two layouts' formulas."""
  w = np.asarray(blk.qkv.kernel[...])
  bias = np.asarray(blk.qkv.bias[...])
  d = x.shape[-1]
  h = blk.num_heads

  def attend(q_in, kv_in):
    q = (q_in @ w[:, :d] + bias[:d]).reshape(*q_in.shape[:2], h, d // h)
    k = (kv_in @ w[:, d:2 * d] + bias[d:2 * d]).reshape(q.shape)
    v = (kv_in @ w[:, 2 * d:] + bias[2 * d:]).reshape(q.shape)
    att = np.asarray(causal_attention(q, k, v, valid)).reshape(x.shape)
    return att @ np.asarray(blk.out.kernel[...]) + np.asarray(blk.out.bias[...])

  def ffn(y):
    hid = np.maximum(y @ np.asarray(blk.ffn_in.kernel[...])
                     + np.asarray(blk.ffn_in.bias[...]), 0.)
    return (hid @ np.asarray(blk.ffn_out.kernel[...])
            + np.asarray(blk.ffn_out.bias[...]))

  if layout == "sasrec":
    q = _np_layer_norm(x, blk.norm1)
    x = q + attend(q, x)
    y = _np_layer_norm(x, blk.norm2)
    return y + ffn(y)
  y = _np_layer_norm(x, blk.norm1)
  x = x + attend(y, y)
  return x + ffn(_np_layer_norm(x, blk.norm2))


@pytest.mark.parametrize("layout", ["pre_ln", "sasrec"])
def test_block_layouts_match_numpy(layout):
  enc = SASRecEncoder(30, 6, 8, num_blocks=1, num_heads=2, dropout=0.3,
                      layout=layout, rngs=nnx.Rngs(2))
  blk = enc.blocks[0]
  rng = np.random.default_rng(0)
  for ln in (blk.norm1, blk.norm2):  # non-trivial LayerNorm parameters
    ln.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, 8), jnp.float32)
    ln.bias[...] = jnp.asarray(rng.normal(size=8), jnp.float32)
  x = rng.normal(size=(2, 6, 8)).astype(np.float32)
  valid = np.array([[False, True, True, True, True, True], [True] * 6])
  got = np.asarray(nnx.jit(lambda b, x, v: b(x, v))(blk, x, valid))
  np.testing.assert_allclose(got, _np_block(blk, x, valid, layout), atol=1e-4)
  # The two layouts differ on the same weights.
  other = "pre_ln" if layout == "sasrec" else "sasrec"
  assert np.abs(got - _np_block(blk, x, valid, other)).max() > 1e-2
  # Training mode applies dropout.
  out = nnx.jit(lambda b, x, v: b(x, v, train=True))(blk, x, valid)
  assert np.abs(np.asarray(out) - got).max() > 1e-3


def test_sasrec_attention_weight_dropout():
  # A rate-0.5 dropout on the weights of a one-key query zeroes or doubles
  # its output; without dropout it is exactly v.
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=(64, 1, 1, 4)).astype(np.float32)
             for _ in range(3))
  drop = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
  out = np.asarray(causal_attention(
      q, k, v, np.ones((64, 1), bool),
      weight_dropout=lambda w: drop(w, deterministic=False)))
  scale = out[:, 0, 0, 0] / v[:, 0, 0, 0]
  np.testing.assert_allclose(out, v * scale[:, None, None, None], rtol=1e-5)
  assert set(np.round(scale, 4)) == {0.0, 2.0}


def test_dense_init_std_and_bad_layout():
  enc = SASRecEncoder(10, 4, 64, num_blocks=2, dense_init_std=0.02,
                      rngs=nnx.Rngs(0))
  kernels = np.concatenate([np.asarray(getattr(b, n).kernel[...]).ravel()
                            for b in enc.blocks
                            for n in ("qkv", "out", "ffn_in", "ffn_out")])
  assert abs(kernels.std() / 0.02 - 1) < 0.02, kernels.std()
  default = SASRecEncoder(10, 4, 64, num_blocks=1, rngs=nnx.Rngs(0))
  # lecun-normal: std 1/sqrt(64) = 0.125.
  assert abs(np.asarray(default.blocks[0].qkv.kernel[...]).std() / 0.125
             - 1) < 0.05
  with pytest.raises(ValueError, match="layout='post'"):
    SASRecEncoder(10, 4, 8, layout="post", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="dense_init_std"):
    SASRecEncoder(10, 4, 8, dense_init_std=-1.0, rngs=nnx.Rngs(0))


def test_tied_embeddings_read_the_head_kernel():
  rngs = nnx.Rngs(0)
  enc = SASRecEncoder(12, 4, 8, num_blocks=0, rngs=rngs)
  head = heads.VanillaHead(8, 12, rngs=rngs)
  table_cd = np.asarray(enc.item_embedding[...])
  untied = Classifier(nnx.clone(enc), nnx.clone(head), ("items",))
  untied.head.kernel[...] = jnp.asarray(table_cd.T)
  enc.tie(head)
  # The shared table starts from the encoder's draw and is the head's kernel.
  np.testing.assert_array_equal(np.asarray(enc.item_table()), table_cd)
  np.testing.assert_array_equal(np.asarray(head.kernel[...]).T, table_cd)
  with pytest.raises(ValueError, match="tied already"):
    enc.tie(head)
  model = Classifier(enc, head, ("items",))
  shapes = [x.shape for x in jax.tree.leaves(nnx.state(model, nnx.Param))]
  assert shapes.count((8, 12)) == 1 and (12, 8) not in shapes  # stored once
  # The shared kernel's gradient is the sum of its two uses' gradients.
  batch = {"items": jnp.array([[1, 2, 3, 4], [-1, 5, 6, 0]]),
           "labels": jnp.array([[2, 3, 4, 5], [-1, 6, 0, 9]]),
           "mask": jnp.array([True, True])}
  grad = nnx.jit(nnx.grad(lambda m: m.loss(batch, train=False)))
  (g_tied,) = [x for x in jax.tree.leaves(grad(model)) if x.shape == (8, 12)]
  g = grad(untied)
  np.testing.assert_allclose(
      np.asarray(g_tied),
      np.asarray(g["head"]["kernel"][...])
      + np.asarray(g["encoder"]["item_embedding"][...]).T, atol=1e-6)


def test_tied_mhc_leaf_vectors_are_the_item_table():
  c, d = 12, 8
  perm = np.random.default_rng(3).permutation(c)
  codec = LabelCodec((4, 3), c, permutation=perm)
  enc = SASRecEncoder(c, 4, d, num_blocks=0, rngs=nnx.Rngs(0))
  head = heads.MHCHead(d, codec, beam=4, hidden=d, child_embedding="table",
                       rngs=nnx.Rngs(1))
  table_cd = np.asarray(enc.item_embedding[...])
  untied = Classifier(nnx.clone(enc), nnx.clone(head), ("items",))
  leaf = np.asarray(untied.head.child_table[-1][...]).copy()
  leaf[perm] = table_cd  # label y's leaf row is its code perm[y]
  untied.head.child_table[-1][...] = jnp.asarray(leaf)
  enc.tie(head)
  np.testing.assert_array_equal(np.asarray(enc.item_table()), table_cd)
  np.testing.assert_array_equal(np.asarray(head.child_table[-1][...]), leaf)
  model = Classifier(enc, head, ("items",))
  shapes = [x.shape for x in jax.tree.leaves(nnx.state(model, nnx.Param))]
  assert shapes.count((c, d)) == 1  # the leaf table alone (4 * 3 rows)
  batch = {"items": jnp.array([[1, 2, 3, 4], [-1, 5, 6, 0]]),
           "labels": jnp.array([[2, 3, 4, 5], [-1, 6, 0, 9]]),
           "mask": jnp.array([True, True])}
  loss = lambda m: m.loss(batch, train=False)
  np.testing.assert_allclose(float(loss(model)), float(loss(untied)),
                             rtol=1e-6)
  grad = nnx.jit(nnx.grad(loss))
  (g_tied,) = [x for x in jax.tree.leaves(grad(model)) if x.shape == (c, d)]
  g = grad(untied)
  want = np.asarray(g["head"]["child_table"][0][...]).copy()
  want[perm] += np.asarray(g["encoder"]["item_embedding"][...])
  np.testing.assert_allclose(np.asarray(g_tied), want, atol=1e-6)
  gated = heads.MHCHead(d, codec, beam=4, hidden=d, rngs=nnx.Rngs(1))
  with pytest.raises(ValueError, match="child_embedding='table'"):
    SASRecEncoder(c, 4, d, num_blocks=0, rngs=nnx.Rngs(0)).tie(gated)
  with pytest.raises(ValueError, match="cannot tie"):
    SASRecEncoder(c, 4, d, num_blocks=0, rngs=nnx.Rngs(0)).tie(
        heads.MHPHead(d, codec, rngs=nnx.Rngs(1)))


def test_tied_mhs_kernel_columns_are_the_item_table():
  c, d = 11, 8  # 4 groups of 3 codes: code 11 is padding
  perm = np.random.default_rng(5).permutation(c)
  codec = LabelCodec((4, 3), c, permutation=perm)
  enc = SASRecEncoder(c, 4, d, num_blocks=0, rngs=nnx.Rngs(0))
  head = heads.MHSHead(d, codec, num_sampled_groups=2, rngs=nnx.Rngs(1))
  table_cd = np.asarray(enc.item_embedding[...])
  untied = Classifier(nnx.clone(enc), nnx.clone(head), ("items",))
  kernel = np.asarray(untied.head.kernel[...]).copy()
  kernel[:, perm] = table_cd.T  # label y's column is its code perm[y]
  untied.head.kernel[...] = jnp.asarray(kernel)
  enc.tie(head)
  np.testing.assert_array_equal(np.asarray(enc.item_table()), table_cd)
  np.testing.assert_array_equal(np.asarray(head.kernel[...]), kernel)
  model = Classifier(enc, head, ("items",))
  shapes = [x.shape for x in jax.tree.leaves(nnx.state(model, nnx.Param))]
  assert shapes.count((d, 12)) == 1 and (c, d) not in shapes  # stored once
  batch = {"items": jnp.array([[1, 2, 3, 4], [-1, 5, 6, 0]]),
           "labels": jnp.array([[2, 3, 4, 5], [-1, 6, 0, 10]]),
           "mask": jnp.array([True, True])}
  rng = jax.random.key(7)
  # The sampled training loss and the exact one agree with the untied twin.
  for key in (rng, None):
    loss = lambda m, key=key: m.loss(batch, train=False, rng=key)
    np.testing.assert_allclose(float(loss(model)), float(loss(untied)),
                               rtol=1e-6)
  grad = nnx.jit(nnx.grad(lambda m: m.loss(batch, train=False, rng=rng)))
  (g_tied,) = [x for x in jax.tree.leaves(grad(model)) if x.shape == (d, 12)]
  g = grad(untied)
  want = np.asarray(g["head"]["kernel"][...]).copy()
  want[:, perm] += np.asarray(g["encoder"]["item_embedding"][...]).T
  np.testing.assert_allclose(np.asarray(g_tied), want, atol=1e-6)


# ------------------------------------------------------- per-position heads
def _heads(d, c):
  codec = LabelCodec.balanced(c, 2)
  return {
      "vanilla": heads.VanillaHead(d, c, chunk_size=16, rngs=nnx.Rngs(1)),
      "mhp": heads.MHPHead(d, codec, rngs=nnx.Rngs(1)),
      "mhc": heads.MHCHead(d, codec, beam=16, hidden=8, rngs=nnx.Rngs(1)),
      "mhs": heads.MHSHead(d, codec, 2, rngs=nnx.Rngs(1)),
  }


@pytest.mark.parametrize("max_rows", [0, 8, 11])
@pytest.mark.parametrize("name", ["vanilla", "mhp", "mhc", "mhs"])
def test_position_loss_is_mean_over_labelled_positions(name, max_rows):
  # max_rows: 0 scores all 15 rows, 8 exactly the labelled ones (compacted),
  # 11 the labelled ones and three padding rows.
  c, t, d = 40, 5, 16
  head = _heads(d, c)[name]
  enc = SASRecEncoder(c, t, d, num_blocks=1, rngs=nnx.Rngs(0))
  model = Classifier(enc, head, ("items",), max_rows=max_rows)
  items = np.array([[-1, -1, 3, 9, 4], [5, 6, 7, 8, 9], [-1, 1, 2, 3, 4]],
                   np.int32)
  labels = np.array([[-1, -1, 9, 4, 11], [6, 7, 8, 9, 10], [-1, 2, 3, 4, 5]],
                    np.int32)
  mask = np.array([True, True, False])
  batch = {"items": items, "labels": labels, "mask": mask}

  @nnx.jit
  def both(model, batch, rows):
    # Reference: the head's plain [N, d] loss on the labelled positions only.
    x_nd = model.features(batch).reshape(-1, d)[rows]
    ref = model.head.loss(x_nd, batch["labels"].reshape(-1)[rows])
    return model.loss(batch, train=False), ref, model.topk(batch, 3)[1], \
        model.head.topk(model.features(batch)[:, -1], 3)[1]

  rows = np.flatnonzero(((labels >= 0) & mask[:, None]).reshape(-1))
  assert rows.size == 8
  loss, ref, top, ref_top = both(model, batch, rows)
  assert float(loss) == pytest.approx(float(ref), rel=1e-5)
  np.testing.assert_array_equal(np.asarray(top), np.asarray(ref_top))


@pytest.mark.parametrize("name", ["vanilla", "mhp", "mhc", "mhs"])
def test_label_scores_rank_like_the_dense_scores(name):
  c, t, d = 40, 4, 16
  head = _heads(d, c)[name]
  enc = SASRecEncoder(c, t, d, num_blocks=1, rngs=nnx.Rngs(0))
  model = Classifier(enc, head, ("items",))
  batch = {"items": np.array([[-1, 3, 9, 4], [5, 6, 7, 8]], np.int32)}
  query = np.array([[0, 7, 39, 12], [3, 3, 21, 5]], np.int32)
  k = min(c, getattr(head, "max_k", c))

  @nnx.jit
  def both(model, batch, query):
    x = model.features(batch)[:, -1]
    return model.label_scores(batch, query), model.head.topk(x, k)

  got, (scores_all, labels_all) = both(model, batch, jnp.asarray(query))
  got, scores_all, labels_all = map(np.asarray, (got, scores_all, labels_all))
  # Dense reference: every label's score from the head's own top-k over C.
  dense = np.full((2, c), np.nan)
  for b in range(2):
    dense[b, labels_all[b]] = scores_all[b]
  assert not np.isnan(np.take_along_axis(dense, query, 1)).any()
  ref = np.take_along_axis(dense, query, 1)
  if name in ("vanilla", "mhs"):  # logits vs log-softmax: a per-row shift
    got = got - got[:, :1]
    ref = ref - ref[:, :1]
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ metrics
def brute_force_metrics(scores_bc, targets, history, ks):
  """Dense scores ranked by argsort, history items (not the target) removed."""
  out = {f"HR@{k}": 0.0 for k in ks} | {f"NDCG@{k}": 0.0 for k in ks}
  for b in range(scores_bc.shape[0]):
    s = scores_bc[b].astype(np.float64).copy()
    for h in history[b]:
      if h >= 0:
        s[h] = -np.inf
    order = np.argsort(-s, kind="stable")
    rank = int(np.flatnonzero(order == targets[b])[0])
    for k in ks:
      if rank < k:
        out[f"HR@{k}"] += 1
        out[f"NDCG@{k}"] += 1 / math.log2(rank + 2)
  return {key: v / scores_bc.shape[0] for key, v in out.items()}


@pytest.mark.parametrize("xp", [np, jnp])
def test_full_ranking_with_exclusion_matches_brute_force(xp):
  rng = np.random.default_rng(0)
  b, c, h, ks = 64, 50, 6, (1, 5, 10)
  scores = rng.permutation(b * c).reshape(b, c).astype(np.float64)  # no ties
  history = np.where(rng.random((b, h)) < 0.7, rng.integers(0, c, (b, h)), -1)
  targets = np.array([rng.choice(np.setdiff1d(np.arange(c), history[i]))
                      for i in range(b)])
  top = np.argsort(-scores, 1)[:, :max(ks) + h]
  kept = np.asarray(metrics.drop_excluded(xp.asarray(top),
                                          xp.asarray(history), max(ks)))
  acc = metrics.NextItemMetrics(ks)
  acc.update(metrics.target_ranks(kept[:40], targets[:40]))
  acc.update(metrics.target_ranks(kept[40:], targets[40:]))
  got = acc.compute()
  ref = brute_force_metrics(scores, targets, history, ks)
  assert got == pytest.approx(ref)
  # Without exclusion: the plain top-k.
  plain = metrics.NextItemMetrics(ks)
  plain.update(metrics.target_ranks(top[:, :10], targets))
  assert plain.compute() == pytest.approx(
      brute_force_metrics(scores, targets, np.full((b, 1), -1), ks))


@pytest.mark.parametrize("name", ["vanilla", "mhp"])
def test_model_ranking_with_exclusion_matches_brute_force(name):
  c, t, d, k = 40, 4, 16, 5
  head = _heads(d, c)[name]
  model = Classifier(SASRecEncoder(c, t, d, num_blocks=1, rngs=nnx.Rngs(0)),
                     head, ("items",))
  items = np.array([[-1, 3, 9, 4], [5, 6, 7, 8], [1, 2, 3, 0]], np.int32)
  batch = {"items": items, "history": np.where(items >= 0, items, -1)}

  @nnx.jit
  def ranked(model, batch):
    x = model.features(batch)[:, -1]
    dense = (sequence_eval._dense_topk_excluding(model, batch, k)  # pylint: disable=protected-access
             if name == "vanilla" else None)
    streamed = metrics.drop_excluded(model.topk(batch, k + t)[1],
                                     batch["history"], k)
    return dense, streamed, model.head.topk(x, c)

  dense, streamed, (scores_all, labels_all) = ranked(model, batch)
  for b in range(3):  # brute force: all C scores, history removed, argsort
    s = np.full(c, -np.inf)
    s[np.asarray(labels_all[b])] = np.asarray(scores_all[b])
    s[batch["history"][b][batch["history"][b] >= 0]] = -np.inf
    ref = np.argsort(-s, kind="stable")[:k]
    np.testing.assert_array_equal(np.asarray(streamed[b]), ref)
    if dense is not None:
      np.testing.assert_array_equal(np.asarray(dense[b]), ref)


def test_drop_excluded_hand_case_and_masked_rows():
  out = metrics.drop_excluded(np.array([[4, 2, 7, 1], [3, 5, -1, 6]]),
                              np.array([[2, -1], [5, 3]]), 3)
  assert out.tolist() == [[4, 7, 1], [6, -1, -1]]
  acc = metrics.NextItemMetrics((1, 2))
  acc.update(np.array([0, 1, metrics.NOT_RANKED, 0]),
             mask=np.array([True, True, True, False]))
  res = acc.compute()
  assert res["HR@1"] == pytest.approx(1 / 3)
  assert res["NDCG@2"] == pytest.approx((1 + 1 / math.log2(3)) / 3)


def test_sampled_ranks_brute_force_and_ties():
  rng = np.random.default_rng(2)
  t = rng.normal(size=20)
  neg = rng.normal(size=(20, 100))
  neg[3, :5] = t[3]  # ties rank against the target
  ranks = metrics.sampled_ranks(t, neg)
  for b in range(20):
    assert ranks[b] == sum(1 for v in neg[b] if v >= t[b])
  assert metrics.sampled_ranks(np.zeros(1), np.zeros((1, 100)))[0] == 100


def test_popularity_negatives():
  counts = np.array([100, 0, 5, 50, 1, 20, 7, 30])
  examples = interactions.EvalExamples(
      np.arange(2), interactions.Sequences.from_lists([[0, 3], [5]]),
      np.array([2, 7], np.int32))
  neg = interactions.popularity_negatives(counts, examples, 4, seed=0)
  again = interactions.popularity_negatives(counts, examples, 4, seed=0)
  np.testing.assert_array_equal(neg, again)
  assert set(neg[0]) == {4, 5, 6, 7}  # all that is left (1 has count 0)
  assert len(set(neg[1])) == 4 and not set(neg[1]) & {1, 5, 7}
  with pytest.raises(ValueError, match="example 0 has 4 items"):
    interactions.popularity_negatives(counts, examples, 5, seed=0)
  # Draw frequencies follow popularity: item 0 (100) beats item 4 (1).
  one = interactions.EvalExamples(
      np.arange(400), interactions.Sequences.from_lists([[]] * 400),
      np.full(400, 7, np.int32))
  freq = np.bincount(interactions.popularity_negatives(counts, one, 1, 1)[:, 0],
                     minlength=8)
  assert freq[0] > 150 and freq[4] < 20 and freq[1] == 0


# ------------------------------------------------------------- end to end
def write_log(root, num_users=240, num_items=48, seed=0):
  """Users walk the items in steps of +1 (mod C): next item = last + 1."""
  rng = random.Random(seed)
  lines = []
  for u in range(1, num_users + 1):
    start = rng.randrange(num_items)
    for j in range(rng.randint(4, 10)):
      lines.append(f"{u} {(start + j) % num_items + 1}")
  path = root / "amazon_beauty"
  path.mkdir()
  (path / "interactions.txt").write_text("\n".join(lines) + "\n")


def sequence_config(root, head, **overrides):
  c = config_lib.base_config()
  c.data.name = "amazon_beauty"
  c.data.data_dir = str(root)
  c.data.max_len = 6
  c.encoder.type = "sasrec"
  c.encoder.embed_dim = 32
  c.encoder.num_blocks = 1
  c.head.type = head
  c.head.num_sampled_groups = 2
  c.batch_size = 32
  c.eval_batch_size = 64
  c.num_train_steps = 100
  c.log_every = 50
  c.checkpoint_every = 0
  c.optimizer.learning_rate = 3e-3
  c.eval.ks = (1, 5, 10)
  c.eval.num_negatives = 20
  return config_lib.override(c, overrides)


@pytest.mark.parametrize("head,overrides", [
    ("vanilla", {}), ("mhp", {}),
    ("vanilla", {"head.tie_embeddings": True, "encoder.block_layout": "sasrec",
                 "encoder.dense_init_std": 0.02, "encoder.init_std": 0.02}),
    ("mhc", {"head.label_order": "clustered"}),
    ("mhs", {"head.label_order": "clustered", "head.tie_embeddings": True,
             "head.sampling_correction": "logq"}),
    ("mhc", {"head.label_order": "clustered", "head.child_embedding": "table",
             "head.hidden": 32, "head.tie_embeddings": True}),
    # Two batch shards of 16 users, each compacted to 80 of its 96 rows.
    ("vanilla", {"data.train_rows": 160, "mesh.shape": (2, 4),
                 "mesh.rules": (("batch", "data"),) + tuple(
                     (name, None) for name in ("classes", "embed", "mlp",
                                               "vocab", "heads", "prefixes"))}),
])
def test_trainer_learns_next_item(tmp_path, head, overrides):
  write_log(tmp_path)
  config = sequence_config(tmp_path, head, **overrides)
  results = train.train_and_evaluate(config, tmp_path / "wd")
  assert results["eval_split"] == "test" and results["num_classes"] == 48
  for key in ("HR@1", "HR@5", "HR@10", "NDCG@1", "NDCG@5", "NDCG@10",
              "sampled/HR@10", "sampled/NDCG@10"):
    assert key in results, key
  # Chance: HR@10 ~ 10/44 over the non-history items.
  assert results["HR@10"] > 0.9, results
  assert results["sampled/HR@1"] > 0.9, results


@pytest.mark.parametrize("head,overrides", [
    ("mhs", {"head.tie_embeddings": True, "head.sampling_correction": "logq"}),
    ("mhc", {"head.child_embedding": "table", "head.hidden": 32,
             "head.tie_embeddings": True})])
def test_a_sequence_workdir_loads_and_predicts_like_the_trainer(
    tmp_path, head, overrides):
  write_log(tmp_path)
  config = sequence_config(tmp_path, head, **{"eval.exclude_history": False,
                                              "eval.num_negatives": 0,
                                              **overrides})
  results = train.train_and_evaluate(config, tmp_path / "wd")
  import mhe_jax  # pylint: disable=g-import-not-at-top
  predictor = mhe_jax.load(tmp_path / "wd")
  trainer = train.Trainer(config, tmp_path / "wd2")
  ex = trainer.data.eval.examples
  items = np.full((len(ex), config.data.max_len), -1, np.int32)
  for u in range(len(ex)):
    seq = ex.inputs.sequence(u)[-config.data.max_len:]
    items[u, items.shape[1] - seq.size:] = seq
  top = np.asarray(predictor.predict(items, 10).labels)
  hits = (top == ex.targets[:, None]).any(axis=1).mean()
  # The loaded model ranks the held-out items as the trainer's evaluation
  # did (full ranking, no exclusion: the same HR@10).
  assert hits == pytest.approx(results["HR@10"], abs=1e-6)
  assert hits > 0.9
  # The exported artifact gives the predictor's top-k.
  from mhe_jax import export  # pylint: disable=g-import-not-at-top
  run = export.load_exported(export.export(predictor, tmp_path / "ex", k=10))
  _, labels = run(items[:16])
  np.testing.assert_array_equal(np.asarray(labels), top[:16])


def test_trainer_validation_split_and_no_exclusion(tmp_path):
  write_log(tmp_path)
  config = sequence_config(tmp_path, "mhp", num_train_steps=2, **{
      "data.validation_fraction": 0.1, "eval.exclude_history": False,
      "eval.num_negatives": 0})
  trainer = train.Trainer(config, tmp_path / "wd")
  assert trainer.data.eval_split == "validation"
  ex = trainer.data.eval.examples
  log = interactions.read_interactions(tmp_path / "amazon_beauty" /
                                       "interactions.txt")
  assert ex.targets[0] == log.sequences.sequence(0)[-2]
  results = trainer.evaluate(trainer.init_state())
  assert set(results) == {f"{m}@{k}" for m in ("HR", "NDCG") for k in (1, 5, 10)}


def test_labelled_rows_counts_unmasked_targets():
  labels = np.array([[-1, 2, 3], [4, 5, 6], [-1, -1, 7]])
  assert models.labelled_rows(labels) == 6
  assert models.labelled_rows(labels, np.array([True, False, True])) == 3
  assert models.labelled_rows(np.concatenate([labels, labels[:1]]), None,
                              shards=2) == 5


def test_train_rows_bound_is_checked_per_batch(tmp_path):
  write_log(tmp_path)
  config = sequence_config(tmp_path, "mhp", num_train_steps=2,
                           **{"data.train_rows": 20})
  with pytest.raises(ValueError, match=r"step 0: a batch shard has \d+ labelled "
                     r"positions but config.data.train_rows=20"):
    train.train_and_evaluate(config, tmp_path / "wd")


def test_tie_embeddings_needs_vanilla_and_sasrec(tmp_path):
  write_log(tmp_path)
  for head, overrides in (("mhp", {}), ("mhc", {}),
                          ("mhc", {"head.child_embedding": "table"})):
    config = sequence_config(tmp_path, head, **{"head.tie_embeddings": True,
                                                **overrides})
    match = ("needs head.hidden = encoder.embed_dim" if overrides else
             "tie_embeddings needs head.type='vanilla'")
    with pytest.raises(ValueError, match=match):
      train.Trainer(config, tmp_path / "wd")


def test_amazon_beauty_config_arguments():
  from test_configs import CONFIG_DIR, load_module  # pylint: disable=g-import-not-at-top
  module = load_module(CONFIG_DIR / "amazon_beauty.py")
  best = module.get_config()  # the validated tied MHS, 3000 steps
  assert best.head.type == "mhs" and best.head.label_order == "clustered"
  assert best.head.tie_embeddings and best.head.radices == (27271, 2)
  assert best.encoder.block_layout == "sasrec"
  mhs = module.get_config("head=mhs").to_dict()
  assert best.to_dict() == {
      **mhs, "name": "amazon_beauty_best", "num_train_steps": 3000,
      "head": {**mhs["head"], "radices": (27271, 2), "num_sampled_groups": 1280,
               "label_order": "clustered", "tie_embeddings": True,
               "sampling_correction": "logq"},
      "optimizer": {**mhs["optimizer"], "ema_decay": 0.999}}
  mhc = module.get_config("head=mhc")  # the validated MHC: 4000 steps
  assert mhc.head.label_order == "clustered" and mhc.num_train_steps == 4000
  assert mhc.optimizer.ema_decay == 0.0
  vanilla = module.get_config("head=vanilla")
  assert vanilla.head.type == "vanilla" and vanilla.optimizer.ema_decay == 0.999
  both = module.get_config("head=mhc,runlocal")
  assert both.head.type == "mhc" and both.name == "amazon_beauty_mhc"
  assert both.num_train_steps == module.get_config("runlocal").num_train_steps
  assert both.num_train_steps < module.get_config("head=mhc").num_train_steps
  config_lib.validate(both)
  with pytest.raises(ValueError, match=r"head='bert'; known: \['best', 'vanilla', "
                     r"'mhp', 'mhc', 'mhs'\]"):
    module.get_config("head=bert,runlocal")
  with pytest.raises(ValueError, match=r"unknown config argument 'heads'"):
    module.get_config("heads=mhc")
