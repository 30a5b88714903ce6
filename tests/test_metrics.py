"""Tests for mhe_jax.metrics against napkinXC and hand-computed values."""

import functools
import math

import jax
import jax.numpy as jnp
from napkinxc import metrics as nxc
import numpy as np
import pytest

from mhe_jax import metrics

KS = (1, 2, 3, 5)
NUM_LABELS = 30


def _random_case(rng, batch=64, num_labels=NUM_LABELS, num_preds=5,
                 max_true=7, single_label=False):
  """Random top-k predictions and -1-padded truths.

  Includes rows without true labels, rows with fewer true labels than k,
  rows with fewer than num_preds predictions (trailing -1) and -1 padding at
  arbitrary positions of the true label rows. Predictions are duplicate-free
  and drawn partly from the true labels so that there are hits.
  """
  true = np.full((batch, 1 if single_label else max_true), -1, np.int32)
  pred = np.full((batch, num_preds), -1, np.int32)
  for b in range(batch):
    if single_label:
      n_true = int(rng.random() < 0.9)
    else:
      n_true = int(rng.integers(0, max_true + 1))
    labels = rng.choice(num_labels, n_true, replace=False)
    true[b, :n_true] = labels
    true[b] = rng.permutation(true[b])
    n_pred = (num_preds if rng.random() < 0.8
              else int(rng.integers(0, num_preds)))
    pool = np.unique(np.concatenate(
        [labels, rng.choice(num_labels, num_preds, replace=False)]))
    pred[b, :n_pred] = rng.permutation(pool)[:n_pred]
  if single_label:
    true = true[:, 0]
  return pred, true


def _random_inv_ps(rng, num_labels=NUM_LABELS):
  return metrics.inverse_propensity(rng.integers(0, 100, num_labels), 1000)


def _lists(labels):
  """-1-padded rows -> lists of labels, as napkinXC takes them."""
  labels = labels.reshape(labels.shape[0], -1)
  return [[int(l) for l in row if l >= 0] for row in labels]


def _napkinxc_metrics(pred, true, inv_ps, kmax):
  y_true, y_pred = _lists(true), _lists(pred)
  return {
      "P": nxc.precision_at_k(y_true, y_pred, k=kmax),
      "R": nxc.recall_at_k(y_true, y_pred, k=kmax),
      "nDCG": nxc.ndcg_at_k(y_true, y_pred, k=kmax),
      "acc": nxc.abandonment_at_k(y_true, y_pred, k=kmax),
      "PSP": nxc.psprecision_at_k(y_true, y_pred, inv_ps, k=kmax),
      "PSnDCG": nxc.psndcg_at_k(y_true, y_pred, inv_ps, k=kmax),
      "coverage": nxc.coverage_at_k(y_true, y_pred, k=kmax),
  }


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("single_label", [False, True])
def test_matches_napkinxc(seed, single_label):
  rng = np.random.default_rng(seed)
  pred, true = _random_case(rng, single_label=single_label)
  inv_ps = _random_inv_ps(rng)
  got = metrics.compute(pred, true, ks=KS, inv_propensity=inv_ps,
                        num_labels=NUM_LABELS)
  want = _napkinxc_metrics(pred, true, inv_ps, max(KS))
  assert len(got) == len(want) * len(KS)
  for name, values in want.items():
    for k in KS:
      np.testing.assert_allclose(got[f"{name}@{k}"], values[k - 1],
                                 rtol=1e-6, atol=1e-6, err_msg=f"{name}@{k}")


def test_case_has_the_edge_cases():
  pred, true = _random_case(np.random.default_rng(0))
  n_true = (true >= 0).sum(1)
  assert (n_true == 0).any() and ((n_true > 0) & (n_true < 5)).any()
  assert (pred[:, -1] < 0).any()
  assert (np.sort(true, 1) != true).any()  # -1 padding not only at the end.


