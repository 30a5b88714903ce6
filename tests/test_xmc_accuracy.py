"""benchmarks/xmc_accuracy.py: peer features, scoring and the seed ensemble."""

import importlib.util
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from conftest import REPO_ROOT
import fake_pecos
from mhe_jax import knn as knn_lib
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


def test_score_topk_by_hand(bench):
  # Row 0 true {0, 2}: predicted [2, 1] (short list) -> P@1 1, P@3 1/3.
  # Row 1 true {3}: predicted [0, 1, 2, 4, 3] -> P@1 0, P@3 0, P@5 1/5.
  true = np.array([[0, 2], [3, -1]])
  got = bench.score_topk([[2, 1], [0, 1, 2, 4, 3]], true,
                         label_counts=np.array([5, 1, 2, 3, 1]), num_train=10)
  assert got["P@1"] == pytest.approx(0.5)
  assert got["P@3"] == pytest.approx((1 / 3 + 0) / 2)
  assert got["P@5"] == pytest.approx((1 / 5 + 1 / 5) / 2)


def test_config_arg_and_name(bench):
  configs = REPO_ROOT / "configs"
  assert bench.config_arg("bibtex", "mhc", False) == (configs / "bibtex.py",
                                                      "head=mhc")
  assert bench.config_arg("delicious", "best", True) == (
      configs / "delicious.py", "head=best,runlocal")
  assert bench.config_arg("bibtex", "mhp3", False) is None
  assert bench.config_arg("nowhere", "mhc", False) is None
  # A row names the config it ran as file:argument, or, as the rows of
  # benchmarks/results/xmc_accuracy.json do, by a file per config; both
  # read as the config's name.
  for config in ("configs/bibtex.py:head=best", "configs/bibtex_best.py"):
    assert bench.config_name(config) == "bibtex_best"
  for config in ("configs/delicious.py:head=mhc,runlocal",
                 "configs/delicious_mhc.py:runlocal"):
    assert bench.config_name(config) == "delicious_mhc:runlocal"


def test_one_member_ensemble_reproduces_the_trainer(bench):
  # The dense score matrix rebuilt from the head's top-C must rank exactly as
  # the trainer's own top-k evaluation does.
  config = tiny_config_lib.get_config()
  config.data.num_classes = 40
  config.head.type = "vanilla"
  config.num_train_steps = 15
  metrics, seconds, members = bench.ensemble(config, [0])[:3]
  assert seconds > 0
  for key in ("P@1", "P@3", "P@5", "nDCG@5", "PSP@5"):
    assert metrics[key] == pytest.approx(members[0][key], abs=1e-9), key


def test_pecos_through_a_side_interpreter(bench, tmp_path, monkeypatch):
  # benchmarks/pecos_peer.py runs under --pecos_python with its own imports;
  # a fake `pecos` on PYTHONPATH checks the file exchange, the ordering of
  # the returned scores and the -1 padding of short rows.
  monkeypatch.setenv("PYTHONPATH", str(fake_pecos.install(tmp_path / "site")))
  monkeypatch.setenv("MHE_PECOS_PYTHON", sys.executable)

  rng = np.random.default_rng(0)
  x_tr = sp.random(40, 15, density=0.2, format="csr", random_state=3,
                   dtype=np.float32)
  x_te = sp.random(9, 15, density=0.15, format="csr", random_state=4,
                   dtype=np.float32)
  y = sp.csr_matrix((rng.random((40, 12)) < 0.15).astype(np.float32))

  class Train:
    Y = y

  pred, fit_s, predict_s, settings = bench._pecos(x_tr, Train, x_te, tmp_path)
  assert fit_s >= 0 and predict_s >= 0
  assert sys.executable in settings and "libpecos fake" in settings
  assert pred == fake_pecos.reference_topk(x_tr, y, x_te, 5)


def test_blend_grid_and_best_setting(bench):
  # A 1-member ensemble of a tiny run: weight 0 reproduces the members'
  # ranking (mean sigmoid ranks like the logits), weight 1 the kNN alone.
  config = tiny_config_lib.get_config()
  config.data.name = "synthetic"
  config.data.num_classes = 30
  config.head.type = "vanilla"
  config.num_train_steps = 10
  run = bench.ensemble(config, [0])
  assert run.probs.shape == (run.eval.num_examples, 30)
  assert np.all((run.probs > 0) & (run.probs < 1))
  grid = bench.blend_grid(run, {"k": (3,), "power": (1,),
                                "weight": (0.0, 1.0)})
  assert [(g["k"], g["power"], g["weight"]) for g in grid] == [
      (3, 1, 0.0), (3, 1, 1.0)]
  assert grid[0]["P@1"] == pytest.approx(run.metrics["P@1"], abs=1e-9)
  knn = knn_lib.label_scores(run.train, run.eval.X, 3, 1)
  top = np.argsort(-knn, axis=1, kind="stable")[:, :5]
  want = bench.score_topk(top, run.labels, run.label_counts,
                          run.train.num_examples)
  assert grid[1]["P@1"] == pytest.approx(want["P@1"], abs=1e-9)
  assert bench.best_of_grid(grid) == max(grid,
                                         key=lambda g: g["P@1"] + g["P@5"])
