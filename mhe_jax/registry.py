"""Names -> components: encoders, heads, codecs, optimisers.

Every component the trainer builds is chosen by name from a table here; an
unknown name raises a ValueError listing the known ones (big_vision style).
Datasets are loaded by name in :mod:`mhe_jax.data.datasets`; the model is
built here from the :class:`~mhe_jax.data.datasets.Dataset` it returns.

Example::

  data = datasets.load_dataset(config.data, seed=0)   # a Dataset bundle
  model = build_model(config, data, nnx.Rngs(0))      # encoder + head
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mhe_jax import _extras
from mhe_jax import averaging

with _extras.requires("train"):
  import ml_collections

from mhe_jax import label_order as label_order_lib
from mhe_jax.data import formats
from mhe_jax.data import label_features
from mhe_jax.data import pipeline
from mhe_jax.data.datasets import DATASETS
from mhe_jax.data.datasets import Dataset
from mhe_jax.data.datasets import data_root
from mhe_jax.nn import encoders
from mhe_jax.nn import heads
from mhe_jax.nn import sequence
from mhe_jax.nn.lightdxml import LightDXML
from mhe_jax.nn.models import Classifier
from mhe_jax.nn.unidec import DualEncoderClassifier
from mhe_jax.ops.codec import LabelCodec


def lookup(table: dict[str, Any], name: str, what: str) -> Any:
  """``table[name]``, or a ValueError naming the known entries."""
  if name not in table:
    raise ValueError(f"unknown {what} {name!r}; known: {sorted(table)}")
  return table[name]


# ----------------------------------------------------------------- encoders
def _sparse_mlp(cfg, data: Dataset, rngs):
  if data.input_keys != ("feature_ids", "feature_values"):
    raise ValueError("encoder 'sparse_mlp' needs a bag-of-words dataset; "
                     f"this one gives {data.input_keys}")
  idf = data.idf if cfg.tfidf else None
  if cfg.embed_init not in ("normal", "svd"):
    raise ValueError(f"config.encoder.embed_init must be 'normal' or 'svd', "
                     f"got {cfg.embed_init!r}")
  start = None
  train_x = getattr(getattr(data.train, "data", None), "X", None)
  # A loader's stand-in dataset has no training rows: the table is restored.
  if cfg.embed_init == "svd" and train_x is not None:
    if (data.svd_embedding is None
        or data.svd_embedding.shape != (data.input_size, cfg.embed_dim)):
      data.svd_embedding = encoders.SparseMLPEncoder.svd_embedding(
          train_x, cfg.embed_dim, idf=idf, sublinear_tf=cfg.sublinear_tf)
    start = data.svd_embedding
  return encoders.SparseMLPEncoder(
      data.input_size, cfg.embed_dim, tuple(cfg.hidden), dropout=cfg.dropout,
      tfidf_idf=idf, input_dropout=cfg.input_dropout,
      sublinear_tf=cfg.sublinear_tf, activation=cfg.activation,
      embedding_init=start, rngs=rngs)


def _token_context(cfg, data: Dataset, rngs):
  if data.input_keys != ("features",):
    raise ValueError("encoder 'token_context' needs token contexts; this "
                     f"dataset gives {data.input_keys}")
  context = data.train.context
  return encoders.TokenContextEncoder(data.input_size, context, cfg.embed_dim,
                                      tuple(cfg.hidden), rngs=rngs)


def _sasrec(cfg, data: Dataset, rngs):
  if data.input_keys != ("items",):
    raise ValueError("encoder 'sasrec' needs item sequences; this dataset "
                     f"gives {data.input_keys}")
  return sequence.SASRecEncoder(
      data.input_size, data.train.max_len, cfg.embed_dim,
      num_blocks=cfg.num_blocks, num_heads=cfg.num_attention_heads,
      ffn_dim=cfg.ffn_dim or None, dropout=cfg.dropout,
      init_std=cfg.get("init_std") or None,
      layout=cfg.get("block_layout", "pre_ln"),
      dense_init_std=cfg.get("dense_init_std") or None, rngs=rngs)


ENCODERS = {"sparse_mlp": _sparse_mlp, "token_context": _token_context,
            "sasrec": _sasrec}


# -------------------------------------------------------------------- heads
def _plain_codec(cfg: ml_collections.ConfigDict, num_classes: int) -> LabelCodec:
  if cfg.radices:
    try:
      return LabelCodec(tuple(cfg.radices), num_classes)
    except ValueError as e:
      raise ValueError(f"config.head.radices={tuple(cfg.radices)}: {e}") from None
  return LabelCodec.balanced(num_classes, cfg.num_heads)


def train_label_centroids(data: Dataset, dim: int = 64) -> np.ndarray:
  """float32 ``[C, <= dim]`` label centroids from the training source.

  Bag-of-words data: each label's mean l2-normalised feature row
  (:func:`mhe_jax.label_order.label_centroids`); token data: the bag of
  each word's contexts (:func:`mhe_jax.label_order.token_label_centroids`);
  next-item data: the bag of each item's neighbours in the training
  histories (:func:`mhe_jax.label_order.sequence_label_centroids`).
  """
  source = data.train
  if isinstance(source, pipeline.SparseSource):
    return label_order_lib.label_centroids(source.data.X, source.data.Y,
                                           dim=dim)
  if isinstance(source, pipeline.TokenSource):
    return label_order_lib.token_label_centroids(
        source.ids, source.context, data.num_classes, dim=dim)
  if isinstance(source, pipeline.SequenceSource):
    return label_order_lib.sequence_label_centroids(
        source.histories.values, source.histories.offsets, data.num_classes,
        dim=dim)
  raise ValueError(f"no label centroids for a {type(source).__name__} "
                   "training source")


def _clustered_permutation(data: Dataset, codec: LabelCodec,
                           seed: int) -> np.ndarray:
  """Balanced clustering of the training label centroids, kept on ``data``
  (the trainer builds its model, hence its codec, several times)."""
  if data.label_permutation is None:
    data.label_permutation = label_order_lib.balanced_clustering_permutation(
        train_label_centroids(data), codec, seed=seed)
  return data.label_permutation


def make_codec(cfg: ml_collections.ConfigDict, num_classes: int,
               data: Dataset | None = None) -> LabelCodec:
  """The head's codec: explicit radices, or balanced for num_heads.

  ``cfg.label_order`` picks the label -> code permutation
  (:mod:`mhe_jax.label_order`); 'clustered' needs ``data`` (its training
  source gives the label centroids).
  """
  codec = _plain_codec(cfg, num_classes)
  order = cfg.get("label_order", "given")
  seed = cfg.get("label_order_seed", 0)
  if order == "clustered":
    if data is None:
      raise ValueError("config.head.label_order='clustered' needs the "
                       "training data (make_codec(cfg, C, data))")
    return codec.with_permutation(_clustered_permutation(data, codec, seed))
  if order not in label_order_lib.LABEL_ORDERS:
    raise ValueError(f"config.head.label_order={order!r}; known: "
                     f"{list(label_order_lib.LABEL_ORDERS)}")
  return codec.with_permutation(
      label_order_lib.label_permutation(order, codec, seed=seed))


def prior_bias(label_counts: np.ndarray, num_train: int, *,
               sigmoid: bool) -> np.ndarray:
  """float32 ``[C]`` classifier bias matching the training label frequencies.

  ``p_l = (n_l + 0.5) / (N + 1)`` (so unseen labels get a small, finite
  prior); the bias is ``logit(p_l)`` for per-label sigmoids (BCE) and
  ``log p_l`` for a softmax. A C-way BCE head started at bias 0 predicts
  0.5 for every label, and its first gradients push all C logits down at
  once through the shared encoder; started at the prior, the negatives'
  gradient is already near 0.
  """
  counts = np.asarray(label_counts, np.float64)
  p = (counts + 0.5) / (float(num_train) + 1.0)
  bias = np.log(p) - (np.log1p(-p) if sigmoid else 0.0)
  return bias.astype(np.float32)


def _bias_initializer(cfg, data: Dataset, *, sigmoid: bool):
  """The head's bias initializer for ``cfg.bias_init`` (zeros | prior)."""
  kind = cfg.get("bias_init", "zeros")
  if kind == "zeros":
    return nnx.initializers.zeros_init()
  if kind != "prior":
    raise ValueError(f"config.head.bias_init={kind!r}; known: "
                     "['prior', 'zeros']")
  bias = prior_bias(data.label_counts, data.num_train, sigmoid=sigmoid)

  def init(key, shape, dtype=np.float32):
    del key
    if tuple(shape) != bias.shape:
      raise ValueError(f"prior bias of shape {bias.shape} for a bias of "
                       f"shape {tuple(shape)}")
    return jnp.asarray(bias, dtype)
  return init


