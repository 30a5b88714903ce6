"""Shakespeare next word (11,697 classes): MHS head (sampled groups).

Tiny-shakespeare, whitespace tokens, min_count 1: 11,697 classes; the last 10%
of the stream is the test part. Same encoder and schedule for the three
Shakespeare configs: 4 previous tokens -> token_context encoder (128-d
embeddings concatenated, one 512 ReLU layer); adam 2e-3, cosine to 0,
batch 256, 600 steps (~0.7 epoch of the ~228k training tokens; the step
budget is shared so the heads' walltimes compare).
The full classifier is viewed as 975 groups of 12 words (radices (1024, 12));
each step computes logits only for the batch's true groups plus random
others, 256 groups in all (the sample size is
min(G, max(num_sampled_groups, B)) = 256), i.e. 3,072 of 11,697 classes,
softmax CE over them at the true word; evaluation uses the full classifier.

Command:   python -m mhe_jax.main --config=configs/shakespeare_mhs.py --workdir=/tmp/shakespeare_mhs
Hardware:  2-core CPU, no accelerator (shared with other jobs).
Walltime:  1 min 03 s measured end to end (53 s
           in the training loop, 7,761,972 parameters, 600 steps).
Reached:   acc@1 = 15.1, acc@5 = 32.0 (test split).
Reference: shakespeare_vanilla 15.0 / 31.4 (acc@1 / acc@5).
Tuning:    none (no run on the test split before the one above).
Arguments: ``--config=configs/shakespeare_mhs.py:runlocal`` shrinks it to seconds.
"""

import pathlib

from mhe_jax import config_lib


def get_config(arg: str | None = None):
  # Everything but the head is shakespeare_vanilla's (runlocal included).
  config = config_lib.from_file(
      pathlib.Path(__file__).with_name("shakespeare_vanilla.py"), arg)
  config.name = "shakespeare_mhs"
  config.head.type = "mhs"
  config.head.num_heads = 2
  config.head.radices = (1024, 12)
  config.head.num_sampled_groups = 256
  return config
