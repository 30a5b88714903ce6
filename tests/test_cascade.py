"""ops.cascade (MHC beam search) against a numpy beam and brute force."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mhe_jax import LabelCodec
from mhe_jax.ops import cascade


def np_level_log_probs(logits, codes, n, multilabel):
  """float64 per-level log-probs over the last axis, -inf for codes >= n."""
  z = np.asarray(logits, np.float64)
  valid = np.asarray(codes) < n
  if multilabel:
    out = -np.logaddexp(0., -z)
  else:
    z = np.where(valid, z, -np.inf)
    z = z - z.max(-1, keepdims=True)
    out = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return np.where(valid, out, -np.inf)


def random_tables(rng, codec, batch):
  """Level logits for every valid prefix: [B, r_1], then [B, n_{h-1}, r_h]."""
  counts = cascade.valid_prefix_counts(codec)
  tables = [rng.normal(size=(batch, codec.radices[0])).astype(np.float32)]
  for h in range(1, codec.num_heads):
    tables.append(rng.normal(size=(batch, counts[h - 1], codec.radices[h]))
                  .astype(np.float32) * 2)
  return tables


def table_fn(tables):
  def child_logits(level, prefixes_bw):
    return jnp.take_along_axis(jnp.asarray(tables[level - 1]),
                               prefixes_bw[..., None], axis=1)
  return child_logits


def np_level_tables(tables, codec, multilabel):
  """Per-level log-probs [B, n_{h-1}, r_h] (level 1 as n_0 = 1)."""
  counts = cascade.valid_prefix_counts(codec)
  out = []
  for h, (t, r) in enumerate(zip(tables, codec.radices)):
    t = np.asarray(t)[:, None] if h == 0 else np.asarray(t)
    codes = np.arange(t.shape[1])[:, None] * r + np.arange(r)
    out.append(np_level_log_probs(t, codes, counts[h], multilabel))
  return out


def np_all_scores(logps, codec):
  """[B, C] sum of the levels' log-probs of every valid label."""
  labels = np.arange(codec.num_classes)
  total = 0.
  for h, (lp, r, s) in enumerate(zip(logps, codec.radices, codec.strides)):
    total = total + lp[:, labels // (s * r), (labels // s) % r]
  return total


def np_beam_topk(logps, codec, beam, k):
  """The beam, replayed in numpy: kept prefixes and the final top-k."""
  b = logps[0].shape[0]
  counts = cascade.valid_prefix_counts(codec)
  scores_out, labels_out, kept_out = [], [], []
  for i in range(b):
    prefixes, cum, kept = np.zeros(1, int), np.zeros(1), []
    for h, r in enumerate(codec.radices):
      codes = (prefixes[:, None] * r + np.arange(r)).ravel()
      total = (cum[:, None] + logps[h][i, prefixes]).ravel()
      width = k if h == codec.num_heads - 1 else min(beam, counts[h])
      order = np.argsort(-total, kind="stable")[:width]
      prefixes, cum = codes[order], total[order]
      kept.append(prefixes)
    scores_out.append(cum)
    labels_out.append(prefixes)
    kept_out.append(kept[:-1])
  return np.stack(scores_out), np.stack(labels_out), kept_out


def test_counts_and_limits():
  codec = LabelCodec((4, 3, 5), 46)  # strides (15, 5, 1)
  assert cascade.valid_prefix_counts(codec) == (4, 10, 46)
  assert cascade.beam_widths(codec, 3) == (3, 3)
  assert cascade.beam_widths(codec, 100) == (4, 10)
  # 10 prefixes of length 2; the last one (9) has 4 children >= 46.
  assert cascade.max_topk(codec, 3) == 3 * 5 - 4
  assert cascade.max_topk(codec, 10) == 46
  assert cascade.max_topk(codec, 1000) == 46
  assert cascade.max_topk(LabelCodec((6, 4), 24), 2) == 8
  with pytest.raises(ValueError, match="beam must be an integer >= 1"):
    cascade.max_topk(codec, 0)
  with pytest.raises(ValueError, match="at least 2 heads"):
    cascade.max_topk(LabelCodec((7,), 7), 2)


CASES = [  # (radices, num_classes)
    ((6, 4), 19), ((4, 3, 5), 46), ((3, 2, 3, 2), 29),
]


@pytest.mark.parametrize("radices,num_classes", CASES)
@pytest.mark.parametrize("multilabel", [False, True])
def test_topk_equals_numpy_beam_and_brute_force(radices, num_classes,
                                                multilabel):
  codec = LabelCodec(radices, num_classes)
  rng = np.random.default_rng(num_classes + 100 * multilabel)
  tables = random_tables(rng, codec, batch=4)
  logps = np_level_tables(tables, codec, multilabel)
  full = np_all_scores(logps, codec)
  n_last = cascade.valid_prefix_counts(codec)[-2]
  for beam in (1, 3, n_last):
    # k = max_topk ranks every reachable label (top-k is a prefix of it).
    k = cascade.max_topk(codec, beam)
    scores, labels = jax.jit(lambda t: cascade.cascade_topk(  # noqa: B023
        t[0], table_fn(t), codec, beam, k, multilabel=multilabel))(tables)
    chex.assert_shape((scores, labels), (4, k))
    assert labels.dtype == jnp.int32 and scores.dtype == jnp.float32
    ref_scores, ref_labels, _ = np_beam_topk(logps, codec, beam, k)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
    assert (np.asarray(labels) < num_classes).all()
    assert (np.asarray(labels) >= 0).all()
    # Every returned score is that label's sum of level log-probs.
    np.testing.assert_allclose(
        scores, np.take_along_axis(full, np.asarray(labels), 1), rtol=1e-5,
        atol=1e-5)
    if beam >= n_last:  # the beam covers every prefix: exact over all C
      assert k == num_classes
      np.testing.assert_array_equal(
          labels, np.argsort(-full, axis=1, kind="stable"))


def test_single_label_scores_are_a_distribution():
  codec = LabelCodec((4, 3, 5), 31)
  tables = random_tables(np.random.default_rng(0), codec, batch=3)
  scores, _ = jax.jit(lambda t: cascade.cascade_topk(
      t[0], table_fn(t), codec, 10, 31))(tables)
  np.testing.assert_allclose(np.exp(np.asarray(scores, np.float64)).sum(1), 1.,
                             rtol=1e-5)


def test_forced_prefixes_are_kept_first():
  codec = LabelCodec((4, 3, 5), 46)
  rng = np.random.default_rng(3)
  tables = random_tables(rng, codec, batch=5)
  logps = np_level_tables(tables, codec, multilabel=False)
  full = np_all_scores(logps, codec)
  worst = full.argmin(1)  # the lowest-scoring label of each example
  labels = np.stack([worst, np.full(5, -1), rng.integers(0, 46, 5)], 1)
  for beam in (2, 3):  # >= the 2 forced labels of each example
    search = jax.jit(lambda t, y: cascade.cascade_search(  # noqa: B023
        t[0], table_fn(t), codec, beam, multilabel=False, forced_labels=y))
    out, free = search(tables, labels), search(tables, None)
    for h, s in enumerate(codec.strides[:-1]):
      kept = np.asarray(out.prefixes[h])
      assert kept.shape == (5, min(beam, cascade.valid_prefix_counts(codec)[h]))
      for i in range(5):
        truth = set(labels[i][labels[i] >= 0] // s)
        # The ground-truth prefixes come first, the worst label's included.
        assert set(kept[i][:len(truth)]) == truth
        assert len(set(kept[i])) == kept.shape[1]
      # The free beam drops the worst label's prefix.
      assert not all(worst[i] // s in np.asarray(free.prefixes[h])[i]
                     for i in range(5))
    # Children logits are those of the kept prefixes.
    for h in range(1, codec.num_heads):
      np.testing.assert_array_equal(
          out.logits[h], np.take_along_axis(
              tables[h], np.asarray(out.prefixes[h - 1])[..., None], 1))


def test_select_forced_order_and_overflow():
  codes = jnp.array([[10, 11, 12, 13, 14]])
  scores = jnp.array([[-1., -5., -3., -2., -jnp.inf]])
  kept, kept_scores = cascade.select(codes, scores, 3,
                                     forced=jnp.array([[12, 11, -1]]))
  np.testing.assert_array_equal(kept, [[12, 11, 10]])
  np.testing.assert_array_equal(kept_scores, [[-3., -5., -1.]])
  kept, _ = cascade.select(codes, scores, 1, forced=jnp.array([[12, 11]]))
  np.testing.assert_array_equal(kept, [[12]])  # best-scoring forced code
  kept, _ = cascade.select(codes, scores, 2)
  np.testing.assert_array_equal(kept, [[10, 13]])


def test_is_member():
  rng = np.random.default_rng(4)
  codes = rng.integers(-1, 30, (6, 20))
  sets = rng.integers(-1, 30, (6, 7))
  out = np.asarray(cascade.is_member(codes, sets))
  for i in range(6):
    s = set(sets[i][sets[i] >= 0])
    np.testing.assert_array_equal(out[i], [c in s for c in codes[i]])


def test_argument_errors():
  codec = LabelCodec((4, 3, 5), 46)
  tables = random_tables(np.random.default_rng(0), codec, batch=2)
  with pytest.raises(ValueError, match=r"k must be an integer in \[1, 11\]"):
    cascade.cascade_topk(tables[0], table_fn(tables), codec, 3, 12)
  with pytest.raises(ValueError, match="k must be"):
    cascade.cascade_topk(tables[0], table_fn(tables), codec, 3, 0)
  with pytest.raises(ValueError, match="beam must be"):
    cascade.cascade_topk(tables[0], table_fn(tables), codec, 0, 1)
  with pytest.raises(ValueError, match="at least 2 heads"):
    cascade.cascade_search(tables[0], table_fn(tables), LabelCodec((4,), 4),
                           2, multilabel=False)


def test_jit_matches_eager():
  codec = LabelCodec((4, 3, 5), 46)
  tables = random_tables(np.random.default_rng(9), codec, batch=3)
  fn = jax.jit(lambda t: cascade.cascade_topk(t[0], table_fn(t), codec, 3, 7))
  chex.assert_trees_all_equal(
      fn([jnp.asarray(t) for t in tables]),
      cascade.cascade_topk(tables[0], table_fn(tables), codec, 3, 7))


@pytest.mark.parametrize("n", [1, 2, 5, 8, 13])
def test_positions_equal_python_index(n):
  rng = np.random.default_rng(n)
  codes = np.stack([rng.permutation(40)[:n] for _ in range(6)])
  codes[0, 0] = -1  # never matched
  queries = rng.integers(-2, 40, (6, 16))
  queries[1, :n] = codes[1]  # every code of a row found
  got = np.asarray(cascade.positions(codes, queries))
  ref = [[list(codes[b]).index(v) if v >= 0 and v in codes[b] else -1
          for v in queries[b]] for b in range(6)]
  np.testing.assert_array_equal(got, ref)
