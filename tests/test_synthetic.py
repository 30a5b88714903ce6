"""Tests for mhe_jax.data.synthetic: the power-law XMC generator."""

import time
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

from mhe_jax.data import synthetic


def _same(a: sp.csr_matrix, b: sp.csr_matrix) -> bool:
  return (a.shape == b.shape and np.array_equal(a.indptr, b.indptr)
          and np.array_equal(a.indices, b.indices)
          and np.array_equal(a.data, b.data))


def test_deterministic_by_seed():
  kw = dict(num_examples=200, num_classes=1000, num_features=500)
  a, ya = synthetic.make_single_label(**kw, seed=3)
  b, yb = synthetic.make_single_label(**kw, seed=3)
  c, yc = synthetic.make_single_label(**kw, seed=4)
  assert _same(a.X, b.X) and _same(a.Y, b.Y)
  np.testing.assert_array_equal(ya, yb)
  assert not np.array_equal(ya, yc)
  m1 = synthetic.make_multi_label(**kw, seed=3, permute_labels=True)
  m2 = synthetic.make_multi_label(**kw, seed=3, permute_labels=True)
  m3 = synthetic.make_multi_label(**kw, seed=3, task_seed=1,
                                  permute_labels=True)
  assert _same(m1.X, m2.X) and _same(m1.Y, m2.Y)
  assert not _same(m1.Y, m3.Y)


@pytest.mark.parametrize("permute", [False, True])
def test_shapes_and_ranges(permute):
  n, c, f = 300, 5000, 700
  data, labels = synthetic.make_single_label(n, c, f, permute_labels=permute)
  assert data.X.shape == (n, f) and data.Y.shape == (n, c)
  assert data.X.dtype == data.Y.dtype == np.float32
  assert labels.dtype == np.int32 and labels.shape == (n,)
  assert labels.min() >= 0 and labels.max() < c
  np.testing.assert_array_equal(data.padded_labels()[:, 0], labels)
  assert np.all(np.diff(data.Y.indptr) == 1) and np.all(data.Y.data == 1)
  assert data.X.indices.max() < f and np.all(data.X.data >= 1)
  assert data.X.has_sorted_indices

  multi = synthetic.make_multi_label(n, c, f, mean_labels=4, max_labels=9,
                                     permute_labels=permute)
  per_row = np.diff(multi.Y.indptr)
  assert per_row.min() >= 1 and per_row.max() <= 9
  assert abs(per_row.mean() - 4) < 0.4
  assert np.all(multi.Y.data == 1)  # Distinct labels: nothing summed.
  assert multi.Y.indices.max() < c and multi.Y.indices.min() >= 0
  padded = multi.padded_labels()
  assert padded.shape == (n, per_row.max())


def test_permutation_is_a_bijection():
  ranks = np.arange(997 * 3)
  for c in (1, 12, 997, 997 * 3):
    mapped = synthetic._affine_permutation(ranks[:c], c, task_seed=5)
    assert sorted(mapped.tolist()) == list(range(c))


def test_feature_values_modes():
  kw = dict(num_examples=100, num_classes=50, num_features=300, seed=1)
  counts, _ = synthetic.make_single_label(**kw)
  binary, _ = synthetic.make_single_label(**kw, values="binary")
  l2, _ = synthetic.make_single_label(**kw, values="l2")
  assert counts.X.data.max() > 1
  np.testing.assert_array_equal(binary.X.indices, counts.X.indices)
  assert np.all(binary.X.data == 1)
  norms = np.sqrt(np.asarray(l2.X.multiply(l2.X).sum(axis=1)).ravel())
  np.testing.assert_allclose(norms[np.diff(l2.X.indptr) > 0], 1, rtol=1e-6)


@pytest.mark.parametrize("exponent", [0.8, 1.0, 1.5])
def test_label_frequencies_follow_zipf(exponent):
  c = 10_000
  rng = np.random.default_rng(0)
  counts = np.bincount(synthetic.zipf_ranks(rng, 400_000, c, exponent),
                       minlength=c)
  ranks = np.arange(1, 201)
  slope = np.polyfit(np.log(ranks), np.log(counts[:200]), 1)[0]
  assert abs(slope + exponent) < 0.08
  # Head exact and tail mass right: compare with the exact pmf.
  pmf = np.arange(1, c + 1, dtype=np.float64) ** -exponent
  pmf /= pmf.sum()
  for k in (0, 1, 5):
    sd = np.sqrt(pmf[k] * (1 - pmf[k]) / counts.sum())
    assert abs(counts[k] / counts.sum() - pmf[k]) < 5 * sd
  tail = pmf[1024:].sum()
  sd = np.sqrt(tail * (1 - tail) / counts.sum())
  assert abs(counts[1024:].sum() / counts.sum() - tail) < 5 * sd

  # Through the generator too (single-label, label id = rank).
  _, labels = synthetic.make_single_label(20_000, c, 64, zipf_exponent=exponent,
                                          noise_tokens=0, tokens_per_label=1)
  gen_counts = np.bincount(labels, minlength=c)
  slope = np.polyfit(np.log(np.arange(1, 51)), np.log(gen_counts[:50]), 1)[0]
  assert abs(slope + exponent) < 0.15


