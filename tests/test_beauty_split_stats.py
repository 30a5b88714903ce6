"""benchmarks/beauty_split_stats.py: counts, baselines' ranks and metrics
against plain-Python references."""

import importlib.util
import math
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT
from mhe_jax.data import interactions


@pytest.fixture(scope="module")
def stats():
  name = "beauty_split_stats_under_test"
  if name not in sys.modules:
    spec = importlib.util.spec_from_file_location(
        name, REPO_ROOT / "benchmarks" / "beauty_split_stats.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
  return sys.modules[name]


def _log(tmp_path, seqs):
  path = tmp_path / "log.txt"
  path.write_text("".join(f"{u + 1} {i + 1}\n" for u, s in enumerate(seqs)
                          for i in s))
  return interactions.read_interactions(path, repeats="keep")


def test_hand_built_split(stats, tmp_path):
  # Items 0..4 (ids 1..5). Users: [0,1,2,3], [1,2,0], [2,3,4,1,0].
  log = _log(tmp_path, [[0, 1, 2, 3], [1, 2, 0], [2, 3, 4, 1, 0]])
  split = interactions.leave_one_out(log)
  # Training histories [0,1], [1], [2,3,4]: targets 1, 3, 4.
  assert split.train.to_lists() == [[0, 1], [1], [2, 3, 4]]
  np.testing.assert_array_equal(stats.target_counts(split.train, 5),
                                [0, 1, 0, 1, 1])
  trans = stats.transitions(split.train, 5).toarray()
  expect = np.zeros((5, 5))
  expect[0, 1] = expect[2, 3] = expect[3, 4] = 1
  np.testing.assert_array_equal(trans, expect)
  # Validation targets 2, 2, 1 (inputs [0,1], [1], [2,3,4]).
  pop = stats.target_counts(split.train, 5)
  # Popularity order, ties by id: 1, 3, 4, 0, 2.
  # user 0: input {0,1} -> 3, 4, 2: target 2 at rank 2.
  # user 1: input {1} -> 3, 4, 0, 2: rank 3.
  # user 2: input {2,3,4} -> 1, 0: target 1 at rank 0.
  np.testing.assert_array_equal(stats.ranks(split.validation, pop, None),
                                [2, 3, 0])
  # Transitions from the last input item first: user 0 (last 1): none ->
  # as popularity; user 1 (last 1): the same; user 2 (last 4): none.
  np.testing.assert_array_equal(
      stats.ranks(split.validation, pop, stats.transitions(split.train, 5)),
      [2, 3, 0])
  # Test: inputs [0,1,2], [1,2], [2,3,4,1]; targets 3, 0, 0.
  # user 0: last 2 -> 3 follows 2 once: 3 first, rank 0.
  # user 1: last 2 -> 3 first, then 4, 0: target 0 at rank 2.
  # user 2: last 1 -> nothing; remaining items: 0 only: rank 0.
  np.testing.assert_array_equal(
      stats.ranks(split.test, pop, stats.transitions(split.train, 5)),
      [0, 2, 0])
  train_any = np.bincount(split.train.values, minlength=5)  # [1,2,1,1,1]
  got = stats.stats(split.test, pop, train_any,
                    stats.transitions(split.train, 5))
  # Last input items 2, 2, 1: 1 is never followed; 3 follows 2, 0 follows
  # nothing. Targets 3 (training target once), 0, 0 (never targets, but in
  # user 0's history).
  assert got["last_input_item_never_followed"] == pytest.approx(1 / 3)
  assert got["target_follows_last_input_item"] == pytest.approx(1 / 3)
  assert got["target_never_a_training_target"] == pytest.approx(2 / 3)
  assert got["target_not_in_training_histories"] == 0.0
  assert got["target_in_input"] == 0.0
  assert got["target_training_count_median"] == 0.0
  assert got["input_length_mean"] == pytest.approx(3.0)
  val = stats.stats(split.validation, pop, train_any,
                    stats.transitions(split.train, 5))
  assert val["last_input_item_never_followed"] == 1.0  # items 1, 1, 4
  assert val["target_follows_last_input_item"] == 0.0
  # A target in its own input ranks C (can never be hit).
  repeat = interactions.EvalExamples(
      np.array([0]), interactions.Sequences.from_lists([[3, 1]]),
      np.array([3], np.int32))
  assert stats.ranks(repeat, pop, None)[0] == 5
  assert stats.stats(repeat, pop, train_any, stats.transitions(
      split.train, 5))["target_in_input"] == 1.0


def test_hr_ndcg_hand_computed(stats):
  hr, ndcg = stats.hr_ndcg(np.array([0, 3, 9, 10, 54_542]))
  assert hr == pytest.approx(3 / 5)
  assert ndcg == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(11)) / 5)


def test_random_logs_match_brute_force(stats, tmp_path):
  rng = np.random.default_rng(0)
  c = 30
  seqs = [rng.choice(c, size=rng.integers(3, 12)).tolist() for _ in range(60)]
  log = _log(tmp_path, seqs)
  split = interactions.leave_one_out(log)
  n = log.num_items
  # Plain-Python counts over the histories without each user's last two
  # items (written ids are item + 1).
  raw = [s[:-2] for s in seqs]
  pop_ref = np.zeros(n)
  trans_ref = np.zeros((n, n))
  index = {int(o) - 1: d for d, o in enumerate(log.item_ids)}
  for h in raw:
    for a, b in zip(h, h[1:]):
      pop_ref[index[b]] += 1
      trans_ref[index[a], index[b]] += 1
  pop = stats.target_counts(split.train, n)
  trans = stats.transitions(split.train, n)
  np.testing.assert_array_equal(pop, pop_ref)
  np.testing.assert_array_equal(trans.toarray(), trans_ref)
  for examples in (split.validation, split.test):
    for use_trans in (False, True):
      got = stats.ranks(examples, pop, trans if use_trans else None)
      for i in range(len(examples)):
        seen = set(examples.inputs.sequence(i).tolist())
        t = int(examples.targets[i])
        last = int(examples.inputs.sequence(i)[-1])
        key = lambda j: ((trans_ref[last, j] if use_trans else 0),
                         pop_ref[j], -j)
        order = sorted((j for j in range(n) if j not in seen), key=key,
                       reverse=True)
        want = n if t in seen else order.index(t)
        assert got[i] == want, (i, use_trans)
