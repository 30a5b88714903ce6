"""product_topk / product_log_probs / multilabel_digit_targets vs numpy."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mhe_jax import LabelCodec
from mhe_jax.ops import multilabel_digit_targets
from mhe_jax.ops import product_log_probs
from mhe_jax.ops import product_topk


def np_log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def brute_scores(head_logits, codec):
  """All C scores [B, C], summed over heads left to right in float32."""
  lps = [np.asarray(jax.nn.log_softmax(jnp.asarray(z, jnp.float32), -1))
         for z in head_logits]
  digits = np.array(np.unravel_index(np.arange(codec.num_classes),
                                     codec.radices)).T  # [C, H]
  scores = lps[0][:, digits[:, 0]]
  for h in range(1, codec.num_heads):
    scores = scores + lps[h][:, digits[:, h]]
  return scores


def random_logits(rng, codec, batch, ties=False):
  if ties:  # few distinct values: many equal scores
    return [jnp.asarray(rng.integers(0, 3, (batch, r)), jnp.float32)
            for r in codec.radices]
  return [jnp.asarray(rng.normal(size=(batch, r)) * 2, jnp.float32)
          for r in codec.radices]


CASES = [  # (radices, num_classes): 1-4 heads, full and padded codes
    ((11,), 9), ((3, 4), 12), ((7, 7), 43),
    ((4, 3, 5), 60), ((4, 3, 5), 31), ((6, 5, 4), 101),
    ((2, 3, 2, 4), 29), ((3, 3, 3, 3), 55),
]


@pytest.mark.parametrize("radices,num_classes", CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_product_topk_equals_brute_force(radices, num_classes, ties):
  codec = LabelCodec(radices, num_classes)
  rng = np.random.default_rng(num_classes * 7 + ties)
  logits = random_logits(rng, codec, batch=5, ties=ties)
  full = brute_scores(logits, codec)
  for k in sorted({1, 2, 5, max(radices) + 1, num_classes}):
    if k > num_classes:
      continue
    scores, labels = product_topk(logits, k, codec)
    chex.assert_shape((scores, labels), (5, k))
    assert labels.dtype == jnp.int32
    scores, labels = np.asarray(scores), np.asarray(labels)
    order = np.argsort(-full, axis=1, kind="stable")[:, :k]
    # The k best scores, exactly, and each returned label really has its score.
    np.testing.assert_array_equal(scores, np.take_along_axis(full, order, 1))
    np.testing.assert_array_equal(np.take_along_axis(full, labels, 1), scores)
    assert (labels >= 0).all() and (labels < num_classes).all()
    for row_labels, row_scores, row_order in zip(labels, scores, order):
      assert len(set(row_labels)) == k
      # Labels strictly above the k-th score are exactly the brute force's.
      above = row_scores > row_scores[-1]
      np.testing.assert_array_equal(row_labels[above], row_order[above])
      # Within equal scores, smaller labels first.
      same = row_scores[1:] == row_scores[:-1]
      assert (row_labels[1:][same] > row_labels[:-1][same]).all()
    if not ties:  # distinct scores: identical to a stable sort
      np.testing.assert_array_equal(labels, order)


def test_exact_ties_go_to_smaller_labels():
  codec = LabelCodec((4, 3, 5), 50)
  # Every label scores the same: a stable sort returns 0..k-1.
  logits = [jnp.zeros((2, r)) for r in codec.radices]
  scores, labels = product_topk(logits, 7, codec)
  np.testing.assert_array_equal(labels, np.tile(np.arange(7), (2, 1)))
  np.testing.assert_allclose(scores, -math.log(60), rtol=1e-6)
  # Two equal maxima in head 1 (digits 0 and 2) and head 3 (digits 1 and 4).
  z = [jnp.array([[5., 0, 5, 0]]), jnp.array([[0., 0, 0]]),
       jnp.array([[0., 3, 0, 0, 3]])]
  _, labels = product_topk(z, 6, codec)
  np.testing.assert_array_equal(labels, [[1, 4, 6, 9, 11, 14]])


def test_never_returns_codes_beyond_num_classes():
  codec = LabelCodec((10, 10), 31)  # codes 31..99 are invalid
  # Logits favouring the invalid region as strongly as possible.
  z0 = jnp.zeros((3, 10)).at[:, 9].set(50.).at[:, 3].set(10.)
  z1 = jnp.zeros((3, 10)).at[:, 9].set(50.)
  scores, labels = product_topk([z0, z1], 31, codec)
  assert np.asarray(labels).max() < 31
  np.testing.assert_array_equal(np.sort(labels, axis=1),
                                np.tile(np.arange(31), (3, 1)))
  assert np.all(np.diff(np.asarray(scores), axis=1) <= 0)
  _, top1 = product_topk([z0, z1], 1, codec)
  # Unconstrained, digits (9, 9) would win; the best valid code is (0, 9) = 9,
  # since (3, 9) = 39 is invalid and (3, 0) = 30 pays 50 nats in head 2.
  np.testing.assert_array_equal(top1, [[9]] * 3)


@pytest.mark.parametrize("radices,num_classes", CASES)
def test_product_log_probs_equals_kronecker(radices, num_classes):
  codec = LabelCodec(radices, num_classes)
  rng = np.random.default_rng(1)
  logits = random_logits(rng, codec, batch=4)
  # Explicit Kronecker product of the per-head softmaxes, in float64.
  probs = np.ones((4, 1))
  for z in logits:
    p = np.exp(np_log_softmax(z))
    probs = np.einsum("bi,bj->bij", probs, p).reshape(4, -1)
  kron = np.log(probs[:, :num_classes])
  labels = rng.integers(0, num_classes, (4, 3))
  labels[0, 2] = -1
  out = np.asarray(product_log_probs(logits, labels, codec))
  expected = np.take_along_axis(kron, np.maximum(labels, 0), 1)
  assert out[0, 2] == -np.inf
  mask = labels >= 0
  np.testing.assert_allclose(out[mask], expected[mask], rtol=1e-5, atol=1e-5)
  single = product_log_probs(logits, labels[:, 0], codec)
  np.testing.assert_allclose(single, out[:, 0], rtol=1e-6)


def test_product_log_probs_out_of_range():
  codec = LabelCodec((3, 4), 10)
  logits = [jnp.zeros((2, 3)), jnp.zeros((2, 4))]
  with pytest.raises(ValueError, match=r"got 10 at index \(1,\)"):
    product_log_probs(logits, np.array([0, 10]), codec)
  out = jax.jit(product_log_probs, static_argnums=2)(
      logits, jnp.array([0, 10]), codec)
  assert np.isfinite(out[0]) and out[1] == -np.inf


def test_multilabel_digit_targets():
  codec = LabelCodec((4, 3, 5), 50)
  rng = np.random.default_rng(3)
  labels = rng.integers(-1, 50, (6, 4))
  labels[2] = -1  # an example with no labels
  targets = multilabel_digit_targets(labels, codec)
  assert [t.shape for t in targets] == [(6, 4), (6, 3), (6, 5)]
  for b in range(6):
    for h, r in enumerate(codec.radices):
      expected = np.zeros(r)
      for y in labels[b]:
        if y >= 0:
          expected[(y // codec.strides[h]) % r] = 1
      np.testing.assert_array_equal(targets[h][b], expected)
  with pytest.raises(ValueError, match=r"\[B, L\]"):
    multilabel_digit_targets(labels[0], codec)


def test_argument_errors():
  codec = LabelCodec((3, 4), 10)
  logits = [jnp.zeros((2, 3)), jnp.zeros((2, 4))]
  with pytest.raises(ValueError, match=r"k must be an integer in \[1, 10\]"):
    product_topk(logits, 11, codec)
  with pytest.raises(ValueError, match=r"k must be"):
    product_topk(logits, 0, codec)
  # k that int() cannot take (found by tests/test_fuzz.py: was int()'s own
  # ValueError / OverflowError / TypeError, naming no argument).
  for bad in (float("nan"), math.inf, None, "2"):
    with pytest.raises(ValueError, match=r"k must be an integer"):
      product_topk(logits, bad, codec)
  with pytest.raises(ValueError, match=r"head_logits has 1 arrays"):
    product_topk(logits[:1], 2, codec)
  with pytest.raises(ValueError, match=r"head_logits\[1\] has shape \(2, 5\)"):
    product_topk([jnp.zeros((2, 3)), jnp.zeros((2, 5))], 2, codec)
  with pytest.raises(TypeError, match="codec.split"):
    product_topk(jnp.zeros((2, 7)), 2, codec)


def test_large_codec_runs_without_materialising():
  codec = LabelCodec.balanced(10**8, 2)
  rng = np.random.default_rng(0)
  logits = random_logits(rng, codec, batch=2)
  scores, labels = jax.jit(product_topk, static_argnums=(1, 2))(
      logits, 3, codec)
  lps = [np_log_softmax(z) for z in logits]
  best = [np.argsort(-lp, axis=1, kind="stable")[:, :2] for lp in lps]
  np.testing.assert_array_equal(labels[:, 0], best[0][:, 0] * 10**4 + best[1][:, 0])
  # Label 2 is the best of (2nd of head 0, 1st of head 1) and (1st, 2nd).
  cand = []
  for i, j in ((1, 0), (0, 1)):
    s = (np.take_along_axis(lps[0], best[0][:, i:i+1], 1) +
         np.take_along_axis(lps[1], best[1][:, j:j+1], 1))[:, 0]
    cand.append((s, best[0][:, i] * 10**4 + best[1][:, j]))
  second = np.where(cand[0][0] >= cand[1][0], cand[0][1], cand[1][1])
  np.testing.assert_array_equal(labels[:, 1], second)


def test_no_retrace_and_jit_vmap_eager_agree():
  codec = LabelCodec((4, 3, 5), 46)
  rng = np.random.default_rng(5)

  @functools.partial(jax.jit, static_argnums=1)
  @chex.assert_max_traces(n=1)
  def topk(logits, k):
    return product_topk(logits, k, codec)

  chex.clear_trace_counter()
  for _ in range(3):
    logits = random_logits(rng, codec, batch=6)
    eager = product_topk(logits, 5, codec)
    jitted = topk(logits, 5)
    vmapped = jax.vmap(lambda *z: product_topk(
        [x[None] for x in z], 5, codec))(*logits)
    vmapped = jax.tree.map(lambda x: x[:, 0], vmapped)
    chex.assert_trees_all_equal(eager, jitted, vmapped)


def test_batch_sharded_over_8_devices():
  assert jax.device_count() == 8
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
  codec = LabelCodec((4, 3, 5), 46)
  rng = np.random.default_rng(6)
  logits = random_logits(rng, codec, batch=16)
  labels = jnp.asarray(rng.integers(-1, 46, (16, 3)))
  sharding = NamedSharding(mesh, P("data"))
  logits_s = [jax.device_put(z, sharding) for z in logits]
  labels_s = jax.device_put(labels, sharding)
  f = jax.jit(lambda z, y: (product_topk(z, 7, codec),
                            product_log_probs(z, y, codec),
                            multilabel_digit_targets(y, codec)))
  sharded = f(logits_s, labels_s)
  unsharded = f(logits, labels)
  chex.assert_trees_all_equal(sharded, unsharded)
  assert sharded[0][1].sharding.spec[0] == "data"
