"""LightDXML: the proxy / shortlist / classifier cycle, learning, trainer."""

from flax import nnx
import jax
import numpy as np
import pytest

from conftest import REPO_ROOT
from mhe_jax import config_lib
from mhe_jax import registry
from mhe_jax.data import datasets
from mhe_jax.nn.encoders import SparseMLPEncoder
from mhe_jax.nn.lightdxml import LightDXML
from test_unidec import learns
from test_unidec import runlocal_trains


def tiny_batch(rng, b=8, v=40, c=12):
  labels = np.full((b, 3), -1, np.int32)
  for i in range(b):
    n = rng.integers(1, 4)
    labels[i, :n] = np.sort(rng.choice(c, n, replace=False))
  return dict(feature_ids=rng.integers(0, v, (b, 6)).astype(np.int32),
              feature_values=np.ones((b, 6), np.float32), labels=labels,
              mask=np.ones(b, bool))


def test_cycle_trains_proxies_then_classifier_and_rebuilds_between():
  rng = np.random.default_rng(0)
  encoder = SparseMLPEncoder(40, 8, (8,), rngs=nnx.Rngs(0))
  model = LightDXML(encoder, ("feature_ids", "feature_values"), 12,
                    num_hard_negatives=4, shortlist_size=6, proxy_steps=2,
                    classifier_steps=3, rngs=nnx.Rngs(1))
  batch = tiny_batch(rng)

  @nnx.jit
  def grads(model, rng):
    return nnx.grad(lambda m: m.loss(batch, rng=rng))(model)

  normed = lambda p: p / np.linalg.norm(p, axis=1, keepdims=True)
  for step in range(10):
    proxies = np.asarray(model.proxies[...])
    before = np.asarray(model.index.vectors[...])
    g = grads(model, jax.random.key(step))
    in_proxy_phase = step % 5 < 2
    assert (np.abs(g["proxies"][...]).max() > 0) == in_proxy_phase, step
    assert (np.abs(g["kernel"][...]).max() > 0) == (not in_proxy_phase), step
    after = np.asarray(model.index.vectors[...])
    if step % 5 == 2:  # stage 2: index rebuilt from the current proxies
      np.testing.assert_allclose(after, normed(proxies), rtol=1e-5)
    else:
      np.testing.assert_array_equal(after, before)
    # Move the proxies, as training would, so a rebuild is visible.
    model.proxies[...] = proxies + 0.1 * rng.standard_normal(proxies.shape)
  assert int(model.steps[...]) == 10
  scores, labels = nnx.jit(lambda m: m.topk(batch, 5))(model)
  labels = np.asarray(labels)
  assert ((labels >= 0) & (labels < 12)).all()
  assert all(len(set(row)) == 5 for row in labels)
  assert (np.diff(np.asarray(scores), axis=1) <= 0).all()


def test_lightdxml_learns_synthetic_on_a_classes_mesh(tmp_path):
  # Proxies, classifier and bias sharded over a 4-device 'classes' axis.
  learns("lightdxml", tmp_path, mesh_shape=(2, 4))


# One end-to-end run per method (the delicious config's code path is the
# same; every config still loads and validates in test_configs.py).
@pytest.mark.parametrize("dataset,num_classes", [("bibtex", 159)])
def test_runlocal_lightdxml_configs_train(dataset, num_classes, tmp_path):
  runlocal_trains(dataset, "lightdxml", tmp_path, num_classes)


@pytest.mark.parametrize("method,expected", [("lightdxml", "exact"),
                                             ("unidec", "kmeans")])
def test_auto_index_is_exact_for_lightdxml_above_the_size_switch(
    shared_data, method, expected):
  config = config_lib.from_file(
      REPO_ROOT / "configs" / "bibtex.py", f"head={method},runlocal",
      {"head.index": "auto", "head.exact_index_max_labels": 100,
       "head.index_probe": 16, "data.data_dir": str(shared_data)})
  data = datasets.load_dataset(config.data, config.seed)
  assert data.num_classes > config.head.exact_index_max_labels
  model = nnx.eval_shape(
      lambda: registry.build_model(config, data, nnx.Rngs(0)))
  assert model.index.kind == expected
