"""UniDEC: label features by hand, in-batch PSL vs numpy, learning, trainer."""

import zlib

from flax import nnx
import jax
import numpy as np
import pytest
import scipy.sparse as sp

from conftest import REPO_ROOT
from mhe_jax import config_lib
from mhe_jax import registry
from mhe_jax import train
from mhe_jax.data import datasets
from mhe_jax.data import label_features
from mhe_jax.nn import unidec
from mhe_jax.ops import losses
from test_configs import load_module


def test_hashed_ngrams_by_hand():
  names = ["TAG_ab", "TAG_x?", "TAG_??"]
  got = label_features.hashed_ngrams(names, 97).toarray()
  h = lambda s: zlib.crc32(s.encode()) % 97
  want = np.zeros((3, 97), np.float32)
  # "tag" is in every name, so dropped; "ab" -> word + 3-grams of "<ab>".
  for g in ("w:ab", "c:<ab", "c:ab>"):
    want[0, h(g)] += 1
  for g in ("w:x", "c:<x>"):
    want[1, h(g)] += 1
  np.testing.assert_array_equal(got, want)  # row 2: no words, empty
  assert label_features.words("TAG_Data-Mining2") == ["tag", "data", "mining2"]


def test_mean_features_and_fallback():
  X = sp.csr_matrix(np.array([[3., 4., 0.], [0., 0., 2.], [1., 0., 0.]]))
  Y = sp.csr_matrix(np.array([[1, 0, 1], [1, 0, 0], [0, 0, 1]]))
  got = label_features.mean_features(X, Y).toarray()
  xn = X.toarray() / np.linalg.norm(X.toarray(), axis=1, keepdims=True)
  np.testing.assert_allclose(got, np.stack(
      [(xn[0] + xn[1]) / 2, np.zeros(3), (xn[0] + xn[2]) / 2]), rtol=1e-6)
  # 'names': the label whose name has no word falls back to its mean row.
  rows, grams = label_features.label_feature_matrix(
      "names", 3, ["TAG_a", "TAG_b", "TAG_?"], X, Y, 8)
  rows = rows.toarray()
  np.testing.assert_array_equal(rows[:2, :3], 0)
  np.testing.assert_allclose(rows[2, :3], got[2], rtol=1e-6)
  np.testing.assert_array_equal(rows[:, 3:], grams.toarray())
  with pytest.raises(ValueError, match="need label names"):
    label_features.label_feature_matrix("both", 3, None, X, Y, 8)


def test_padded_rows_keeps_the_largest_weighted_entries():
  m = sp.csr_matrix(np.array([[0., 5., 1., 3., 0.], [0., 0., 0., 0., 2.],
                              [0., 0., 0., 0., 0.]]))
  ids, vals = label_features.padded_rows(m, 2, weights=np.array(
      [1., 1., 10., 1., 1.]))
  np.testing.assert_array_equal(ids, [[1, 2], [4, -1], [-1, -1]])
  np.testing.assert_array_equal(vals, [[5., 1.], [2., 0.], [0., 0.]])


def test_in_batch_psl_matches_numpy():
  rng = np.random.default_rng(0)
  num_labels, b, d = 30, 6, 5
  q = rng.standard_normal((b, d)).astype(np.float32)
  table = rng.standard_normal((num_labels, d)).astype(np.float32)
  labels = np.full((b, 4), -1, np.int32)
  for i in range(b):
    n = rng.integers(1, 5)
    labels[i, :n] = np.sort(rng.choice(num_labels, n, replace=False))
  hard = rng.integers(-1, num_labels, (b, 3)).astype(np.int32)
  key = jax.random.key(3)
  where = np.array([True] * 5 + [False])
  got = jax.jit(lambda q, t: unidec.in_batch_psl(
      q, labels, hard, key, 2, num_labels, (lambda m: t[m],), 7.0, where))(
          q, table)
  picked = np.asarray(losses.pick_some_labels(labels, 2, key))
  cand = np.unique(np.concatenate([picked.ravel(), hard.ravel()]))
  cand = cand[cand >= 0]
  per = []
  for i in range(b):
    s = 7.0 * table[cand] @ q[i]
    neg = ~np.isin(cand, labels[i])
    terms = [np.log(np.exp(s[cand == p]).sum() + np.exp(s[neg]).sum())
             - s[cand == p][0] for p in picked[i] if p >= 0]
    per.append(np.mean(terms) if terms else 0.)
  np.testing.assert_allclose(float(got), np.mean(per[:5]), rtol=1e-5)
  assert losses.psl is losses.pick_some_labels_loss


def test_label_to_query_psl_matches_numpy():
  # Transposed PSL: each label some valid example picked is a query over
  # the valid examples; its picked examples are positives, non-holders
  # negatives, other holders left out; mean over such labels.
  rng = np.random.default_rng(1)
  b, m = 7, 9
  s = rng.standard_normal((b, m)).astype(np.float32) * 3
  positives = rng.random((b, m)) < 0.3
  picked = positives & (rng.random((b, m)) < 0.6)
  where = np.array([True] * 6 + [False])
  got = float(jax.jit(unidec.label_to_query_psl)(s, positives, picked, where))
  per = []
  for j in range(m):
    holders = positives[:, j] & where
    chosen = [i for i in range(b) if picked[i, j] and where[i]]
    if not chosen:
      continue
    neg = where & ~holders
    per.append(np.mean([np.log(np.exp(s[i, j]) + np.exp(s[neg, j]).sum())
                        - s[i, j] for i in chosen]))
  np.testing.assert_allclose(got, np.mean(per), rtol=1e-5)


