"""Default: MHP on built-in synthetic multi-label data (the README's main job).

Command:   python -m mhe_jax.main --config=configs/default.py --workdir=/tmp/default
Hardware:  2-core CPU, no accelerator.
Walltime:  53 s end to end (46 s training, 600 steps of 256) on 2 shared cores.
Reached:   P@1 0.891, P@3 0.642, P@5 0.458, PSP@5 0.201 on the 2,000 synthetic
           test examples (10,000 labels), 2026-11-23.
Arguments: ``--config=configs/default.py:runlocal`` shrinks it further.
"""

from mhe_jax import config_lib


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.name = "default"
  config.data.name = "synthetic"
  config.data.multilabel = True
  config.data.num_classes = 10_000
  config.data.num_features = 20_000
  config.data.num_train = 20_000
  config.data.num_test = 2_000
  config.encoder.type = "sparse_mlp"
  config.encoder.embed_dim = 256
  config.encoder.hidden = (256,)
  config.head.type = "mhp"
  config.head.num_heads = 2
  config.batch_size = 256
  config.num_train_steps = 600
  config.log_every = 100
  config.checkpoint_every = 300
  config.optimizer.learning_rate = 2e-3
  if arg == "runlocal":
    config.data.num_train = 2_000
    config.data.num_test = 500
    config.num_train_steps = 50
    config.log_every = 10
    config.checkpoint_every = 25
  return config
