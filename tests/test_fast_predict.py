"""The one-request path of mhe_jax.inference.Predictor against references.

Each head type gets a tiny untrained model built in-process (no training, no
checkpoint: the prediction code does not care how the weights were made).
References: the model's own ``topk`` jitted on the same padded batch (same
shapes, so the same arithmetic: labels and scores must be equal bit for bit),
and for the vanilla head a numpy top-k of its full logits. Also: threads
calling the predictor at once get the serial answers, seen shapes never
compile again, and the ``jax.export`` artifact runs in a process that cannot
import mhe_jax.
"""

import concurrent.futures
import functools
import inspect
import json
import os
import subprocess
import sys

from flax import nnx
import jax
import numpy as np
import pytest
import scipy.sparse as sp

from mhe_jax import config_lib
from mhe_jax import export
from mhe_jax import inference
from mhe_jax import model_info
from mhe_jax import registry

NUM_CLASSES, NUM_FEATURES, MAX_FEATURES, K = 60, 400, 16, 5
HEAD_TYPES = ("vanilla", "mhp", "mhc", "mhs")
# Row lengths: empty, within the first width bucket (8), within the second
# (16, the training width).
LENGTHS = (0, 3, 8, 12, 16)


def _predictor(head_type: str) -> inference.Predictor:
  config = config_lib.base_config()
  config.data.num_classes = NUM_CLASSES
  config.data.num_features = NUM_FEATURES
  config.encoder.embed_dim = 16
  config.encoder.hidden = (16,)
  config.head.type = head_type
  config.head.num_sampled_groups = 4  # mhs
  config.head.beam = 4                # mhc
  info = {"num_classes": NUM_CLASSES, "multilabel": True,
          "input_keys": list(inference._BOW_KEYS), "input_size": NUM_FEATURES,
          "has_idf": True, "context": None, "max_features": MAX_FEATURES,
          "label_names": None}
  data = model_info.dataset_spec(info)
  model = registry.build_model(config, data, nnx.Rngs(config.seed))
  graphdef, state = nnx.split(model)
  return inference.Predictor(graphdef, state, info, batch_sizes=(1, 8),
                             name=head_type)


@pytest.fixture(scope="module")
def predictors():
  cache = {}

  def get(head_type):
    if head_type not in cache:
      cache[head_type] = _predictor(head_type)
    return cache[head_type]
  return get


def _rows(seed: int = 0):
  """(ids, values) per row, ids distinct and in random order."""
  rng = np.random.default_rng(seed)
  return [(rng.permutation(NUM_FEATURES)[:m].astype(np.int64),
           rng.uniform(0.5, 3.0, m).astype(np.float32)) for m in LENGTHS]


def _padded(rows, batch: int, width: int):
  """Rows left-aligned in ``[batch, width]`` (-1 / 0 padding)."""
  ids = np.full((batch, width), -1, np.int32)
  values = np.zeros((batch, width), np.float32)
  for r, (i, v) in enumerate(rows):
    ids[r, :len(i)], values[r, :len(i)] = i, v
  return ids, values


@functools.cache
def _jitted_topk(graphdef: nnx.GraphDef, k: int):
  @jax.jit
  def topk(state, ids, values):
    model = nnx.merge(graphdef, state)
    return model.topk({"feature_ids": ids, "feature_values": values}, k)
  return topk


def _reference(predictor, rows, batch: int, width: int, k: int = K):
  """The model's own topk, jitted, on the rows padded to [batch, width]."""
  topk = _jitted_topk(predictor.graphdef, k)
  scores, labels = topk(predictor.state, *_padded(rows, batch, width))
  n = len(rows)
  return np.asarray(scores)[:n], np.asarray(labels)[:n]


def _width(m: int) -> int:
  return 8 if m <= 8 else 16


def _sorted(row):
  ids, values = row
  order = np.argsort(ids)
  return ids[order], values[order]


def _csr(rows):
  indptr = np.cumsum([0] + [len(i) for i, _ in rows])
  return sp.csr_matrix((np.concatenate([v for _, v in rows]),
                        np.concatenate([i for i, _ in rows]), indptr),
                       shape=(len(rows), NUM_FEATURES))


