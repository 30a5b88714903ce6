"""Bibtex (159 tags, 4880 train / 2515 test): MHC cascade head, 2 levels.

Same encoder and schedule as bibtex_vanilla (tf-idf sparse_mlp 512/512,
dropout 0.2, adam 2e-3 cosine, batch 128, 800 steps); the head is a 13 x 13
cascade (per-level BCE, teacher-forced prefixes), beam 8 of the 13 groups,
64-d prefix embeddings.

Command:   python -m mhe_jax.main --config=configs/bibtex_mhc.py --workdir=/tmp/bibtex_mhc
Hardware:  2-core CPU, no accelerator (shared with other jobs).
Walltime:  3 min 27 s measured end to end (174 s
           in the training loop, 1,245,402 parameters, 800 steps).
Reached:   P@1 / P@3 / P@5 = 54.6 / 31.0 / 22.1, PSP@5 = 44.1 (test split).
Reference: bibtex_vanilla 60.5 / 37.2 / 27.2; one-vs-rest 64.1 / 39.9 / 29.4.
Tuning:    none beyond bibtex_vanilla's settings; one validation run
           (--config.data.validation_fraction=0.1) gave 53.9 / 29.6 / 22.1.
Arguments: ``--config=configs/bibtex_mhc.py:runlocal`` shrinks it to seconds.
"""

import pathlib

from mhe_jax import config_lib


def get_config(arg: str | None = None):
  # Data, encoder, schedule and runlocal are bibtex_vanilla's; only the head
  # differs.
  config = config_lib.from_file(
      pathlib.Path(__file__).with_name("bibtex_vanilla.py"), arg)
  config.name = "bibtex_mhc"
  config.head.type = "mhc"
  config.head.num_heads = 2
  config.head.beam = 8
  config.head.hidden = 64
  return config
