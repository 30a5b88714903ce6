"""benchmarks/predict.py: the PECOS row through a side interpreter, merging.

PECOS runs under ``--pecos_python`` (benchmarks/pecos_peer.py in its own
venv); here the side interpreter is ``sys.executable`` with a fake ``pecos``
(tests/fake_pecos.py) on PYTHONPATH, whose top-k a numpy brute force rebuilds.
"""

import importlib.util
import re
import sys

from absl import flags
import numpy as np
import pytest
import scipy.sparse as sp

from conftest import REPO_ROOT
import fake_pecos

_NAME = "predict_under_test"


@pytest.fixture(scope="module")
def bench():
  """benchmarks/predict.py loaded with its absl flags, then unloaded.

  Other benchmark modules loaded by other tests define flags of the same
  names (--out, --pecos_python), which absl refuses to define twice; those
  are set aside while this module is loaded and put back afterwards.

  Yields:
    The predict.py module.
  """
  path = REPO_ROOT / "benchmarks" / "predict.py"
  source = path.read_text()
  saved = {}
  for name in re.findall(r'flags\.DEFINE_\w+\(\s*"(\w+)"', source):
    if name in flags.FLAGS:
      saved[name] = flags.FLAGS[name]
      delattr(flags.FLAGS, name)
  spec = importlib.util.spec_from_file_location(_NAME, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[_NAME] = module
  try:
    spec.loader.exec_module(module)
    yield module
  finally:
    for flag in list(flags.FLAGS.flags_by_module_dict().get(_NAME, [])):
      delattr(flags.FLAGS, flag.name)
    for name, flag in saved.items():
      flags.FLAGS[name] = flag
    del sys.modules[_NAME]


def _data(seed, n, num_features, num_labels, empty_row=None):
  from mhe_jax.data import formats  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  x = sp.random(n, num_features, density=0.25, format="lil",
                random_state=seed, dtype=np.float32)
  if empty_row is not None:  # no features: no positive score, an empty top-k
    x[empty_row] = 0
  x = sp.csr_matrix(x)
  x.eliminate_zeros()
  y = (rng.random((n, num_labels)) < 0.2).astype(np.float32)
  y[np.arange(n), rng.integers(0, num_labels, n)] = 1  # >= 1 label a row
  return formats.XMCData(x, sp.csr_matrix(y))


def test_pecos_row_through_a_side_interpreter(bench, tmp_path, monkeypatch):
  monkeypatch.setenv("PYTHONPATH", str(fake_pecos.install(tmp_path / "site")))
  monkeypatch.setenv("MHE_PECOS_PYTHON", sys.executable)
  assert bench.pecos_python() == sys.executable  # flags unparsed: the env
  train, test = _data(0, 40, 15, 12), _data(1, 9, 15, 12, empty_row=4)
  k = 5
  monkeypatch.setenv("OMP_WAIT_POLICY", "active")
  row = bench.bench_pecos(train, test, bench.pecos_python(), k, requests=11,
                          repeats=2, omp_wait_policy="passive")

  want = fake_pecos.reference_topk(train.X, train.Y, test.X, k)
  assert any(len(w) < k for w in want)  # the -1 padding is exercised
  padded = np.full((len(want), k), -1, np.int64)
  for i, w in enumerate(want):
    padded[i, :len(w)] = w
  assert row["P@1"] == pytest.approx(bench._precision(padded, test)["P@1"])
  assert row["P@5"] == pytest.approx(bench._precision(padded, test)["P@5"])
  # An independent P@k of the brute force: hits among the first 1 / 5 slots.
  truth = test.Y.toarray() > 0
  hits = lambda m: np.mean([sum(truth[i, c] for c in w[:m]) / m
                            for i, w in enumerate(want)])
  assert row["P@1"] == pytest.approx(hits(1))
  assert row["P@5"] == pytest.approx(hits(5))

  assert row["model"] == "PECOS XR-Linear" and row["num_classes"] == 12
  assert row["num_test"] == 9
  for key in ("latency_p50_ms", "latency_p99_ms", "test_set_seconds",
              "train_seconds"):
    assert np.isfinite(row[key]) and row[key] >= 0, key
  assert row["latency_p99_ms"] >= row["latency_p50_ms"]
  assert row["examples_per_second"] == pytest.approx(
      9 / row["test_set_seconds"])
  assert sys.executable in row["python"] and "libpecos fake" in row["python"]
  assert "only_topk=5" in row["settings"]
  assert row["omp_wait_policy"] == "passive"  # as the side process saw it
  kept = bench.bench_pecos(train, test, sys.executable, k, requests=1,
                           repeats=1, omp_wait_policy="")
  assert kept["omp_wait_policy"] == "active"


@pytest.fixture
def fake_pecos_here(tmp_path, monkeypatch):
  """The fake ``pecos`` importable in this process, unloaded afterwards."""
  monkeypatch.syspath_prepend(str(fake_pecos.install(tmp_path / "site")))
  yield
  for module in [m for m in sys.modules if m.split(".")[0] == "pecos"]:
    del sys.modules[module]


def test_pecos_peer_returns_the_models_topk(bench, fake_pecos_here):
  # time_predict's top-k (from the whole-test-set call) is the brute force's,
  # its rows padded with -1; requests cycle past the end of a short test set.
  del fake_pecos_here
  train, test = _data(2, 30, 10, 8), _data(3, 4, 10, 8, empty_row=1)
  model, fit_s = bench.pecos_peer.fit(train.X, train.Y)
  assert fit_s >= 0
  topk, timing = bench.pecos_peer.time_predict(model, test.X, 3, requests=10,
                                               repeats=1)
  want = fake_pecos.reference_topk(train.X, train.Y, test.X, 3)
  assert [[int(c) for c in r if c >= 0] for r in topk] == want
  assert not want[1]
  assert all(list(r[len(w):]) == [-1] * (3 - len(w))
             for r, w in zip(topk, want))
  assert timing["requests"] == 10 and timing["repeats"] == 1
  with pytest.raises(ValueError, match="requests=0"):
    bench.pecos_peer.time_predict(model, test.X, 3, requests=0, repeats=1)


def test_pecos_python_missing_names_the_flag(bench):
  with pytest.raises(FileNotFoundError, match="--pecos_python=/nonexistent"):
    bench.bench_pecos(_data(0, 5, 4, 3), _data(1, 2, 4, 3), "/nonexistent/py",
                      5, requests=1, repeats=1)


def test_without_pecos_python_the_row_says_how(bench, monkeypatch):
  monkeypatch.delenv("MHE_PECOS_PYTHON", raising=False)
  assert bench.pecos_python() is None
  row = bench.pecos_not_measured(983)
  assert "--pecos_python" in row["not_measured"]
  assert "not measured: " in bench.markdown({"delicious": [row]})


def test_unknown_peer_model_names_the_flag(bench):
  data = _data(0, 5, 4, 3)
  with pytest.raises(ValueError, match="--peer_models: unknown.*'pecos'"):
    bench.bench_peers(data, data, None, 1, models=["pecos"])


def test_merge_replaces_by_model_and_num_classes(bench):
  old = {"command": "python benchmarks/predict.py", "date": "2026-11-22",
         "machine": "m",
         "delicious": [{"model": "a", "num_classes": 3, "v": 1},
                       {"model": "PECOS XR-Linear", "num_classes": 3,
                        "not_measured": "x"},
                       {"model": "c", "num_classes": 3, "v": 3}],
         "synthetic_1m": [{"model": "a", "num_classes": 10, "v": 4}]}
  new = {"command": "python benchmarks/predict.py --heads=", "date": "d2",
         "runs": [{"command": "python benchmarks/predict.py --heads="}],
         "delicious": [{"model": "PECOS XR-Linear", "num_classes": 3, "v": 2},
                       {"model": "a", "num_classes": 4, "v": 5}]}
  got = bench.merge_results(old, new)
  assert got["delicious"] == [
      {"model": "a", "num_classes": 3, "v": 1},
      {"model": "PECOS XR-Linear", "num_classes": 3, "v": 2},
      {"model": "c", "num_classes": 3, "v": 3},
      {"model": "a", "num_classes": 4, "v": 5}]
  assert got["synthetic_1m"] == old["synthetic_1m"]
  assert got["command"] == new["command"] and got["machine"] == "m"
  assert [r["command"] for r in got["runs"]] == [old["command"],
                                                 new["command"]]
  assert bench.merge_results(None, new)["delicious"] == new["delicious"]