def _vanilla(cfg, in_features, data: Dataset, rngs, mesh=None):
  kw = {}
  if cfg.chunk_size:
    kw["chunk_size"] = cfg.chunk_size
  sigmoid = data.multilabel and cfg.multilabel_loss == "bce"
  kw["bias_init"] = _bias_initializer(cfg, data, sigmoid=sigmoid)
  return heads.VanillaHead(in_features, data.num_classes,
                           multilabel=data.multilabel,
                           multilabel_loss=cfg.multilabel_loss, mesh=mesh,
                           rngs=rngs, **kw)


def _mhp(cfg, in_features, data: Dataset, rngs, mesh=None):
  return heads.MHPHead(in_features, make_codec(cfg, data.num_classes, data),
                       multilabel=data.multilabel,
                       multilabel_loss=cfg.multilabel_loss, rngs=rngs)


def _mhc(cfg, in_features, data: Dataset, rngs, mesh=None):
  return heads.MHCHead(in_features, make_codec(cfg, data.num_classes, data),
                       beam=cfg.beam, hidden=cfg.hidden,
                       multilabel=data.multilabel,
                       multilabel_loss=cfg.multilabel_loss,
                       child_embedding=cfg.child_embedding, rngs=rngs)


def _mhs(cfg, in_features, data: Dataset, rngs, mesh=None):
  kind = cfg.get("bias_init", "zeros")
  _bias_initializer(cfg, data, sigmoid=data.multilabel)  # checks the name
  bias = (prior_bias(data.label_counts, data.num_train,
                     sigmoid=data.multilabel) if kind == "prior" else None)
  # sampling_correction='logq' (checked by config_lib.validate): the
  # training label counts; MHSHead refuses them for multi-label data.
  logq = cfg.get("sampling_correction", "none") == "logq"
  freq = data.label_counts if logq else None
  if logq and data.num_train == 0:  # a model_info spec (mhe_jax.load): the
    freq = np.ones(data.num_classes)  # checkpoint holds the frequencies
  return heads.MHSHead(in_features, make_codec(cfg, data.num_classes, data),
                       cfg.num_sampled_groups, multilabel=data.multilabel,
                       label_bias=bias, label_frequencies=freq, rngs=rngs)


