"""benchmarks/xmc_accuracy.py: peer features, scoring and the seed ensemble."""

import importlib.util
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from conftest import REPO_ROOT
import tiny_config as tiny_config_lib


@pytest.fixture(scope="module")
def bench():
  path = REPO_ROOT / "benchmarks" / "xmc_accuracy.py"
  spec = importlib.util.spec_from_file_location("xmc_accuracy_under_test", path)
  module = importlib.util.module_from_spec(spec)
  if "xmc_accuracy_under_test" not in sys.modules:  # absl flags: define once
    sys.modules["xmc_accuracy_under_test"] = module
    spec.loader.exec_module(module)
  return sys.modules["xmc_accuracy_under_test"]


def test_tfidf_matches_numpy(bench):
  train = sp.random(30, 12, density=0.3, format="csr", random_state=1,
                    dtype=np.float32)
  test = sp.random(7, 12, density=0.3, format="csr", random_state=2,
                   dtype=np.float32)
  df = (train.toarray() != 0).sum(0)
  idf = np.log((1 + 30) / (1 + df)) + 1
  w = test.toarray() * idf
  norm = np.linalg.norm(w, axis=1, keepdims=True)
  want = w / np.where(norm > 0, norm, 1)
  np.testing.assert_allclose(bench.tfidf(train, test).toarray(), want,
                             rtol=1e-5, atol=1e-7)


def test_score_topk_by_hand(bench):
  # Row 0 true {0, 2}: predicted [2, 1] (short list) -> P@1 1, P@3 1/3.
  # Row 1 true {3}: predicted [0, 1, 2, 4, 3] -> P@1 0, P@3 0, P@5 1/5.
  true = np.array([[0, 2], [3, -1]])
  got = bench.score_topk([[2, 1], [0, 1, 2, 4, 3]], true,
                         label_counts=np.array([5, 1, 2, 3, 1]), num_train=10)
  assert got["P@1"] == pytest.approx(0.5)
  assert got["P@3"] == pytest.approx((1 / 3 + 0) / 2)
  assert got["P@5"] == pytest.approx((1 / 5 + 1 / 5) / 2)


def test_one_member_ensemble_reproduces_the_trainer(bench):
  # The dense score matrix rebuilt from the head's top-C must rank exactly as
  # the trainer's own top-k evaluation does.
  config = tiny_config_lib.get_config()
  config.data.num_classes = 40
  config.head.type = "vanilla"
  config.num_train_steps = 15
  metrics, seconds, members = bench.ensemble(config, [0])
  assert seconds > 0
  for key in ("P@1", "P@3", "P@5", "nDCG@5", "PSP@5"):
    assert metrics[key] == pytest.approx(members[0][key], abs=1e-9), key
