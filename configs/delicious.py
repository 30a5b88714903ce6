r"""Delicious (983 tags; 12,920 train / 3,185 test): one encoder, seven heads.

Every head: tf-idf bag of words -> sparse_mlp (512-d bag embedding, one 512
ReLU layer, dropout 0.2); adam 2e-3, cosine to 0, batch 256, 500 steps
(~10 epochs). ``best`` (no argument): the full 983-way sigmoid BCE
classifier on a wider encoder (two 2048 ReLU layers, dropout 0.5, word
dropout 0.2), batch 128, 2,400 steps. ``head=vanilla``: the full BCE
classifier; ``mhp``: two heads (32 x 31), per-head BCE, exact product
top-k; ``mhc``: 32 x 31 cascade, beam 16, 64-d prefix embeddings; ``mhs``:
32 groups of 31, BCE over 8 sampled groups (every step samples all 32: the
batch's label slots outnumber them); ``unidec``: dual encoder + classifier,
labels embedded from their tag names, 300 steps (mhe_jax.nn.unidec);
``lightdxml``: proxy shortlists, 50 + 50 step cycles (mhe_jax.nn.lightdxml).

Command:   python -m mhe_jax.main --config=configs/delicious.py --workdir=/tmp/delicious_best
           (a head: --config=configs/delicious.py:head=mhc; ``,runlocal``: 20
           steps)
Hardware:  2-core CPU, no accelerator (best: idle; the others shared).
Walltime:  training loop: best 220 s; vanilla 50 s, mhp 49 s, mhc 53 s,
           mhs 74 s, unidec 90 s, lightdxml 194 s.
Reached:   test P@1 / P@3 / P@5, PSP@5: best 69.3 / 63.2 / 58.9, 37.0;
           vanilla 63.7 / 58.3 / 53.1, 31.1; mhp 32.0 / 23.3 / 20.6, 12.8;
           mhc 65.0 / 57.5 / 51.7, 30.0; mhs 64.8 / 58.7 / 53.3, 31.2;
           unidec 66.9 / 60.7 / 55.7, 33.5; lightdxml 63.9 / 57.8 / 52.5, 30.7.
           Peers and ensembles: docs/results.md; validation trials:
           benchmarks/results/xmc_tuning.json.
"""

from mhe_jax import config_lib

HEADS = ("best", "vanilla", "mhp", "mhc", "mhs", "unidec", "lightdxml")


def get_config(arg: str | None = None):
  args = config_lib.parse_arg(arg, head="best", runlocal=False)
  if args.head not in HEADS:
    raise ValueError(f"configs/delicious.py: head={args.head!r}; known: "
                     f"{list(HEADS)}")
  config = config_lib.base_config()
  config.name = f"delicious_{args.head}"
  config.data.name = "delicious"
  # What every head shares: the encoder, the batch and the schedule.
  config.encoder.type = "sparse_mlp"
  config.encoder.embed_dim = 512
  config.encoder.hidden = (512,)
  config.encoder.dropout = 0.2
  config.head.type = "vanilla" if args.head == "best" else args.head
  config.batch_size = 256
  config.eval_batch_size = 512
  config.num_train_steps = 500
  config.log_every = 100
  config.checkpoint_every = 0
  config.optimizer.learning_rate = 2e-3
  if args.head == "best":  # what validation chose (xmc_tuning.json)
    config.encoder.hidden = (2048, 2048)
    config.encoder.dropout = 0.5
    config.encoder.input_dropout = 0.2
    config.batch_size = 128
    config.num_train_steps = 2400
  elif args.head == "mhs":
    config.head.num_sampled_groups = 8
  elif args.head == "unidec":  # PSL k=3, 16 hard negatives, 100-label shortlist
    config.head.refresh_every = 50
    config.num_train_steps = 300
  elif args.head == "lightdxml":  # 50 proxy + 50 classifier steps a cycle
    config.head.num_hard_negatives = 32
  if args.runlocal:
    config.num_train_steps = 20
  return config
