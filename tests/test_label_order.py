"""Permuted codecs through the ops and heads, and the label-order helpers."""

import json
import math
import os
import subprocess
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.sparse as sp

from mhe_jax import LabelCodec
from mhe_jax import label_order
from mhe_jax import registry
from mhe_jax.data import datasets
from mhe_jax.nn.mhc import MHCHead
from mhe_jax.nn.mhp import MHPHead
from mhe_jax.nn.mhs import MHSHead
from mhe_jax.ops import multilabel_digit_targets
from mhe_jax.ops import product_log_probs
from mhe_jax.ops import product_topk

D = 6


def brute_scores(head_logits, radices, perm):
  """[B, C] scores of every label y: the heads' log-probs at digits of perm[y]."""
  lps = [np.asarray(jax.nn.log_softmax(jnp.asarray(z, jnp.float32), -1),
                    np.float64) for z in head_logits]
  digits = np.array(np.unravel_index(perm, radices)).T  # [C, H]
  return sum(lp[:, digits[:, h]] for h, lp in enumerate(lps))


def brute_topk(scores, k):
  """Score descending, then label ascending (a stable sort)."""
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(scores, order, 1), order


@pytest.mark.parametrize("radices,num_classes", [
    ((3, 4), 10), ((2, 3, 2, 4), 29)])
def test_product_topk_permuted_equals_brute_force(radices, num_classes):
  rng = np.random.default_rng(num_classes)
  perm = rng.permutation(num_classes)
  codec = LabelCodec(radices, num_classes, perm)
  logits = [jnp.asarray(rng.normal(size=(5, r)) * 2, jnp.float32)
            for r in radices]
  full = brute_scores(logits, radices, perm)
  for k in sorted({1, 3, num_classes}):
    scores, labels = product_topk(logits, k, codec)
    want_s, want_l = brute_topk(full, k)
    np.testing.assert_array_equal(labels, want_l)
    np.testing.assert_allclose(scores, want_s, rtol=1e-5, atol=1e-5)
    assert (np.asarray(labels) < num_classes).all()
  all_labels = np.tile(np.arange(num_classes), (5, 1))
  np.testing.assert_allclose(product_log_probs(logits, all_labels, codec),
                             full, rtol=1e-5, atol=1e-5)


def test_multilabel_targets_permuted():
  perm = np.random.default_rng(3).permutation(10)
  codec = LabelCodec((3, 4), 10, perm)
  labels = np.array([[0, 7, -1], [9, -1, -1]])
  targets = multilabel_digit_targets(labels, codec)
  for b, row in enumerate(labels):
    for h, r in enumerate(codec.radices):
      want = np.zeros(r)
      for y in row[row >= 0]:
        want[np.unravel_index(perm[y], codec.radices)[h]] = 1
      np.testing.assert_array_equal(targets[h][b], want)


@pytest.mark.parametrize("multilabel", [False, True])
def test_mhp_head_permuted_topk_equals_brute_force(multilabel):
  rng = np.random.default_rng(1)
  radices, c = (4, 3, 5), 53
  perm = rng.permutation(c)
  head = MHPHead(D, LabelCodec(radices, c, perm), multilabel=multilabel,
                 rngs=nnx.Rngs(0))
  x = jnp.asarray(rng.normal(size=(4, D)), jnp.float32)
  logits = head(x)
  if multilabel:  # 'bce': per-head log-sigmoid scores
    logits = [jax.nn.log_sigmoid(z) for z in logits]
  full = brute_scores(logits, radices, perm)
  if multilabel:
    full = full + sum(np.log(np.exp(np.asarray(z, np.float64)).sum(-1,
                                                                   keepdims=True))
                      for z in logits)
  scores, labels = head.topk(x, 7)
  want_s, want_l = brute_topk(full, 7)
  np.testing.assert_array_equal(labels, want_l)
  np.testing.assert_allclose(scores, want_s, rtol=1e-4, atol=1e-4)


def _pair(make, c, seed=0):
  """(head with a random permutation, same-init head without, perm)."""
  perm = np.random.default_rng(seed).permutation(c)
  return make(perm), make(None), perm