def test_in_batch_psl_adds_the_reverse_direction_per_table():
  rng = np.random.default_rng(2)
  num_labels, b, d = 20, 5, 4
  q = rng.standard_normal((b, d)).astype(np.float32)
  table = rng.standard_normal((num_labels, d)).astype(np.float32)
  labels = np.array([[0, 3], [3, -1], [5, 7], [7, -1], [9, 0]], np.int32)
  hard = rng.integers(0, num_labels, (b, 2)).astype(np.int32)
  key = jax.random.key(0)
  call = lambda flags: float(unidec.in_batch_psl(
      q, labels, hard, key, 2, num_labels, (lambda m: table[m],) * 2, 5.0,
      None, label_to_query=flags))
  one_way = call(())
  assert call((False, False)) == pytest.approx(one_way)
  both = call((True, False))
  assert both > one_way  # the reverse term of table 0 is positive
  assert call((True, True)) == pytest.approx(one_way + 2 * (both - one_way),
                                             rel=1e-5)
  with pytest.raises(ValueError, match="1 entries for 2 tables"):
    call((True,))


def synthetic_config(method):
  config = config_lib.base_config()
  config.name = f"synthetic_{method}"
  config.data.name = "synthetic"
  config.data.num_classes = 100
  config.data.num_features = 1000
  config.data.num_train = 2048
  config.data.num_test = 512
  config.encoder.embed_dim = 64
  config.encoder.hidden = (64,)
  config.head.type = method
  config.head.num_hard_negatives = 8
  config.head.shortlist_size = 20
  config.head.refresh_every = 20
  config.head.proxy_steps = 0  # lightdxml: joint (the cycle: test_lightdxml)
  config.batch_size = 64
  config.eval_batch_size = 512
  config.num_train_steps = 160
  config.log_every = 40
  config.checkpoint_every = 0
  config.optimizer.learning_rate = 5e-3
  return config


# P@1 the learning checks must reach (a random ranking of 100 labels with ~5
# positives per example has P@1 ~0.05). Measured on this config: unidec
# 0.92, lightdxml 0.73 (2-core CPU, 2026-11-23).
SYNTHETIC_P1 = {"unidec": 0.8, "lightdxml": 0.6}


def learns(method, tmp_path, mesh_shape=(-1, 1), **head):
  config = synthetic_config(method)
  config.mesh.shape = mesh_shape
  for key, value in head.items():
    config.head[key] = value
  results = train.train_and_evaluate(config, tmp_path)
  assert results["P@1"] >= SYNTHETIC_P1[method], results
  return results


def test_unidec_learns_synthetic_with_kmeans_index(tmp_path):
  # Synthetic data has no label names: label features are mean features.
  learns("unidec", tmp_path, index="kmeans", index_clusters=8, index_probe=4)


def test_unidec_learns_synthetic_with_the_symmetric_loss(tmp_path):
  learns("unidec", tmp_path, label_to_query=True)


def test_unidec_checkpoint_holds_index_and_step(tmp_path):
  config = synthetic_config("unidec")
  config.num_train_steps = 3
  config.head.refresh_every = 2
  # C = 100 > 50: 'auto' switches to the k-means index (int32 members and
  # centroids in the state); classifier vectors sharded over 4 devices.
  config.head.exact_index_max_labels = 50
  config.head.index_clusters = 8
  config.head.index_probe = 4
  config.mesh.shape = (2, 4)
  trainer = train.Trainer(config, tmp_path)
  state = trainer.init_state()
  assert nnx.merge(trainer.graphdef, state)[0].index.kind == "kmeans"
  it = iter(registry.pipeline.train_loader(trainer.data.train, 64, seed=0))
  batches = [next(it) for _ in range(4)]
  for step in range(3):
    state, _ = trainer.train_step(state, batches[step], step)
  model = nnx.merge(trainer.graphdef, state)[0]
  assert int(model.steps[...]) == 3
  trainer.checkpointer.save(3, state, it.get_state())
  _, restored, _ = trainer.checkpointer.restore_latest(trainer.abstract_state)
  jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(state),
               nnx.to_pure_dict(restored))
  # The step after a resume refreshes (3 % 2 != 0: no) exactly as without.
  a, _ = trainer.train_step(state, batches[3], 3)
  b, _ = trainer.train_step(restored, batches[3], 3)
  jax.tree.map(np.testing.assert_allclose, nnx.to_pure_dict(a),
               nnx.to_pure_dict(b))
  trainer.checkpointer.close()


def test_label_names_come_from_the_mulan_xml(shared_data):
  config = load_module(REPO_ROOT / "configs" / "bibtex.py").get_config(
      "head=unidec")
  config.data.data_dir = str(shared_data)
  data = datasets.load_dataset(config.data, 0)
  names = registry.label_names(config.data, data)
  assert len(names) == 159 and names[4] == "TAG_algorithms"


def runlocal_trains(dataset, head, tmp_path, num_classes):
  """configs/{dataset}.py:head={head},runlocal, cut to 2 steps, trains and
  evaluates."""
  config = load_module(REPO_ROOT / "configs" / f"{dataset}.py").get_config(
      f"head={head},runlocal")
  config.num_train_steps = 2
  results = train.train_and_evaluate(config, tmp_path)
  assert results["head"] == config.head.type
  assert results["num_classes"] == num_classes
  assert results["P@1"] > 0.0 and {"P@3", "P@5"} <= set(results)


# One end-to-end run per method (the bibtex config's code path is the same;
# every config still loads and validates in test_configs.py).
@pytest.mark.parametrize("dataset,num_classes", [("delicious", 983)])
def test_runlocal_unidec_configs_train(dataset, num_classes, tmp_path):
  runlocal_trains(dataset, "unidec", tmp_path, num_classes)
