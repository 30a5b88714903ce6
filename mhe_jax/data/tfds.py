"""TensorFlow-free TFDS builders over local XMC files and a text corpus.

Two ``tfds.core.GeneratorBasedBuilder`` s that write ``array_record`` files
(the default here; random access, no TensorFlow needed to write or read) and
keep the source order (``disable_shuffling=True``), so record ``i`` of a split
is row ``i`` of its source file:

* ``mhe_xmc`` (:class:`XMCBuilder`): a multi-label dataset from Extreme
  Classification Repository text files (read with
  :func:`~mhe_jax.data.formats.read_xc`) or Mulan ARFF files
  (:func:`~mhe_jax.data.formats.read_arff`). A record is
  ``{"feature_ids": int32 [nnz], "feature_values": float32 [nnz],
  "labels": int32 [num labels]}``, indices sorted; ``info.metadata`` holds
  ``num_features``, ``num_labels`` and ``label_names`` (None for XC files).
* ``mhe_corpus`` (:class:`CorpusBuilder`): the next-token task of
  :class:`~mhe_jax.data.corpus.Corpus`. A record is ``{"features": int32
  [context], "labels": int32 []}``; ``info.metadata`` holds ``vocab``,
  ``counts``, ``num_classes`` and the settings.

Where the files are: a config's paths are absolute, or relative to the TFDS
manual directory (``tfds.download.DownloadConfig(manual_dir=...)``). The
predefined configs (``mhe_xmc/bibtex``, ``mhe_xmc/bibtex_arff``,
``mhe_xmc/delicious``, ``mhe_xmc/delicious_arff``,
``mhe_corpus/tinyshakespeare``) name the files of the shared data directory
(``bibtex/train.txt`` ...), so their manual directory is that dataset's
folder. Any other dataset: pass a config object with its own name and paths,
or use :func:`prepare_xmc` / :func:`prepare_corpus`.

TFDS without TensorFlow: features are ``tfds.features.Tensor`` of shape
``(None,)`` (variable length) or fixed shape; TFDS serializes them with its
own protobuf code and decodes them with numpy in ``tfds.data_source``, so
writing and random-access reading work without TensorFlow. What does need it:
``tfds.load`` / ``as_dataset`` (they return ``tf.data`` pipelines) and the
``tfrecord`` file format.

Example::

  import tensorflow_datasets as tfds
  from mhe_jax.data import tfds as mhe_tfds  # registers the builders

  builder = tfds.builder("mhe_xmc/bibtex", data_dir="/tmp/tfds")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir="shared/data/bibtex"))
  source = tfds.data_source("mhe_xmc/bibtex", data_dir="/tmp/tfds")
  source["train"][0]   # {"feature_ids": ..., "feature_values": ..., "labels"}
  train = mhe_tfds.load_xmc("mhe_xmc/bibtex", "train", data_dir="/tmp/tfds")
  # train == formats.read_xc("shared/data/bibtex/train.txt")

  mhe_tfds.prepare_corpus("tinyshakespeare/input.txt", data_dir="/tmp/tfds",
                          name="shakespeare_ctx4", context=4)
  x, y, vocab = mhe_tfds.load_corpus("mhe_corpus/shakespeare_ctx4", "train",
                                     data_dir="/tmp/tfds")
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp

from mhe_jax import _extras

with _extras.requires("data"):
  from etils import epath
  import tensorflow_datasets as tfds

from mhe_jax.data import corpus as corpus_lib
from mhe_jax.data import formats

PathLike = str | os.PathLike

_FILE_FORMAT = "array_record"
_READ_CHUNK = 4096  # Records fetched per data-source call when loading.


def _resolve(path: PathLike, dl_manager: Any) -> epath.Path:
  """``path`` if absolute, else relative to the manual directory."""
  p = epath.Path(path)
  if p.is_absolute():
    return p
  return epath.Path(dl_manager.manual_dir) / p


# ----------------------------------------------------------------------------
# Multi-label (XC text or Mulan ARFF files).


@dataclasses.dataclass(eq=False)
class XMCConfig(tfds.core.BuilderConfig):
  """Where an XMC dataset's files are and how to read them.

  Attributes:
    source_format: ``"xc"`` (Extreme Classification Repository text) or
      ``"arff"`` (Mulan ARFF).
    files: split name -> file; absolute, or relative to the manual directory.
    labels_xml: ARFF only: Mulan XML naming the label attributes (absolute or
      relative to the manual directory).
    num_labels: ARFF only, instead of ``labels_xml``: the last ``num_labels``
      attributes are the labels.
  """

  source_format: str = "xc"
  files: Mapping[str, str] = dataclasses.field(default_factory=dict)
  labels_xml: str | None = None
  num_labels: int | None = None


def _mulan_configs(name: str) -> list[XMCConfig]:
  return [
      XMCConfig(name=name, source_format="xc",
                files={"train": "train.txt", "test": "test.txt"},
                description=f"{name}, XC text files train.txt / test.txt."),
      XMCConfig(name=f"{name}_arff", source_format="arff",
                files={"train": f"{name}-train.arff",
                       "test": f"{name}-test.arff"},
                labels_xml=f"{name}.xml",
                description=f"{name}, Mulan ARFF files and {name}.xml."),
  ]


class XMCBuilder(tfds.core.GeneratorBasedBuilder):
  """Multi-label dataset from local XC text or Mulan ARFF files."""

  name = "mhe_xmc"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = _mulan_configs("bibtex") + _mulan_configs("delicious")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Point manual_dir at the folder holding the config's files (for the "
      "predefined configs, e.g. shared/data/bibtex with train.txt, test.txt, "
      "bibtex-train.arff, bibtex-test.arff, bibtex.xml), or give absolute "
      "paths in an XMCConfig.")

  def __init__(self, *, file_format: str | None = _FILE_FORMAT, **kwargs):
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Extreme multi-label data: sparse features, label sets.",
        features=tfds.features.FeaturesDict({
            "feature_ids": tfds.features.Tensor(shape=(None,),
                                                dtype=np.int32),
            "feature_values": tfds.features.Tensor(shape=(None,),
                                                   dtype=np.float32),
            "labels": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        }),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,
    )

  def _read(self, path: epath.Path, dl_manager: Any) -> formats.XMCData:
    config = self.builder_config
    if config.source_format == "xc":
      return formats.read_xc(path)
    if config.source_format == "arff":
      xml = (None if config.labels_xml is None
             else _resolve(config.labels_xml, dl_manager))
      return formats.read_arff(path, labels_xml=xml,
                               num_labels=config.num_labels)
    raise ValueError(f"unknown source_format {config.source_format!r}; "
                     "expected 'xc' or 'arff'")

  def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
    config = self.builder_config
    if not config.files:
      raise ValueError(f"config {config.name!r} names no files")
    splits = {split: self._read(_resolve(path, dl_manager), dl_manager)
              for split, path in config.files.items()}
    first_split, first = next(iter(splits.items()))
    for split, data in splits.items():
      if (data.num_features, data.num_labels, data.label_names) != (
          first.num_features, first.num_labels, first.label_names):
        raise ValueError(
            f"split {split!r} has {data.num_features} features / "
            f"{data.num_labels} labels, split {first_split!r} "
            f"{first.num_features} / {first.num_labels} (or label names "
            "differ); all splits must share them")
    self.info.metadata.update(
        num_features=first.num_features,
        num_labels=first.num_labels,
        label_names=first.label_names,
        source_format=config.source_format,
    )
    return {split: self._generate_examples(data)
            for split, data in splits.items()}

  def _generate_examples(self, data: formats.XMCData) -> Iterator:
    X = sp.csr_matrix(data.X).sorted_indices()
    Y = sp.csr_matrix(data.Y).sorted_indices()
    for i in range(data.num_examples):
      xs, ys = slice(X.indptr[i], X.indptr[i + 1]), slice(Y.indptr[i],
                                                         Y.indptr[i + 1])
      yield i, {
          "feature_ids": X.indices[xs].astype(np.int32),
          "feature_values": X.data[xs].astype(np.float32),
          "labels": Y.indices[ys].astype(np.int32),
      }


def prepare_xmc(
    name: str,
    files: Mapping[str, PathLike],
    *,
    data_dir: PathLike,
    source_format: str = "xc",
    labels_xml: PathLike | None = None,
    num_labels: int | None = None,
) -> tfds.core.DatasetBuilder:
  """Builds ``mhe_xmc/<name>`` in ``data_dir`` from the given files.

  Args:
    name: config name (a new one, not a predefined config's).
    files: split -> file path.
    data_dir: TFDS data directory to write into.
    source_format: ``"xc"`` or ``"arff"``.
    labels_xml: ARFF: the Mulan XML file.
    num_labels: ARFF: label count, instead of ``labels_xml``.

  Returns:
    The prepared builder; ``builder.as_data_source()`` reads it.
  """
  config = XMCConfig(
      name=name, source_format=source_format,
      files={k: os.fspath(os.path.abspath(v)) for k, v in files.items()},
      labels_xml=(None if labels_xml is None
                  else os.fspath(os.path.abspath(labels_xml))),
      num_labels=num_labels)
  builder = XMCBuilder(config=config, data_dir=os.fspath(data_dir))
  builder.download_and_prepare()
  return builder


def _read_all(source: Any) -> list[dict[str, np.ndarray]]:
  n = len(source)
  records = []
  for start in range(0, n, _READ_CHUNK):
    records += source.__getitems__(range(start, min(n, start + _READ_CHUNK)))
  return records


def _csr(rows: list[np.ndarray], vals: list[np.ndarray] | None,
         width: int) -> sp.csr_matrix:
  counts = np.array([r.size for r in rows], np.int64)
  indptr = np.concatenate([[0], np.cumsum(counts)])
  indices = (np.concatenate(rows) if rows else np.zeros(0)).astype(np.int32)
  if vals is None:
    data = np.ones(indices.size, np.float32)
  else:
    data = (np.concatenate(vals) if vals else np.zeros(0)).astype(np.float32)
  m = sp.csr_matrix((data, indices, indptr.astype(np.int32)),
                    shape=(len(rows), width))
  m.has_sorted_indices = True  # Written sorted by XMCBuilder.
  return m


def load_xmc(name: str, split: str, *, data_dir: PathLike) -> formats.XMCData:
  """Reads a prepared ``mhe_xmc`` split back into an :class:`XMCData`.

  Args:
    name: e.g. ``"mhe_xmc/bibtex"``.
    split: e.g. ``"train"``.
    data_dir: the TFDS data directory.

  Returns:
    The split, equal to reading its source file with :mod:`formats`.
  """
  builder = tfds.builder(name, data_dir=os.fspath(data_dir))
  meta = builder.info.metadata
  records = _read_all(builder.as_data_source(split=split))
  X = _csr([r["feature_ids"] for r in records],
           [r["feature_values"] for r in records], meta["num_features"])
  Y = _csr([r["labels"] for r in records], None, meta["num_labels"])
  return formats.XMCData(X=X, Y=Y, label_names=meta["label_names"])


# ----------------------------------------------------------------------------
# Next-token corpus.


@dataclasses.dataclass(eq=False)
class CorpusConfig(tfds.core.BuilderConfig):
  """A text file and the settings of :class:`~mhe_jax.data.corpus.Corpus`.

  Attributes:
    path: the text file; absolute or relative to the manual directory.
    context: previous tokens per example (n).
    min_count: see :meth:`Corpus.from_text`.
    test_fraction: see :meth:`Corpus.from_text`.
  """

  path: str = "input.txt"
  context: int = 8
  min_count: int = 1
  test_fraction: float = 0.1


class CorpusBuilder(tfds.core.GeneratorBasedBuilder):
  """Next-token prediction examples from a local text file."""

  name = "mhe_corpus"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      CorpusConfig(name="tinyshakespeare", path="input.txt", context=8,
                   description="tiny-shakespeare input.txt, 8 tokens "
                   "of context, every training type kept."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Point manual_dir at the folder holding the config's text file (for "
      "tinyshakespeare: shared/data/tinyshakespeare with input.txt), or give "
      "an absolute path in a CorpusConfig.")

  def __init__(self, *, file_format: str | None = _FILE_FORMAT, **kwargs):
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    context = self.builder_config.context
    return tfds.core.DatasetInfo(
        builder=self,
        description="Word-level next-token prediction: context -> next id.",
        features=tfds.features.FeaturesDict({
            "features": tfds.features.Tensor(shape=(context,),
                                             dtype=np.int32),
            "labels": tfds.features.Scalar(dtype=np.int32),
        }),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
    config = self.builder_config
    c = corpus_lib.Corpus.from_file(
        _resolve(config.path, dl_manager), min_count=config.min_count,
        test_fraction=config.test_fraction)
    self.info.metadata.update(
        vocab=list(c.vocab),
        counts=c.counts.tolist(),
        num_classes=c.num_classes,
        context=config.context,
        min_count=config.min_count,
        test_fraction=config.test_fraction,
    )
    return {split: self._generate_examples(*c.examples(split, config.context))
            for split in corpus_lib.SPLITS}

  def _generate_examples(self, contexts: np.ndarray,
                         targets: np.ndarray) -> Iterator:
    for i in range(contexts.shape[0]):
      yield i, {"features": contexts[i], "labels": targets[i]}


def prepare_corpus(
    path: PathLike,
    *,
    data_dir: PathLike,
    name: str,
    context: int = 8,
    min_count: int = 1,
    test_fraction: float = 0.1,
) -> tfds.core.DatasetBuilder:
  """Builds ``mhe_corpus/<name>`` in ``data_dir`` from a text file.

  Args:
    path: the text file.
    data_dir: TFDS data directory to write into.
    name: config name (a new one, not a predefined config's).
    context: previous tokens per example.
    min_count: see :meth:`Corpus.from_text`.
    test_fraction: see :meth:`Corpus.from_text`.

  Returns:
    The prepared builder.
  """
  config = CorpusConfig(name=name, path=os.fspath(os.path.abspath(path)),
                        context=context, min_count=min_count,
                        test_fraction=test_fraction)
  builder = CorpusBuilder(config=config, data_dir=os.fspath(data_dir))
  builder.download_and_prepare()
  return builder


def load_corpus(
    name: str, split: str, *, data_dir: PathLike
) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """Reads a prepared ``mhe_corpus`` split back.

  Args:
    name: e.g. ``"mhe_corpus/tinyshakespeare"``.
    split: ``"train"`` or ``"test"``.
    data_dir: the TFDS data directory.

  Returns:
    ``(contexts, targets, vocab)``: int32 ``[N, context]``, int32 ``[N]``
    (as :meth:`Corpus.examples`) and the id -> token list.
  """
  builder = tfds.builder(name, data_dir=os.fspath(data_dir))
  meta = builder.info.metadata
  records = _read_all(builder.as_data_source(split=split))
  context = int(meta["context"])
  if records:
    x = np.stack([r["features"] for r in records]).astype(np.int32)
    y = np.array([r["labels"] for r in records], np.int32)
  else:
    x, y = np.zeros((0, context), np.int32), np.zeros((0,), np.int32)
  return x, y, list(meta["vocab"])