HEADS = {"vanilla": _vanilla, "mhp": _mhp, "mhc": _mhc, "mhs": _mhs}


# ------------------------------- sibling methods (whole models, not heads)
def label_names(cfg: ml_collections.ConfigDict, data: Dataset) -> list[str] | None:
  """The dataset's label names, else data.labels_xml's, else the Mulan XML
  next to a named dataset (``<data root>/bibtex/bibtex.xml``), else None."""
  if data.label_names is not None:
    return list(data.label_names)
  path = cfg.labels_xml
  if not path and cfg.name in ("bibtex", "delicious"):
    path = data_root(cfg) / cfg.name / f"{cfg.name}.xml"
    path = path if path.exists() else ""
  return [n for n, _ in formats._read_label_xml(path)] if path else None  # pylint: disable=protected-access


def _shortlist_kwargs(cfg, num_classes):
  kind = cfg.index
  if kind == "auto":
    # LightDXML's free label proxies of rarely seen labels stay near random,
    # so k-means clusters of them mean little (measured: P@1 0.39 exact vs
    # 0.03 k-means at 10^4 labels): its 'auto' is always exact.
    exact = (num_classes <= cfg.exact_index_max_labels
             or cfg.type == "lightdxml")
    kind = "exact" if exact else "kmeans"
  return dict(num_picked=cfg.num_picked,
              num_hard_negatives=cfg.num_hard_negatives,
              shortlist_size=cfg.shortlist_size,
              refresh_every=cfg.refresh_every, logit_scale=cfg.logit_scale,
              index=kind, num_clusters=cfg.index_clusters,
              num_probe=cfg.index_probe)


@dataclasses.dataclass(frozen=True)
class UniDECLabelFeatures:
  """What UniDEC's label side is built from, fixed at the start of training.

  Attributes:
    ids: int32 ``[C, F_l]`` label feature ids, -1 padded.
    values: float32 ``[C, F_l]`` label feature values.
    input_size: the shared encoder's input features (the documents' ``F``,
      plus the name n-gram hash buckets when label names are used).
    idf: float32 ``[input_size]`` idf of the encoder's inputs, or None.
  """

  ids: np.ndarray
  values: np.ndarray
  input_size: int
  idf: np.ndarray | None


