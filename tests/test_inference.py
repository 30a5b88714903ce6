"""mhe_jax.load / Predictor / export / the predict CLI against the trainer.

One tiny model per head kind is trained once per module (a few steps on the
8 fake devices) and reused; the references are the trainer's own in-process
``model.topk`` on the same checkpoint, the XC reader on the whole file, and
the corpus's own tokenizer.
"""

import inspect
import json
import os
import shutil
import subprocess
import sys

from flax import nnx
import jax
import numpy as np
import pytest
import scipy.sparse as sp

from conftest import REPO_ROOT
import mhe_jax
from mhe_jax import export
from mhe_jax import inference
from mhe_jax import model_info
from mhe_jax import registry
from mhe_jax import streaming
from mhe_jax import train
from mhe_jax.data import corpus as corpus_lib
from mhe_jax.data import datasets
from mhe_jax.data import formats
import tiny_config


def _config(**overrides):
  return tiny_config.make(6, 3, **overrides)


def _train(workdir, **overrides):
  config = _config(**overrides)
  train.train_and_evaluate(config, workdir)
  return config


def _untrained(workdir, **overrides):
  """A workdir holding the initial model (what train writes, minus training)."""
  config = _config(**overrides)
  trainer = train.Trainer(config, workdir)
  trainer.checkpointer.save(0, trainer.init_state(), {})
  trainer.checkpointer.close()
  model_info.write(workdir, config, trainer.data)
  return config


@pytest.fixture(scope="module")
def mhp_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("mhp")
  config = _train(workdir)
  return workdir, config


@pytest.fixture(scope="module")
def predictor(mhp_run):
  return mhe_jax.load(mhp_run[0], batch_sizes=(1, 8, 64))


@pytest.fixture(scope="module")
def test_data(mhp_run):
  trainer = train.Trainer(mhp_run[1], mhp_run[0])
  return trainer.data.eval.data


def _trainer_topk(workdir, config, data, k):
  """The trainer's model.topk on its own sharded state: the reference."""
  trainer = train.Trainer(config, workdir)
  _, state, _ = trainer.checkpointer.restore_latest(trainer.abstract_state)
  trainer.checkpointer.close()

  @jax.jit
  def topk(state, batch):
    model, _ = nnx.merge(trainer.graphdef, state)
    return model.topk(batch, k)

  source = trainer.data.eval
  scores, labels = [], []
  for start in range(0, data.num_examples, 128):
    rows = np.arange(start, start + 128)
    rows[rows >= data.num_examples] = -1
    batch = source.gather(rows)
    batch["mask"] = rows >= 0
    with jax.set_mesh(trainer.mesh):
      s, l = topk(state, trainer.device_batch(batch))
    keep = rows >= 0
    scores.append(np.asarray(s)[keep])
    labels.append(np.asarray(l)[keep])
  return np.concatenate(scores), np.concatenate(labels)


def test_predict_equals_trainer_topk(mhp_run, predictor, test_data):
  workdir, config = mhp_run
  want_s, want_l = _trainer_topk(workdir, config, test_data, 5)
  scores, labels = predictor.predict(test_data, k=5)
  assert labels.shape == (test_data.num_examples, 5)
  np.testing.assert_array_equal(labels, want_l)
  np.testing.assert_allclose(scores, want_s, rtol=1e-5, atol=1e-6)
  assert predictor.label_names is None and predictor.predict(
      test_data, 2).names is None


def test_buckets_give_the_same_rows_without_recompiling(predictor, test_data):
  full = predictor.predict(test_data, k=5)
  small = inference.Predictor(predictor.graphdef, predictor.state, {
      "num_classes": 500, "multilabel": True,
      "input_keys": predictor.input_keys, "input_size": 2000,
      "max_features": predictor.max_features}, batch_sizes=(1, 8))
  small.warmup(k=5)
  traces = small.num_traces
  assert traces == 2 * len(small.widths)
  X = test_data.X
  for start, n in ((0, 1), (5, 7), (20, 8), (1, 9), (0, 300)):
    scores, labels = small.predict(X[start:start + n], k=5)
    np.testing.assert_array_equal(labels, full.labels[start:start + n])
    # Another bucket is another program: float sums may differ in the ulp.
    np.testing.assert_allclose(scores, full.scores[start:start + n], rtol=1e-6)
  assert small.num_traces == traces  # every request hit a warm bucket


