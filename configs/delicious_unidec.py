"""Delicious (983 tags, 12920 train / 3185 test): UniDEC (dual encoder + classifier).

As bibtex_unidec (labels embedded from their tag names in delicious.xml by
the documents' encoder; PSL on dual-encoder and classifier scores with
in-batch + 16 hard negatives from the exact index, rebuilt every 50 steps;
top-100 shortlist ranked by 0.5 cos(q, e_l) + 0.5 cos(q, w_l)) with
delicious_vanilla's encoder and optimiser (tf-idf sparse_mlp 512/512,
dropout 0.2, adam 2e-3 cosine) and batch 256, 300 steps (~6 epochs).

Command:   python -m mhe_jax.main --config=configs/delicious_unidec.py --workdir=/tmp/delicious_unidec
Hardware:  2-core CPU, no accelerator (shared with other jobs).
Walltime:  1 min 37 s measured end to end (90 s
           in the training loop, 3,119,104 parameters, 300 steps;
           load average 4.63 at the end).
Reached:   P@1 / P@3 / P@5 = 66.9 / 60.7 / 55.7, PSP@5 = 33.5 (test split).
Reference: delicious_vanilla 63.7 / 58.3 / 53.1; one-vs-rest 65.8 / 59.8 / 55.0.
Tuning:    on --config.data.validation_fraction=0.2 only (P@1/P@3/P@5):
           these settings (300 steps) 67.8 / 61.2 / 55.7; 500 steps 68.2 /
           61.8 / 56.9 (better, but that run took ~10 min at load ~12; 300
           steps keeps the run under 5 min on the loaded CPU). Not a tuning
           choice but a check of the approximate index: head.index='kmeans'
           (32 balanced clusters of 31 labels, 8 probed) 66.9 / 59.1 / 53.9.
           The test split was only used for the number above.
Arguments: ``--config=configs/delicious_unidec.py:runlocal`` shrinks it to seconds.
"""

import pathlib

from mhe_jax import config_lib


def get_config(arg: str | None = None):
  # Data, encoder and runlocal are delicious_vanilla's; the head and the
  # number of steps differ.
  config = config_lib.from_file(
      pathlib.Path(__file__).with_name("delicious_vanilla.py"), arg)
  config.name = "delicious_unidec"
  config.head.type = "unidec"
  config.head.num_picked = 3
  config.head.num_hard_negatives = 16
  config.head.shortlist_size = 100
  config.head.refresh_every = 50
  config.head.logit_scale = 20.0
  config.head.score_mix = 0.5
  config.head.label_features = "auto"
  if arg != "runlocal":  # runlocal keeps delicious_vanilla's 20 steps
    config.num_train_steps = 300
  return config
