"""A seconds-long config for trainer tests (also used as --config= by them)."""

from mhe_jax import config_lib


def get_config(arg=None):
  del arg
  config = config_lib.base_config()
  config.name = "tiny"
  config.data.name = "synthetic"
  config.data.num_classes = 500
  config.data.num_features = 2_000
  config.data.num_train = 1_024
  config.data.num_test = 300
  config.encoder.embed_dim = 32
  config.encoder.hidden = (32,)
  config.head.type = "mhp"
  config.batch_size = 64
  config.eval_batch_size = 128
  config.num_train_steps = 40
  config.log_every = 10
  config.checkpoint_every = 5
  config.keep_checkpoints = 3
  config.optimizer.learning_rate = 2e-3
  return config


def make(num_train_steps: int, checkpoint_every: int, /, **overrides):
  """get_config() with these defaults for the step counts, then dotted-key
  overrides (which may set the step counts too)."""
  config = get_config()
  config.num_train_steps = num_train_steps
  config.checkpoint_every = checkpoint_every
  return config_lib.override(config, overrides, where="tiny_config")
