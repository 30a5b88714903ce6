"""Tests for mhe_jax.data.pipeline: sources, train/eval loaders, state."""

import json

import numpy as np
import pytest
import scipy.sparse as sp

from mhe_jax.data import corpus, formats, pipeline, synthetic


def _toy_source(n: int = 103) -> pipeline.ArraySource:
  """Example i has features [i, 2i] and labels [i, -1] (so rows are known)."""
  i = np.arange(n)
  return pipeline.ArraySource(np.stack([i, 2 * i], 1).astype(np.float32),
                              np.stack([i, np.full(n, -1)], 1))


def _collect(it) -> list[dict[str, np.ndarray]]:
  return [dict(b) for b in it]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.fixture(scope="module")
def bibtex(shared_data) -> formats.XMCData:
  return formats.read_xc(shared_data / "bibtex" / "train.txt")


# ----------------------------------------------------------------------------
# Evaluation: every example exactly once.


@pytest.mark.parametrize("num_threads", [0, 2])
def test_eval_sees_every_example_once(num_threads):
  source = _toy_source(103)
  it = pipeline.eval_loader(source, 16, process_index=0, process_count=1,
                            num_threads=num_threads)
  batches = _collect(it)
  assert len(batches) == len(it) == 7  # ceil(103 / 16)
  index = np.concatenate([b["index"] for b in batches])
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(index[mask], np.arange(103))
  assert mask.sum() == 103 and np.all(index[~mask] == -1)
  for b in batches:
    assert b["features"].shape == (16, 2) and b["labels"].shape == (16, 2)
    m, i = b["mask"], b["index"]
    np.testing.assert_array_equal(b["features"][m], source.features[i[m]])
    np.testing.assert_array_equal(b["labels"][m], source.labels[i[m]])
    assert np.all(b["features"][~m] == 0) and np.all(b["labels"][~m] == -1)


def test_eval_two_processes_cover_data_once_with_equal_batch_counts():
  source = _toy_source(103)
  its = [pipeline.eval_loader(source, 16, process_index=p, process_count=2)
         for p in range(2)]
  per_process = [_collect(it) for it in its]
  assert len(per_process[0]) == len(per_process[1]) == 7
  seen = np.concatenate([b["index"][b["mask"]]
                         for batches in per_process for b in batches])
  np.testing.assert_array_equal(np.sort(seen), np.arange(103))
  for batches in per_process:
    assert all(b["features"].shape == (8, 2) for b in batches)
  # Side by side, the two processes' batches form the one-process batches.
  single = _collect(pipeline.eval_loader(source, 16, process_index=0,
                                         process_count=1))
  for k, b in enumerate(single):
    np.testing.assert_array_equal(
        b["index"], np.concatenate([per_process[p][k]["index"]
                                    for p in range(2)]))


def test_eval_more_processes_than_remaining_examples():
  # 10 examples, 4 processes of 4 rows: the second global batch has only two
  # real rows, so processes 1..3 get all-padding batches but still yield.
  source = _toy_source(10)
  counts, seen = [], []
  for p in range(4):
    batches = _collect(pipeline.eval_loader(source, 16, process_index=p,
                                            process_count=4))
    counts.append(len(batches))
    seen += [b["index"][b["mask"]] for b in batches]
  assert counts == [1, 1, 1, 1]
  np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(10))


# ----------------------------------------------------------------------------
# Training: fixed shapes, determinism by seed, per-epoch reshuffling.


def _train(source, seed, **kw):
  kw.setdefault("process_index", 0)
  kw.setdefault("process_count", 1)
  return pipeline.train_loader(source, 16, seed=seed, **kw)


def _take(it, k):
  return [next(it) for _ in range(k)]


def test_train_fixed_shapes_and_deterministic_by_seed():
  source = _toy_source(103)
  a, b, c = (_take(_train(source, s), 14) for s in (3, 3, 4))
  _assert_batches_equal(a, b)
  assert not all(np.array_equal(x["index"], y["index"]) for x, y in zip(a, c))
  for x in a:
    assert x["features"].shape == (16, 2) and x["features"].dtype == np.float32
    assert x["labels"].shape == (16, 2) and x["labels"].dtype == np.int32
    assert x["mask"].all()
    np.testing.assert_array_equal(x["labels"][:, 0], x["index"])