def unidec_label_features(config: ml_collections.ConfigDict,
                          data: Dataset) -> UniDECLabelFeatures:
  """UniDEC's label feature rows: ``data.label_features``, else computed.

  Computing them needs the bag-of-words training source (each label's mean
  training features, and its name n-grams); the result is kept on ``data``
  so the trainer's several model builds share it, and a model is rebuilt
  without the training data from the saved copy (``mhe_jax.load``).

  Raises:
    ValueError: no saved label features and no bag-of-words training data.
  """
  if data.label_features is not None:
    return data.label_features
  if not isinstance(data.train, pipeline.SparseSource):
    raise ValueError(
        "head.type='unidec' builds its label features from the bag-of-words "
        "training data, and this dataset's training source is a "
        f"{type(data.train).__name__}, not a SparseSource (to rebuild a "
        "trained model without its data, use mhe_jax.load on the workdir)")
  cfg = config.head
  train = data.train.data
  rows, grams = label_features.label_feature_matrix(
      cfg.label_features, data.input_size, label_names(config.data, data),
      train.X, train.Y, cfg.label_hash_buckets)
  idf = data.idf
  if grams is not None and idf is not None:  # n-gram rows: idf over labels
    idf = np.concatenate([idf, encoders.SparseMLPEncoder.idf_from_csr(grams)])
  ids, values = label_features.padded_rows(rows, cfg.label_feature_width,
                                           weights=idf)
  data.label_features = UniDECLabelFeatures(
      ids=ids, values=values, input_size=int(rows.shape[1]),
      idf=None if idf is None else np.asarray(idf, np.float32))
  return data.label_features


def _unidec(config, data: Dataset, rngs, mesh=None):
  del mesh
  cfg = config.head
  if config.encoder.type != "sparse_mlp":
    raise ValueError("head.type='unidec' embeds labels with the documents' "
                     "encoder, which must be encoder.type='sparse_mlp' "
                     f"(got {config.encoder.type!r})")
  if data.input_keys != ("feature_ids", "feature_values"):
    raise ValueError("head.type='unidec' needs a bag-of-words dataset "
                     "(inputs ('feature_ids', 'feature_values')); this one "
                     f"gives {data.input_keys}")
  rows = unidec_label_features(config, data)
  encoder = _sparse_mlp(config.encoder, dataclasses.replace(
      data, input_size=rows.input_size, idf=rows.idf), rngs)
  return DualEncoderClassifier(
      encoder, data.input_keys, rows.ids, rows.values,
      score_mix=cfg.score_mix, label_to_query=cfg.label_to_query, rngs=rngs,
      **_shortlist_kwargs(cfg, data.num_classes))


def _lightdxml(config, data: Dataset, rngs, mesh=None):
  del mesh
  cfg = config.head
  encoder = lookup(ENCODERS, config.encoder.type, "encoder")(
      config.encoder, data, rngs)
  return LightDXML(encoder, data.input_keys, data.num_classes,
                   proxy_steps=cfg.proxy_steps,
                   classifier_steps=cfg.classifier_steps, rngs=rngs,
                   **_shortlist_kwargs(cfg, data.num_classes))


# Methods that are whole models (their own loss/topk over encoder + labels).
MODELS = {"unidec": _unidec, "lightdxml": _lightdxml}


