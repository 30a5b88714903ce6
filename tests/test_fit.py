"""The closed-form least-squares fit (mhe_jax.fit) against numpy ridge."""

import json

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from mhe_jax import fit
from mhe_jax import train
from mhe_jax.nn.mhc import MHCHead
from mhe_jax.nn.vanilla import VanillaHead
from mhe_jax.ops.codec import LabelCodec
import tiny_config as tiny_config_lib


def _problem(n=300, d=16, c=40, seed=0):
  """Features with a planted linear label structure, 1-4 labels a row."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, d)).astype(np.float32)
  scores = x @ rng.standard_normal((d, c)) + rng.standard_normal((n, c))
  y = np.zeros((n, c))
  for i in range(n):
    y[i, np.argsort(-scores[i])[:rng.integers(1, 5)]] = 1
  return x, sp.csr_matrix(y)


def _numpy_ridge(x, t, lam):
  x = np.asarray(x, np.float64)
  return np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]),
                         x.T @ np.asarray(t.todense(), np.float64))


def test_ridge_matches_the_normal_equations():
  x, y = _problem()
  np.testing.assert_allclose(fit.ridge(x, y, 0.5), _numpy_ridge(x, y, 0.5),
                             rtol=1e-4, atol=1e-5)


def test_ridge_refuses_bad_input():
  x, y = _problem()
  with pytest.raises(ValueError, match="penalty must be > 0"):
    fit.ridge(x, y, 0.0)
  with pytest.raises(ValueError, match="NaN or inf"):
    fit.ridge(np.where(x > 2, np.nan, x), y, 1.0)
  with pytest.raises(ValueError, match="targets have 299 rows"):
    fit.ridge(x, y[:299], 1.0)


def test_vanilla_fit_ranks_by_the_ridge_scores():
  x, y = _problem()
  head = VanillaHead(16, 40, multilabel=True, multilabel_loss="squared",
                     rngs=nnx.Rngs(0))
  fit.fit_head(head, x, y, 0.5)
  w = _numpy_ridge(x, y, 0.5)
  scores, labels = head.topk(jnp.asarray(x), 5)
  ref = x @ w
  np.testing.assert_array_equal(np.asarray(labels),
                                np.argsort(-ref, axis=1, kind="stable")[:, :5])
  np.testing.assert_allclose(np.asarray(scores),
                             np.sort(ref, axis=1)[:, ::-1][:, :5], atol=1e-4)
  # The squared-error loss is the fit's objective: sum_c (z_c - y_c)^2.
  labels_bl = np.full((300, 8), -1)
  for i in range(300):
    row = y[i].indices
    labels_bl[i, :row.size] = row
  labels_bl[0, -1] = labels_bl[0, 0]  # a duplicated label counts once
  loss = head.per_example_loss(jnp.asarray(x), jnp.asarray(labels_bl))
  np.testing.assert_allclose(
      np.asarray(loss), ((ref - y.toarray()) ** 2).sum(1), rtol=1e-4)


@pytest.mark.parametrize("radices,beam", [((8, 5), 3), ((8, 5), 8),
                                          ((2, 4, 5), 2)])
def test_mhc_fit_routes_by_groups_and_ranks_by_leaves(radices, beam):
  x, y = _problem()
  perm = np.random.default_rng(1).permutation(40)
  codec = LabelCodec(radices, 40, permutation=perm)
  head = MHCHead(16, codec, beam=beam, hidden=16, multilabel=True,
                 multilabel_loss="squared", child_embedding="table",
                 rngs=nnx.Rngs(0))
  fit.fit_head(head, x, y, 0.5)
  codes = np.asarray(codec.to_codes(np.arange(40)))
  leaf = x @ _numpy_ridge(x, y, 0.5)  # [N, C] ridge score of every label
  dense = y.toarray()
  # Brute force of the regression rule: at each level keep the `beam` best
  # ridge scores of prefix membership among the children of the kept
  # prefixes; rank the reachable labels by their own ridge score.
  kept = None
  for level in range(1, len(radices)):
    prefix = codes // codec.strides[level - 1]
    n_h = prefix.max() + 1
    member = np.zeros((300, n_h))
    for p in range(n_h):
      member[:, p] = dense[:, prefix == p].max(1)
    z = x @ _numpy_ridge(x, sp.csr_matrix(member), 0.5)
    if kept is not None:
      parent = np.arange(n_h) // radices[level - 1]
      z = np.where(np.stack([np.isin(parent, k) for k in kept]), z, -np.inf)
    kept = np.argsort(-z, axis=1, kind="stable")[:, :min(beam, n_h)]
  last_prefix = codes // codec.strides[len(radices) - 2]
  reach = np.stack([np.isin(last_prefix, k) for k in kept])
  ref = np.where(reach, leaf, -np.inf)
  scores, labels = head.topk(jnp.asarray(x), 3)
  np.testing.assert_allclose(np.asarray(scores),
                             np.sort(ref, axis=1)[:, ::-1][:, :3], atol=1e-4)
  got = np.take_along_axis(ref, np.asarray(labels), 1)
  np.testing.assert_allclose(got, np.asarray(scores), atol=1e-4)
  # log_probs is the same score function.
  np.testing.assert_allclose(
      np.asarray(head.log_probs(jnp.asarray(x), labels)), got, atol=1e-4)
  if beam >= codec.radices[0] and len(radices) == 2:
    # The beam covers every group: the exact top-k of the one-vs-rest ridge.
    np.testing.assert_array_equal(
        np.asarray(labels), np.argsort(-leaf, axis=1, kind="stable")[:, :3])


def test_mhc_squared_loss_is_the_levels_squared_error():
  x, y = _problem(n=20)
  codec = LabelCodec((8, 5), 40)
  head = MHCHead(16, codec, beam=8, hidden=16, multilabel=True,
                 multilabel_loss="squared", child_embedding="table",
                 rngs=nnx.Rngs(3))
  labels_bl = np.full((20, 4), -1)
  for i in range(20):
    labels_bl[i, :y[i].indices.size] = y[i].indices
  loss = np.asarray(head.per_example_loss(jnp.asarray(x),
                                          jnp.asarray(labels_bl)))
  # The beam (8) covers all 8 groups: every group and every label is scored.
  z1 = np.asarray(head(jnp.asarray(x)))
  z2 = np.concatenate([np.asarray(head.child_logits(
      jnp.asarray(x), 2, jnp.full((20, 1), g)))[:, 0] for g in range(8)], 1)
  dense = y.toarray()
  t1 = dense.reshape(20, 8, 5).max(-1)
  ref = ((z1 - t1) ** 2).sum(1) + ((z2 - dense) ** 2).sum(1)
  np.testing.assert_allclose(loss, ref, rtol=1e-4)


def test_fit_refuses_what_it_cannot_fit():
  x, y = _problem()
  codec = LabelCodec((8, 5), 40)
  kw = dict(beam=2, multilabel=True, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="multilabel_loss='squared'"):
    fit.fit_head(MHCHead(16, codec, hidden=16, child_embedding="table", **kw),
                 x, y, 1.0)
  with pytest.raises(ValueError, match="child_embedding='table'"):
    fit.fit_head(MHCHead(16, codec, hidden=16, multilabel_loss="squared",
                         **kw), x, y, 1.0)
  with pytest.raises(ValueError, match="head.hidden=8 must equal"):
    fit.fit_head(MHCHead(16, codec, hidden=8, multilabel_loss="squared",
                         child_embedding="table", **kw), x, y, 1.0)


def _ls_config(head_type, **overrides):
  config = tiny_config_lib.make(1, 0, **{
      "head.type": head_type, "head.fit": "least_squares",
      "head.multilabel_loss": "squared", "head.ridge_lambda": 0.5,
      "encoder.embed_init": "svd", "encoder.hidden": (),
      "encoder.embed_dim": 32, "head.hidden": 32,
      "head.child_embedding": "table", "head.beam": 32, **overrides})
  return config


def test_trainer_fits_in_closed_form_and_does_not_refit(tmp_path):
  vanilla = train.train_and_evaluate(_ls_config("vanilla"), tmp_path / "v")
  mhc = train.train_and_evaluate(_ls_config("mhc"), tmp_path / "m")
  assert vanilla["steps"] == mhc["steps"] == 1
  # 5 labels of 500 a row: chance P@1 ~1%; the fit finds the structure.
  assert vanilla["P@1"] > 0.3, vanilla
  # A beam over every group reaches every label: the same ranking.
  assert mhc["P@1"] == pytest.approx(vanilla["P@1"], abs=1e-6)
  assert mhc["P@5"] == pytest.approx(vanilla["P@5"], abs=1e-6)
  again = train.train_and_evaluate(_ls_config("mhc"), tmp_path / "m")
  assert again["P@1"] == mhc["P@1"]
  assert json.loads((tmp_path / "m" / "results.json").read_text())[
      "steps"] == 1


@pytest.mark.parametrize("overrides,match", [
    ({"num_train_steps": 5}, "set num_train_steps=1"),
    ({"head.type": "mhp"}, "fits head.type 'vanilla' or 'mhc'"),
    ({"head.ridge_lambda": 0.0}, "ridge_lambda must be > 0"),
])
def test_config_errors(tmp_path, overrides, match):
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(_ls_config("mhc", **overrides), tmp_path)