def test_mhc_permuted_is_the_relabelled_plain_head():
  # Multi-label exercises the teacher-forced beam; log_probs (compared too)
  # is the whole single-label loss.
  c, radices = 37, (5, 8)
  make = lambda p: MHCHead(D, LabelCodec(radices, c, p), beam=5, hidden=5,
                           multilabel=True, rngs=nnx.Rngs(0))
  permuted, plain, perm = _pair(make, c)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(3, D)), jnp.float32)
  labels = np.array([[1, 30, -1], [36, -1, -1], [0, 5, 9]])
  codes = np.where(labels >= 0, perm[np.maximum(labels, 0)], -1)
  run = nnx.jit(lambda h, y: (h.log_probs(x, y), h.loss(x, y), h.topk(x, 5)))
  lp_perm, loss_perm, (s_perm, l_perm) = run(permuted, labels)
  lp_plain, loss_plain, (s_plain, l_plain) = run(plain, codes)
  np.testing.assert_allclose(lp_perm, lp_plain, rtol=1e-6)
  np.testing.assert_allclose(loss_perm, loss_plain, rtol=1e-6)
  np.testing.assert_allclose(s_perm, s_plain, rtol=1e-6)
  np.testing.assert_array_equal(perm[np.asarray(l_perm)], l_plain)


def test_mhs_permuted_is_the_relabelled_plain_head():
  c, radices = 29, (5, 6)  # multi-label; the sampled columns are the same
  make = lambda p: MHSHead(D, LabelCodec(radices, c, p), 2, multilabel=True,
                           rngs=nnx.Rngs(0))
  permuted, plain, perm = _pair(make, c, seed=4)
  x = jnp.asarray(np.random.default_rng(5).normal(size=(3, D)), jnp.float32)
  labels = np.array([[1, 28], [27, -1], [0, 5]])
  codes = np.where(labels >= 0, perm[np.maximum(labels, 0)], -1)
  run = nnx.jit(lambda h, y: (h(x), h.loss(x, y, rng=jax.random.key(7)),
                              h.loss(x, y), h.topk(x, 4)))
  out_perm, out_plain = run(permuted, labels), run(plain, codes)
  np.testing.assert_array_equal(out_perm[0], np.asarray(out_plain[0])[:, perm])
  for a, b in zip(out_perm[1:3], out_plain[1:3]):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  (s_perm, l_perm), (s_plain, l_plain) = out_perm[3], out_plain[3]
  np.testing.assert_allclose(s_perm, s_plain, rtol=1e-6)
  np.testing.assert_array_equal(perm[np.asarray(l_perm)], l_plain)


# ------------------------------------------------------------- clustering
def separated_centroids(num_clusters, per_cluster, dim=8, seed=0):
  """Tight clusters around orthogonal directions, labels shuffled."""
  rng = np.random.default_rng(seed)
  truth = rng.permutation(np.repeat(np.arange(num_clusters), per_cluster))
  centres = np.eye(dim)[:num_clusters] * 10
  x = centres[truth] + 0.1 * rng.normal(size=(truth.size, dim))
  return x, truth


@pytest.mark.parametrize("radices", [(4, 5), (4, 5, 2)])
def test_clustering_recovers_separated_clusters_as_first_digit(radices):
  s1 = math.prod(radices[1:])
  x, truth = separated_centroids(radices[0], s1, seed=len(radices))
  codec = LabelCodec(radices, x.shape[0])
  perm = label_order.balanced_clustering_permutation(x, codec, seed=0)
  assert sorted(perm) == list(range(x.shape[0]))
  first_digit = perm // s1
  # Each first-digit group is exactly one true cluster (a bijection).
  for d in range(radices[0]):
    assert len(set(truth[first_digit == d])) == 1
  assert len({truth[first_digit == d][0] for d in range(radices[0])}) == radices[0]


def test_clustering_recovers_nested_clusters_at_every_level():
  # 3 super-clusters of 4 sub-clusters of 2 labels: radices (3, 4, 2).
  rng = np.random.default_rng(0)
  sup, sub = np.meshgrid(np.arange(3), np.arange(4), indexing="ij")
  sup, sub = np.repeat(sup.ravel(), 2), np.repeat(sub.ravel(), 2)
  x = np.zeros((24, 15))
  x[np.arange(24), sup] = 10.0
  x[np.arange(24), 3 + sup * 4 + sub] = 3.0
  x += 0.05 * rng.normal(size=x.shape)
  order = rng.permutation(24)
  x, sup, sub = x[order], sup[order], sub[order]
  perm = label_order.balanced_clustering_permutation(
      x, LabelCodec((3, 4, 2), 24), seed=1)
  prefix1, prefix2 = perm // 8, perm // 2
  for p in range(3):
    assert len(set(sup[prefix1 == p])) == 1
  for p in range(12):
    assert len(set(zip(sup[prefix2 == p], sub[prefix2 == p]))) == 1


