"""The heads' shared contract (mhe_jax.nn.heads), checked for every head.

(a) ``per_example_loss`` against a numpy reference of each head's loss, and
``loss`` as its masked mean under ``where``; (b) a head with
``dtype=jnp.bfloat16`` against the float32 head with the same parameters;
(c) ``param_dtype``; (d) the shared constructor keywords; and the documented
meaning of ``head(x)`` and of the ``topk`` scores.
"""

import functools
import inspect

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mhe_jax import LabelCodec
from mhe_jax.nn import heads
from mhe_jax.ops import cascade

D = 16
# Capacity 54 > C = 50: invalid codes to mask. MHS: 9 groups of s = 6
# classes (the last one with 4 padding columns); MHC: n = (9, 17, 50).
CODEC = LabelCodec((9, 2, 3), 50)
C = CODEC.num_classes
FULL_BEAM = cascade.valid_prefix_counts(CODEC)[-2]  # MHC top-k is exact
NAMES = ("vanilla", "mhp", "mhc", "mhs")
CLASSES = {"vanilla": heads.VanillaHead, "mhp": heads.MHPHead,
           "mhc": heads.MHCHead, "mhs": heads.MHSHead}
LABELS = np.array([3, 49, -1, 20, 7, 36])
WHERE = np.array([True, True, True, False, True, True])
LABEL_SETS = np.array([[3, 49, -1], [-1, -1, -1], [20, 21, 20], [0, -1, -1],
                       [45, 12, 30], [8, -1, -1]])


def make_head(name, *, multilabel=False, seed=0, **kw):
  """A head of each kind over C = 50 classes; ``kw`` are contract keywords."""
  rngs = nnx.Rngs(seed)
  if name == "vanilla":
    return heads.VanillaHead(D, C, multilabel=multilabel, rngs=rngs, **kw)
  if name == "mhp":
    return heads.MHPHead(D, CODEC, multilabel=multilabel, rngs=rngs, **kw)
  if name == "mhc":
    return heads.MHCHead(D, CODEC, beam=FULL_BEAM, hidden=8,
                         multilabel=multilabel, rngs=rngs, **kw)
  return heads.MHSHead(D, CODEC, 2, multilabel=multilabel, rngs=rngs, **kw)


def random_biases(head, seed=7):
  """Non-zero biases, so that the references check them too."""
  keys = iter(jax.random.split(jax.random.key(seed), 64))
  for path, p in nnx.iter_graph(head):
    if isinstance(p, nnx.Param) and str(path[-1]).endswith("bias"):
      p[...] = jax.random.normal(next(keys), p.shape, p.dtype)
  return head


def features(batch, seed=0, scale=1.):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, D))
                     * scale, jnp.float32)


@functools.partial(nnx.jit, static_argnums=4)
def run(head, x, labels, where, k, rng=None):
  return dict(loss=head.loss(x, labels, rng=rng, where=where),
              loss_all=head.loss(x, labels, rng=rng),
              per_example=head.per_example_loss(x, labels, rng=rng),
              topk=head.topk(x, k))


# ------------------------------------------------------ numpy references
def np64(a):
  return np.asarray(a, np.float64)


