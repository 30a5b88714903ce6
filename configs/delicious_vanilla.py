"""Delicious (983 tags, 12920 train / 3185 test): full (vanilla) BCE classifier.

Same encoder and schedule for all four Delicious configs: tf-idf bag of words
-> sparse_mlp (512-d bag embedding, one 512 ReLU layer, dropout 0.2); adam
2e-3, cosine to 0, batch 256, 500 steps (~10 epochs).

Command:   python -m mhe_jax.main --config=configs/delicious_vanilla.py --workdir=/tmp/delicious_vanilla
Hardware:  2-core CPU, no accelerator (shared with other jobs).
Walltime:  0 min 55 s measured end to end (50 s
           in the training loop, 1,022,935 parameters, 500 steps).
Reached:   P@1 / P@3 / P@5 = 63.7 / 58.3 / 53.1, PSP@5 = 31.1 (test split).
Reference: one-vs-rest logistic regression on this split 65.8 / 59.8 / 55.0.
Tuning:    settings checked with one run on
           --config.data.validation_fraction=0.1 (66.1 / 59.7 / 53.9 there);
           the test split was only used for the number above.
Arguments: ``--config=configs/delicious_vanilla.py:runlocal`` shrinks it to seconds.
"""

from mhe_jax import config_lib


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.name = "delicious_vanilla"
  config.data.name = "delicious"
  config.encoder.type = "sparse_mlp"
  config.encoder.embed_dim = 512
  config.encoder.hidden = (512,)
  config.encoder.dropout = 0.2
  config.head.type = "vanilla"
  config.batch_size = 256
  config.eval_batch_size = 512
  config.num_train_steps = 500
  config.log_every = 100
  config.checkpoint_every = 0
  config.optimizer.learning_rate = 2e-3
  if arg == "runlocal":
    config.num_train_steps = 20
  return config