def build_model(config: ml_collections.ConfigDict, data: Dataset,
                rngs: nnx.Rngs, mesh=None) -> Classifier:
  """Encoder + head from the config (or a MODELS method by head.type)."""
  if config.head.type in MODELS:
    return MODELS[config.head.type](config, data, rngs, mesh)
  encoder = lookup(ENCODERS, config.encoder.type, "encoder")(
      config.encoder, data, rngs)
  head = lookup({**HEADS, **MODELS}, config.head.type, "head")(
      config.head, encoder.out_features, data, rngs, mesh)
  if config.head.tie_embeddings:
    tieable = (config.head.type in ("vanilla", "mhs") or (
        config.head.type == "mhc" and config.head.child_embedding == "table"))
    if not tieable or not hasattr(encoder, "tie"):
      raise ValueError(
          "config.head.tie_embeddings needs head.type='vanilla' or 'mhs' (or "
          "'mhc' with head.child_embedding='table') and an encoder with an item "
          f"table (sasrec), got head {config.head.type!r} (child_embedding="
          f"{config.head.child_embedding!r}) and encoder "
          f"{config.encoder.type!r}")
    if (config.head.type == "mhc" and
        config.head.hidden != config.encoder.embed_dim):
      raise ValueError(
          "config.head.tie_embeddings with head.type='mhc' needs head.hidden "
          f"= encoder.embed_dim (the leaf vectors are the item table), got "
          f"{config.head.hidden} and {config.encoder.embed_dim}")
    encoder.tie(head)
  return Classifier(encoder, head, data.input_keys,
                    max_rows=config.data.train_rows)


# --------------------------------------------------------------- optimisers
def _schedule(cfg, num_steps, peak: float | None = None):
  """The learning rate against the step: ``cfg.schedule`` up to ``peak``
  (default ``cfg.learning_rate``) after ``cfg.warmup_steps``."""
  peak = cfg.learning_rate if peak is None else peak
  if cfg.schedule == "constant":
    decay = optax.constant_schedule(peak)
  elif cfg.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak,
                                        max(num_steps - cfg.warmup_steps, 1))
  else:
    raise ValueError(f"unknown learning-rate schedule {cfg.schedule!r}; "
                     "known: ['constant', 'cosine']")
  if cfg.warmup_steps:
    warm = optax.linear_schedule(0.0, peak, cfg.warmup_steps)
    return optax.join_schedules([warm, decay], [cfg.warmup_steps])
  return decay


OPTIMIZERS = {
    "adam": lambda cfg, lr: optax.adam(lr),
    "adamw": lambda cfg, lr: optax.adamw(lr, weight_decay=cfg.weight_decay),
    "sgd": lambda cfg, lr: optax.sgd(lr, momentum=0.9),
}
# optimizer.classifier: the head's own rule ('same': optimizer.name's).
CLASSIFIER_OPTIMIZERS = {
    "same": None,
    "sgd_momentum": lambda cfg, lr: optax.sgd(lr, momentum=0.9),
    "sgd": lambda cfg, lr: optax.sgd(lr),
}
# head.sparse_update: the SparseUpdateOptimizer rule of optimizer.name's
# rules (under optimizer.classifier='same') and of optimizer.classifier's.
SPARSE_RULES = {"adam": "adam", "adamw": "adam", "sgd": "momentum"}
CLASSIFIER_SPARSE_RULES = {"sgd_momentum": "momentum", "sgd": "sgd"}


class HeadSplitState(NamedTuple):
  """:func:`head_split`'s state: the encoder's and the head's optimisers'."""
  base: Any
  classifier: Any


def _under_head(tree) -> tuple[list[Any], Any, list[bool]]:
  """``tree``'s leaves (nnx Variables kept whole), its treedef, and for
  each leaf whether its path starts with ``'head'``."""
  is_var = lambda x: isinstance(x, nnx.Variable)
  with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree,
                                                             is_leaf=is_var)
  first = lambda path: getattr(path[0], "key", getattr(path[0], "name", None))
  in_head = [bool(path) and first(path) == "head" for path, _ in with_paths]
  return [leaf for _, leaf in with_paths], treedef, in_head


def _parts(leaves, in_head):
  return ([x for x, h in zip(leaves, in_head) if not h],
          [x for x, h in zip(leaves, in_head) if h])


def head_split(base: optax.GradientTransformation,
               classifier: optax.GradientTransformation
               ) -> optax.GradientTransformation:
  """``classifier`` on the parameters under ``'head'``, ``base`` on the rest.

  What ``optax.multi_transform`` does with two labels, with each optimiser
  given the list of its own leaves: its state holds its parameters only (no
  masked placeholders, which ``nnx.eval_shape`` of an optimiser cannot
  size). Raises if no parameter is under ``'head'``.
  """

  def init(params):
    leaves, _, in_head = _under_head(params)
    if not any(in_head):
      raise ValueError("optimizer.classifier / classifier_learning_rate "
                       "need a model whose classifier is its 'head' "
                       "(encoder + head); no parameter is under 'head'")
    rest, head = _parts(leaves, in_head)
    return HeadSplitState(base.init(rest), classifier.init(head))

  def update(updates, state, params=None):
    leaves, treedef, in_head = _under_head(updates)
    rest, head = _parts(leaves, in_head)
    rest_params = head_params = None
    if params is not None:
      rest_params, head_params = _parts(_under_head(params)[0], in_head)
    rest, base_state = base.update(rest, state.base, rest_params)
    head, head_state = classifier.update(head, state.classifier, head_params)
    rest, head = iter(rest), iter(head)
    merged = [next(head) if h else next(rest) for h in in_head]
    return (jax.tree_util.tree_unflatten(treedef, merged),
            HeadSplitState(base_state, head_state))

  return optax.GradientTransformation(init, update)


