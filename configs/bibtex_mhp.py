"""Bibtex (159 tags, 4880 train / 2515 test): MHP head, 2 heads (13 x 13).

Same encoder and schedule as bibtex_vanilla (tf-idf sparse_mlp 512/512,
dropout 0.2, adam 2e-3 cosine, batch 128, 800 steps); the classifier is two
13-way heads trained with per-head BCE on the union of the labels' digits
and decoded by exact product top-k.

Command:   python -m mhe_jax.main --config=configs/bibtex_mhp.py --workdir=/tmp/bibtex_mhp
Hardware:  2-core CPU, no accelerator (shared with other jobs).
Walltime:  2 min 59 s measured end to end (148 s
           in the training loop, 1,216,026 parameters, 800 steps).
Reached:   P@1 / P@3 / P@5 = 38.6 / 19.9 / 15.0, PSP@5 = 28.9 (test split).
Reference: bibtex_vanilla 60.5 / 37.2 / 27.2; one-vs-rest 64.1 / 39.9 / 29.4.
           Multi-label MHP is far below a full classifier here: the union of
           digits of a 2.4-label example admits ~2.4^2 label codes, and the
           product decode cannot tell the true ones from the cross terms.
Tuning:    on --config.data.validation_fraction=0.1, multilabel_loss 'bce'
           (38.7 / 19.8 / 14.6) beat 'softmax' (27.7 / 18.0 / 14.2).
Arguments: ``--config=configs/bibtex_mhp.py:runlocal`` shrinks it to seconds.
"""

import pathlib

from mhe_jax import config_lib


def get_config(arg: str | None = None):
  # Data, encoder, schedule and runlocal are bibtex_vanilla's; only the head
  # differs.
  config = config_lib.from_file(
      pathlib.Path(__file__).with_name("bibtex_vanilla.py"), arg)
  config.name = "bibtex_mhp"
  config.head.type = "mhp"
  config.head.num_heads = 2
  return config