def test_clustering_with_too_many_centres_splits_in_super_blocks():
  # 3 super-clusters of 4 sub-clusters of 2 labels, under a flat codec of
  # 12 groups of 2: with max_centres=4 the 12 centres are split as 3 super-
  # blocks of 4 groups first; every group is still one sub-cluster.
  rng = np.random.default_rng(1)
  sup, sub = np.meshgrid(np.arange(3), np.arange(4), indexing="ij")
  sup, sub = np.repeat(sup.ravel(), 2), np.repeat(sub.ravel(), 2)
  x = np.zeros((24, 15))
  x[np.arange(24), sup] = 10.0
  x[np.arange(24), 3 + sup * 4 + sub] = 3.0
  x += 0.05 * rng.normal(size=x.shape)
  order = rng.permutation(24)
  x, sup, sub = x[order], sup[order], sub[order]
  perm = label_order.balanced_clustering_permutation(
      x, LabelCodec((12, 2), 24), seed=1, max_centres=4)
  np.testing.assert_array_equal(np.sort(perm), np.arange(24))
  group = perm // 2
  for g in range(12):
    assert len(set(zip(sup[group == g], sub[group == g]))) == 1
  for b in range(3):  # super-block b holds the codes [8 b, 8 b + 8)
    assert len(set(sup[perm // 8 == b])) == 1
  # A tail group (23 labels) and a deeper split (max_centres=2) stay exact.
  codec = LabelCodec((12, 2), 23)
  perm = label_order.balanced_clustering_permutation(x[:23], codec, seed=0,
                                                     max_centres=2)
  np.testing.assert_array_equal(np.sort(perm), np.arange(23))
  codec.with_permutation(perm)


@pytest.mark.parametrize("radices,c", [((7, 6), 40), ((5, 4, 3), 53), ((9,), 9)])
def test_clustering_group_sizes_match_the_codec_and_is_deterministic(radices, c):
  x = np.random.default_rng(c).normal(size=(c, 5))
  codec = LabelCodec(radices, c)
  perm = label_order.balanced_clustering_permutation(x, codec, seed=3)
  np.testing.assert_array_equal(np.sort(perm), np.arange(c))  # a bijection
  codec.with_permutation(perm)  # and a valid codec permutation
  np.testing.assert_array_equal(
      perm, label_order.balanced_clustering_permutation(x, codec, seed=3))
  if len(radices) > 1:  # one head: nothing to cluster, codes stay labels
    assert not np.array_equal(
        perm, label_order.balanced_clustering_permutation(x, codec, seed=4))
  else:
    np.testing.assert_array_equal(perm, np.arange(c))


def test_balanced_kmeans_sizes_exact_and_errors():
  x = np.random.default_rng(0).normal(size=(23, 4))
  sizes = [10, 10, 3]
  assign = label_order.balanced_kmeans(x, sizes, seed=0)
  np.testing.assert_array_equal(np.bincount(assign, minlength=3), sizes)
  with pytest.raises(ValueError, match="sum to the number of points 23"):
    label_order.balanced_kmeans(x, [10, 10], seed=0)
  with pytest.raises(ValueError, match=r"centroids must be \[num_classes=12"):
    label_order.balanced_clustering_permutation(x, LabelCodec((3, 4), 12))


def test_label_centroids_against_numpy():
  rng = np.random.default_rng(0)
  X = sp.random(30, 7, density=0.4, random_state=1, format="csr")
  Yd = (rng.random((30, 4)) < 0.3).astype(float)
  Yd[:, 3] = 0  # a label never seen
  Y = sp.csr_matrix(Yd)
  cent = label_order.label_centroids(X, Y)
  Xd = X.toarray()
  Xn = Xd / np.maximum(np.linalg.norm(Xd, axis=1, keepdims=True), 1e-12)
  want = (Yd.T @ Xn) / np.maximum(Yd.sum(0), 1)[:, None]
  np.testing.assert_allclose(cent, want, rtol=1e-5, atol=1e-6)
  ids = np.array([0, 1, 2, 0, 1, 3, 0, 1])
  tok = label_order.token_label_centroids(ids, 2, 4, dim=0)
  # Label 0 follows contexts (1, 2) and (1, 3); each context normalised.
  np.testing.assert_allclose(tok[0], [0, 1, 0.5, 0.5] / np.sqrt(2), rtol=1e-6)


def test_sequence_label_centroids_hand_case():
  # Sequences [0, 1, 2] and [2, 3]; window 1: item 2's neighbours are 1 (in
  # the first) and 3 (in the second), never 0; item 0's only neighbour is 1.
  values, offsets = np.array([0, 1, 2, 2, 3]), np.array([0, 3, 5])
  cent = label_order.sequence_label_centroids(values, offsets, 5, window=1,
                                              dim=0)
  np.testing.assert_allclose(cent, [[0, 1, 0, 0, 0], [.5, 0, .5, 0, 0],
                                    [0, .5, 0, .5, 0], [0, 0, 1, 0, 0],
                                    [0, 0, 0, 0, 0]], atol=1e-7)
  # Window 2 adds the pair (0, 2) of the first sequence only.
  cent2 = label_order.sequence_label_centroids(values, offsets, 5, window=2,
                                               dim=0)
  np.testing.assert_allclose(cent2[0], [0, .5, .5, 0, 0], atol=1e-7)
  np.testing.assert_allclose(cent2[2], [1 / 3, 1 / 3, 0, 1 / 3, 0], atol=1e-7)
  with pytest.raises(ValueError, match="window must be >= 1"):
    label_order.sequence_label_centroids(values, offsets, 5, window=0)


def test_label_permutation_orders():
  codec = LabelCodec((4, 5), 20)
  assert label_order.label_permutation("given", codec) is None
  r1 = label_order.label_permutation("random", codec, seed=1)
  np.testing.assert_array_equal(r1, np.random.default_rng(1).permutation(20))
  with pytest.raises(ValueError, match="needs label centroids"):
    label_order.label_permutation("clustered", codec)
  with pytest.raises(ValueError, match="unknown label order 'x'"):
    label_order.label_permutation("x", codec)


def test_registry_make_codec_label_orders():
  x, truth = separated_centroids(4, 5, seed=2)
  X = sp.csr_matrix(np.abs(x))
  Y = sp.csr_matrix((np.ones(20), (np.arange(20), np.arange(20))))
  from mhe_jax.data import formats, pipeline  # pylint: disable=import-outside-toplevel
  source = pipeline.SparseSource(formats.XMCData(X, Y, None))
  data = datasets.Dataset(train=source, eval=source, num_classes=20,
                          multilabel=True, input_keys=(), input_size=8,
                          label_counts=np.ones(20), num_train=20)
  cfg = ml_collections.ConfigDict(dict(radices=(4, 5), num_heads=2,
                                       label_order="given", label_order_seed=0))
  assert not registry.make_codec(cfg, 20).permuted
  cfg.label_order = "random"
  np.testing.assert_array_equal(registry.make_codec(cfg, 20).permutation,
                                np.random.default_rng(0).permutation(20))
  cfg.label_order = "clustered"
  with pytest.raises(ValueError, match="needs the training data"):
    registry.make_codec(cfg, 20)
  codec = registry.make_codec(cfg, 20, data)
  for d in range(4):
    assert len(set(truth[codec.permutation // 5 == d])) == 1
  assert codec == registry.make_codec(cfg, 20, data)  # deterministic
  cfg.label_order = "sorted"
  with pytest.raises(ValueError, match="config.head.label_order='sorted'"):
    registry.make_codec(cfg, 20)


def test_permutation_tables_become_arguments_under_jax_switch(tmp_path):
  # README / LabelCodec: with JAX_USE_SIMPLIFIED_JAXPR_CONSTANTS=1 the
  # permutation tables are executable arguments, not program constants; the
  # results stay those of brute force. A fresh process: JAX reads it at start.
  script = tmp_path / "probe.py"
  script.write_text(
      "import json, jax, jax.numpy as jnp, numpy as np\n"
      "from mhe_jax import LabelCodec, ops\n"
      "c = 50_000\n"
      "perm = np.random.default_rng(0).permutation(c)\n"
      "codec = LabelCodec.balanced(c, 2).with_permutation(perm)\n"
      "rng = np.random.default_rng(1)\n"
      "logits = [jnp.asarray(rng.normal(size=(3, r)), jnp.float32)\n"
      "          for r in codec.radices]\n"
      "fn = jax.jit(lambda l: ops.product_topk(l, 4, codec))\n"
      "lowered = fn.lower(logits)\n"
      "_, labels = fn(logits)\n"
      "print(json.dumps({'text': len(lowered.as_text()),\n"
      "  'args': lowered.compile().memory_analysis().argument_size_in_bytes,\n"
      "  'labels': np.asarray(labels).tolist(),\n"
      "  'logits': [np.asarray(l).tolist() for l in logits]}))\n")
  out = {}
  for value in ("0", "1"):
    env = {**os.environ, "JAX_USE_SIMPLIFIED_JAXPR_CONSTANTS": value,
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(script)], env=env,
                          capture_output=True, text=True, check=True)
    out[value] = json.loads(proc.stdout.strip().splitlines()[-1])
  table_bytes = 4 * 50_000
  assert out["0"]["text"] > table_bytes > 5 * out["1"]["text"]
  assert out["1"]["args"] > table_bytes > out["0"]["args"]
  perm = np.random.default_rng(0).permutation(50_000)
  _, ref = brute_topk(brute_scores(out["1"]["logits"],
                                   LabelCodec.balanced(50_000, 2).radices,
                                   perm), 4)
  np.testing.assert_array_equal(out["0"]["labels"], ref)
  np.testing.assert_array_equal(out["1"]["labels"], ref)