def test_hand_computed():
  pred = np.array([[0, 1, 2], [3, 0, -1], [1, 2, 3]])
  true = np.array([[0, 2, -1], [1, -1, -1], [-1, -1, -1]])
  inv_ps = np.array([1.0, 2.0, 3.0, 4.0])
  got = metrics.compute(pred, true, ks=(1, 2, 3), inv_propensity=inv_ps,
                        num_labels=4)
  d2, d3 = 1 / math.log2(3), 1 / math.log2(4)
  # Row 0 hits at ranks 1 and 3 (|t| = 2), row 1 misses, row 2 has no labels.
  want = {
      "P@1": 1 / 3, "P@2": 1 / 6, "P@3": 2 / 9,
      "R@1": 1 / 6, "R@2": 1 / 6, "R@3": 1 / 3,
      "nDCG@1": 1 / 3, "nDCG@2": 1 / (1 + d2) / 3,
      "nDCG@3": (1 + d3) / (1 + d2) / 3,
      "acc@1": 1 / 3, "acc@2": 1 / 3, "acc@3": 1 / 3,
      # Gains: row 0 q=1 at rank 1, q=3 at rank 3. Best: row 0 [3, 1],
      # row 1 [2].
      "PSP@1": 1 / (3 + 2), "PSP@2": (1 / 2) / (4 / 2 + 2 / 2),
      "PSP@3": (4 / 3) / (4 / 3 + 2 / 3),
      "PSnDCG@1": 1 / (3 + 2),
      "PSnDCG@2": (1 / (1 + d2)) / ((3 + d2) / (1 + d2) + 2),
      "PSnDCG@3": ((1 + 3 * d3) / (1 + d2)) / ((3 + d2) / (1 + d2) + 2),
      # Distinct true labels {0, 1, 2}; correctly predicted {0}, then {0, 2}.
      "coverage@1": 1 / 3, "coverage@2": 1 / 3, "coverage@3": 2 / 3,
  }
  assert got.keys() == want.keys()
  for key, value in want.items():
    assert got[key] == pytest.approx(value, abs=1e-12), key


def test_accuracy_single_label_matches_numpy():
  rng = np.random.default_rng(1)
  pred = np.stack([rng.permutation(50)[:5] for _ in range(200)])
  true = np.where(rng.random(200) < 0.5, pred[:, 2], rng.integers(0, 50, 200))
  got = metrics.compute(pred, true, ks=(1, 5))
  for k in (1, 5):
    want = np.mean(np.any(pred[:, :k] == true[:, None], axis=1))
    assert got[f"acc@{k}"] == pytest.approx(want, abs=1e-12)
  # Single label: acc@1 == P@1 and R@k == acc@k.
  assert got["acc@1"] == pytest.approx(got["P@1"])
  assert got["R@5"] == pytest.approx(got["acc@5"])


@pytest.mark.parametrize("seed", range(3))
def test_merge_over_random_splits_with_masked_padding(seed):
  rng = np.random.default_rng(seed)
  pred, true = _random_case(rng, batch=57)
  inv_ps = _random_inv_ps(rng)
  kwargs = dict(ks=KS, inv_propensity=inv_ps, num_labels=NUM_LABELS)
  want = metrics.compute(pred, true, **kwargs)

  batch_size = 16
  cuts = np.cumsum(rng.integers(1, batch_size + 1, 57))
  cuts = cuts[cuts < 57]
  evaluator = metrics.XMCMetrics(**kwargs)
  merged = None
  for pred_b, true_b in zip(np.split(pred, cuts), np.split(true, cuts)):
    # Pad every batch to batch_size with junk rows (which would hit and add
    # new labels if counted) and mask them out.
    n_pad = batch_size - len(pred_b)
    junk_pred = np.argsort(rng.random((n_pad, NUM_LABELS)), axis=1)[:, :5]
    junk_true = np.full((n_pad, true.shape[1]), -1)
    junk_true[:, 0] = junk_pred[:, 0]
    mask = np.arange(batch_size) < len(pred_b)
    pred_p = np.concatenate([pred_b, junk_pred])
    true_p = np.concatenate([true_b, junk_true])
    stats = metrics.batch_stats(pred_p, true_p, mask=mask, **kwargs)
    merged = stats if merged is None else metrics.merge_stats(merged, stats)
    evaluator.update(pred_p, true_p, mask=mask)

  for got in (metrics.finalize(merged), evaluator.compute()):
    assert got.keys() == want.keys()
    for key, value in want.items():
      assert got[key] == pytest.approx(value, abs=1e-12), key
  assert merged["num_examples"] == 57


def test_masked_rows_count_nowhere():
  pred = np.array([[0, 1], [2, 3]])
  true = np.array([[0, -1], [2, 3]])
  got = metrics.compute(pred, true, ks=(1, 2), num_labels=4,
                        inv_propensity=np.ones(4),
                        mask=np.array([True, False]))
  want = metrics.compute(pred[:1], true[:1], ks=(1, 2), num_labels=4,
                         inv_propensity=np.ones(4))
  assert got == want
  assert got["coverage@2"] == 1.0  # Labels 2, 3 of the masked row unseen.