@pytest.mark.parametrize("head_type", HEAD_TYPES)
def test_one_row_and_small_batches_equal_the_models_topk(head_type,
                                                         predictors):
  predictor = predictors(head_type)
  rows = _rows()
  for row in rows:
    want_s, want_l = _reference(predictor, [row], 1, _width(len(row[0])))
    scores, labels = predictor.predict_one(*row, k=K)
    assert scores.shape == labels.shape == (K,)
    assert scores.dtype == np.float32 and labels.dtype == np.int32
    np.testing.assert_array_equal(labels, want_l[0])
    np.testing.assert_array_equal(scores, want_s[0])
    # The general API on one row runs the same program.
    for features in (row, (row[0][None], row[1][None])):
      pred = predictor.predict(features, k=K)
      np.testing.assert_array_equal(pred.labels, want_l)
      np.testing.assert_array_equal(pred.scores, want_s)
    # CSR rows are read in feature order (as the trainer reads them): the
    # float sums run in that order.
    want_s, want_l = _reference(predictor, [_sorted(row)], 1,
                                _width(len(row[0])))
    pred = predictor.predict(_csr([row]), k=K)
    np.testing.assert_array_equal(pred.labels, want_l)
    np.testing.assert_array_equal(pred.scores, want_s)
  # A small batch: rows sorted by length (stable), in the batch-8 bucket at
  # the width of the longest; answers come back in the request's order.
  batch = [rows[i] for i in (3, 0, 4, 1)]
  order = np.argsort([len(i) for i, _ in batch], kind="stable")
  for features, rows_as_read in ((_padded(batch, len(batch), 16), batch),
                                 (_csr(batch), [_sorted(r) for r in batch])):
    want_s, want_l = _reference(predictor, [rows_as_read[i] for i in order],
                                8, 16)
    pred = predictor.predict(features, k=K)
    np.testing.assert_array_equal(pred.labels[order], want_l)
    np.testing.assert_array_equal(pred.scores[order], want_s)


def test_vanilla_labels_are_the_numpy_top_k_of_its_logits(predictors):
  predictor = predictors("vanilla")
  model = nnx.merge(predictor.graphdef, predictor.state)
  for ids, values in _rows(seed=1):
    logits = np.asarray(model.head(model.encoder(
        *_padded([(ids, values)], 1, 16))))[0]
    want = np.lexsort((np.arange(NUM_CLASSES), -logits))[:K]
    scores, labels = predictor.predict_one(ids, values, k=K)
    np.testing.assert_array_equal(labels, want)
    np.testing.assert_allclose(scores, logits[want], rtol=1e-5, atol=1e-6)


def test_threads_get_the_serial_answers(predictors):
  predictor = predictors("mhp")
  rows = _rows(seed=2) * 4
  predictor.warmup(K)
  serial = [predictor.predict_one(*row, k=K) for row in rows]
  serial_batch = tuple(predictor.predict(_csr(rows), k=K))

  def one(i):
    if i % 5 == 4:  # a batch of every row, through the chunked path
      return predictor.predict(_csr(rows), k=K)
    return predictor.predict_one(*rows[i % len(rows)], k=K)

  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    answers = list(pool.map(one, range(200)))
  for i, got in enumerate(answers):
    want = serial_batch if i % 5 == 4 else serial[i % len(rows)]
    scores, labels = got
    np.testing.assert_array_equal(scores, want[0])
    np.testing.assert_array_equal(labels, want[1])


def test_seen_shapes_never_compile_again(predictors):
  predictor = predictors("mhc")
  predictor.warmup(K)
  traces = predictor.num_traces
  assert traces >= len(predictor.batch_sizes) * len(predictor.widths)
  compiles = []

  def listen(event, duration, **kwargs):
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(event)

  rows = _rows(seed=3)
  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    for _ in range(3):
      for row in rows:
        predictor.predict_one(*row, k=K)
        predictor.predict(_csr([row]), k=K)
      predictor.predict(_csr(rows), k=K)
      predictor.predict(_csr(rows * 3), k=K)  # 15 rows: two chunks
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  assert predictor.num_traces == traces
  assert not compiles
  # A new k is a new program, compiled once.
  predictor.predict_one(*rows[1], k=3)
  predictor.predict_one(*rows[2], k=3)
  assert predictor.num_traces == traces + 1
  # Rows longer than the training width (16): warmup(max_width) compiles
  # their widths (32, 64) in the buckets that run them.
  predictor.warmup(K, max_width=40)
  traces = predictor.num_traces
  assert traces == len(predictor.batch_sizes) * len(predictor.widths) + 1 + 2
  rng = np.random.default_rng(5)
  long = [(rng.permutation(NUM_FEATURES)[:m], rng.uniform(1, 2, m))
          for m in (20, 33, 40)]
  for row in long:
    predictor.predict_one(*row, k=K)
  predictor.predict(_csr(long + rows), k=K)
  assert predictor.num_traces == traces


