"""optimizer.classifier: the head's own rule and rate (registry.head_split)
against optax applied by hand to the encoder and to the head; the config's
checks; one trainer step."""

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

from mhe_jax import config_lib
from mhe_jax import registry
from mhe_jax import train
import tiny_config

STEPS = 3


class _EncoderAndHead(nnx.Module):

  def __init__(self, rngs):
    self.encoder = nnx.Linear(4, 3, rngs=rngs)
    self.head = nnx.Linear(3, 5, rngs=rngs)

  def __call__(self, x):
    return self.head(jnp.tanh(self.encoder(x)))


def _optimizer_config(**overrides):
  cfg = config_lib.base_config().optimizer
  cfg.schedule = "constant"
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


def _loss(model, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def _run(cfg):
  """STEPS steps of nnx.Optimizer(make_optimizer(cfg)); the parameters
  before each step, each step's gradients and the final parameters."""
  model = _EncoderAndHead(nnx.Rngs(0))
  opt = nnx.Optimizer(model, registry.make_optimizer(cfg, STEPS),
                      wrt=nnx.Param)
  params, grads = [], []
  for i in range(STEPS):
    key = jax.random.key(i)
    x = jax.random.normal(key, (6, 4))
    y = jax.random.randint(jax.random.fold_in(key, 1), (6,), 0, 5)
    g = nnx.grad(_loss)(model, x, y)
    params.append(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    grads.append(nnx.to_pure_dict(g))
    opt.update(model, g)
  return params, grads, nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _by_hand(tx, params, grads, part):
  """``tx`` applied to one part's parameters and gradients, step by step."""
  p = params[0][part]
  state = tx.init(p)
  for g in grads:
    updates, state = tx.update(g[part], state, p)
    p = optax.apply_updates(p, updates)
  return p


@pytest.mark.parametrize("classifier,head_lr,want_head", [
    ("sgd_momentum", 0.5, optax.sgd(0.5, momentum=0.9)),
    ("sgd", 0.5, optax.sgd(0.5)),
    ("sgd_momentum", 0.0, optax.sgd(1e-2, momentum=0.9)),  # the base rate
    ("same", 0.3, optax.adam(0.3)),
])
def test_head_takes_its_rule_and_the_encoder_the_base_one(classifier, head_lr,
                                                          want_head):
  cfg = _optimizer_config(name="adam", learning_rate=1e-2,
                          classifier=classifier,
                          classifier_learning_rate=head_lr)
  params, grads, got = _run(cfg)
  check = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  jax.tree.map(check, got["encoder"],
               _by_hand(optax.adam(1e-2), params, grads, "encoder"))
  jax.tree.map(check, got["head"],
               _by_hand(want_head, params, grads, "head"))


def test_same_rule_and_rate_is_the_base_optimizer():
  params, grads, got = _run(_optimizer_config(name="sgd", learning_rate=0.1))
  want = {part: _by_hand(optax.sgd(0.1, momentum=0.9), params, grads, part)
          for part in ("encoder", "head")}
  jax.tree.map(np.testing.assert_array_equal, got, want)


def test_gradient_clip_sees_every_parameter():
  """The clip is over the encoder's and the head's gradients together."""
  cfg = _optimizer_config(name="sgd", learning_rate=0.1, grad_clip=1e-3,
                          classifier="sgd_momentum",
                          classifier_learning_rate=0.2)
  params, grads, got = _run(cfg)
  tx = optax.chain(optax.clip_by_global_norm(1e-3), optax.multi_transform(
      {"base": optax.sgd(0.1, momentum=0.9),
       "classifier": optax.sgd(0.2, momentum=0.9)},
      lambda p: {"encoder": jax.tree.map(lambda _: "base", p["encoder"]),
                 "head": jax.tree.map(lambda _: "classifier", p["head"])}))
  want = params[0]
  state = tx.init(want)
  for g in grads:
    updates, state = tx.update(g, state, want)
    want = optax.apply_updates(want, updates)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               got, want)


def test_a_model_without_a_head_is_refused():
  tx = registry.make_optimizer(_optimizer_config(classifier="sgd_momentum"),
                               STEPS)
  with pytest.raises(ValueError, match="no parameter is under 'head'"):
    nnx.Optimizer(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), tx, wrt=nnx.Param)


@pytest.mark.parametrize("overrides,match", [
    ({"optimizer.classifier": "lion"},
     "must be 'same', 'sgd_momentum' or 'sgd'"),
    ({"optimizer.classifier_learning_rate": -1.0}, "must be >= 0"),
    ({"optimizer.classifier_learning_rate": 0.1, "head.type": "unidec"},
     "encoder \\+ head models"),
    ({"head.type": "mhs", "head.sparse_update": True,
      "head.tie_embeddings": True}, "cannot be combined with head.tie_embed"),
    ({"head.type": "mhs", "head.sampling_correction": "popularity"},
     "must be 'none' or 'logq'"),
    ({"head.type": "mhp", "head.sampling_correction": "logq"},
     "corrects MHS's sampled softmax"),
])
def test_config_checks(overrides, match):
  config = config_lib.override(tiny_config.get_config(), overrides,
                               where="test")
  with pytest.raises(ValueError, match=match):
    config_lib.validate(config)


def test_trainer_steps_with_a_momentum_classifier(tmp_path):
  """Class-sharded vanilla head: its momentum trace is sharded as it is."""
  config = tiny_config.make(2, 2, **{
      "head.type": "vanilla", "mesh.shape": (1, 8),
      "optimizer.classifier": "sgd_momentum",
      "optimizer.classifier_learning_rate": 0.1})
  trainer = train.Trainer(config, tmp_path)
  state = trainer.init_state()
  it = iter(train.pipeline.train_loader(trainer.data.train, 64, seed=0))
  state, metrics = trainer.train_step(state, next(it), 0)
  assert np.isfinite(float(metrics["loss"]))
  opt_state = state[1]["opt_state"]
  assert set(opt_state) == {"base", "classifier"}
  traces = opt_state["classifier"][0]["trace"]
  specs = sorted(str(t[...].sharding.spec) for t in traces.values())
  assert specs == [str(P("classes")), str(P(None, "classes"))], specs
  assert "mu" in opt_state["base"][0]  # the encoder's adam
