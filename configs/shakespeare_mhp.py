"""Shakespeare next word (11,697 classes): MHP head, 2 heads (radices 117 x 100).

Tiny-shakespeare, whitespace tokens, min_count 1: 11,697 classes; the last 10%
of the stream is the test part. Same encoder and schedule for the three
Shakespeare configs: 4 previous tokens -> token_context encoder (128-d
embeddings concatenated, one 512 ReLU layer); adam 2e-3, cosine to 0,
batch 256, 600 steps (~0.7 epoch of the ~228k training tokens; the step
budget is shared so the heads' walltimes compare).
Two softmax heads (per-head CE on the word's digits); top-1 is the per-head
argmax, top-5 the exact product top-k. The head has 512 * (117 + 100) weights
instead of 512 * 11,697, hence the ~13x shorter training loop.

Command:   python -m mhe_jax.main --config=configs/shakespeare_mhp.py --workdir=/tmp/shakespeare_mhp
Hardware:  2-core CPU, no accelerator (shared with other jobs).
Walltime:  0 min 14 s measured end to end (10 s
           in the training loop, 1,871,193 parameters, 600 steps).
Reached:   acc@1 = 14.7, acc@5 = 30.6 (test split).
Reference: shakespeare_vanilla 15.0 / 31.4 (acc@1 / acc@5).
Tuning:    none (no run on the test split before the one above).
Arguments: ``--config=configs/shakespeare_mhp.py:runlocal`` shrinks it to seconds.
"""

import pathlib

from mhe_jax import config_lib


def get_config(arg: str | None = None):
  # Everything but the head is shakespeare_vanilla's (runlocal included).
  config = config_lib.from_file(
      pathlib.Path(__file__).with_name("shakespeare_vanilla.py"), arg)
  config.name = "shakespeare_mhp"
  config.head.type = "mhp"
  config.head.num_heads = 2
  return config
