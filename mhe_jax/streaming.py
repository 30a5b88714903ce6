"""Predictions for a file of examples, streamed a batch at a time.

:func:`predict_file` runs a :class:`~mhe_jax.inference.Predictor` over an
input file and writes one output line per example (the work of ``python -m
mhe_jax.predict``). The input readers are incremental: :func:`iter_xc_batches`
parses an Extreme Classification Repository text file ``batch_size`` lines
at a time, in memory, with :func:`mhe_jax.data.formats.parse_xc_rows` (the
parser of :func:`~mhe_jax.data.formats.read_xc`, so the same strict rules
apply, and errors name the file and the line in it); :func:`iter_text_batches`
yields lines of plain text (next-token models). :func:`read_predictions`
reads a ``label:score`` output file back.

Example::

  from mhe_jax import inference, streaming
  predictor = inference.load("/tmp/delicious_mhp")
  n = streaming.predict_file(predictor, "test.txt", "pred.txt", k=5)
  scores, labels = streaming.read_predictions("pred.txt")   # [n, 5] each
"""

from __future__ import annotations

import math
import os
import pathlib
import re
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from absl import logging
import numpy as np
import scipy.sparse as sp

from mhe_jax.data import formats

if TYPE_CHECKING:
  from mhe_jax import inference

PathLike = str | os.PathLike


def predict_file(predictor: inference.Predictor, input_path: PathLike,
                 output_path: PathLike, *, k: int = 5,
                 batch_size: int | None = None, file_format: str = "auto",
                 labels_xml: PathLike | None = None, write_names: bool = False,
                 progress_every: float = 10.0) -> int:
  """Predicts every example of a file, writing one line per example.

  XC text and raw text are read and written a batch at a time (files
  larger than memory work); ARFF is read whole (its reader is not
  incremental). Output lines are ``label:score`` pairs (best first), or
  the label names separated by tabs with ``write_names``.

  The output file is written atomically: into ``<output>.tmp-<pid>`` in
  the same directory, then renamed over ``output_path`` once complete, so
  a killed or failed run never leaves a partial file under that name (a
  previous file there stays whole; on an error the temporary file is
  removed).

  Args:
    predictor: the model (:func:`mhe_jax.inference.load`).
    input_path: the examples; format as ``file_format``.
    output_path: the output text file ("-": stdout).
    k: labels per example.
    batch_size: rows per batch (default the largest bucket).
    file_format: ``xc`` (Extreme Classification Repository text; labels in
      it are ignored), ``arff`` (Mulan, needs ``labels_xml``), ``text``
      (next-token models: one text per line, the next token after its
      end is predicted), or ``auto`` (``.arff`` -> arff, a token model ->
      text, else xc).
    labels_xml: the Mulan XML naming an ARFF file's label attributes.
    write_names: write label names instead of ``label:score``.
    progress_every: seconds between progress lines in the log.

  Returns:
    The number of examples written.
  """
  k = predictor.check_k(k)
  if write_names and predictor.label_names is None:
    raise ValueError("write_names: this model's dataset had no label names")
  batch_size = batch_size or predictor.batch_sizes[-1]
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  input_path = pathlib.Path(input_path)
  if not input_path.is_file():
    raise FileNotFoundError(f"{input_path}: no such input file")
  fmt = file_format
  if fmt == "auto":
    fmt = ("arff" if input_path.suffix.lower() == ".arff" else
           "text" if not predictor.is_bag_of_words else "xc")
  if fmt == "xc":
    batches, total = iter_xc_batches(input_path, batch_size)
    if total[1] > predictor.input_size:
      raise ValueError(
          f"{input_path}: the header declares {total[1]} features but the "
          f"model was trained on {predictor.input_size}")
    total = total[0]
  elif fmt == "arff":
    if not labels_xml:
      raise ValueError("ARFF input needs labels_xml (the Mulan XML file)")
    data = formats.read_arff(input_path, labels_xml=labels_xml)
    total = data.num_examples
    batches = (data.X[i:i + batch_size] for i in range(0, total, batch_size))
  elif fmt == "text":
    batches, total = iter_text_batches(input_path, batch_size), None
  else:
    raise ValueError(f"unknown file_format {file_format!r}; known: "
                     "['arff', 'auto', 'text', 'xc']")
  progress = _Progress(total, progress_every)
  to_stdout = str(output_path) == "-"
  if not to_stdout:
    output_path = pathlib.Path(output_path)
    tmp_path = output_path.with_name(f"{output_path.name}.tmp-{os.getpid()}")
  out = (None if to_stdout else  # pylint: disable=consider-using-with
         open(tmp_path, "w", encoding="utf-8"))
  try:
    write = _stdout_write if to_stdout else out.write
    for batch in batches:
      pred = predictor.predict(batch, k)
      write(_format_lines(pred, write_names))
      progress.update(len(pred.labels))
    if out is not None:
      out.flush()
      os.fsync(out.fileno())
      out.close()
      os.replace(tmp_path, output_path)
  except BaseException:
    if out is not None:
      out.close()
      tmp_path.unlink(missing_ok=True)
    raise
  finally:
    if hasattr(batches, "close"):  # a reader's generator closes its file
      batches.close()
  progress.done()
  return progress.count


def _stdout_write(text: str) -> None:
  sys.stdout.write(text)


