r"""Shakespeare next word (11,697 classes): one encoder, four heads.

Tiny-shakespeare, whitespace tokens, min_count 1; the last 10% of the
stream is the test part. Every head: the 4 previous tokens -> token_context
encoder (128-d embeddings concatenated, one 512 ReLU layer); adam 2e-3,
cosine to 0, batch 256, 600 steps (~0.7 epoch of the ~228k training tokens).
``mhp`` (no argument): two softmax heads, radices 117 x 100, per-head CE on
the word's digits; top-1 the per-head argmax, top-5 the exact product top-k.
``head=vanilla``: the full softmax; ``mhp3``: three heads (26 x 25 x 18);
``mhs``: the full classifier as 975 groups of 12 words (radices (1024, 12)),
each step a softmax over the batch's true groups plus random others, 256
groups (3,072 classes); evaluation uses the full classifier.

Command:   python -m mhe_jax.main --config=configs/shakespeare.py --workdir=/tmp/shakespeare_mhp
           (a head: --config=configs/shakespeare.py:head=mhs; ``,runlocal``:
           a smaller encoder, 20 steps, the full test split)
Hardware:  2-core CPU, no accelerator (shared with other jobs).
Walltime:  training loop: mhp 10 s, vanilla 134 s, mhp3 39 s, mhs 53 s.
Reached:   test acc@1 / acc@5: mhp 14.7 / 30.6; vanilla 15.0 / 31.4;
           mhp3 14.0 / 27.6; mhs 15.1 / 32.0. Over seeds:
           docs/results.md (python benchmarks/shakespeare.py).
"""

from mhe_jax import config_lib

HEADS = ("mhp", "vanilla", "mhp3", "mhs")


def get_config(arg: str | None = None):
  args = config_lib.parse_arg(arg, head="mhp", runlocal=False)
  if args.head not in HEADS:
    raise ValueError(f"configs/shakespeare.py: head={args.head!r}; known: "
                     f"{list(HEADS)}")
  config = config_lib.base_config()
  config.name = f"shakespeare_{args.head}"
  config.data.name = "shakespeare"
  config.data.context = 4
  config.data.min_count = 1
  # What every head shares: the encoder, the batch and the schedule.
  config.encoder.type = "token_context"
  config.encoder.embed_dim = 128
  config.encoder.hidden = (512,)
  config.head.type = "mhp" if args.head == "mhp3" else args.head
  config.head.num_heads = 3 if args.head == "mhp3" else 2
  if args.head == "mhs":
    config.head.radices = (1024, 12)
    config.head.num_sampled_groups = 256
  config.batch_size = 256
  config.eval_batch_size = 1024
  config.num_train_steps = 600
  config.log_every = 100
  config.checkpoint_every = 0
  config.optimizer.learning_rate = 2e-3
  if args.runlocal:  # the full test split is still evaluated
    config.encoder.embed_dim = 32
    config.encoder.hidden = (128,)
    config.num_train_steps = 20
  return config