def test_train_epochs_drop_remainder_and_reshuffle():
  source = _toy_source(103)
  it = _train(source, 0, num_epochs=2)
  assert it.steps_per_epoch == 6 and len(it) == 12
  batches = _collect(it)
  assert len(batches) == 12
  epochs = [np.concatenate([b["index"] for b in batches[e * 6:(e + 1) * 6]])
            for e in range(2)]
  for e in epochs:  # 96 distinct examples per epoch, 7 dropped.
    assert e.size == 96 and np.unique(e).size == 96
  assert not np.array_equal(epochs[0], epochs[1])


def test_train_two_processes_split_the_global_batch():
  source = _toy_source(103)
  single = _take(_train(source, 5), 8)
  halves = [_take(_train(source, 5, process_index=p, process_count=2), 8)
            for p in range(2)]
  for k, b in enumerate(single):
    for key in b:
      np.testing.assert_array_equal(
          b[key], np.concatenate([halves[0][k][key], halves[1][k][key]]))


def test_loader_argument_errors():
  source = _toy_source(10)
  with pytest.raises(ValueError, match="divisible"):
    pipeline.train_loader(source, 5, seed=0, process_index=0, process_count=2)
  with pytest.raises(ValueError, match="no full batch"):
    pipeline.train_loader(source, 16, seed=0, process_index=0, process_count=1)
  with pytest.raises(ValueError, match="process_index"):
    pipeline.eval_loader(source, 4, process_index=2, process_count=2)


# ----------------------------------------------------------------------------
# Checkpointing the iterator.


@pytest.mark.parametrize("num_threads", [0, 2])
def test_restore_continues_identically(num_threads):
  source = _toy_source(103)
  it = _train(source, 7, num_threads=num_threads)
  _take(it, 9)  # Into the second epoch.
  state = json.loads(json.dumps(it.get_state()))
  assert state["step"] == 9
  expected = _take(it, 6)
  restored = _train(source, 7, num_threads=num_threads)
  next(restored)  # Whatever it did before, set_state moves it.
  restored.set_state(state)
  _assert_batches_equal(_take(restored, 6), expected)
  assert restored.get_state() == it.get_state()


def test_restore_with_another_process_count():
  source = _toy_source(103)
  it = _train(source, 2)
  _take(it, 4)
  state = it.get_state()
  expected = _take(it, 3)
  halves = []
  for p in range(2):
    r = _train(source, 2, process_index=p, process_count=2)
    r.set_state(state)
    halves.append(_take(r, 3))
  for k in range(3):
    np.testing.assert_array_equal(
        expected[k]["index"],
        np.concatenate([halves[0][k]["index"], halves[1][k]["index"]]))


def test_restore_eval_and_mismatched_state():
  source = _toy_source(103)
  it = pipeline.eval_loader(source, 16, process_index=0, process_count=1)
  _take(it, 3)
  state = it.get_state()
  rest = _collect(it)
  again = pipeline.eval_loader(source, 16, process_index=0, process_count=1)
  again.set_state(state)
  _assert_batches_equal(_collect(again), rest)
  with pytest.raises(ValueError, match="seed"):
    _train(source, 1).set_state(_train(source, 2).get_state())
  with pytest.raises(ValueError, match="kind"):
    _train(source, 1).set_state(state)


# ----------------------------------------------------------------------------
# Sources.


def _plain_xc_rows(path):
  """(labels, {feature: value}) per row, by plain Python on the text file."""
  with open(path) as f:
    lines = f.read().splitlines()[1:]
  rows = []
  for line in lines:
    head, _, rest = line.partition(" ")
    labels = sorted(int(l) for l in head.split(",")) if head else []
    feats = dict((int(i), float(v)) for i, v in
                 (t.split(":") for t in rest.split()))
    rows.append((labels, feats))
  return rows