def test_zipf_support_and_errors():
  rng = np.random.default_rng(1)
  for n in (1, 2, 1024, 1025, 3000):
    r = synthetic.zipf_ranks(rng, 5000, n, 1.0)
    assert r.min() >= 0 and r.max() < n
  assert synthetic.zipf_ranks(rng, 2000, 3000, 0.5).max() > 2500
  with pytest.raises(ValueError, match="num_values"):
    synthetic.zipf_ranks(rng, 10, 0, 1.0)
  with pytest.raises(ValueError, match="num_classes"):
    synthetic.make_single_label(10, 0, 10)
  with pytest.raises(ValueError, match="values"):
    synthetic.make_single_label(10, 10, 10, values="tfidf")
  with pytest.raises(ValueError, match="distinct labels"):
    synthetic.make_multi_label(50, 10**6, 10, mean_labels=30, max_labels=30,
                               zipf_exponent=6.0)


def test_hundred_million_classes_small_memory():
  c = 10**8
  tracemalloc.start()
  try:
    start = time.perf_counter()
    multi = synthetic.make_multi_label(1000, c, 2**16, permute_labels=True)
    single, labels = synthetic.make_single_label(1000, c, 2**16)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert elapsed < 1.0
  # A C-sized int32 array alone would be 400 MB.
  assert peak < 32 * 2**20
  assert multi.Y.shape == single.Y.shape == (1000, c)
  assert multi.Y.indices.max() < c and labels.max() < c
  assert multi.Y.indices.max() > c // 2  # Permuted ids reach the whole range.


def _centroid_scores(train_x, train_y, test_x):
  """One-vs-rest count classifier: cosine to each label's feature centroid."""
  w = (train_y.T @ train_x).toarray()
  w /= np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-9)
  return np.asarray(test_x @ w.T)


def test_single_label_is_learnable():
  kw = dict(num_classes=100, num_features=4096, task_seed=7)
  train, _ = synthetic.make_single_label(3000, seed=0, **kw)
  test, y_test = synthetic.make_single_label(1000, seed=1, **kw)
  pred = _centroid_scores(train.X, train.Y, test.X).argmax(axis=1)
  seen = np.asarray(train.Y.sum(axis=0)).ravel() > 0
  majority = np.bincount(y_test).max() / y_test.size
  accuracy = np.mean(pred == y_test)
  assert majority < 0.25
  assert accuracy > 0.8 * seen[y_test].mean() and accuracy > 3 * majority
  # The signatures alone classify too (no training at all).
  sig = synthetic.signature_features(np.arange(100), 4096, 8, task_seed=7)
  s = sp.csr_matrix((np.ones(sig.size), (np.repeat(np.arange(100), 8),
                                         sig.ravel())), shape=(100, 4096))
  s.data[:] = 1.0
  by_signature = np.asarray((test.X @ s.T).toarray()).argmax(axis=1)
  assert np.mean(by_signature == y_test) > 0.8
  # Another task_seed means other signatures: the classifier fails.
  other, y_other = synthetic.make_single_label(1000, seed=1, num_classes=100,
                                               num_features=4096, task_seed=8)
  pred = _centroid_scores(train.X, train.Y, other.X).argmax(axis=1)
  assert np.mean(pred == y_other) < majority + 0.1


def test_multi_label_is_learnable():
  kw = dict(num_classes=200, num_features=8192, mean_labels=3, task_seed=3)
  train = synthetic.make_multi_label(3000, seed=0, **kw)
  test = synthetic.make_multi_label(1000, seed=1, **kw)
  top1 = _centroid_scores(train.X, train.Y, test.X).argmax(axis=1)
  p_at_1 = np.mean(np.asarray(test.Y[np.arange(1000), top1]).ravel())
  # Chance: always predicting the commonest label.
  freq = np.asarray(test.Y.sum(axis=0)).ravel() / 1000
  assert p_at_1 > 0.8 and p_at_1 > 2 * freq.max()