def test_predict_one_errors_name_the_problem(predictors):
  predictor = predictors("mhp")
  with pytest.raises(ValueError, match=r"feature index 400 in row 0 is beyond"):
    predictor.predict_one(np.array([3, 400]), np.ones(2), k=K)
  with pytest.raises(ValueError, match=r"k=61 is not in \[1, 60\]"):
    predictor.predict_one(np.array([3]), np.ones(1), k=61)
  with pytest.raises(ValueError, match="finite"):
    predictor.predict_one(np.array([3]), np.array([np.nan]), k=K)
  with pytest.raises(ValueError, match="one example, got 2 rows"):
    predictor.predict_one(np.array([[1, 2], [3, -1]]),
                          np.ones((2, 2), np.float32), k=K)
  # Padding among the ids goes through the general checks, same answer.
  ids, values = _rows()[2]
  want = predictor.predict_one(ids, values, k=K)
  got = predictor.predict_one(np.concatenate([[-1], ids]),
                              np.concatenate([[9.0], values]), k=K)
  np.testing.assert_array_equal(got[1], want[1])
  np.testing.assert_array_equal(got[0], want[0])


class _Blocker:
  """A sys.meta_path finder: importing mhe_jax (or below) raises."""

  @staticmethod
  def find_spec(name, path=None, target=None):
    del path, target
    if name == "mhe_jax" or name.startswith("mhe_jax."):
      raise ImportError(f"{name} is blocked in this process")
    return None


_STANDALONE = """
import sys
{blocker}
sys.meta_path.insert(0, _Blocker())
try:
  import mhe_jax
except ImportError:
  pass
else:
  raise SystemExit("mhe_jax was importable")
import json, pathlib
from typing import Any, Callable
import jax, jax.numpy as jnp, numpy as np
PathLike = str
exec(pathlib.Path(sys.argv[2]).read_text())  # load_exported's source alone
d = pathlib.Path(sys.argv[1])
with np.load(d / "inputs.npz") as inputs:
  run = load_exported(d)
  scores, labels = run(inputs["ids"], inputs["values"])
  one = run(inputs["ids"][:1], inputs["values"][:1])
np.savez(d / "outputs.npz", scores=np.asarray(scores),
         labels=np.asarray(labels), one_labels=np.asarray(one[1]))
assert not [m for m in sys.modules if m.split(".")[0] == "mhe_jax"]
"""


def test_exported_artifact_runs_with_jax_and_numpy_only(predictors, tmp_path):
  predictor = predictors("mhp")
  d = export.export(predictor, tmp_path / "exported", k=K)
  rows = _rows(seed=4)
  ids, values = _padded(rows, len(rows), predictor.max_features)
  np.savez(d / "inputs.npz", ids=ids, values=values)
  source = tmp_path / "load_exported.py"
  source.write_text(inspect.getsource(export.load_exported))
  script = _STANDALONE.format(blocker=inspect.getsource(_Blocker))
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  proc = subprocess.run(
      [sys.executable, "-c", script, str(d), str(source)], cwd=tmp_path,
      env=env, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  meta = json.loads((d / "export.json").read_text())
  assert meta["k"] == K and meta["num_classes"] == NUM_CLASSES
  with np.load(d / "outputs.npz") as got:
    want = predictor.predict((ids, values), k=K)
    np.testing.assert_array_equal(got["labels"], want.labels)
    np.testing.assert_allclose(got["scores"], want.scores, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(got["one_labels"][0],
                                  predictor.predict_one(*rows[0], k=K)[1])
