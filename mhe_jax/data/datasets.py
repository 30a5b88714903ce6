"""Datasets by name: the loaders and the bundle the trainer reads.

:func:`load_dataset` reads ``config.data`` and returns a :class:`Dataset`:
pipeline sources of the training and evaluation examples
(:mod:`mhe_jax.data.pipeline`) and the facts the model is built from (class
count, input keys and size, label counts, idf, label names). The loaders in
:data:`DATASETS` read the files of :mod:`mhe_jax.data.formats`,
:mod:`~mhe_jax.data.corpus` and :mod:`~mhe_jax.data.interactions` (named
datasets under :func:`data_root`), a prepared TFDS dataset, or generate
:mod:`~mhe_jax.data.synthetic` data. ``mhe_jax.registry`` builds the model
from a Dataset.

Example::

  from mhe_jax.data import datasets
  data = datasets.load_dataset(config.data, seed=0)   # a Dataset bundle
  data.num_classes, data.input_keys                   # C, ("feature_ids", ...)
  batch_source = data.train                           # a pipeline source
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import scipy.sparse as sp

from mhe_jax import _extras

with _extras.requires("train"):
  import ml_collections

from mhe_jax.data import formats
from mhe_jax.data import interactions
from mhe_jax.data import pipeline
from mhe_jax.data import synthetic
from mhe_jax.data.corpus import Corpus

if TYPE_CHECKING:
  from mhe_jax.registry import UniDECLabelFeatures


@dataclasses.dataclass
class Dataset:
  """What the trainer needs to know about a dataset.

  Attributes:
    train: pipeline source of the training examples.
    eval: pipeline source of the evaluation examples (test, or validation).
    num_classes: C.
    multilabel: labels are ``[B, L]`` sets (True) or ``[B]`` (False).
    input_keys: batch keys fed to the encoder, in order.
    input_size: number of input features (bag-of-words) or vocabulary size.
    label_counts: int ``[C]`` training label frequencies (for PSP).
    num_train: training examples.
    idf: float32 ``[F]`` smooth idf of the training features, or None.
    label_names: list of C names, or None.
    eval_split: "test" or "validation".
    label_permutation: int ``[C]`` label -> code order for a head with
      ``label_order='clustered'``: computed from the training data by the
      first ``registry.make_codec`` that needs it and reused after (one
      clustered order per Dataset), or given (``mhe_jax.load`` restores the
      saved one).
    label_features: UniDEC's label feature rows
      (``registry.UniDECLabelFeatures``): computed from the training data by
      the first ``registry.unidec_label_features`` that needs them and reused
      after, or given (``mhe_jax.load`` restores the ones the trainer saved).
    svd_embedding: the ``sparse_mlp`` table's LSA start
      (``encoder.embed_init='svd'``), computed from the training rows by the
      first encoder that needs it and reused after.
  """

  train: Any
  eval: Any
  num_classes: int
  multilabel: bool
  input_keys: tuple[str, ...]
  input_size: int
  label_counts: np.ndarray
  num_train: int
  idf: np.ndarray | None = None
  label_names: list[str] | None = None
  eval_split: str = "test"
  label_permutation: np.ndarray | None = None
  label_features: UniDECLabelFeatures | None = None
  svd_embedding: np.ndarray | None = None


def data_root(cfg: ml_collections.ConfigDict) -> pathlib.Path:
  """config.data.data_dir, else $MHE_DATA_DIR, else ../shared/data."""
  if cfg.data_dir:
    return pathlib.Path(cfg.data_dir)
  if os.environ.get("MHE_DATA_DIR"):
    return pathlib.Path(os.environ["MHE_DATA_DIR"])
  repo = pathlib.Path(__file__).resolve().parents[2]  # mhe_jax/data/ -> repo
  for base in (pathlib.Path.cwd(), repo):
    candidate = base.parent / "shared" / "data"
    if candidate.is_dir():
      return candidate
  raise FileNotFoundError(
      "real data not found: set config.data.data_dir or $MHE_DATA_DIR "
      "(looked for ../shared/data)")


def _split_validation(train: formats.XMCData, fraction: float):
  """The last `fraction` of the training rows as a validation set."""
  n = train.num_examples
  cut = n - int(round(n * fraction))
  if cut <= 0 or cut >= n:
    raise ValueError(f"validation_fraction={fraction} leaves no train or "
                     f"validation rows of {n}")
  part = lambda m, a, b: sp.csr_matrix(m[a:b])
  return (formats.XMCData(part(train.X, 0, cut), part(train.Y, 0, cut),
                          train.label_names),
          formats.XMCData(part(train.X, cut, n), part(train.Y, cut, n),
                          train.label_names))


def _xmc_dataset(train: formats.XMCData, test: formats.XMCData,
                 cfg: ml_collections.ConfigDict, single_label: bool = False):
  if train.num_labels != test.num_labels or train.num_features != test.num_features:
    raise ValueError(
        f"train has {train.num_features} features / {train.num_labels} labels "
        f"but test has {test.num_features} / {test.num_labels}")
  eval_split = "test"
  if cfg.validation_fraction > 0:
    train, test = _split_validation(train, cfg.validation_fraction)
    eval_split = "validation"
  widths = dict(max_features=cfg.max_features or None,
                max_labels=cfg.max_labels or None)
  longest_f = int(max(np.diff(train.X.indptr).max(), np.diff(test.X.indptr).max()))
  longest_l = int(max(np.diff(train.Y.indptr).max(), np.diff(test.Y.indptr).max()))
  widths["max_features"] = widths["max_features"] or max(longest_f, 1)
  widths["max_labels"] = widths["max_labels"] or max(longest_l, 1)
  counts = np.asarray(train.Y.sum(axis=0)).ravel().astype(np.int64)
  idf = formats.smooth_idf(train.X)
  train_widths = dict(widths)
  cut = cfg.get("train_max_features", 0)
  if cut:
    train_widths.update(max_features=cut, truncate_features=True,
                        feature_weights=idf)
  return Dataset(
      train=pipeline.SparseSource(train, single_label=single_label,
                                  **train_widths),
      eval=pipeline.SparseSource(test, single_label=single_label, **widths),
      num_classes=train.num_labels, multilabel=not single_label,
      input_keys=("feature_ids", "feature_values"),
      input_size=train.num_features, label_counts=counts,
      num_train=train.num_examples, idf=idf,
      label_names=train.label_names, eval_split=eval_split)


def _load_xc_files(cfg, seed):
  del seed
  if not cfg.train or not cfg.test:
    raise ValueError("data.name='xc_files' needs --config.data.train=PATH and "
                     "--config.data.test=PATH")
  return _xmc_dataset(formats.read_xc(cfg.train), formats.read_xc(cfg.test), cfg)


def _load_arff_files(cfg, seed):
  del seed
  if not cfg.train or not cfg.test or not cfg.labels_xml:
    raise ValueError("data.name='arff_files' needs data.train, data.test and "
                     "data.labels_xml")
  read = lambda p: formats.read_arff(p, labels_xml=cfg.labels_xml)
  return _xmc_dataset(read(cfg.train), read(cfg.test), cfg)


def _load_tfds(cfg, seed):
  """A prepared ``mhe_xmc`` TFDS dataset (see mhe_jax.data.tfds.prepare_xmc)."""
  del seed
  if not cfg.tfds_name or not cfg.tfds_data_dir:
    raise ValueError("data.name='tfds' needs data.tfds_name (e.g. "
                     "'mhe_xmc/bibtex') and data.tfds_data_dir")
  from mhe_jax.data import tfds as tfds_lib  # pylint: disable=g-import-not-at-top
  load = lambda split: tfds_lib.load_xmc(cfg.tfds_name, split,
                                         data_dir=cfg.tfds_data_dir)
  return _xmc_dataset(load("train"), load("test"), cfg)


def _named_xc(name, names_file: str | None = None):
  """Loader of ``<data root>/<name>/{train,test}.txt``; with ``names_file``
  (one label name per line) the label names are attached."""
  def load(cfg, seed):
    del seed
    root = data_root(cfg) / name
    train = formats.read_xc(root / "train.txt")
    test = formats.read_xc(root / "test.txt")
    if names_file:
      names = formats.read_names(root / names_file, train.num_labels)
      train = dataclasses.replace(train, label_names=names)
      test = dataclasses.replace(test, label_names=names)
    return _xmc_dataset(train, test, cfg)
  return load


def _load_synthetic(cfg, seed):
  kw = dict(num_classes=cfg.num_classes, num_features=cfg.num_features,
            zipf_exponent=cfg.zipf_exponent, task_seed=seed)
  if cfg.multilabel:
    train = synthetic.make_multi_label(cfg.num_train, seed=1, **kw)
    test = synthetic.make_multi_label(cfg.num_test, seed=2, **kw)
  else:
    train, _ = synthetic.make_single_label(cfg.num_train, seed=1, **kw)
    test, _ = synthetic.make_single_label(cfg.num_test, seed=2, **kw)
  return _xmc_dataset(train, test, cfg, single_label=not cfg.multilabel)


def _load_shakespeare(cfg, seed):
  del seed
  path = (pathlib.Path(cfg.train) if cfg.train else
          data_root(cfg) / "tinyshakespeare" / "input.txt")
  corpus = Corpus.from_file(path, min_count=cfg.min_count)
  train = pipeline.TokenSource.from_corpus(corpus, "train", cfg.context)
  test = pipeline.TokenSource.from_corpus(corpus, "test", cfg.context)
  eval_split = "test"
  if cfg.validation_fraction > 0:
    ids = corpus.split_ids("train")
    cut = len(ids) - int(round(len(ids) * cfg.validation_fraction))
    train = pipeline.TokenSource(ids[:cut], cfg.context)
    test = pipeline.TokenSource(ids[cut:], cfg.context)
    eval_split = "validation"
  targets = corpus.split_ids("train")[cfg.context:]
  counts = np.bincount(targets, minlength=corpus.num_classes).astype(np.int64)
  return Dataset(
      train=train, eval=test, num_classes=corpus.num_classes,
      multilabel=False, input_keys=("features",),
      input_size=corpus.num_classes, label_counts=counts,
      num_train=len(train), label_names=list(corpus.vocab),
      eval_split=eval_split)


def _named_interactions(name):
  """Loader of ``<data root>/<name>/interactions.txt`` (an interaction log,
  :mod:`mhe_jax.data.interactions`), split leave-one-out; evaluates on the
  test targets, or the validation targets when validation_fraction > 0."""
  def load(cfg, seed):
    del seed
    log = interactions.read_interactions(
        data_root(cfg) / name / "interactions.txt")
    split = interactions.leave_one_out(log)
    eval_split = "validation" if cfg.validation_fraction > 0 else "test"
    examples = split.validation if eval_split == "validation" else split.test
    train = pipeline.SequenceSource(split.train, cfg.max_len)
    return Dataset(
        train=train, eval=pipeline.SequenceEvalSource(
            examples, cfg.max_len, item_counts=split.item_counts),
        num_classes=split.num_items, multilabel=False, input_keys=("items",),
        input_size=split.num_items,
        label_counts=train.target_counts(split.num_items),
        num_train=len(train), eval_split=eval_split)
  return load


DATASETS: dict[str, Callable[[ml_collections.ConfigDict, int], Dataset]] = {
    "synthetic": _load_synthetic,
    "xc_files": _load_xc_files,
    "arff_files": _load_arff_files,
    "tfds": _load_tfds,
    "bibtex": _named_xc("bibtex"),
    "delicious": _named_xc("delicious"),
    "citeulike_t": _named_xc("citeulike_t", names_file="labels.txt"),
    "shakespeare": _load_shakespeare,
    "amazon_beauty": _named_interactions("amazon_beauty"),
}


def load_dataset(cfg: ml_collections.ConfigDict, seed: int) -> Dataset:
  """The dataset ``cfg.name`` names (:data:`DATASETS`), loaded.

  Args:
    cfg: ``config.data``.
    seed: the run's seed (the synthetic task's).

  Raises:
    ValueError: an unknown name (listing the known ones), or a loader's
      missing setting.
  """
  if cfg.name not in DATASETS:
    raise ValueError(f"unknown dataset {cfg.name!r}; known: {sorted(DATASETS)}")
  return DATASETS[cfg.name](cfg, seed)
