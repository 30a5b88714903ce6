"""The parameters' moving average (config.optimizer.ema_decay).

References: a numpy EMA of the same parameter trajectory, a trainer without
the average evaluating the numpy average, and the loaded predictor's weights.
"""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mhe_jax
from mhe_jax import averaging
from mhe_jax import config_lib
from mhe_jax import train
from mhe_jax import workdir as workdir_lib
from mhe_jax.data import pipeline
import tiny_config


def _numpy_decay(decay, t):
  return min(decay, (1. + t) / (10. + t))


def test_param_ema_follows_numpy():
  rng = np.random.default_rng(0)
  params = {"a": jnp.asarray(rng.normal(size=3), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(2, 2)), jnp.float32)}
  tx = averaging.with_ema(optax.sgd(0.1), 0.9)
  state = tx.init(params)
  want_p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  want_avg = {k: v.copy() for k, v in want_p.items()}
  for t in range(15):
    grads = {k: rng.normal(size=v.shape) for k, v in want_p.items()}
    updates, state = tx.update(jax.tree.map(jnp.float32, grads), state,
                               params)
    params = optax.apply_updates(params, updates)
    d = _numpy_decay(0.9, t)
    for k in want_p:
      want_p[k] = want_p[k] - 0.1 * grads[k]
      want_avg[k] = d * want_avg[k] + (1 - d) * want_p[k]
  got = state[1].average
  assert int(state[1].count) == 15
  for k in want_p:
    np.testing.assert_allclose(params[k], want_p[k], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[k], want_avg[k], rtol=1e-5, atol=1e-6)
  # The sgd updates pass through unchanged.
  updates, _ = tx.update({"a": jnp.ones(3), "b": jnp.ones((2, 2))}, state,
                         params)
  np.testing.assert_allclose(updates["a"], -0.1 * np.ones(3))


def test_param_ema_argument_errors():
  for bad in (1.0, -0.1, 2.0):
    with pytest.raises(ValueError, match=r"ema decay must be in \[0, 1\)"):
      averaging.param_ema(bad)
  tx = averaging.param_ema(0.5)
  state = tx.init({"a": jnp.zeros(2)})
  with pytest.raises(ValueError, match="needs the parameters"):
    tx.update({"a": jnp.zeros(2)}, state)
  with pytest.raises(ValueError, match="holds no parameter average"):
    averaging.average_of(nnx.State({0: {}, 1: {"opt_state": {}}}))


def _params_np(model_state):
  return jax.tree.map(np.asarray,
                      nnx.to_pure_dict(nnx.filter_state(model_state,
                                                        nnx.Param)))


def test_trainer_keeps_and_evaluates_the_average(tmp_path):
  decay, steps = 0.8, 6
  config = tiny_config.make(steps, 0, **{"optimizer.ema_decay": decay})
  trainer = train.Trainer(config, tmp_path / "ema")
  state = trainer.init_state()
  avg = _params_np(state[0])
  batches = iter(pipeline.train_loader(trainer.data.train, config.batch_size,
                                       seed=config.seed))
  for t in range(steps):
    state, metrics = trainer.train_step(state, next(batches), t)
    assert bool(metrics["finite"])
    d = _numpy_decay(decay, t)
    avg = jax.tree.map(lambda a, p, d=d: d * a + (1 - d) * p, avg,
                       _params_np(state[0]))
  average = averaging.average_of(state)
  got = jax.tree.map(np.asarray, nnx.to_pure_dict(average))
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5,
                                                       atol=1e-6), got, avg)
  # Sharded like the parameters.
  raw = nnx.filter_state(state[0], nnx.Param)
  jax.tree.map(lambda a, p: a.sharding.is_equivalent_to(p.sharding, a.ndim)
               or pytest.fail(f"{a.sharding} != {p.sharding}"),
               nnx.to_pure_dict(average), nnx.to_pure_dict(raw))
  raw_params = _params_np(state[0])
  assert any(not np.allclose(a, r) for a, r in zip(
      jax.tree.leaves(avg), jax.tree.leaves(raw_params)))
  # What the trainer evaluates: a trainer without the average, given the
  # numpy average as its parameters, scores the same.
  plain = train.Trainer(tiny_config.make(steps, 0), tmp_path / "plain")
  plain_state = plain.init_state()
  params = jax.tree.map(lambda v: v, nnx.filter_state(plain_state[0],
                                                      nnx.Param))
  nnx.replace_by_pure_dict(params, jax.tree.map(jnp.asarray, avg))
  plain_state[0] = nnx.merge_state(plain_state[0], params)
  got, want = trainer.evaluate(state), plain.evaluate(plain_state)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-6, err_msg=key)
  trainer.checkpointer.close()
  plain.checkpointer.close()


def test_load_serves_the_average(tmp_path):
  config = tiny_config.make(6, 3, **{"optimizer.ema_decay": 0.9})
  train.train_and_evaluate(config, tmp_path)
  trainer = train.Trainer(config, tmp_path)
  _, state, _ = trainer.checkpointer.restore_latest(trainer.abstract_state)
  trainer.checkpointer.close()
  want = jax.tree.map(np.asarray,
                      nnx.to_pure_dict(averaging.average_of(state)))
  predictor = mhe_jax.load(tmp_path, batch_sizes=(8,))
  got = _params_np(predictor.state)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-6),
               got, want)
  raw = _params_np(state[0])
  assert any(not np.allclose(g, r) for g, r in zip(jax.tree.leaves(got),
                                                   jax.tree.leaves(raw)))


@pytest.mark.parametrize("overrides, match", [
    ({"optimizer.ema_decay": 1.0}, r"ema_decay must be in \[0, 1\)"),
    ({"optimizer.ema_decay": -0.5}, r"ema_decay must be in \[0, 1\)"),
    ({"optimizer.ema_decay": 0.9, "head.type": "mhs",
      "head.sparse_update": True}, "cannot be combined"),
    ({"optimizer.ema_decay": 0.9, "head.type": "vanilla",
      "head.fit": "least_squares", "head.multilabel_loss": "squared",
      "num_train_steps": 1}, "one closed-form solve"),
])
def test_config_refuses(overrides, match):
  config = tiny_config.make(6, 3, **overrides)
  with pytest.raises(ValueError, match=match):
    config_lib.validate(config)


def test_resume_refuses_another_decay(tmp_path):
  train.train_and_evaluate(tiny_config.make(3, 3), tmp_path)
  with pytest.raises(workdir_lib.ConfigMismatchError,
                     match="optimizer.ema_decay"):
    train.train_and_evaluate(
        tiny_config.make(6, 3, **{"optimizer.ema_decay": 0.9}), tmp_path)