def np_log_softmax(z, valid=None):
  z = np64(z)
  if valid is not None:
    z = np.where(valid, z, -np.inf)
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def np_digits(y):
  """Most significant first, as the paper's codec: ``(y // s_h) % r_h``."""
  return [(y // s) % r for r, s in zip(CODEC.radices, CODEC.strides)]


def np_vanilla(head, x, y):
  z = np64(x) @ np64(head.kernel[...]) + np64(head.bias[...])
  return -np_log_softmax(z)[y]


def np_mhp(head, x, y):
  z = np64(x) @ np64(head.kernel[...]) + np64(head.bias[...])
  start, total = 0, 0.
  for r, d in zip(CODEC.radices, np_digits(y)):
    total -= np_log_softmax(z[start:start + r])[d]
    start += r
  return total


def np_mhc(head, x, y):
  """Gated cascade: level 1 a linear layer, level h ``(P_h x * e_h[p]) W_h``;
  log-softmax over the children whose code is a valid prefix."""
  x = np64(x)
  counts = cascade.valid_prefix_counts(CODEC)
  total = 0.
  for h, (r, s, d) in enumerate(zip(CODEC.radices, CODEC.strides,
                                    np_digits(y))):
    prefix = y // (s * r)
    if h == 0:
      z = x @ np64(head.first.kernel[...]) + np64(head.first.bias[...])
    else:
      proj, out = head.proj[h - 1], head.out[h - 1]
      u = x @ np64(proj.kernel[...]) + np64(proj.bias[...])
      e = np64(head.prefix_embed[h - 1].embedding[...])[prefix]
      z = (u * e) @ np64(out.kernel[...]) + np64(out.bias[...])
    valid = prefix * r + np.arange(r) < counts[h]
    total -= np_log_softmax(z, valid)[d]
  return total


def np_mhs(head, x, y, group_ids):
  """Softmax CE over the sampled groups' valid classes."""
  s = head.group_size
  cols = [g * s + p for g in np.asarray(group_ids) for p in range(s)]
  cols = [c for c in cols if c < C]
  z = np64(x) @ np64(head.kernel[...])[:, cols] + np64(head.bias[...])[cols]
  return -np_log_softmax(z)[cols.index(y)]


# ------------------------------------------------------------------- (a)
@pytest.mark.parametrize("name", NAMES)
def test_per_example_loss_equals_numpy_and_loss_is_its_masked_mean(name):
  head = random_biases(make_head(name))
  x = features(len(LABELS), seed=1)
  rng = jax.random.key(5) if name == "mhs" else None
  out = run(head, x, LABELS, WHERE, 3, rng)
  if name == "mhs":
    _, group_ids, _ = head.sampled_logits(x, LABELS, rng)
    assert len(group_ids) < head.num_groups  # a real sample, not all groups
    ref = lambda xb, y: np_mhs(head, xb, y, group_ids)
  else:
    ref = functools.partial(
        {"vanilla": np_vanilla, "mhp": np_mhp, "mhc": np_mhc}[name], head)
  expected = np.array([ref(x[b], y) if y >= 0 else 0.
                       for b, y in enumerate(LABELS)])
  per = out["per_example"]
  assert per.shape == (len(LABELS),) and per.dtype == jnp.float32
  np.testing.assert_allclose(per, expected, rtol=1e-5, atol=1e-6)
  counted = WHERE & (LABELS >= 0)  # the -1 example never counts
  np.testing.assert_allclose(
      out["loss"], (expected * counted).sum() / counted.sum(), rtol=1e-5)
  np.testing.assert_allclose(
      out["loss_all"], expected.sum() / (LABELS >= 0).sum(), rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_multilabel_loss_is_the_masked_mean_of_per_example(name):
  head = random_biases(make_head(name, multilabel=True))
  x = features(len(LABEL_SETS), seed=2)
  rng = jax.random.key(6)  # used by MHS alone
  out = run(head, x, LABEL_SETS, WHERE, 3, rng)
  per = np.asarray(out["per_example"], np.float64)
  assert per.shape == (len(LABEL_SETS),) and np.isfinite(per).all()
  has_label = (LABEL_SETS >= 0).any(-1)
  # Every head counts a row without labels, except MHC (documented).
  counted = WHERE & (has_label if name == "mhc" else True)
  if name == "mhc":
    assert per[~has_label].tolist() == [0.]
  else:
    assert per[~has_label][0] > 0  # BCE pushes every class down
  np.testing.assert_allclose(out["loss"],
                             (per * counted).sum() / counted.sum(), rtol=1e-5)


def test_mhs_per_example_loss_uses_the_rng_sample():
  head = random_biases(make_head("mhs"))
  x = features(len(LABELS), seed=1)
  sample = lambda key: set(np.asarray(  # pylint: disable=g-long-lambda
      head.sampled_logits(x, LABELS, key)[1]).tolist())
  # 5 true groups and 1 of the 4 others: the first key with another pick.
  k1 = jax.random.key(1)
  k2 = next(jax.random.key(i) for i in range(2, 40)
            if sample(jax.random.key(i)) != sample(k1))
  ids2 = sorted(sample(k2))
  per1 = run(head, x, LABELS, WHERE, 3, k1)["per_example"]
  per2 = run(head, x, LABELS, WHERE, 3, k2)["per_example"]
  assert not np.allclose(per1, per2)
  expected = [np_mhs(head, x[b], y, ids2) if y >= 0 else 0.
              for b, y in enumerate(LABELS)]
  np.testing.assert_allclose(per2, expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------- (b)
# bfloat16 keeps 8 significant bits: logits of |x| ~ 3, d = 16 move by
# ~0.02-0.05 (measured on these heads), so the top-K labels must agree when
# the float32 scores are MARGIN apart, and losses stay within BF16_LOSS_RTOL
# (measured: mean loss <= 5e-3, per-example <= 1.5e-2 relative).
MARGIN = 0.25  # float32 score gap required around each of the top K
K = 3
BF16_LOSS_RTOL = 2e-2


def separated_rows(scores_bn, margin, count):
  """Rows whose K + 1 best scores are > margin apart, the first ``count``."""
  gaps_bk = -np.diff(np.asarray(scores_bn), axis=-1)
  rows = np.flatnonzero(gaps_bk.min(-1) > margin)
  assert len(rows) >= count, f"only {len(rows)} separated rows"
  return rows[:count]


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_compute_matches_float32(name):
  f32 = random_biases(make_head(name))
  bf16 = random_biases(make_head(name, dtype=jnp.bfloat16))
  for a, b in zip(jax.tree.leaves(nnx.state(f32, nnx.Param)),
                  jax.tree.leaves(nnx.state(bf16, nnx.Param))):
    np.testing.assert_array_equal(a, b)  # the same parameters
    assert a.dtype == jnp.float32
  # Inputs whose float32 top-(K+1) scores are well separated.
  pool = features(256, seed=3, scale=3.)
  first = nnx.jit(lambda h, x: h.topk(x, K + 1))
  rows = separated_rows(first(f32, pool)[0], MARGIN, 8)
  x = pool[rows]
  labels = np.array(first(f32, x)[1][:, 0])  # plausible, varied labels
  labels[1] = -1
  rng = jax.random.key(4)  # MHS: the same sample in both
  out32 = run(f32, x, labels, None, K + 1, rng)
  out16 = run(bf16, x, labels, None, K + 1, rng)
  gaps = -np.diff(np.asarray(out32["topk"][0]), axis=-1)
  assert gaps.min() > MARGIN  # the separation the label check relies on
  for key in ("loss", "per_example"):
    assert out16[key].dtype == jnp.float32
  rel = abs(float(out16["loss"]) / float(out32["loss"]) - 1)
  assert rel < BF16_LOSS_RTOL, rel
  np.testing.assert_allclose(out16["per_example"], out32["per_example"],
                             rtol=BF16_LOSS_RTOL, atol=1e-2)
  # The matmuls did run in bfloat16: the losses are close, not equal.
  assert not np.array_equal(out16["per_example"], out32["per_example"])
  scores16, labels16 = out16["topk"]
  assert scores16.dtype == jnp.float32
  np.testing.assert_array_equal(labels16[:, :K], out32["topk"][1][:, :K])
  np.testing.assert_allclose(scores16, out32["topk"][0], atol=MARGIN / 2)


# ------------------------------------------------------------------- (c)
@pytest.mark.parametrize("name", NAMES)
def test_param_dtype_bfloat16(name):
  head = make_head(name, param_dtype=jnp.bfloat16)
  params = jax.tree.leaves(nnx.state(head, nnx.Param))
  assert params and all(p.dtype == jnp.bfloat16 for p in params)
  out = run(head, features(len(LABELS), seed=1), LABELS, WHERE, 3,
            jax.random.key(0))
  assert out["loss"].dtype == jnp.float32 and np.isfinite(out["loss"])
  assert out["per_example"].dtype == jnp.float32
  assert out["topk"][0].dtype == jnp.float32
  assert out["topk"][1].dtype == jnp.int32


# ------------------------------------------------------------------- (d)
CONTRACT_KEYWORDS = {"dtype": None, "param_dtype": jnp.float32,
                     "kernel_init": None, "bias_init": None, "rngs": None}


@pytest.mark.parametrize("name", NAMES)
def test_constructor_keywords(name):
  sig = inspect.signature(CLASSES[name].__init__).parameters
  for key, default in CONTRACT_KEYWORDS.items():
    assert key in sig, key
    assert sig[key].kind == inspect.Parameter.KEYWORD_ONLY, key
    if key in ("dtype", "param_dtype"):
      assert sig[key].default is default, key
  assert sig["rngs"].default is inspect.Parameter.empty
  for method in ("loss", "per_example_loss"):
    params = inspect.signature(getattr(CLASSES[name], method)).parameters
    assert params["rng"].kind == inspect.Parameter.KEYWORD_ONLY
    assert params["rng"].default is None


@pytest.mark.parametrize("name", NAMES)
def test_initialisers_are_used(name):
  head = make_head(name, kernel_init=nnx.initializers.constant(0.125),
                   bias_init=nnx.initializers.constant(-0.5))
  kernels = biases = 0
  for path, p in nnx.iter_graph(head):
    if not isinstance(p, nnx.Param):
      continue
    value = np.asarray(p[...])
    if path[-1] == "kernel":
      kernels += 1
      assert (value == 0.125).all(), path
    elif path[-1] == "bias":
      biases += 1
      if name == "mhs":  # C label columns, then padding at 0
        assert (value[:C] == -0.5).all() and (value[C:] == 0).all()
      else:
        assert (value == -0.5).all(), path
  assert kernels and kernels == biases


# ------------------------------------------------ outputs and scores
@pytest.mark.parametrize("name", NAMES)
def test_outputs_and_topk_scores_mean_what_the_docs_say(name):
  head = random_biases(make_head(name))
  x = features(4, seed=8, scale=2.)
  out, (scores, labels) = nnx.jit(
      lambda h, x: (h(x), h.topk(x, C)))(head, x)
  scores, labels = np.asarray(scores), np.asarray(labels)
  assert labels.dtype == np.int32 and scores.dtype == np.float32
  assert (np.diff(scores, axis=-1) <= 0).all()  # descending
  assert (np.sort(labels, -1) == np.arange(C)).all()  # every label once
  if name == "vanilla":  # the logits
    assert out.shape == (4, C)
    np.testing.assert_allclose(scores, np.take_along_axis(out, labels, -1),
                               rtol=1e-5, atol=1e-6)
    return
  if name == "mhs":  # log_softmax of the full-classifier logits
    assert out.shape == (4, C)
    np.testing.assert_allclose(
        scores, np.take_along_axis(np_log_softmax(out), labels, -1),
        rtol=1e-5, atol=1e-5)
  elif name == "mhp":  # the H per-head logits
    assert [z.shape for z in out] == [(4, r) for r in CODEC.radices]
  else:  # MHC: the level-1 logits
    assert out.shape == (4, CODEC.radices[0])
  # Log-probabilities of a distribution over the C labels; MHP's product
  # of the heads' softmaxes also puts mass on the codes >= C, not
  # renormalised away.
  mass = np.exp(np64(scores)).sum(-1)
  if name == "mhp":
    mass += [sum(np.exp(-np_mhp(head, x[b], code))
                 for code in range(C, CODEC.capacity)) for b in range(4)]
    assert CODEC.capacity > C
  np.testing.assert_allclose(mass, 1., rtol=1e-5)
  ref = {"mhp": np_mhp, "mhc": np_mhc}.get(name)
  for b in range(4 if ref is not None else 0):
    np.testing.assert_allclose(
        scores[b], [-ref(head, x[b], int(y)) for y in labels[b]],
        rtol=1e-5, atol=1e-5)
