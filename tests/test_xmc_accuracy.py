"""benchmarks/xmc_accuracy.py: peer features, scoring and the seed ensemble."""

import importlib.util
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from conftest import REPO_ROOT
import fake_pecos
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


@pytest.mark.parametrize("k,power,batch", [(1, 1, 4), (5, 2, 3), (12, 4, 64)])
def test_knn_label_scores_match_brute_force(bench, k, power, batch):
  from mhe_jax.data import formats
  rng = np.random.default_rng(k)
  # Integer counts: exact cosine ties are rare but the reference breaks them
  # like exact_search (smaller training row first).
  train_x = sp.csr_matrix(rng.poisson(0.4, (30, 20)).astype(np.float32))
  train_y = sp.csr_matrix((rng.random((30, 7)) < 0.3).astype(np.float32))
  x = sp.csr_matrix(rng.poisson(0.4, (10, 20)).astype(np.float32))
  got = bench.knn_label_scores(formats.XMCData(train_x, train_y), x, k, power,
                               batch_size=batch)
  np.testing.assert_allclose(got, _knn_reference(train_x, train_y, x, k,
                                                 power), rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="k=31"):
    bench.knn_label_scores(formats.XMCData(train_x, train_y), x, 31, power)


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
  knn = bench.knn_label_scores(run.train, run.eval.X, 3, 1)
  top = np.argsort(-knn, axis=1, kind="stable")[:, :5]
  want = bench.score_topk(top, run.labels, run.label_counts,
                          run.train.num_examples)
  assert grid[1]["P@1"] == pytest.approx(want["P@1"], abs=1e-9)
  assert bench.best_of_grid(grid) == max(grid,
                                         key=lambda g: g["P@1"] + g["P@5"])
