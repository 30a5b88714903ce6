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

from mhe_jax import config_lib


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.name = "shakespeare_mhp"
  config.data.name = "shakespeare"
  config.data.context = 4
  config.data.min_count = 1
  config.encoder.type = "token_context"
  config.encoder.embed_dim = 128
  config.encoder.hidden = (512,)
  config.head.type = "mhp"
  config.head.num_heads = 2
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
