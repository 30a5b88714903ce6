r"""citeulike-t (52,946 tags; 20,780 train / 5,195 test articles).

Every head shares one encoder: tf-idf bag of words (training rows keep
their 64 largest tf-idf features, evaluation rows all) with word dropout
0.2 -> sparse_mlp (512-d bag embedding, one 512 ReLU layer, dropout 0.5);
adam 2e-3, cosine to 0, batch 128, 1200 steps (~7 epochs). The heads:

* ``best`` (no argument) = ``head=mhc``: Multi-Head Cascade as a label tree,
  labels in clustered order (balanced k-means of label centroids) under
  radices (1024, 52), a vector per label at the second level
  (``child_embedding='table'``, width 256), the label-set softmax of the
  chain-rule distribution, beam 16.
* ``head=vanilla``: the full 52,946-way classifier with the label-set
  softmax and the label-prior bias (``head.bias_init='prior'``).
* ``head=mhp`` / ``head=mhs``: two balanced heads with their defaults (MHS
  with the prior bias; multi-label batches hold labels in every group, so
  its sample is the whole classifier).

Command:   python -m mhe_jax.main --config=configs/citeulike_t.py --workdir=/tmp/citeulike_t
           (other heads: --config=configs/citeulike_t.py:head=vanilla, ...;
           any head with ``,runlocal`` for a seconds-long smoke run)
Hardware:  2-core CPU, no accelerator.
Walltime:  427 s in the training loop (1200 steps, 24.8M parameters) plus
           ~90 s of label clustering at start (vanilla: 626 s, mhs: 595 s,
           mhp: 89 s).
Reached:   test P@1 / P@3 / P@5 = 55.07 / 39.76 / 32.16 (vanilla 55.32 /
           39.77 / 32.26, mhs 40.71 / 28.67 / 23.14, mhp 32.84 / 15.07 /
           10.84; omikuji 61.73 / 45.65 / 37.36 in the same run of
           benchmarks/extreme.py). Chosen on --config.data.validation_fraction
           =0.2 (53.5 / 38.9 / 31.9 there; omikuji 61.5 / 45.1 / 36.6);
           trials: benchmarks/results/citeulike_tuning.json.
"""

from mhe_jax import config_lib

HEADS = ("best", "vanilla", "mhp", "mhc", "mhs")


def get_config(arg: str | None = None):
  args = config_lib.parse_arg(arg, head="best", runlocal=False)
  if args.head not in HEADS:
    raise ValueError(f"configs/citeulike_t.py: head={args.head!r}; known: "
                     f"{list(HEADS)}")
  head = "mhc" if args.head == "best" else args.head
  config = config_lib.base_config()
  config.name = f"citeulike_t_{args.head}"
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
  return config