def sparse_rule(cfg: ml_collections.ConfigDict, num_steps: int
                ) -> tuple[str, Callable[[Any], Any], float]:
  """The MHS classifier's sparse update (``head.sparse_update``).

  Returns:
    ``(rule, schedule, weight_decay)``: the
    :class:`mhe_jax.nn.mhs.SparseUpdateOptimizer` rule that
    ``cfg.classifier`` (``'same'``: ``cfg.name``) names ('adam' for adam
    and adamw, 'momentum' for the momentum SGDs, 'sgd' for plain SGD), its
    learning rate against the step (peak ``cfg.classifier_learning_rate``,
    0: ``cfg.learning_rate``) and AdamW's decay (adamw only).
  """
  if cfg.classifier == "same":
    rule = lookup(SPARSE_RULES, cfg.name, "optimizer")
  else:
    rule = lookup(CLASSIFIER_SPARSE_RULES, cfg.classifier,
                  "classifier optimizer")
  peak = cfg.classifier_learning_rate or cfg.learning_rate
  decay = (cfg.weight_decay if cfg.classifier == "same" and
           cfg.name == "adamw" else 0.0)
  return rule, _schedule(cfg, num_steps, peak), decay


def make_optimizer(cfg: ml_collections.ConfigDict, num_steps: int, *,
                   classifier: bool = True) -> optax.GradientTransformation:
  """The trainer's optax transformation from ``config.optimizer``.

  ``cfg.name`` at ``cfg.learning_rate`` (under ``cfg.schedule``) updates
  every parameter; or, when ``cfg.classifier`` is not ``'same'`` or
  ``cfg.classifier_learning_rate`` is set, every parameter but the head's,
  which take ``cfg.classifier``'s rule (``'same'``: ``cfg.name``'s) at
  ``cfg.classifier_learning_rate`` under the same schedule
  (:func:`head_split`; as Renee, Jain et al. MLSys 2023: Adam on the
  encoder, SGD with momentum on the classifier). ``cfg.grad_clip`` clips
  the global norm of all gradients first. ``classifier=False``: ``cfg.name``
  on every parameter it is given (the trainer's sparse update keeps the MHS
  classifier out of it and updates it by :func:`sparse_rule`).
  ``cfg.ema_decay > 0`` chains :func:`mhe_jax.averaging.param_ema` last: the
  optimiser state then holds the parameters' moving average.
  """
  base = lookup(OPTIMIZERS, cfg.name, "optimizer")
  tx = base(cfg, _schedule(cfg, num_steps))
  head_rule = lookup(CLASSIFIER_OPTIMIZERS, cfg.classifier,
                     "classifier optimizer")
  if classifier and (head_rule is not None or cfg.classifier_learning_rate):
    head_rule = head_rule or base
    peak = cfg.classifier_learning_rate or cfg.learning_rate
    tx = head_split(tx, head_rule(cfg, _schedule(cfg, num_steps, peak)))
  if cfg.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
  if cfg.get("ema_decay", 0.0):
    tx = averaging.with_ema(tx, cfg.ema_decay)
  return tx


def check_names(config: ml_collections.ConfigDict) -> None:
  """Every component name in the config is known (before anything is built).

  Raises the same ValueError as :func:`lookup`, listing the known names.
  """
  lookup(DATASETS, config.data.name, "dataset")
  lookup(ENCODERS, config.encoder.type, "encoder")
  lookup({**HEADS, **MODELS}, config.head.type, "head")
  lookup(OPTIMIZERS, config.optimizer.name, "optimizer")
  lookup(CLASSIFIER_OPTIMIZERS, config.optimizer.classifier,
         "classifier optimizer")
