"""Tests for mhe_jax.data.tfds: TF-free array_record builders, read back."""

import numpy as np
import pytest
import scipy.sparse as sp
import tensorflow_datasets as tfds

from mhe_jax.data import corpus, formats, pipeline
from mhe_jax.data import tfds as mhe_tfds


def _assert_rows_equal(records, data: formats.XMCData):
  """Record i equals row i of ``data`` (labels and features), for every i.

  Compared vectorized: equal per-row lengths and equal concatenations.
  """
  X = sp.csr_matrix(data.X).sorted_indices()
  Y = sp.csr_matrix(data.Y).sorted_indices()
  assert len(records) == data.num_examples
  for key, want in (("feature_ids", X), ("labels", Y)):
    lengths = np.array([r[key].size for r in records])
    np.testing.assert_array_equal(lengths, np.diff(want.indptr), err_msg=key)
    got = np.concatenate([r[key] for r in records])
    assert got.dtype == np.int32, key
    np.testing.assert_array_equal(got, want.indices, err_msg=key)
  values = np.concatenate([r["feature_values"] for r in records])
  assert values.dtype == np.float32
  np.testing.assert_array_equal(values, X.data)


@pytest.fixture(scope="module")
def bibtex_xc(shared_data) -> dict[str, formats.XMCData]:
  return {split: formats.read_xc(shared_data / "bibtex" / f"{split}.txt")
          for split in ("train", "test")}


@pytest.fixture(scope="module")
def bibtex_dir(shared_data, tmp_path_factory):
  """A TFDS data_dir with mhe_xmc/bibtex and mhe_xmc/bibtex_arff built."""
  data_dir = tmp_path_factory.mktemp("tfds")
  manual = tfds.download.DownloadConfig(manual_dir=shared_data / "bibtex")
  for name in ("mhe_xmc/bibtex", "mhe_xmc/bibtex_arff"):
    tfds.builder(name, data_dir=data_dir).download_and_prepare(
        download_config=manual)
  return data_dir


@pytest.mark.parametrize("config", ["bibtex", "bibtex_arff"])
def test_bibtex_data_source_equals_read_xc(bibtex_dir, bibtex_xc, config):
  source = tfds.data_source(f"mhe_xmc/{config}", data_dir=bibtex_dir)
  assert set(source) == {"train", "test"}
  for split in ("train", "test"):
    split_source = source[split]
    _assert_rows_equal(split_source.__getitems__(range(len(split_source))),
                       bibtex_xc[split])


def test_bibtex_load_xmc_and_metadata(shared_data, bibtex_dir, bibtex_xc):
  test = mhe_tfds.load_xmc("mhe_xmc/bibtex", "test", data_dir=bibtex_dir)
  assert test.equals(bibtex_xc["test"])
  arff = mhe_tfds.load_xmc("mhe_xmc/bibtex_arff", "test",
                           data_dir=bibtex_dir)
  want = formats.read_arff(shared_data / "bibtex" / "bibtex-test.arff",
                           labels_xml=shared_data / "bibtex" / "bibtex.xml")
  assert arff.equals(want)  # Label names included.
  info = tfds.builder("mhe_xmc/bibtex", data_dir=bibtex_dir).info
  assert info.metadata["num_features"] == 1836
  assert info.metadata["num_labels"] == 159
  assert info.splits["train"].num_examples == 4880
  assert info.file_format.value == "array_record"


def test_read_without_builder_code(bibtex_dir):
  # The prepared directory is self-describing: no builder class needed.
  builder = tfds.builder_from_directory(
      bibtex_dir / "mhe_xmc" / "bibtex" / "1.0.0")
  record = builder.as_data_source(split="test")[3]
  assert set(record) == {"feature_ids", "feature_values", "labels"}
  assert builder.info.metadata["num_labels"] == 159


def test_prepare_xmc_custom_files_feed_the_pipeline(tmp_path):
  data = formats.XMCData(
      X=sp.csr_matrix(np.array([[0, 1.5, 0], [0, 0, 0], [2, 0, -1]],
                               np.float32)),
      Y=sp.csr_matrix(np.array([[1, 0], [0, 0], [1, 1]], np.float32)))
  formats.write_xc(data, tmp_path / "tiny.txt")
  mhe_tfds.prepare_xmc("tiny", {"train": tmp_path / "tiny.txt"},
                       data_dir=tmp_path / "tfds")
  back = mhe_tfds.load_xmc("mhe_xmc/tiny", "train", data_dir=tmp_path / "tfds")
  assert back.equals(data)
  batch = next(pipeline.eval_loader(pipeline.SparseSource(back), 4,
                                    process_index=0, process_count=1))
  np.testing.assert_array_equal(batch["labels"],
                                [[0, -1], [-1, -1], [0, 1], [-1, -1]])
  np.testing.assert_array_equal(batch["mask"], [True, True, True, False])


def test_prepare_xmc_rejects_mismatched_splits(tmp_path):
  for name, num_labels in (("a", 2), ("b", 3)):
    formats.write_xc(formats.XMCData(
        X=sp.csr_matrix(np.ones((1, 2), np.float32)),
        Y=sp.csr_matrix(np.ones((1, num_labels), np.float32))),
        tmp_path / f"{name}.txt")
  with pytest.raises(ValueError, match="must share"):
    mhe_tfds.prepare_xmc("mismatch", {"train": tmp_path / "a.txt",
                                      "test": tmp_path / "b.txt"},
                         data_dir=tmp_path / "tfds")


def test_corpus_round_trip(shared_data, tmp_path):
  # A prefix of tiny-shakespeare keeps the build to a fraction of a second.
  text = (shared_data / "tinyshakespeare" / "input.txt").read_text()[:30_000]
  (tmp_path / "prefix.txt").write_text(text)
  mhe_tfds.prepare_corpus(tmp_path / "prefix.txt", data_dir=tmp_path / "tfds",
                          name="prefix", context=5, min_count=2)
  want = corpus.Corpus.from_text(text, min_count=2)
  source = tfds.data_source("mhe_corpus/prefix", data_dir=tmp_path / "tfds")
  for split in ("train", "test"):
    x, y, vocab = mhe_tfds.load_corpus("mhe_corpus/prefix", split,
                                       data_dir=tmp_path / "tfds")
    want_x, want_y = want.examples(split, context=5)
    np.testing.assert_array_equal(x, want_x)
    np.testing.assert_array_equal(y, want_y)
    assert tuple(vocab) == want.vocab
    record = source[split][len(source[split]) - 1]
    np.testing.assert_array_equal(record["features"], want_x[-1])
    assert record["labels"] == want_y[-1]