def test_input_forms_agree(predictor, test_data):
  want = predictor.predict(test_data, k=5)
  ids, values = test_data.padded_features()
  # Extra padding columns, padding in the middle, any negative id as padding.
  wide_ids = np.concatenate([np.full((len(ids), 3), -7), ids], 1)
  wide_values = np.concatenate([np.full((len(ids), 3), 9.), values], 1)
  for features in (test_data.X, sp.csc_matrix(test_data.X), (ids, values),
                   (wide_ids, wide_values),
                   {"feature_ids": ids, "feature_values": values}):
    got = predictor.predict(features, k=5)
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)


def test_load_from_checkpoint_paths(mhp_run, predictor, test_data):
  workdir = mhp_run[0]
  x = test_data.X[:8]
  want = predictor.predict(x, k=5)
  for path in (workdir / "checkpoints", workdir / "checkpoints" / "6"):
    got = inference.load(path, batch_sizes=(8,)).predict(x, k=5)
    np.testing.assert_array_equal(got.labels, want.labels)
  older = inference.load(workdir, step=3, batch_sizes=(8,)).predict(x, k=5)
  assert not np.array_equal(older.scores, want.scores)  # a different state
  with pytest.raises(FileNotFoundError, match=r"no checkpoint 4 .*\[3, 6\]"):
    inference.load(workdir, step=4)


def test_label_names_are_attached(predictor, test_data):
  names = [f"tag{i}" for i in range(predictor.num_classes)]
  info = {"num_classes": predictor.num_classes, "multilabel": True,
          "input_keys": predictor.input_keys,
          "input_size": predictor.input_size,
          "max_features": predictor.max_features, "label_names": names}
  named = inference.Predictor(predictor.graphdef, predictor.state, info,
                              batch_sizes=(8,))
  pred = named.predict(test_data.X[:8], k=5)
  assert pred.names.tolist() == [[f"tag{l}" for l in row]
                                 for row in pred.labels.tolist()]


