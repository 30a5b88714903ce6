"""The one declaration of every config key, and config validation.

Experiment configs (``configs/*.py``) start from :func:`base_config` and set
values; they may not add keys. :func:`validate` rejects unknown keys (with
the known ones listed) and values of the wrong kind before anything is built;
:func:`check_paths` rejects data paths that do not exist.

Example::

  config = base_config()
  config.head.type = "mhc"
  validate(config)
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
from typing import Any

from absl import logging

from mhe_jax import _extras
from mhe_jax import sharding

with _extras.requires("train"):
  import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """Every key the trainer reads, with its default and meaning."""
  c = ml_collections.ConfigDict()
  c.name = "default"          # Experiment name, recorded in results.json.
  c.seed = 0                  # Seeds init, data order, dropout and sampling.

  c.data = ml_collections.ConfigDict()
  c.data.name = "synthetic"   # Dataset: see mhe_jax.data.datasets.DATASETS.
  c.data.train = ""           # xc_files / arff_files: training file path.
  c.data.test = ""            # xc_files / arff_files: test file path.
  c.data.labels_xml = ""      # arff_files: Mulan XML naming the label attributes.
  c.data.data_dir = ""        # Real data root; "" -> $MHE_DATA_DIR or ../shared/data.
  c.data.tfds_name = ""       # tfds: a prepared builder, e.g. "mhe_xmc/bibtex".
  c.data.tfds_data_dir = ""   # tfds: the TFDS data directory it was prepared in.
  c.data.multilabel = True    # synthetic: multi-label (True) or single-label.
  c.data.num_classes = 10_000  # synthetic: number of labels C.
  c.data.num_features = 20_000  # synthetic: bag-of-words vocabulary size.
  c.data.num_train = 20_000   # synthetic: training examples.
  c.data.num_test = 2_000     # synthetic: test examples.
  c.data.zipf_exponent = 1.0  # synthetic: label frequency exponent.
  c.data.context = 4          # shakespeare: previous tokens per example.
  c.data.min_count = 1        # shakespeare: vocabulary minimum count.
  c.data.validation_fraction = 0.0  # >0: evaluate on this tail of train, not test.
                              # Leave-one-out (interaction) data: any >0 selects
                              # the validation targets (second-to-last items).
  c.data.max_len = 50         # Interaction data: positions per sequence (its
                              # last max_len items); 50 is SASRec's Beauty setting.
  # Interaction data: labelled positions a training batch scores (its B * T
  # rows compacted to this many); 0 -> all B * T. A batch with more labelled
  # positions raises (choose it above the largest batch's count).
  c.data.train_rows = 0
  c.data.max_features = 0     # Padded features per example; 0 -> longest row.
  # >0: training rows keep their this-many features of largest tf-idf (ties:
  # lower feature id) and are padded to it; evaluation rows are never cut.
  c.data.train_max_features = 0
  c.data.max_labels = 0       # Padded labels per example; 0 -> longest row.

  c.batch_size = 256          # Global training batch size.
  c.eval_batch_size = 512     # Global evaluation batch size.
  c.num_train_steps = 2000    # Optimiser steps.
  c.log_every = 100           # Steps between training-metric writes.
  c.eval_every = 0            # Steps between evaluations; 0 -> only at the end.
  c.checkpoint_every = 500    # Steps between checkpoints; 0 -> only at the end.
  c.keep_checkpoints = 3      # Checkpoints kept on disk.
  # A step whose loss or gradient norm is NaN or infinite is never applied;
  # then 'stop' raises naming the step (the last checkpoint stays the
  # newest), 'skip' drops that batch and counts it in train/skipped_steps.
  c.nonfinite = "stop"

  c.encoder = ml_collections.ConfigDict()
  c.encoder.type = "sparse_mlp"  # Encoder: see mhe_jax.registry.ENCODERS.
  c.encoder.embed_dim = 256   # Embedding width of the bag / token embeddings.
  c.encoder.hidden = (256,)   # Hidden widths of the MLP after the embedding.
  c.encoder.dropout = 0.0     # Dropout rate in the MLP (training only).
  c.encoder.tfidf = True      # sparse_mlp: weight feature values by idf.
  c.encoder.input_dropout = 0.0  # sparse_mlp: drop input features (training).
  c.encoder.sublinear_tf = False  # sparse_mlp: values -> log(1 + v) first.
  c.encoder.activation = "relu"  # sparse_mlp MLP: relu | bilinear ((xW+b)*(xV+c)).
  # sparse_mlp table start: 'normal' (N(0, 1/embed_dim)) or 'svd' (the top
  # embed_dim right singular vectors of the weighted training rows: LSA).
  c.encoder.embed_init = "normal"
  c.encoder.num_blocks = 2    # sasrec: pre-LayerNorm self-attention blocks.
  c.encoder.num_attention_heads = 1  # sasrec: heads per attention (divide embed_dim).
  c.encoder.ffn_dim = 0       # sasrec: feed-forward inner width; 0 -> embed_dim.
  # sasrec: std of the item / position tables at init (the tied classifier
  # kernel starts from the item table); 0 -> 1/sqrt(embed_dim).
  c.encoder.init_std = 0.0
  # sasrec: 'pre_ln' blocks, or 'sasrec' (the original SASRec block: normalised
  # queries, residuals add the normalised input, dropout on the attention
  # weights; mhe_jax.nn.sequence.SelfAttentionBlock).
  c.encoder.block_layout = "pre_ln"
  # sasrec: std of a normal init of the blocks' projection kernels; 0 ->
  # lecun-normal (he-normal for the feed-forward input).
  c.encoder.dense_init_std = 0.0

  c.head = ml_collections.ConfigDict()
  c.head.type = "mhp"         # Head: see mhe_jax.registry.HEADS.
  c.head.num_heads = 2        # MHE heads H (balanced radices).
  c.head.radices = ()         # Explicit radices; () -> balanced for num_heads.
  c.head.beam = 16            # mhc: prefixes kept per level.
  c.head.hidden = 64          # mhc: prefix embedding / projection width.
  c.head.child_embedding = "gated"  # mhc levels 2..H: gated | table (a row per child).
  c.head.num_sampled_groups = 64  # mhs: groups (of r_2.. classes) per step.
  # mhs: update only the sampled groups' classifier rows and their optimiser
  # state, by the sparse form of the classifier's rule (optimizer.classifier;
  # 'same': optimizer.name's): lazy Adam, lazy momentum SGD, or plain SGD
  # (exact); see docs/training.md.
  c.head.sparse_update = False
  # mhs, single-label: 'logq' subtracts from each sampled logit the log of
  # its group's probability of joining the sample (from the training label
  # frequencies; frequent groups are negatives more often), 'none' as in
  # the paper.
  c.head.sampling_correction = "none"
  c.head.multilabel_loss = "bce"  # vanilla/mhp/mhc multi-label loss: bce | softmax
                                  # (| squared: vanilla, mhc).
  c.head.chunk_size = 0       # vanilla: class chunk; 0 -> the head's default.
  # How the head is trained: 'gradient' (the optimizer, num_train_steps), or
  # 'least_squares' (vanilla / mhc with multilabel_loss='squared': each output
  # layer set to the ridge regression of its 0/1 targets on the encoder's
  # features, in closed form; num_train_steps must be 1), see mhe_jax/fit.py.
  c.head.fit = "gradient"
  c.head.ridge_lambda = 1.0   # head.fit='least_squares': the ridge penalty.
  # vanilla / mhc (child_embedding='table', hidden = encoder.embed_dim) +
  # sasrec: the classifier kernel (MHC: the last level's label vectors) is the
  # encoder's item embedding table (one [C, d] matrix).
  c.head.tie_embeddings = False
  # vanilla / mhs classifier bias at init: 'zeros', or 'prior' (the training
  # label frequencies: logit(p_l) for BCE, log(p_l) for a softmax), which
  # keeps a C-way BCE's first steps from pushing every logit down at once.
  c.head.bias_init = "zeros"
  # unidec / lightdxml (mhe_jax.nn.unidec, mhe_jax.nn.lightdxml): shortlists.
  c.head.num_picked = 3       # Positives picked per example per step (PSL k).
  c.head.num_hard_negatives = 16  # Shortlisted labels per example per step.
  c.head.shortlist_size = 100  # Labels shortlisted per example at inference.
  c.head.refresh_every = 100  # unidec, joint lightdxml: steps between index rebuilds.
  c.head.logit_scale = 20.0   # Cosine similarity multiplier in the PSL losses.
  c.head.score_mix = 0.5      # unidec: dual-encoder weight (1 - it: classifier).
  c.head.label_to_query = False  # unidec: symmetric dual-encoder PSL (+ label->query).
  c.head.label_features = "auto"  # unidec: names | mean | both | auto (names if any).
  c.head.label_feature_width = 32  # unidec: feature entries kept per label.
  c.head.label_hash_buckets = 4096  # unidec: hash buckets of name n-grams.
  c.head.index = "auto"       # Label index: exact | kmeans | auto (size switch).
  c.head.exact_index_max_labels = 50_000  # auto: exact up to this C (unidec;
                              # lightdxml's auto is always exact).
  c.head.index_clusters = 0   # kmeans clusters (power of 2); 0 -> ~sqrt(C).
  c.head.index_probe = 8      # kmeans clusters searched per query.
  c.head.proxy_steps = 50     # lightdxml: proxy steps per cycle; 0 -> joint.
  c.head.classifier_steps = 50  # lightdxml: classifier steps per cycle; 0 -> joint.
  # MHE label -> code order (which labels share a head's digit): 'given'
  # (code = label), 'random' (seeded permutation) or 'clustered' (balanced
  # k-means of label centroids); see mhe_jax.label_order. Vanilla ignores it.
  c.head.label_order = "given"
  c.head.label_order_seed = 0  # Seed of 'random' and of the clustering.

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"   # adam | adamw | sgd.
  c.optimizer.learning_rate = 1e-3  # Peak learning rate.
  c.optimizer.schedule = "cosine"  # constant | cosine (decay to 0 at the end).
  c.optimizer.warmup_steps = 0  # Linear warm-up steps.
  c.optimizer.weight_decay = 0.0  # adamw decoupled weight decay.
  c.optimizer.grad_clip = 0.0  # Global-norm clipping; 0 -> off.
  # > 0: evaluate and serve an exponential moving average of the parameters
  # with this decay (kept in the optimiser state; mhe_jax.averaging).
  c.optimizer.ema_decay = 0.0
  # The head's (classifier's) own rule: 'same' (optimizer.name),
  # 'sgd_momentum' (SGD, momentum 0.9, as Renee trains its classifier) or
  # 'sgd' (plain SGD, no state), at classifier_learning_rate under the same
  # schedule (0 -> learning_rate).
  c.optimizer.classifier = "same"
  c.optimizer.classifier_learning_rate = 0.0

  c.eval = ml_collections.ConfigDict()
  c.eval.ks = (1, 3, 5)       # k of P@k, nDCG@k, PSP@k (acc@k single-label).
  c.eval.propensity_a = 0.55  # PSP propensity A (Jain et al. 2016).
  c.eval.propensity_b = 1.5   # PSP propensity B.
  # Interaction (next-item) data: HR@k / NDCG@k over all items, and the
  # BERT4Rec protocol (target among popularity-sampled negatives).
  c.eval.exclude_history = True  # Rank only items absent from the input sequence.
  c.eval.num_negatives = 100  # Sampled protocol negatives per user; 0 -> off.
  c.eval.negatives_seed = 0   # Seed of the negative sample (fixed across runs).

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1)      # Devices per axis; one -1 takes the rest.
  c.mesh.axes = ("data", "classes")  # Mesh axis names.
  c.mesh.axis_type = "explicit"  # explicit | auto.
  c.mesh.rules = sharding.DEFAULT_RULES  # Logical name -> mesh axis.
  return c


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """A config module's ``get_config(arg)`` argument, big_vision style.

  ``arg`` is a comma-separated list of ``name=value`` or bare ``name``
  (meaning True) items, e.g. ``'head=mhc,runlocal'`` from
  ``--config=configs/citeulike_t.py:head=mhc,runlocal``. Every name must be
  one of ``defaults``; values take the type of their default.

  Example::

    args = parse_arg("head=mhc,runlocal", head="best", runlocal=False)
    args.head, args.runlocal   # 'mhc', True
  """
  out = ml_collections.ConfigDict(dict(defaults))
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    name, sep, value = item.partition("=")
    name = name.strip()
    if name not in defaults:
      raise ValueError(f"unknown config argument {name!r} in {arg!r}; known: "
                       f"{sorted(defaults)}")
    default = defaults[name]
    if not sep:
      if not isinstance(default, bool):
        raise ValueError(f"config argument {name!r} needs a value "
                         f"({name}=...), got {arg!r}")
      out[name] = True
    elif isinstance(default, bool):
      if value.strip().lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config argument {name}={value!r}: not a boolean")
      out[name] = value.strip().lower() in ("true", "1")
    elif isinstance(default, int):
      try:
        out[name] = int(value)
      except ValueError:
        raise ValueError(f"config argument {name}={value!r}: not an "
                         "integer") from None
    else:
      out[name] = type(default)(value.strip())
  return out


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, (ml_collections.ConfigDict, dict)):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for unknown keys or values of the wrong kind."""
  known = _flatten(base_config())
  given = _flatten(config)
  for key, value in given.items():
    if key not in known:
      parent = key.rsplit(".", 1)[0] if "." in key else ""
      siblings = sorted(k.rsplit(".", 1)[-1] for k in known
                        if (k.rsplit(".", 1)[0] if "." in k else "") == parent)
      raise ValueError(
          f"unknown config key {key!r}; known keys"
          f"{' under ' + repr(parent) if parent else ''}: {siblings}")
    default = known[key]
    if isinstance(default, bool):
      ok = isinstance(value, bool)
    elif isinstance(default, int):
      ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
      ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, str):
      ok = isinstance(value, str)
    elif isinstance(default, (tuple, list)):
      ok = isinstance(value, (tuple, list))
    else:
      ok = True
    if not ok:
      raise ValueError(f"config key {key!r} must be like {default!r} "
                       f"({type(default).__name__}), got {value!r}")
  for key in ("batch_size", "eval_batch_size", "num_train_steps"):
    if config[key] < 1:
      raise ValueError(f"config.{key} must be >= 1, got {config[key]}")
  if not 0.0 <= config.data.validation_fraction < 1.0:
    raise ValueError("config.data.validation_fraction must be in [0, 1), got "
                     f"{config.data.validation_fraction}")
  if config.head.sparse_update and config.head.type != "mhs":
    raise ValueError("config.head.sparse_update needs head.type='mhs', got "
                     f"{config.head.type!r}")
  if config.head.sparse_update and config.head.tie_embeddings:
    # The encoder reads every row of a tied table; updating only the
    # sampled rows would drop the encoder's gradient of the others.
    raise ValueError("config.head.sparse_update updates the sampled "
                     "classifier rows only; it cannot be combined with "
                     "head.tie_embeddings (the encoder's item table)")
  correction = config.head.get("sampling_correction", "none")
  if correction not in ("none", "logq"):
    raise ValueError("config.head.sampling_correction must be 'none' or "
                     f"'logq', got {correction!r}")
  if correction != "none" and config.head.type != "mhs":
    raise ValueError("config.head.sampling_correction corrects MHS's "
                     f"sampled softmax; head.type is {config.head.type!r}")
  ema_decay = config.optimizer.get("ema_decay", 0.0)
  if not 0.0 <= ema_decay < 1.0:
    raise ValueError("config.optimizer.ema_decay must be in [0, 1) (0: off), "
                     f"got {ema_decay}")
  if ema_decay and config.head.sparse_update:
    raise ValueError("config.optimizer.ema_decay averages the parameters the "
                     "optimiser updates; head.sparse_update updates the MHS "
                     "classifier rows outside it, so the two cannot be "
                     "combined")
  if ema_decay and config.head.fit == "least_squares":
    raise ValueError("config.optimizer.ema_decay averages gradient steps; "
                     "head.fit='least_squares' is one closed-form solve")
  if config.optimizer.classifier not in ("same", "sgd_momentum", "sgd"):
    raise ValueError("config.optimizer.classifier must be 'same', "
                     "'sgd_momentum' or 'sgd', got "
                     f"{config.optimizer.classifier!r}")
  if config.optimizer.classifier_learning_rate < 0:
    raise ValueError("config.optimizer.classifier_learning_rate must be >= 0 "
                     f"(0: optimizer.learning_rate), got "
                     f"{config.optimizer.classifier_learning_rate}")
  own_rule = (config.optimizer.classifier != "same" or
              config.optimizer.classifier_learning_rate > 0)
  if own_rule and config.head.type in ("unidec", "lightdxml"):
    raise ValueError("config.optimizer.classifier / classifier_learning_rate "
                     "apply to encoder + head models, not head.type="
                     f"{config.head.type!r}")
  if config.head.fit not in ("gradient", "least_squares"):
    raise ValueError("config.head.fit must be 'gradient' or 'least_squares', "
                     f"got {config.head.fit!r}")
  if config.head.fit == "least_squares":
    if config.head.type not in ("vanilla", "mhc"):
      raise ValueError("config.head.fit='least_squares' fits head.type "
                       f"'vanilla' or 'mhc', got {config.head.type!r}")
    if config.num_train_steps != 1:
      raise ValueError(
          "config.head.fit='least_squares' is one closed-form solve: set "
          f"num_train_steps=1 (got {config.num_train_steps})")
    if not config.head.ridge_lambda > 0:
      raise ValueError("config.head.ridge_lambda must be > 0, got "
                       f"{config.head.ridge_lambda}")
  if config.nonfinite not in NONFINITE_MODES:
    raise ValueError(f"config.nonfinite must be one of {list(NONFINITE_MODES)}, "
                     f"got {config.nonfinite!r}")


