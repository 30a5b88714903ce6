"""Shakespeare next word (11,697 classes): full softmax (vanilla) classifier.

Tiny-shakespeare, whitespace tokens, min_count 1: 11,697 classes; the last 10%
of the stream is the test part. Same encoder and schedule for the three
Shakespeare configs: 4 previous tokens -> token_context encoder (128-d
embeddings concatenated, one 512 ReLU layer); adam 2e-3, cosine to 0,
batch 256, 600 steps (~0.7 epoch of the ~228k training tokens; the step
budget is shared so the heads' walltimes compare).

Command:   python -m mhe_jax.main --config=configs/shakespeare_vanilla.py --workdir=/tmp/shakespeare_vanilla
Hardware:  2-core CPU, no accelerator (shared with other jobs).
Walltime:  2 min 22 s measured end to end (134 s
           in the training loop, 7,760,433 parameters, 600 steps).
Reached:   acc@1 = 15.0, acc@5 = 31.4 (test split).
Tuning:    none (no run on the test split before the one above).
Arguments: ``--config=configs/shakespeare_vanilla.py:runlocal`` shrinks it to seconds.
"""

from mhe_jax import config_lib


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.name = "shakespeare_vanilla"
  config.data.name = "shakespeare"
  config.data.context = 4
  config.data.min_count = 1
  config.encoder.type = "token_context"
  config.encoder.embed_dim = 128
  config.encoder.hidden = (512,)
  config.head.type = "vanilla"
  config.batch_size = 256
  config.eval_batch_size = 1024
  config.num_train_steps = 600
  config.log_every = 100
  config.checkpoint_every = 0
  config.optimizer.learning_rate = 2e-3
  if arg == "runlocal":  # the full test split is still evaluated
    config.encoder.embed_dim = 32
    config.encoder.hidden = (128,)
    config.num_train_steps = 20
  return config
