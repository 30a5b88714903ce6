"""ops.losses against numpy references, plus gradient checks."""

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from mhe_jax import LabelCodec
from mhe_jax.ops import losses
from mhe_jax.ops import product_log_probs


def np_log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_softmax_cross_entropy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 7)).astype(np.float32)
  labels = np.array([0, 6, -1, 3, 2])
  where = np.array([True, True, True, True, False])
  out = losses.softmax_cross_entropy(logits, labels, where=where)
  expected = -np_log_softmax(logits)[np.arange(5), np.maximum(labels, 0)]
  expected[2] = expected[4] = 0.
  np.testing.assert_allclose(out, expected, rtol=1e-5)
  check_grads(jax.jit(lambda z: losses.softmax_cross_entropy(z, labels).sum()),
              (jnp.asarray(logits),), order=1, modes=["rev"], eps=1e-2)


def test_multi_head_ce_is_minus_product_log_probs():
  codec = LabelCodec((4, 3, 5), 50)
  rng = np.random.default_rng(1)
  logits = [jnp.asarray(rng.normal(size=(6, r)), jnp.float32)
            for r in codec.radices]
  labels = rng.integers(0, 50, 6)
  out = losses.multi_head_softmax_cross_entropy(logits, labels, codec)
  np.testing.assert_allclose(out, -product_log_probs(logits, labels, codec),
                             rtol=1e-5)
  padded = labels.copy()
  padded[1] = -1
  out = losses.multi_head_softmax_cross_entropy(logits, padded, codec)
  assert out[1] == 0.
  check_grads(
      jax.jit(lambda *z: losses.multi_head_softmax_cross_entropy(
          z, labels, codec).sum()),
      tuple(logits), order=1, modes=["rev"], eps=1e-2)


def test_sigmoid_bce():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(4, 9)).astype(np.float32) * 3
  targets = (rng.random((4, 9)) < 0.3).astype(np.float32)
  out = losses.sigmoid_binary_cross_entropy(logits, targets)
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  expected = -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).sum(-1)
  np.testing.assert_allclose(out, expected, rtol=1e-5)
  out = losses.sigmoid_binary_cross_entropy(logits, targets,
                                            where=np.array([1, 0, 1, 1], bool))
  assert out[1] == 0. and out[0] > 0
  check_grads(jax.jit(lambda z: losses.sigmoid_binary_cross_entropy(z, targets).sum()),
              (jnp.asarray(logits),), order=1, modes=["rev"], eps=1e-2)


def np_psl(scores, positives, picked):
  out = []
  for s, pos, pick in zip(scores, positives, picked):
    terms = []
    for p in np.flatnonzero(pick & pos):
      pool = np.concatenate([[s[p]], s[~pos]])
      terms.append(np.log(np.exp(pool - pool.max()).sum()) + pool.max() - s[p])
    out.append(np.mean(terms) if terms else 0.)
  return np.array(out)


def test_pick_some_labels_loss():
  rng = np.random.default_rng(3)
  scores = rng.normal(size=(6, 10)).astype(np.float32) * 2
  positives = rng.random((6, 10)) < 0.3
  positives[0] = False  # no positives: loss 0
  positives[1] = True   # no negatives: log(exp(s_p)) - s_p = 0
  picked = positives & (rng.random((6, 10)) < 0.7)
  out = losses.pick_some_labels_loss(scores, positives, picked)
  np.testing.assert_allclose(out, np_psl(scores, positives, picked),
                             rtol=1e-5, atol=1e-6)
  where = np.ones(6, bool)
  where[2] = False
  assert losses.pick_some_labels_loss(scores, positives, picked,
                                      where=where)[2] == 0.
  check_grads(
      jax.jit(lambda s: losses.pick_some_labels_loss(s, positives, picked).sum()),
      (jnp.asarray(scores),), order=1, modes=["rev"], eps=1e-2)


def test_pick_some_labels():
  labels = jnp.array([[4, 9, 2, -1, -1], [7, -1, -1, -1, -1], [-1] * 5,
                      [1, 2, 3, 5, 8]])
  picks = np.asarray(losses.pick_some_labels(labels, 3, jax.random.key(0)))
  assert picks.shape == (4, 3)
  for row, pick in zip(np.asarray(labels), picks):
    true = set(row[row >= 0].tolist())
    got = [p for p in pick.tolist() if p >= 0]
    assert len(got) == len(set(got)) == min(3, len(true))
    assert set(got) <= true
  again = losses.pick_some_labels(labels, 3, jax.random.key(0))
  np.testing.assert_array_equal(picks, again)
  # Uniform: over many keys, each of row 3's five labels is picked ~3/5 times.
  keys = jax.random.split(jax.random.key(5), 200)
  many = jax.vmap(lambda key: losses.pick_some_labels(labels[3:], 3, key))(keys)
  counts = np.bincount(np.asarray(many).ravel(), minlength=9)
  np.testing.assert_allclose(counts[[1, 2, 3, 5, 8]] / 200, 0.6, atol=0.12)
  wide = losses.pick_some_labels(labels, 7, jax.random.key(1))
  assert wide.shape == (4, 7)


@pytest.mark.parametrize("fn", ["softmax_cross_entropy"])
def test_jit_matches_eager(fn):
  logits = jnp.asarray(np.random.default_rng(4).normal(size=(3, 5)),
                       jnp.float32)
  labels = jnp.array([1, -1, 4])
  f = getattr(losses, fn)
  np.testing.assert_allclose(jax.jit(f)(logits, labels), f(logits, labels))
