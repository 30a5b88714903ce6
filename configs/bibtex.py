r"""Bibtex (159 tags; 4,880 train / 2,515 test): one encoder, seven heads.

Every head: tf-idf bag of words -> sparse_mlp (512-d bag embedding, one 512
ReLU layer, dropout 0.2); adam 2e-3, cosine to 0, batch 128, 800 steps
(~21 epochs). ``best`` (no argument): the full 159-way sigmoid BCE
classifier on a linear encoder (1024-d bag embedding, no hidden layer, no
dropout), adam 1e-2 for 300 steps. ``head=vanilla``: the full BCE
classifier; ``mhp``: two 13-way heads, per-head BCE, exact product top-k;
``mhc``: 13 x 13 cascade, beam 8, 64-d prefix embeddings; ``mhs``: 13
groups of 13, BCE over 4 sampled groups (every step samples all 13: the
batch's label slots outnumber them); ``unidec``: dual encoder + classifier,
labels embedded from their names and mean rows (mhe_jax.nn.unidec);
``lightdxml``: proxy shortlists, 50 + 50 step cycles (mhe_jax.nn.lightdxml).

Command:   python -m mhe_jax.main --config=configs/bibtex.py --workdir=/tmp/bibtex_best
           (a head: --config=configs/bibtex.py:head=mhc; ``,runlocal``: 20
           steps)
Hardware:  2-core CPU, no accelerator (shared with other jobs).
Walltime:  training loop: best 82 s; vanilla 109 s, mhp 148 s, mhc 174 s,
           mhs 74 s, unidec 99 s, lightdxml 222 s.
Reached:   test P@1 / P@3 / P@5, PSP@5: best 63.4 / 39.8 / 29.3, 59.7;
           vanilla 60.5 / 37.2 / 27.2, 54.9; mhp 38.6 / 19.9 / 15.0, 28.9;
           mhc 54.6 / 31.0 / 22.1, 44.1; mhs 60.6 / 36.8 / 27.4, 55.3;
           unidec 62.0 / 37.3 / 27.0, 54.6; lightdxml 62.4 / 38.1 / 28.2, 56.8.
           Peers and ensembles: docs/results.md; validation trials:
           benchmarks/results/xmc_tuning.json.
"""

from mhe_jax import config_lib

HEADS = ("best", "vanilla", "mhp", "mhc", "mhs", "unidec", "lightdxml")


def get_config(arg: str | None = None):
  args = config_lib.parse_arg(arg, head="best", runlocal=False)
  if args.head not in HEADS:
    raise ValueError(f"configs/bibtex.py: head={args.head!r}; known: "
                     f"{list(HEADS)}")
  config = config_lib.base_config()
  config.name = f"bibtex_{args.head}"
  config.data.name = "bibtex"
  # What every head shares: the encoder, the batch and the schedule.
  config.encoder.type = "sparse_mlp"
  config.encoder.embed_dim = 512
  config.encoder.hidden = (512,)
  config.encoder.dropout = 0.2
  config.head.type = "vanilla" if args.head == "best" else args.head
  config.batch_size = 128
  config.eval_batch_size = 512
  config.num_train_steps = 800
  config.log_every = 100
  config.checkpoint_every = 0
  config.optimizer.learning_rate = 2e-3
  if args.head == "best":  # linear; the short high-rate schedule regularises
    config.encoder.embed_dim = 1024
    config.encoder.hidden = ()
    config.encoder.dropout = 0.0
    config.optimizer.learning_rate = 1e-2
    config.num_train_steps = 300
  elif args.head == "mhc":
    config.head.beam = 8
  elif args.head == "mhs":
    config.head.num_sampled_groups = 4
  elif args.head == "unidec":  # PSL k=3, 16 hard negatives, 100-label shortlist
    config.head.refresh_every = 50
    config.head.label_features = "both"  # tag names + mean training rows
  elif args.head == "lightdxml":  # 50 proxy + 50 classifier steps a cycle
    config.head.num_hard_negatives = 32
  if args.runlocal:
    config.num_train_steps = 20
  return config