def test_jit_matches_numpy():
  rng = np.random.default_rng(3)
  pred, true = _random_case(rng)
  inv_ps = _random_inv_ps(rng)
  mask = rng.random(len(pred)) < 0.8
  ks = (1, 3)  # Fewer ks than elsewhere: compiling dominates this test.
  want = metrics.compute(pred, true, ks=ks, inv_propensity=inv_ps,
                         num_labels=NUM_LABELS, mask=mask)
  fn = jax.jit(functools.partial(metrics.batch_stats, ks=ks,
                                 num_labels=NUM_LABELS))
  stats = fn(jnp.asarray(pred), jnp.asarray(true),
             inv_propensity=jnp.asarray(inv_ps), mask=jnp.asarray(mask))
  assert all(isinstance(v, jax.Array) for v in stats.values())
  evaluator = metrics.XMCMetrics(ks, inv_propensity=inv_ps,
                                 num_labels=NUM_LABELS)
  evaluator.add(stats)
  evaluator.add(jax.tree.map(jnp.zeros_like, stats))
  got = evaluator.compute()
  assert got.keys() == want.keys()
  for key, value in want.items():
    assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_eager_jax_inputs_are_validated():
  pred = jnp.array([[0, 1], [1, 1]])
  with pytest.raises(ValueError, match="repeats a label in row 1"):
    metrics.batch_stats(pred, jnp.array([0, 1]), ks=(1,))


def test_propensity_matches_napkinxc():
  rng = np.random.default_rng(0)
  rates = rng.random(40) ** 3
  rates[:3] = 0.0  # Labels never seen in training.
  y_train = (rng.random((300, 40)) < rates).astype(np.float64)
  counts = y_train.sum(0).astype(np.int64)
  np.testing.assert_allclose(
      metrics.inverse_propensity(counts, 300),
      nxc.Jain_et_al_inverse_propensity(y_train), rtol=1e-12)
  np.testing.assert_allclose(
      metrics.propensity(counts, 300, A=0.6, B=2.6),
      nxc.Jain_et_al_propensity(y_train, A=0.6, B=2.6), rtol=1e-12)
  # The formula, literally.
  c = (math.log(300) - 1) * (2.6 + 1) ** 0.6
  np.testing.assert_allclose(
      metrics.propensity(counts, 300, A=0.6, B=2.6),
      1 / (1 + c * np.exp(-0.6 * np.log(counts + 2.6))), rtol=1e-12)


def test_zero_denominators_give_nan():
  got = metrics.compute(np.array([[0, 1]]), np.array([[-1, -1]]), ks=(1,),
                        inv_propensity=np.ones(3), num_labels=3)
  assert got["P@1"] == 0.0 and got["nDCG@1"] == 0.0
  assert math.isnan(got["PSP@1"]) and math.isnan(got["coverage@1"])
  got = metrics.compute(np.array([[0]]), np.array([0]), ks=(1,),
                        mask=np.array([False]))
  assert math.isnan(got["P@1"])


@pytest.mark.parametrize("kwargs, match", [
    (dict(pred=[[0, 1, 2]], true=[[0], [1]]), "1 rows but true_labels has 2"),
    (dict(pred=[0, 1], true=[0, 1]), r"topk_labels must be \[B, K\]"),
    (dict(true=[[[0]]]), r"true_labels must be \[B, L\] or \[B\]"),
    (dict(pred=[[0.0, 1.0, 2.0]]), "topk_labels must be integers"),
    (dict(ks=(1, 5)), "k=5 is larger than the number of predictions"),
    (dict(ks=(0,)), "positive integers"),
    (dict(ks=(1, 1)), "distinct"),
    (dict(pred=[[0, 1, 7]], num_labels=5), "topk_labels has label 7"),
    (dict(true=[[0, 9]], inv_propensity=np.ones(5)), "true_labels has label 9"),
    (dict(true=[[0, -2]]), "must be >= -1"),
    (dict(pred=[[0, 1, 0]]), "topk_labels repeats a label in row 0"),
    (dict(true=[[3, -1, 3]]), "true_labels repeats a label"),
    (dict(mask=[True, False]), r"mask must have shape \(1,\)"),
    (dict(mask=[1]), "mask must be bool"),
    (dict(inv_propensity=np.ones(4), num_labels=5), "4 entries but num_labels"),
])
def test_validation(kwargs, match):
  pred = np.array(kwargs.pop("pred", [[0, 1, 2]]))
  true = np.array(kwargs.pop("true", [[0, 3]]))
  if "mask" in kwargs:
    kwargs["mask"] = np.array(kwargs["mask"])
  kwargs.setdefault("ks", (1, 3))
  with pytest.raises(ValueError, match=match):
    metrics.batch_stats(pred, true, **kwargs)


def test_merge_rejects_different_configurations():
  pred, true = np.array([[0, 1, 2]]), np.array([0])
  with pytest.raises(ValueError, match="different ks"):
    metrics.merge_stats(metrics.batch_stats(pred, true, ks=(1,)),
                        metrics.batch_stats(pred, true, ks=(1, 3)))
