"""Bibtex (159 tags, 4880 train / 2515 test): full (vanilla) BCE classifier.

The baseline every MHE head on Bibtex is compared with: tf-idf bag of words
-> sparse_mlp (512-d bag embedding, one 512 ReLU layer, dropout 0.2) -> a
full 159-way per-label sigmoid BCE classifier; adam 2e-3, cosine to 0,
batch 128, 800 steps (~21 epochs).

Command:   python -m mhe_jax.main --config=configs/bibtex_vanilla.py --workdir=/tmp/bibtex_vanilla
Hardware:  2-core CPU, no accelerator (shared with other jobs).
Walltime:  1 min 58 s measured end to end (109 s
           in the training loop, 1,284,255 parameters, 800 steps).
Reached:   P@1 / P@3 / P@5 = 60.5 / 37.2 / 27.2, PSP@5 = 54.9 (test split).
Reference: one-vs-rest logistic regression on this split 64.1 / 39.9 / 29.4.
Tuning:    on --config.data.validation_fraction=0.1 only (P@1/P@3/P@5):
           these settings 61.1 / 37.4 / 27.0; dropout 0.5 59.8 / 37.2 / 27.3;
           dropout 0.5 + 1600 steps 57.4 / 35.1 / 25.8; 400 steps
           51.6 / 31.1 / 23.2; adamw wd 0.05 59.6 / 37.3 / 27.2. The test split
           was only used for the number above.
Arguments: ``--config=configs/bibtex_vanilla.py:runlocal`` shrinks it to seconds.
"""

from mhe_jax import config_lib


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.name = "bibtex_vanilla"
  config.data.name = "bibtex"
  config.encoder.type = "sparse_mlp"
  config.encoder.embed_dim = 512
  config.encoder.hidden = (512,)
  config.encoder.dropout = 0.2
  config.head.type = "vanilla"
  config.batch_size = 128
  config.eval_batch_size = 512
  config.num_train_steps = 800
  config.log_every = 100
  config.checkpoint_every = 0
  config.optimizer.learning_rate = 2e-3
  if arg == "runlocal":
    config.num_train_steps = 20
  return config
