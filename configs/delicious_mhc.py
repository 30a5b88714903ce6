"""Delicious (983 tags, 12920 train / 3185 test): MHC cascade head, 32 x 31.

Same encoder and schedule for all four Delicious configs: tf-idf bag of words
-> sparse_mlp (512-d bag embedding, one 512 ReLU layer, dropout 0.2); adam
2e-3, cosine to 0, batch 256, 500 steps (~10 epochs).
Two-level cascade (per-level BCE, teacher-forced prefixes), beam 16 of the
32 first-level groups, 64-d prefix embeddings.

Command:   python -m mhe_jax.main --config=configs/delicious_mhc.py --workdir=/tmp/delicious_mhc
Hardware:  2-core CPU, no accelerator (shared with other jobs).
Walltime:  0 min 59 s measured end to end (53 s
           in the training loop, 572,991 parameters, 500 steps).
Reached:   P@1 / P@3 / P@5 = 65.0 / 57.5 / 51.7, PSP@5 = 30.0 (test split).
Reference: one-vs-rest logistic regression on this split 65.8 / 59.8 / 55.0.
           delicious_vanilla: 63.7 / 58.3 / 53.2.
Tuning:    none beyond delicious_vanilla's settings.
Arguments: ``--config=configs/delicious_mhc.py:runlocal`` shrinks it to seconds.
"""

import pathlib

from mhe_jax import config_lib


def get_config(arg: str | None = None):
  # Data, encoder, schedule and runlocal are delicious_vanilla's; only the head
  # differs.
  config = config_lib.from_file(
      pathlib.Path(__file__).with_name("delicious_vanilla.py"), arg)
  config.name = "delicious_mhc"
  config.head.type = "mhc"
  config.head.num_heads = 2
  config.head.beam = 16
  config.head.hidden = 64
  return config
