"""ops.shortlist: exact search == numpy brute force, k-means index recall."""

import jax
import numpy as np
import pytest

from mhe_jax.ops import shortlist


def np_topk(q, keys, k):
  """Brute force: scores descending, ties by smaller id."""
  s = q.astype(np.float64) @ keys.T.astype(np.float64)
  ids = np.lexsort((np.broadcast_to(np.arange(keys.shape[0]), s.shape), -s),
                   axis=1)[:, :k]
  return ids


@pytest.mark.parametrize("block_size", [64, 4096])
def test_exact_search_equals_brute_force(block_size):
  rng = np.random.default_rng(0)
  keys = rng.standard_normal((1000, 16)).astype(np.float32)
  q = rng.standard_normal((9, 16)).astype(np.float32)
  scores, ids = jax.jit(lambda a, b: shortlist.exact_search(
      a, b, 7, block_size=block_size))(q, keys)
  np.testing.assert_array_equal(ids, np_topk(q, keys, 7))
  np.testing.assert_allclose(
      scores, np.take_along_axis(q @ keys.T, np.asarray(ids), 1), rtol=1e-5)


def test_exact_search_ties_by_smaller_id_across_blocks():
  keys = np.ones((10, 2), np.float32)  # all equal scores
  _, ids = shortlist.exact_search(np.ones((1, 2), np.float32), keys, 4,
                                  block_size=3)
  np.testing.assert_array_equal(ids, [[0, 1, 2, 3]])
  with pytest.raises(ValueError, match="k must be"):
    shortlist.exact_search(np.ones((1, 2)), keys, 11)


def clustered(num_centres, per, dim, seed):
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((num_centres, dim)) * 3
  x = np.repeat(centres, per, 0) + rng.standard_normal((num_centres * per, dim))
  return x.astype(np.float32)


def test_kmeans_index_partitions_labels_into_equal_clusters():
  keys = clustered(8, 25, 8, seed=1)  # C = 200, K = 16 -> M = 13, 8 pads
  index = jax.jit(shortlist.build_kmeans_index, static_argnums=1)(keys, 16)
  members = np.asarray(index.members)
  assert members.shape == (16, 13)
  np.testing.assert_array_equal(np.sort(members[members >= 0]), np.arange(200))
  assert (members[:-1] >= 0).all()  # the 8 padding slots are in the last one
  for c, row in zip(np.asarray(index.centroids), members):
    np.testing.assert_allclose(c, keys[row[row >= 0]].mean(0), atol=1e-5)


def test_kmeans_search_recall_and_full_probe_is_exact():
  keys = clustered(16, 32, 16, seed=2)  # C = 512
  q = keys[::8] + 0.3 * np.random.default_rng(4).standard_normal(
      (64, 16)).astype(np.float32)
  index = shortlist.build_kmeans_index(keys, 16)
  exact = np_topk(q, keys, 10)
  _, approx = shortlist.kmeans_search(index, keys, q, 10, num_probe=3)
  approx = np.asarray(approx)
  recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
  assert recall >= 0.9, recall
  _, full = shortlist.kmeans_search(index, keys, q, 10, num_probe=16,
                                    query_block=7)
  np.testing.assert_array_equal(full, exact)
  with pytest.raises(ValueError, match="power of two"):
    shortlist.build_kmeans_index(keys, 12)


def test_kmeans_search_reports_missing_results():
  keys = clustered(2, 5, 4, seed=5)  # C = 10, K = 4 -> M = 3, 2 pads
  index = shortlist.build_kmeans_index(keys, 4)
  scores, ids = shortlist.kmeans_search(index, keys, keys[:1], 3,
                                        num_probe=1)
  ids, scores = np.asarray(ids), np.asarray(scores)
  assert ((ids == -1) == np.isneginf(scores)).all()
  assert (ids >= 0).sum() >= 1


def test_candidate_union_and_membership():
  rng = np.random.default_rng(6)
  ids = rng.integers(-1, 30, (5, 6))
  cand = np.asarray(shortlist.candidate_union(ids, 31))
  want = np.unique(ids[ids >= 0])
  np.testing.assert_array_equal(cand[:want.size], want)
  assert (cand[want.size:] == -1).all()
  labels = rng.integers(-1, 30, (5, 4))
  member = np.asarray(shortlist.membership(cand, labels))
  ref = np.array([[c >= 0 and c in row for c in cand] for row in labels])
  np.testing.assert_array_equal(member, ref)
