"""Delicious (983 tags, 12920 train / 3185 test): MHP head, 2 heads (32 x 31).

Same encoder and schedule for all four Delicious configs: tf-idf bag of words
-> sparse_mlp (512-d bag embedding, one 512 ReLU layer, dropout 0.2); adam
2e-3, cosine to 0, batch 256, 500 steps (~10 epochs).
Two heads trained with per-head BCE on the union of the labels' digits,
decoded by exact product top-k.

Command:   python -m mhe_jax.main --config=configs/delicious_mhp.py --workdir=/tmp/delicious_mhp
Hardware:  2-core CPU, no accelerator (shared with other jobs).
Walltime:  0 min 54 s measured end to end (49 s
           in the training loop, 550,975 parameters, 500 steps).
Reached:   P@1 / P@3 / P@5 = 32.0 / 23.3 / 20.6, PSP@5 = 12.8 (test split).
Reference: one-vs-rest logistic regression on this split 65.8 / 59.8 / 55.0.
           delicious_vanilla: 63.7 / 58.3 / 53.2.
           Multi-label MHP is far below a full classifier here: a Delicious
           example has ~19 tags, so the per-head digit unions admit hundreds of
           cross-term codes the product decode cannot tell from true labels.
Tuning:    none beyond delicious_vanilla's settings.
Arguments: ``--config=configs/delicious_mhp.py:runlocal`` shrinks it to seconds.
"""

import pathlib

from mhe_jax import config_lib


def get_config(arg: str | None = None):
  # Data, encoder, schedule and runlocal are delicious_vanilla's; only the head
  # differs.
  config = config_lib.from_file(
      pathlib.Path(__file__).with_name("delicious_vanilla.py"), arg)
  config.name = "delicious_mhp"
  config.head.type = "mhp"
  config.head.num_heads = 2
  config.head.multilabel_loss = "bce"
  return config
