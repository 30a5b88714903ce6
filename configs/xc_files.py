r"""Any Extreme Classification Repository text-format train/test pair.

Generic bag-of-words defaults: tf-idf sparse_mlp (512-d bag embedding, one
512 ReLU layer, dropout 0.2) -> head chosen with --config.head.type
(vanilla by default: the most accurate while C * 512 weights fit; use
mhp / mhc / mhs, 2 heads, for very large label sets); adam 2e-3, cosine to
0, batch 128, 800 steps. Scale --config.num_train_steps with the data
(about 5-20 epochs: steps = epochs * N / 128).

Command:   python -m mhe_jax.main --config=configs/xc_files.py --workdir=/tmp/xc_files \
             --config.data.train=../shared/data/delicious/train.txt \
             --config.data.test=../shared/data/delicious/test.txt \
             --config.head.type=vanilla
Hardware:  2-core CPU, no accelerator (shared with other jobs).
Walltime:  0 min 47 s measured end to end (41 s
           in the training loop, 1,022,935 parameters, 800 steps).
Reached:   P@1 / P@3 / P@5 = 65.5 / 60.4 / 55.5, PSP@5 = 33.3 (test split).
Measured:  on the Delicious files as above (12,920 rows, so 800 steps is ~8
           epochs). delicious_vanilla, which has batch 256 / 500 steps, reached
           63.7 / 58.3 / 53.2 on the same split; the one-vs-rest reference is
           65.8 / 59.8 / 55.0.
Bibtex:    --config.data.train=../shared/data/bibtex/train.txt
           --config.data.test=../shared/data/bibtex/test.txt trains the same
           model with the same settings as bibtex_vanilla.
Arguments: ``--config=configs/xc_files.py:runlocal`` shrinks it to seconds.
"""

from mhe_jax import config_lib


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.name = "xc_files"
  config.data.name = "xc_files"
  config.data.train = ""
  config.data.test = ""
  config.encoder.type = "sparse_mlp"
  config.encoder.embed_dim = 512
  config.encoder.hidden = (512,)
  config.encoder.dropout = 0.2
  config.encoder.tfidf = True
  config.head.type = "vanilla"
  config.head.num_heads = 2
  config.batch_size = 128
  config.eval_batch_size = 512
  config.num_train_steps = 800
  config.log_every = 100
  config.checkpoint_every = 0
  config.optimizer.learning_rate = 2e-3
  if arg == "runlocal":
    config.num_train_steps = 20
  return config