def _format_lines(pred: inference.Prediction, write_names: bool) -> str:
  if write_names:
    return "".join("\t".join(row) + "\n" for row in pred.names.tolist())
  lines = []
  for labels, scores in zip(pred.labels.tolist(), pred.scores):
    lines.append(" ".join(f"{l}:{s}" for l, s in zip(labels, scores)) + "\n")
  return "".join(lines)


def read_predictions(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
  """Reads a ``label:score`` output file back: (scores, labels) ``[N, k]``."""
  scores, labels = [], []
  for line in pathlib.Path(path).read_text().splitlines():
    pairs = [p.split(":") for p in line.split()]
    labels.append([int(l) for l, _ in pairs])
    scores.append([float(s) for _, s in pairs])
  return np.asarray(scores, np.float32), np.asarray(labels, np.int32)


class _Progress:
  """A progress line in the log every few seconds: count, rate, ETA."""

  def __init__(self, total: int | None, every: float):
    self.total, self.every, self.count = total, every, 0
    self.start = self.last = time.perf_counter()

  def _line(self, now: float) -> str:
    rate = self.count / max(now - self.start, 1e-9)
    if self.total:
      eta = (self.total - self.count) / rate if rate > 0 else math.inf
      return (f"predicted {self.count:,}/{self.total:,} examples "
              f"({100 * self.count / self.total:.0f}%), {rate:,.0f} "
              f"examples/s, ETA {eta:.0f} s")
    return f"predicted {self.count:,} examples, {rate:,.0f} examples/s"

  def update(self, n: int) -> None:
    self.count += n
    now = time.perf_counter()
    if now - self.last >= self.every:
      self.last = now
      logging.info("%s", self._line(now))

  def done(self) -> None:
    logging.info("done: %s", self._line(time.perf_counter()))


# ---------------------------------------------------- incremental readers
def _open_text(path: PathLike):
  """UTF-8 text (BOM dropped, any line end); undecodable bytes kept as
  lone surrogates for :func:`_check_decoded` to report with their line."""
  return open(path, encoding="utf-8-sig", errors="surrogateescape",
              newline=None)


def _check_decoded(path: PathLike, lines: list[str], first_line: int) -> None:
  """FormatError on the first of ``lines`` (file line ``first_line`` on)
  holding bytes that are not UTF-8."""
  if _UNDECODED.search("".join(lines)) is None:
    return
  for i, line in enumerate(lines):
    bad = _UNDECODED.search(line)
    if bad is not None:
      byte = ord(bad.group()) - 0xdc00
      raise formats.FormatError(path, first_line + i,
                                f"not valid utf-8: byte 0x{byte:02x}")


# surrogateescape decodes each byte that is not UTF-8 to U+DC80..U+DCFF,
# which strict UTF-8 text can never hold.
_UNDECODED = re.compile("[\udc80-\udcff]")


def iter_xc_batches(path: PathLike, batch_size: int
                    ) -> tuple[Iterator[sp.csr_matrix], tuple[int, int, int]]:
  """Feature rows of an XC text file, ``batch_size`` rows at a time.

  The file is read line by line, never whole; each batch of lines is parsed
  in memory by :func:`mhe_jax.data.formats.parse_xc_rows`, the row parser of
  :func:`~mhe_jax.data.formats.read_xc` (so the same strict rules apply, and
  errors name ``path`` and the line in it).

  Args:
    path: an Extreme Classification Repository text file.
    batch_size: rows per batch.

  Returns:
    ``(batches, (N, F, L))``: an iterator of CSR ``[<=batch_size, F]``
    feature matrices, and the header's sizes.
  """
  path = pathlib.Path(path)
  with _open_text(path) as f:
    header_line = f.readline().rstrip("\n")
  _check_decoded(path, [header_line], 1)
  n, num_features, num_labels = formats._parse_xc_header(  # pylint: disable=protected-access
      path, header_line)

  def batches():
    with _open_text(path) as f:
      f.readline()
      done = 0
      while True:
        lines = []
        for line in f:
          lines.append(line)
          if len(lines) == batch_size:
            break
        # A line without its terminator is the file's last.
        last_unterminated = bool(lines) and not lines[-1].endswith("\n")
        lines = [line.rstrip("\n") for line in lines]
        _check_decoded(path, lines, done + 2)
        # Rows past the N the header declares: the rows before them are
        # checked first, so the error is on the first bad line.
        extra = done + len(lines) > n
        lines = lines[:n - done]
        if not lines and not extra:
          if done < n:
            raise formats.FormatError(
                path, done + 2, f"unexpected end of file after {done} rows; "
                f"the header declares {n} (truncated file?)")
          return
        if lines:
          data = formats.parse_xc_rows(
              path, lines, num_features, num_labels, first_line=done + 2,
              last_unterminated=last_unterminated and not extra)
          done += len(lines)
          yield data.X
        if extra:
          raise formats.FormatError(
              path, n + 2, f"more rows than the {n} the header declares")

  return batches(), (n, num_features, num_labels)


def iter_text_batches(path: PathLike, batch_size: int) -> Iterator[list[str]]:
  """Lines of a UTF-8 text file, ``batch_size`` at a time, terminators cut.

  Raises:
    FormatError: a line holding bytes that are not UTF-8 (named by number).
  """
  with _open_text(path) as f:
    lines, done = [], 0
    for line in f:
      lines.append(line.rstrip("\n"))
      if len(lines) == batch_size:
        _check_decoded(path, lines, done + 1)
        yield lines
        done += len(lines)
        lines = []
    if lines:
      _check_decoded(path, lines, done + 1)
      yield lines
