"""Shakespeare next word (11,697 classes): MHP head, 3 heads (26 x 25 x 18).

Tiny-shakespeare, whitespace tokens, min_count 1: 11,697 classes; the last
10% of the stream is the test part. Same encoder and schedule as the other
Shakespeare configs: 4 previous tokens -> token_context encoder (128-d
embeddings concatenated, one 512 ReLU layer); adam 2e-3, cosine to 0,
batch 256, 600 steps.
Three softmax heads (per-head CE on the word's three digits; balanced radices
(26, 25, 18), 11,700 codes); top-1 is the per-head argmax, top-5 the exact
product top-k over valid words. The head has 512 * 69 weights instead of
512 * 11,697 (vanilla) or 512 * 217 (shakespeare_mhp).

Command:   python -m mhe_jax.main --config=configs/shakespeare_mhp3.py --workdir=/tmp/shakespeare_mhp3
Hardware:  2-core CPU, no accelerator (shared with other jobs).
Walltime:  50 s measured end to end, run by benchmarks/shakespeare.py (39 s
           in the training loop, 1,795,269 parameters, 600 steps; load ~12).
Reached:   acc@1 = 14.0, acc@5 = 27.6 (test split, seed 0).
Reference: shakespeare_vanilla 15.0 / 31.4, shakespeare_mhp (H = 2)
           14.7 / 30.6 (acc@1 / acc@5).
Tuning:    none (no run on the test split before the one above).
Arguments: ``--config=configs/shakespeare_mhp3.py:runlocal`` shrinks it to seconds.
"""

import pathlib

from mhe_jax import config_lib


def get_config(arg: str | None = None):
  # Everything but the head is shakespeare_vanilla's (runlocal included).
  config = config_lib.from_file(
      pathlib.Path(__file__).with_name("shakespeare_vanilla.py"), arg)
  config.name = "shakespeare_mhp3"
  config.head.type = "mhp"
  config.head.num_heads = 3
  return config