def test_bibtex_batches_equal_xc_rows(shared_data, bibtex):
  rows = _plain_xc_rows(shared_data / "bibtex" / "train.txt")
  source = pipeline.SparseSource(bibtex)
  lmax, fmax = source.max_labels, source.max_features
  assert lmax == max(len(r[0]) for r in rows)
  assert fmax == max(len(r[1]) for r in rows)
  # Expected padded rows, from the plain reading of the text file.
  want_labels = np.full((len(rows), lmax), -1, np.int32)
  want_ids = np.full((len(rows), fmax), -1, np.int32)
  want_vals = np.zeros((len(rows), fmax), np.float32)
  for i, (labels, feats) in enumerate(rows):
    want_labels[i, :len(labels)] = labels
    want_ids[i, :len(feats)] = sorted(feats)
    want_vals[i, :len(feats)] = [feats[j] for j in sorted(feats)]
  Y = bibtex.Y.tocsr()
  seen = []
  for b in pipeline.eval_loader(source, 1024, process_index=0,
                                process_count=1):
    assert b["labels"].shape == (1024, lmax)
    assert b["feature_ids"].shape == (1024, fmax)
    m, i = b["mask"], b["index"][b["mask"]]
    np.testing.assert_array_equal(b["labels"][m], want_labels[i])
    np.testing.assert_array_equal(b["feature_ids"][m], want_ids[i])
    np.testing.assert_array_equal(b["feature_values"][m], want_vals[i])
    for row, labels in zip(i[:50], b["labels"][m][:50]):  # Y rows too.
      np.testing.assert_array_equal(labels[labels >= 0], Y[row].indices)
    seen.append(i)
  np.testing.assert_array_equal(np.concatenate(seen), np.arange(len(rows)))
  assert len(rows) == bibtex.num_examples


def test_bibtex_train_batches_match_padded_labels(bibtex):
  source = pipeline.SparseSource(bibtex)
  labels = bibtex.padded_labels()
  ids, vals = bibtex.padded_features()
  for b in _take(pipeline.train_loader(source, 128, seed=0, process_index=0,
                                       process_count=1), 40):
    np.testing.assert_array_equal(b["labels"], labels[b["index"]])
    np.testing.assert_array_equal(b["feature_ids"], ids[b["index"]])
    np.testing.assert_array_equal(b["feature_values"], vals[b["index"]])


def test_sparse_widths_given_or_raise(bibtex):
  longest = int(np.diff(bibtex.Y.indptr).max())
  wide = pipeline.SparseSource(bibtex, max_labels=longest + 3,
                               max_features=300)
  b = next(pipeline.eval_loader(wide, 8, process_index=0, process_count=1))
  assert b["labels"].shape == (8, longest + 3)
  assert b["feature_ids"].shape == (8, 300)
  with pytest.raises(ValueError, match="more than the given maximum"):
    pipeline.SparseSource(bibtex, max_labels=longest - 1)
  with pytest.raises(ValueError, match="features"):
    pipeline.SparseSource(bibtex, max_features=10)


def test_sparse_unsorted_and_empty_rows():
  X = sp.csr_matrix((np.array([3., 1., 2.], np.float32), np.array([4, 0, 2]),
                     np.array([0, 2, 2, 3])), shape=(3, 5))
  Y = sp.csr_matrix((np.ones(3, np.float32), np.array([2, 1, 0]),
                     np.array([0, 2, 2, 3])), shape=(3, 3))
  X.has_sorted_indices = False
  Y.has_sorted_indices = False
  source = pipeline.SparseSource(formats.XMCData(X=X, Y=Y))
  b = source.gather(np.array([0, 1, 2, -1]))
  np.testing.assert_array_equal(b["feature_ids"],
                                [[0, 4], [-1, -1], [2, -1], [-1, -1]])
  np.testing.assert_array_equal(b["feature_values"],
                                [[1, 3], [0, 0], [2, 0], [0, 0]])
  np.testing.assert_array_equal(b["labels"],
                                [[1, 2], [-1, -1], [0, -1], [-1, -1]])


def test_single_label_sparse_source():
  data, y = synthetic.make_single_label(50, num_classes=10**6,
                                        num_features=1000, seed=0)
  source = pipeline.SparseSource(data, single_label=True)
  b = next(pipeline.eval_loader(source, 64, process_index=0, process_count=1))
  assert b["labels"].shape == (64,)
  np.testing.assert_array_equal(b["labels"][:50], y)
  assert np.all(b["labels"][50:] == -1)
  multi = synthetic.make_multi_label(20, 1000, 100, mean_labels=4, seed=0)
  with pytest.raises(ValueError, match="exactly 1"):
    pipeline.SparseSource(multi, single_label=True)


