"""mhe_jax.knn: tf-idf rows, kNN label votes and the blend, vs numpy."""

import numpy as np
import pytest
import scipy.sparse as sp

from mhe_jax import knn
from mhe_jax.data import formats


def test_tfidf_matches_numpy():
  train = sp.random(30, 12, density=0.3, format="csr", random_state=1,
                    dtype=np.float32)
  test = sp.random(7, 12, density=0.3, format="csr", random_state=2,
                   dtype=np.float32)
  df = (train.toarray() != 0).sum(0)
  idf = np.log((1 + 30) / (1 + df)) + 1
  w = test.toarray() * idf
  norm = np.linalg.norm(w, axis=1, keepdims=True)
  want = w / np.where(norm > 0, norm, 1)
  np.testing.assert_allclose(knn.tfidf(train, test).toarray(), want,
                             rtol=1e-5, atol=1e-7)


def _knn_reference(train_x, train_y, x, k, power):
  """Brute force: cosine of L2-normalised tf-idf rows, top-k by (-sim, id)."""
  dense = lambda m: np.asarray(m.todense(), np.float64)
  tx, q, y = dense(train_x), dense(x), dense(train_y)
  df = (tx != 0).sum(0)
  idf = np.log((1 + len(tx)) / (1 + df)) + 1
  unit = lambda a: a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True),
                                  1e-30)
  sims = unit(q * idf) @ unit(tx * idf).T
  out = np.zeros((len(q), y.shape[1]))
  for i, row in enumerate(sims):
    nbrs = np.lexsort((np.arange(len(row)), -row))[:k]
    votes = np.maximum(row[nbrs], 0) ** power
    out[i] = votes @ y[nbrs] / max(votes.sum(), 1e-12)
  return out


@pytest.mark.parametrize("dense_limit", [2**27, 0])  # dense keys, sparse keys
@pytest.mark.parametrize("k,power,batch", [(1, 1, 4), (5, 2, 3), (12, 4, 64)])
def test_label_scores_match_brute_force(k, power, batch, dense_limit):
  rng = np.random.default_rng(k)
  # Integer counts: exact cosine ties are rare but the reference breaks them
  # like exact_search (smaller training row first).
  train_x = sp.csr_matrix(rng.poisson(0.4, (30, 20)).astype(np.float32))
  train_y = sp.csr_matrix((rng.random((30, 7)) < 0.3).astype(np.float32))
  x = sp.csr_matrix(rng.poisson(0.4, (10, 20)).astype(np.float32))
  got = knn.label_scores(formats.XMCData(train_x, train_y), x, k, power,
                         batch_size=batch, dense_limit=dense_limit)
  np.testing.assert_allclose(got, _knn_reference(train_x, train_y, x, k,
                                                 power), rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="k=31"):
    knn.label_scores(formats.XMCData(train_x, train_y), x, 31, power)


def test_blend_is_the_convex_combination_and_checks_its_arguments():
  rng = np.random.default_rng(0)
  probs, votes = rng.random((4, 6)), rng.random((4, 6))
  np.testing.assert_allclose(knn.blend(probs, votes, 0.25),
                             0.75 * probs + 0.25 * votes)
  with pytest.raises(ValueError, match="weight"):
    knn.blend(probs, votes, 1.5)
  with pytest.raises(ValueError, match="differ"):
    knn.blend(probs, votes[:, :5], 0.5)


def test_label_scores_rejects_a_feature_mismatch():
  train = formats.XMCData(sp.csr_matrix(np.eye(3, 4, dtype=np.float32)),
                          sp.csr_matrix(np.eye(3, dtype=np.float32)))
  with pytest.raises(ValueError, match="5 features"):
    knn.label_scores(train, sp.csr_matrix(np.ones((2, 5), np.float32)), 1)


@pytest.mark.parametrize("dense_limit", [2**27, 0])
def test_the_first_columns_of_more_neighbours_are_the_fewer(dense_limit):
  # benchmarks/xmc_accuracy.blend_grid searches once for its largest k and
  # slices: that must equal searching for each k (ties broken alike).
  rng = np.random.default_rng(5)
  train = formats.XMCData(
      sp.csr_matrix(rng.poisson(0.3, (40, 12)).astype(np.float32)),
      sp.csr_matrix((rng.random((40, 6)) < 0.3).astype(np.float32)))
  x = sp.csr_matrix(rng.poisson(0.3, (9, 12)).astype(np.float32))
  sims, ids = knn.neighbours(train, x, 25, batch_size=4,
                             dense_limit=dense_limit)
  for k in (1, 7, 24):
    want_sims, want_ids = knn.neighbours(train, x, k, batch_size=4,
                                         dense_limit=dense_limit)
    np.testing.assert_array_equal(ids[:, :k], want_ids)
    np.testing.assert_array_equal(sims[:, :k], want_sims)
    np.testing.assert_array_equal(
        knn.votes((sims[:, :k], ids[:, :k]), train.Y, 2),
        knn.label_scores(train, x, k, 2, batch_size=4,
                         dense_limit=dense_limit))
