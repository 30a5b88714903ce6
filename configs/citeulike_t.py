r"""citeulike-t (52,946 tags; 20,780 train / 5,195 test articles).

* ``best`` (no argument) = ``head=mhc,fit=least_squares``: Multi-Head
  Cascade as a two-level label tree fitted in closed form
  (``mhe_jax/fit.py``). Encoder: the rank-2048 LSA projection of the tf-idf
  rows (``encoder.embed_init='svd'``, no hidden layer). Labels in clustered
  order under radices (1024, 52); level 1 is the ridge regression of "has a
  tag in group g", level 2 a vector per tag, the ridge regression of the
  tag (lambda 0.3, squared loss); beam 16 over the groups, tags ranked by
  their level-2 outputs.
* ``head=vanilla,fit=least_squares``: the full 52,946-way ridge classifier
  on the same encoder.
* ``head=vanilla|mhp|mhc|mhs`` (``fit=gradient``): one trained encoder
  (tf-idf bag of words, training rows' 64 largest features, word dropout
  0.2, 512-d bag, one 512 ReLU layer, dropout 0.5; adam 2e-3, cosine, batch
  128, 1200 steps). mhc: the label tree above with 256-d tag vectors and the
  label-set softmax; vanilla: label-set softmax, label-prior bias; mhp / mhs:
  two balanced heads, BCE (mhs with the prior bias).

Command:   python -m mhe_jax.main --config=configs/citeulike_t.py --workdir=/tmp/citeulike_t
           (other variants: --config=configs/citeulike_t.py:head=vanilla, ...;
           ``,runlocal`` for a seconds-long smoke run)
Hardware:  2-core CPU, no accelerator.
Walltime:  ``best``: 117 s (encoding the training rows and the solves, on
           the CPU shared with another job); ``head=vanilla,fit=least_squares``
           19 s; the gradient heads 37-739 s (docs/results.md).
Reached:   ``best``: test P@1 / P@3 / P@5 64.12 / 47.08 / 38.14 (omikuji,
           the best peer of the same run: 61.52 / 45.70 / 37.16); the full
           ridge classifier 64.12 / 47.06 / 38.14; validation
           (``--config.data.validation_fraction=0.2``) 65.4 / 38.2 P@1 / P@5.
           Trials: benchmarks/results/citeulike_tuning.json.
"""

from mhe_jax import config_lib

HEADS = ("best", "vanilla", "mhp", "mhc", "mhs")
FITS = ("default", "gradient", "least_squares")


def _least_squares(config, runlocal: bool) -> None:
  """The closed-form fit on a rank-D LSA encoder (mhe_jax/fit.py)."""
  rank = 64 if runlocal else 2048
  config.data.train_max_features = 0
  config.encoder.embed_dim = rank
  config.encoder.embed_init = "svd"
  config.encoder.hidden = ()
  config.encoder.dropout = 0.0
  config.encoder.input_dropout = 0.0
  config.head.fit = "least_squares"
  config.head.multilabel_loss = "squared"
  config.head.ridge_lambda = 0.3
  config.head.hidden = rank
  config.head.bias_init = "zeros"
  config.num_train_steps = 1
  config.eval_every = 0


def get_config(arg: str | None = None):
  args = config_lib.parse_arg(arg, head="best", fit="default", runlocal=False)
  if args.head not in HEADS:
    raise ValueError(f"configs/citeulike_t.py: head={args.head!r}; known: "
                     f"{list(HEADS)}")
  if args.fit not in FITS:
    raise ValueError(f"configs/citeulike_t.py: fit={args.fit!r}; known: "
                     f"{list(FITS)}")
  head = "mhc" if args.head == "best" else args.head
  fit = args.fit
  if fit == "default":
    fit = "least_squares" if args.head == "best" else "gradient"
  if fit == "least_squares" and head not in ("vanilla", "mhc"):
    raise ValueError("configs/citeulike_t.py: fit=least_squares fits "
                     f"head=best|vanilla|mhc, got head={args.head!r}")
  config = config_lib.base_config()
  config.name = f"citeulike_t_{args.head}" + (
      "" if args.fit == "default" else f"_{args.fit}")
  config.data.name = "citeulike_t"
  config.data.train_max_features = 64
  config.encoder.type = "sparse_mlp"
  config.encoder.embed_dim = 512
  config.encoder.hidden = (512,)
  config.encoder.dropout = 0.5
  config.encoder.input_dropout = 0.2
  config.encoder.tfidf = True
  config.head.type = head
  config.head.num_heads = 2
  if head == "mhc":
    config.head.label_order = "clustered"
    config.head.radices = (1024, 52)
    config.head.child_embedding = "table"
    config.head.hidden = 256
    config.head.beam = 16
    config.head.multilabel_loss = "softmax"
  elif head == "vanilla":
    config.head.multilabel_loss = "softmax"
    config.head.bias_init = "prior"
  elif head == "mhs":
    config.head.bias_init = "prior"
  config.batch_size = 128
  config.eval_batch_size = 512
  config.num_train_steps = 1200
  config.log_every = 100
  config.checkpoint_every = 0
  config.optimizer.learning_rate = 2e-3
  if args.runlocal:
    config.num_train_steps = 20
  if fit == "least_squares":
    _least_squares(config, args.runlocal)
  return config