def test_token_source_matches_corpus_examples():
  c = corpus.Corpus.from_text("to be or not to be , that is the question . "
                              * 20, test_fraction=0.2)
  x, y = c.examples("train", context=4)
  source = pipeline.TokenSource.from_corpus(c, "train", 4)
  assert len(source) == x.shape[0]
  batches = _collect(pipeline.eval_loader(source, 32, process_index=0,
                                          process_count=1))
  for b in batches:
    m = b["mask"]
    assert b["features"].shape == (32, 4) and b["labels"].shape == (32,)
    np.testing.assert_array_equal(b["features"][m], x[b["index"][m]])
    np.testing.assert_array_equal(b["labels"][m], y[b["index"][m]])
    assert np.all(b["labels"][~m] == -1) and np.all(b["features"][~m] == 0)
  assert sum(b["mask"].sum() for b in batches) == x.shape[0]


def test_element_spec_matches_batches(bibtex):
  it = pipeline.train_loader(pipeline.SparseSource(bibtex), 64, seed=1,
                             process_index=0, process_count=2)
  b = next(it)
  assert set(it.element_spec) == set(b)
  for k, spec in it.element_spec.items():
    assert b[k].shape == spec.shape and b[k].dtype == spec.dtype, k


def test_default_process_from_jax():
  it = pipeline.eval_loader(_toy_source(20), 8)
  assert it.batch_size == 8  # One process in tests.


def test_grain_orbax_checkpoint_handler(tmp_path):
  # The orbax handler grain ships saves get_state() as JSON per process.
  import grain  # pylint: disable=g-import-not-at-top
  source = _toy_source(103)
  it = _train(source, 4)
  _take(it, 3)
  handler = grain.checkpoint.CheckpointHandler()
  handler.save(tmp_path, args=grain.checkpoint.CheckpointSave(it))
  restored = _train(source, 4)
  handler.restore(tmp_path, args=grain.checkpoint.CheckpointRestore(restored))
  _assert_batches_equal(_take(restored, 3), _take(it, 3))


def _keep_largest_reference(dense, width, weights):
  out = np.zeros_like(dense)
  for i, row in enumerate(dense):
    cols = [j for j in range(row.size) if row[j] != 0]
    cols.sort(key=lambda j: (-abs(row[j] * weights[j]), j))
    out[i, cols[:width]] = row[cols[:width]]
  return out


@pytest.mark.parametrize("width", [1, 2, 3, 10])
def test_keep_largest_equals_python_reference(width):
  rng = np.random.default_rng(width)
  dense = rng.integers(0, 4, (9, 7)).astype(np.float32) * (
      rng.random((9, 7)) < 0.6)
  dense[0] = 0  # an empty row
  dense[1] = 2.0  # all tied: the lower columns win
  weights = rng.choice([0.5, 1.0, 2.0], 7)
  got = pipeline.keep_largest(sp.csr_matrix(dense), width, weights)
  assert got.has_sorted_indices
  np.testing.assert_array_equal(got.toarray(),
                                _keep_largest_reference(dense, width, weights))
  plain = pipeline.keep_largest(sp.csr_matrix(dense), width)
  np.testing.assert_array_equal(
      plain.toarray(), _keep_largest_reference(dense, width, np.ones(7)))


def test_truncated_source_pads_to_the_width():
  dense = np.array([[1, 2, 3, 4], [0, 5, 0, 0], [9, 0, 0, 8]], np.float32)
  data = formats.XMCData(sp.csr_matrix(dense), sp.csr_matrix(np.eye(3, 2)))
  src = pipeline.SparseSource(data, max_features=2, truncate_features=True)
  batch = src.gather(np.array([0, 1, 2]))
  np.testing.assert_array_equal(batch["feature_ids"],
                                [[2, 3], [1, -1], [0, 3]])
  np.testing.assert_array_equal(batch["feature_values"],
                                [[3, 4], [5, 0], [9, 8]])
  with pytest.raises(ValueError, match="more than the given maximum 2"):
    pipeline.SparseSource(data, max_features=2)