def test_cli_output_parses_back_to_predict(mhp_run, predictor, test_data,
                                           tmp_path):
  xc = tmp_path / "test.txt"
  formats.write_xc(test_data, xc)
  out = tmp_path / "pred.txt"
  proc = subprocess.run(
      [sys.executable, "-m", "mhe_jax.predict", f"--workdir={mhp_run[0]}",
       f"--input={xc}", "--k=5", f"--output={out}", "--batch_size=128",
       "--progress_every=0"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr
  assert "predicted 128/300 examples" in proc.stderr  # streamed in batches
  scores, labels = streaming.read_predictions(out)
  want = predictor.predict(test_data, k=5)
  np.testing.assert_array_equal(labels, want.labels)
  np.testing.assert_allclose(scores, want.scores, rtol=1e-6)


def test_arff_input_with_labels_xml(predictor, test_data, tmp_path):
  data = formats.XMCData(test_data.X[:20], test_data.Y[:20])
  f, c = data.num_features, data.num_labels
  header = (["@relation tiny"] + [f"@attribute f{i} numeric" for i in range(f)]
            + [f"@attribute tag{j} {{0,1}}" for j in range(c)] + ["@data"])
  rows = []
  for i in range(20):
    x, y = data.X[i], data.Y[i]
    entries = [f"{j} {v}" for j, v in zip(x.indices, x.data)]
    entries += [f"{f + j} 1" for j in y.indices]
    rows.append("{" + ",".join(entries) + "}")
  (tmp_path / "t.arff").write_text("\n".join(header + rows) + "\n")
  (tmp_path / "t.xml").write_text(
      '<labels xmlns="http://mulan.sourceforge.net/labels">'
      + "".join(f'<label name="tag{j}"></label>' for j in range(c))
      + "</labels>")
  n = streaming.predict_file(predictor, tmp_path / "t.arff",
                             tmp_path / "o.txt", k=5,
                             labels_xml=tmp_path / "t.xml")
  scores, labels = streaming.read_predictions(tmp_path / "o.txt")
  want = predictor.predict(data, k=5)
  assert n == 20
  np.testing.assert_array_equal(labels, want.labels)
  np.testing.assert_allclose(scores, want.scores, rtol=1e-6)


def test_cli_errors_are_one_line(tmp_path, mhp_run):
  bare = tmp_path / "bare"
  bare.mkdir()
  for name in ("config.json", "model_info.json"):
    shutil.copy(mhp_run[0] / name, bare / name)
  proc = subprocess.run(
      [sys.executable, "-m", "mhe_jax.predict", f"--workdir={bare}",
       f"--input={tmp_path / 'x.txt'}", f"--output={tmp_path / 'o.txt'}"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr
  assert proc.stderr.strip().endswith(
      f"error: no checkpoint in {bare.resolve() / 'checkpoints'}: train first "
      "(python -m mhe_jax.main --workdir=...)")


def test_streamed_xc_errors_name_the_file_line(predictor, test_data, tmp_path):
  xc = tmp_path / "bad.txt"
  formats.write_xc(test_data, xc)
  lines = xc.read_text().splitlines()
  lines[150] = "3 17:0.5 oops"  # line 151, in the third batch of 64
  xc.write_text("\n".join(lines) + "\n")
  with pytest.raises(formats.FormatError) as whole:
    formats.read_xc(xc)
  with pytest.raises(formats.FormatError) as streamed:
    streaming.predict_file(predictor, xc, tmp_path / "o.txt", k=2,
                           batch_size=64)
  assert str(streamed.value) == str(whole.value)
  assert streamed.value.line == 151
  short = tmp_path / "short.txt"
  short.write_text("\n".join(lines[:100]) + "\n")  # header says 300 rows
  with pytest.raises(formats.FormatError, match=r"line 101: unexpected end"):
    streaming.predict_file(predictor, short, tmp_path / "o.txt", k=2,
                           batch_size=64)


def test_errors_name_what_is_wrong(mhp_run, predictor, test_data, tmp_path):
  with pytest.raises(FileNotFoundError, match="no such workdir"):
    inference.load(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="config.json not found"):
    inference.load(tmp_path)
  bare = tmp_path / "bare"
  bare.mkdir()
  for name in ("config.json", "model_info.json"):
    shutil.copy(mhp_run[0] / name, bare / name)
  with pytest.raises(FileNotFoundError, match="no checkpoint in .*bare"):
    inference.load(bare)
  with pytest.raises(ValueError, match=r"k=501 is not in \[1, 500\]"):
    predictor.predict(test_data, k=501)
  with pytest.raises(ValueError, match=r"k=0 is not in \[1, 500\]"):
    predictor.predict(test_data, k=0)
  ids, values = test_data.padded_features()
  ids[4, 0] = 2000
  with pytest.raises(ValueError, match=r"feature index 2000 in row 4 is beyond "
                     r"the model's input size 2000"):
    predictor.predict((ids, values), k=5)
  wide = sp.csr_matrix((np.ones(2), ([0, 1], [3, 2500])), shape=(2, 3000))
  with pytest.raises(ValueError, match=r"feature index 2500 in row 1 is beyond"):
    predictor.predict(wide, k=5)
  big = formats.XMCData(sp.csr_matrix((1, 2001), dtype=np.float32),
                        sp.csr_matrix((1, 500), dtype=np.float32))
  formats.write_xc(big, tmp_path / "big.txt")
  with pytest.raises(ValueError, match=r"declares 2001 features but the model "
                     r"was trained on 2000"):
    streaming.predict_file(predictor, tmp_path / "big.txt", tmp_path / "o.txt")


_STANDALONE = """
from __future__ import annotations
import sys
sys.modules["mhe_jax"] = None  # any import of mhe_jax now fails
import json, pathlib
from typing import Any, Callable
import jax, jax.numpy as jnp, numpy as np
PathLike = str
exec(pathlib.Path(sys.argv[2]).read_text())  # load_exported's source alone
d = pathlib.Path(sys.argv[1])
with np.load(d / "inputs.npz") as inputs:
  scores, labels = load_exported(d)(inputs["ids"], inputs["values"])
np.savez(d / "outputs.npz", scores=np.asarray(scores),
         labels=np.asarray(labels))
"""


def test_exported_artifact_runs_without_mhe_jax(predictor, test_data,
                                                tmp_path):
  d = export.export(predictor, tmp_path / "exported", k=5)
  assert json.loads((d / "export.json").read_text())["programs"] == {
      "predict.jaxexport": "batch"}  # one program, any batch size
  ids, values = predictor.to_inputs(test_data.X[:37],
                                   width=predictor.max_features)
  np.savez(d / "inputs.npz", ids=ids, values=values)
  source = tmp_path / "load_exported.py"
  source.write_text(inspect.getsource(export.load_exported))
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  proc = subprocess.run(
      [sys.executable, "-c", _STANDALONE, str(d), str(source)], cwd=tmp_path,
      env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr
  with np.load(d / "outputs.npz") as got:
    scores, labels = got["scores"], got["labels"]
  want = predictor.predict(test_data.X[:37], k=5)
  np.testing.assert_array_equal(labels, want.labels)
  np.testing.assert_allclose(scores, want.scores, rtol=1e-5)


@pytest.fixture(scope="module")
def vanilla_predictor(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("vanilla")
  _untrained(workdir, **{"head.type": "vanilla", "encoder.dropout": 0.1})
  return inference.load(workdir, batch_sizes=(1, 8))


def test_exported_vanilla_uses_per_bucket_programs(vanilla_predictor,
                                                   test_data, tmp_path):
  # The vanilla head branches on B * C, so its batch size cannot be
  # symbolic: one program per bucket, rows padded to the bucket.
  d = export.export(vanilla_predictor, tmp_path / "v", k=3)
  meta = json.loads((d / "export.json").read_text())
  assert sorted(meta["programs"].values()) == [1, 8]
  run = export.load_exported(d)
  for n in (1, 5, 20):
    ids, values = vanilla_predictor.to_inputs(
        test_data.X[:n], width=vanilla_predictor.max_features)
    scores, labels = run(ids, values)
    want = vanilla_predictor.predict(test_data.X[:n], k=3)
    np.testing.assert_array_equal(np.asarray(labels), want.labels)
    np.testing.assert_allclose(np.asarray(scores), want.scores, rtol=1e-5)


def test_clustered_label_order_is_restored(tmp_path, test_data):
  # The codec's permutation comes from the training data's label centroids;
  # load() has no training data, so it must come from the workdir.
  config = _untrained(tmp_path, **{"head.type": "mhc",
                                   "head.label_order": "clustered"})
  data = datasets.load_dataset(config.data, config.seed)
  want = registry.make_codec(config.head, data.num_classes, data)
  assert want.permuted
  loaded = inference.load(tmp_path, batch_sizes=(8,))
  assert nnx.merge(loaded.graphdef, loaded.state).head.codec == want
  assert loaded.predict(test_data.X[:8], k=5).labels.shape == (8, 5)


@pytest.fixture(scope="module")
def token_run(tmp_path_factory, shared_data):
  workdir = tmp_path_factory.mktemp("tokens")
  config = _untrained(workdir, **{
      "data.name": "shakespeare", "data.data_dir": str(shared_data),
      "data.context": 3, "data.min_count": 3, "encoder.type": "token_context"})
  return workdir, config


def test_text_input_uses_the_corpus_vocabulary(token_run, shared_data,
                                               tmp_path):
  predictor = inference.load(token_run[0], batch_sizes=(8,))
  corpus = corpus_lib.Corpus.from_file(
      shared_data / "tinyshakespeare" / "input.txt", min_count=3)
  assert predictor.label_names == list(corpus.vocab)
  texts = ["First Citizen: Before we proceed any further, hear me",
           "O Romeo, Romeo! wherefore art thou", "zzqx", ""]
  contexts = np.zeros((4, 3), np.int32)  # <unk> = 0 pads short texts
  for i, text in enumerate(texts):
    ids = corpus.encode(text)[-3:]
    contexts[i, 3 - len(ids):] = ids
  want = predictor.predict(contexts, k=4)
  got = predictor.predict(texts, k=4)
  np.testing.assert_array_equal(got.labels, want.labels)
  assert got.names.tolist() == [corpus.decode(r) for r in want.labels]
  text_file = tmp_path / "in.txt"
  text_file.write_text("\n".join(texts) + "\n")
  streaming.predict_file(predictor, text_file, tmp_path / "names.txt", k=4,
                         write_names=True)
  lines = (tmp_path / "names.txt").read_text().split("\n")[:-1]
  assert [l.split("\t") for l in lines] == got.names.tolist()
  with pytest.raises(ValueError, match=r"token id 99999 in row 0 is outside "
                     r"the model's vocabulary \[0, 4633\)"):
    predictor.predict(np.array([[1, 2, 99999]]), k=2)


@pytest.mark.parametrize("content, batch_size, line", [
    (b"\x80", 1, 1),                              # undecodable header
    (b"2 4 2\n0 1:1\n\xff 2:1\n", 1, 3),          # undecodable row
    (b"2 4 2\r0 1:1\r\xff 2:1\r", 5, 3),          # ... with \r line ends
    (b"2 4 2\n0 9:1\n0 1:1\n0 2:1\n", 4, 2),      # bad row before the extra one
])
def test_iter_xc_batches_errors_name_the_first_bad_line(tmp_path, content,
                                                        batch_size, line):
  # Found by tests/test_fuzz.py: undecodable bytes raised a bare
  # UnicodeDecodeError, and rows past the header's N were reported before a
  # bad row earlier in the same batch.
  path = tmp_path / "in.txt"
  path.write_bytes(content)
  with pytest.raises(formats.FormatError) as e:
    batches, _ = streaming.iter_xc_batches(path, batch_size)
    list(batches)
  assert e.value.line == line and str(e.value).startswith(
      f"{path}, line {line}: ")
  with pytest.raises(formats.FormatError) as e_whole:
    formats.read_xc(path)
  assert e_whole.value.line == line


@pytest.mark.parametrize("content", [
    b"3 4 2\n0 1:1\n1 2:1\n0 3:",         # bad last row, no final newline
    b"3 4 2\n0 1:1\n1 2:1\n0 3:\n",       # ... with one
    b"2 4 2\n0 1:1\n0 1:2 1:3\n",          # a duplicate feature
    b"2 4 2\n0 1:1\n",                     # fewer rows than the header
])
@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_iter_xc_batches_errors_equal_read_xcs(tmp_path, content, batch_size):
  path = tmp_path / "in.txt"
  path.write_bytes(content)
  with pytest.raises(formats.FormatError) as whole:
    formats.read_xc(path)
  with pytest.raises(formats.FormatError) as streamed:
    list(streaming.iter_xc_batches(path, batch_size)[0])
  assert str(streamed.value) == str(whole.value)


def test_text_batches_name_an_undecodable_line(tmp_path):
  path = tmp_path / "in.txt"
  path.write_bytes(b"first line\r\nsecond\r\nthird \xe9 line\r\n")
  with pytest.raises(formats.FormatError, match=r"in.txt, line 3: not valid "
                     r"utf-8: byte 0xe9"):
    list(streaming.iter_text_batches(path, 2))
  path.write_bytes(b"\xef\xbb\xbfa b\nc\n")
  assert list(streaming.iter_text_batches(path, 1)) == [["a b"], ["c"]]