NONFINITE_MODES = ("stop", "skip")

# Config keys naming data on disk: key -> what must be there when it is set.
DATA_PATHS = {"data.train": "file", "data.test": "file",
              "data.labels_xml": "file", "data.data_dir": "directory",
              "data.tfds_data_dir": "directory"}


class ConfigPathError(FileNotFoundError):
  """A data path set in the config does not exist."""


def check_paths(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigPathError for a set data path that is not there.

  Checked before any data is read or anything compiled, so a typo in a path
  fails in a second, naming the key and the path (relative paths are taken
  from the working directory).
  """
  for key, kind in DATA_PATHS.items():
    value = config.data[key.split(".", 1)[1]]
    if not value:
      continue
    path = pathlib.Path(value)
    ok = path.is_file() if kind == "file" else path.is_dir()
    if not ok:
      what = ("is a directory, not a file" if kind == "file" and path.is_dir()
              else "is a file, not a directory" if path.is_file()
              else "does not exist")
      raise ConfigPathError(
          f"config.{key}={value!r}: {path.absolute()} {what}; expected a "
          f"{kind}")


def from_file(path: str | pathlib.Path, arg: str | None = None,
              overrides: dict[str, Any] | None = None
              ) -> ml_collections.ConfigDict:
  """``get_config(arg)`` of a config module file, then dotted-key overrides.

  What ``--config=PATH:ARG --config.a.b=V`` gives ``mhe_jax.main``, for
  scripts and benchmarks. An override of an unknown key raises ValueError.

  Example::

    config = from_file("configs/shakespeare.py", "head=mhp,runlocal",
                       {"head.type": "mhc"})
  """
  path = pathlib.Path(path)
  spec = importlib.util.spec_from_file_location(f"configs_{path.stem}", path)
  if spec is None or spec.loader is None:
    raise ValueError(f"cannot load a config module from {path}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return override(module.get_config(arg), overrides or {}, where=str(path))


def override(config: ml_collections.ConfigDict, overrides: dict[str, Any],
             *, where: str = "the config",
             skip_unknown: bool = False) -> ml_collections.ConfigDict:
  """Sets dotted keys (``{"head.type": "mhc"}``) in place; returns config.

  A key that :func:`base_config` does not declare raises ValueError, or,
  with ``skip_unknown``, is skipped with a logged warning.
  """
  known = _flatten(base_config())
  for key, value in overrides.items():
    if key not in known:
      if skip_unknown:
        logging.warning("%s: ignoring config key %r unknown to this version",
                        where, key)
        continue
      raise ValueError(f"override of unknown config key {key!r} for {where}")
    *parents, last = key.split(".")
    node = config
    for name in parents:
      node = node[name]
    node[last] = value
  return config


def _as_tuples(x: Any) -> Any:
  if isinstance(x, dict):
    return {k: _as_tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_as_tuples(v) for v in x)
  return x


def from_json(path: str | pathlib.Path) -> ml_collections.ConfigDict:
  """A config saved with ``to_json`` (e.g. ``workdir/config.json``), over
  today's :func:`base_config`: keys added since keep their defaults, keys
  this version no longer has are skipped with a warning. JSON lists come
  back as tuples, as the configs write them.
  """
  path = pathlib.Path(path)
  saved = _flatten(_as_tuples(json.loads(path.read_text())))
  config = base_config()
  with config.ignore_type():
    return override(config, saved, where=str(path), skip_unknown=True)
