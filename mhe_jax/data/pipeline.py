"""Fixed-shape, deterministic, checkpointable batch pipelines on grain.

A *source* turns example indices into a batch of fixed-shape numpy arrays; a
*loader* decides which indices form each batch and wraps the result in a
:class:`BatchIterator` (a ``grain.DatasetIterator``, so its position can be
saved with :meth:`~BatchIterator.get_state` and restored with
:meth:`~BatchIterator.set_state`).

Sources and the batches they make (``B`` = per-process batch size):

* :class:`SparseSource` over an :class:`~mhe_jax.data.formats.XMCData`
  (bag-of-words XMC): ``"feature_ids"`` int32 ``[B, Fmax]`` (sorted, -1
  padded), ``"feature_values"`` float32 ``[B, Fmax]`` (0 padded),
  ``"labels"`` int32 ``[B, Lmax]`` (sorted, -1 padded), or int32 ``[B]`` with
  ``single_label=True``.
* :class:`TokenSource` for the next-token corpus task: ``"features"`` int32
  ``[B, n]`` contexts, ``"labels"`` int32 ``[B]`` targets (single-label tasks
  use ``[B]``, the shape ``ops.losses.softmax_cross_entropy`` takes).
* :class:`ArraySource` over any dense ``[N, ...]`` features and ``[N]`` or
  ``[N, L]`` labels: ``"features"``, ``"labels"``.
* :class:`SequenceSource` for next-item training on users' histories
  (:mod:`mhe_jax.data.interactions`): ``"items"`` int32 ``[B, T]`` inputs and
  ``"labels"`` int32 ``[B, T]`` next-item targets, both left-padded with -1.
* :class:`SequenceEvalSource` for leave-one-out evaluation: ``"items"`` int32
  ``[B, T]`` (left-padded), ``"labels"`` int32 ``[B]`` the held-out item,
  ``"history"`` int32 ``[B, Hmax]`` every input item (-1 padded), the items
  a ranking may exclude.

Every batch also holds ``"mask"`` bool ``[B]`` (False on padding rows) and
``"index"`` int32 ``[B]`` (the example's row in the source, -1 on padding).
Padding rows hold -1 labels and -1 feature ids (0 values); dense padding
features are 0. ``Fmax``/``Lmax`` are the longest row of the whole source
unless given; a row longer than a given width raises, never truncates.

Loaders (all sizes are *global*: the batch summed over processes):

* :func:`train_loader`: epoch ``e`` visits the examples in the order
  ``np.random.default_rng([seed, e]).permutation(N)``, cut into
  ``N // global_batch_size`` batches; the remainder of each epoch is dropped
  (a different remainder each epoch). Repeats forever by default.
* :func:`eval_loader`: examples in order, ``ceil(N / global_batch_size)``
  batches, the last one padded with ``mask=False`` rows; nothing dropped or
  repeated.

Multi-host: process ``i`` of ``P`` takes rows ``[i * B, (i + 1) * B)`` of each
global batch, ``B = global_batch_size // P``. Every process thus makes the
same number of batches, in eval every example is in exactly one process's
batch, and the assembled global batch (e.g. with
``jax.make_array_from_process_local_data``) is the same whatever ``P`` is, so
a state saved with one process count restores with another. Each process holds
the source in memory and gathers only its own rows.

Example::

  from mhe_jax.data import formats, pipeline

  train = formats.read_xc("bibtex/train.txt")
  source = pipeline.SparseSource(train)
  it = pipeline.train_loader(source, global_batch_size=256, seed=0)
  batch = next(it)          # feature_ids int32 [256, Fmax], labels [256, Lmax]
  state = it.get_state()    # small JSON-able dict; save with the model
  it2 = pipeline.train_loader(source, global_batch_size=256, seed=0)
  it2.set_state(state)      # next(it2) == next(it)
  # With orbax: grain.checkpoint.CheckpointSave(it) / CheckpointRestore(it2).
  for batch in pipeline.eval_loader(pipeline.SparseSource(train), 512):
    ...                     # weight metrics by batch["mask"]
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from mhe_jax import _extras

with _extras.requires("train"):
  import grain

from mhe_jax.data.corpus import Corpus
from mhe_jax.data.formats import XMCData
from mhe_jax.data.formats import keep_largest
from mhe_jax.data.formats import padded_rows
from mhe_jax.data.formats import row_width
from mhe_jax.data.formats import sorted_csr
from mhe_jax.data.interactions import EvalExamples
from mhe_jax.data.interactions import Sequences

Batch = dict[str, np.ndarray]

_MAX_ROWS = 2**31 - 1  # Example indices are int32.


@dataclasses.dataclass(frozen=True)
class FieldSpec:
  """Shape (without the batch axis), dtype and padding value of a field."""

  shape: tuple[int, ...]
  dtype: np.dtype
  pad: int | float


class Source(Protocol):
  """Random access to fixed-shape examples, a batch at a time."""

  def __len__(self) -> int:
    """Number of examples N."""

  @property
  def element_spec(self) -> Mapping[str, FieldSpec]:
    """Per-example field specs (``"mask"`` and ``"index"`` excluded)."""

  def gather(self, indices: np.ndarray) -> Batch:
    """Rows ``indices`` (int64 ``[B]``; -1 for a padding row) as a batch."""


# ----------------------------------------------------------------------------
# Sources.


class SparseSource:
  """Padded sparse features and labels from an :class:`XMCData`.

  Args:
    data: the dataset (CSR ``X`` ``[N, F]`` and ``Y`` ``[N, L]``).
    max_features: ``Fmax``; default the longest feature row of ``data``.
    max_labels: ``Lmax``; default the longest label row of ``data``.
    single_label: yield ``"labels"`` int32 ``[B]`` (each row must hold exactly
      one label) instead of ``[B, Lmax]``.
    truncate_features: with ``max_features``, rows longer than it keep their
      ``max_features`` largest entries
      (:func:`~mhe_jax.data.formats.keep_largest`, ranked by
      ``feature_weights``) instead of raising. Bag-of-words rows are
      long-tailed (citeulike-t: mean 19 features, longest 379), and the
      padded width is what a training step pays for.
    feature_weights: float ``[F]`` ranking weights for ``truncate_features``
      (e.g. the idf); None ranks by value.

  Raises:
    ValueError: a row longer than ``max_features`` (unless
      ``truncate_features``) or ``max_labels``, or, with ``single_label``, a
      row without exactly one label.
  """

  def __init__(
      self,
      data: XMCData,
      *,
      max_features: int | None = None,
      max_labels: int | None = None,
      single_label: bool = False,
      truncate_features: bool = False,
      feature_weights: np.ndarray | None = None,
  ):
    if data.num_examples > _MAX_ROWS:
      raise ValueError(f"{data.num_examples} examples; at most {_MAX_ROWS}")
    self.data = data
    self._X = sorted_csr(data.X)
    if truncate_features:
      if max_features is None:
        raise ValueError("truncate_features needs max_features")
      self._X = keep_largest(self._X, max_features, feature_weights)
    self._Y = sorted_csr(data.Y)
    self.max_features = row_width(self._X, max_features, "features")
    self.single_label = single_label
    if single_label:
      counts = np.diff(self._Y.indptr)
      bad = np.flatnonzero(counts != 1)
      if bad.size:
        raise ValueError(f"single_label: row {bad[0]} has {counts[bad[0]]} "
                         "labels, expected exactly 1")
      self.max_labels = 1
    else:
      self.max_labels = row_width(self._Y, max_labels, "labels")

  def __len__(self) -> int:
    return self.data.num_examples

  @property
  def element_spec(self) -> dict[str, FieldSpec]:
    labels = (() if self.single_label else (self.max_labels,))
    return {
        "feature_ids": FieldSpec((self.max_features,), np.dtype(np.int32), -1),
        "feature_values": FieldSpec((self.max_features,),
                                    np.dtype(np.float32), 0.0),
        "labels": FieldSpec(labels, np.dtype(np.int32), -1),
    }

  def gather(self, indices: np.ndarray) -> Batch:
    """See :class:`Source`."""
    ids, vals = padded_rows(self._X, self.max_features, indices)
    labels, _ = padded_rows(self._Y, self.max_labels, indices,
                            with_values=False)
    if self.single_label:
      labels = labels[:, 0]
    return {"feature_ids": ids, "feature_values": vals, "labels": labels}


class ArraySource:
  """Dense per-example arrays.

  Args:
    features: ``[N, ...]`` any dtype; padding rows are 0.
    labels: int ``[N]`` or ``[N, L]`` (cast to int32); padding rows are -1.
  """

  def __init__(self, features: np.ndarray, labels: np.ndarray):
    features, labels = np.asarray(features), np.asarray(labels)
    if features.shape[0] != labels.shape[0]:
      raise ValueError(f"{features.shape[0]} feature rows but "
                       f"{labels.shape[0]} label rows")
    if labels.ndim not in (1, 2):
      raise ValueError(f"labels must be [N] or [N, L], got {labels.shape}")
    if features.shape[0] > _MAX_ROWS:
      raise ValueError(f"{features.shape[0]} examples; at most {_MAX_ROWS}")
    self.features = features
    self.labels = labels.astype(np.int32, copy=False)

  def __len__(self) -> int:
    return self.features.shape[0]

  @property
  def element_spec(self) -> dict[str, FieldSpec]:
    return {
        "features": FieldSpec(self.features.shape[1:], self.features.dtype, 0),
        "labels": FieldSpec(self.labels.shape[1:], np.dtype(np.int32), -1),
    }

  def gather(self, indices: np.ndarray) -> Batch:
    """See :class:`Source`."""
    valid = indices >= 0
    safe = np.where(valid, indices, 0)
    features = self.features[safe]
    labels = self.labels[safe]
    if not valid.all():
      features[~valid] = 0
      labels[~valid] = -1
    return {"features": features, "labels": labels}


class TokenSource:
  """Next-token examples cut from a token stream on the fly.

  Example ``i`` has ``features = ids[i:i + context]`` and
  ``labels = ids[i + context]``, as in
  :meth:`mhe_jax.data.corpus.Corpus.examples`, without materialising the
  ``[N, context]`` array. Padding rows hold context 0 and label -1.

  Args:
    ids: int ``[T]`` token ids of one split.
    context: number of previous tokens n, >= 1.
  """

  def __init__(self, ids: np.ndarray, context: int):
    if context < 1:
      raise ValueError(f"context must be >= 1, got {context}")
    self.ids = np.asarray(ids).astype(np.int32, copy=False)
    if self.ids.ndim != 1:
      raise ValueError(f"ids must be [T], got {self.ids.shape}")
    self.context = context
    self._n = max(0, self.ids.shape[0] - context)
    if self._n > _MAX_ROWS:
      raise ValueError(f"{self._n} examples; at most {_MAX_ROWS}")

  @classmethod
  def from_corpus(cls, corpus: Corpus, split: str,
                  context: int) -> TokenSource:
    """Source over ``corpus.split_ids(split)`` (a :class:`Corpus`)."""
    return cls(corpus.split_ids(split), context)

  def __len__(self) -> int:
    return self._n

  @property
  def element_spec(self) -> dict[str, FieldSpec]:
    return {
        "features": FieldSpec((self.context,), np.dtype(np.int32), 0),
        "labels": FieldSpec((), np.dtype(np.int32), -1),
    }

  def gather(self, indices: np.ndarray) -> Batch:
    """See :class:`Source`."""
    valid = indices >= 0
    safe = np.where(valid, indices, 0)
    positions = safe[:, None] + np.arange(self.context + 1)
    window = self.ids[positions]
    features = np.ascontiguousarray(window[:, :self.context])
    labels = np.ascontiguousarray(window[:, self.context])
    if not valid.all():
      features[~valid] = 0
      labels[~valid] = -1
    return {"features": features, "labels": labels}


def _last_items(values: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                width: int) -> np.ndarray:
  """``values[starts:ends]`` per row, its last ``width`` items left-padded.

  Args:
    values: int32 ``[total]`` flat sequences.
    starts, ends: int64 ``[B]`` row bounds (``ends - starts`` may exceed
      ``width``: the oldest items are cut).
    width: T.

  Returns:
    int32 ``[B, width]``, -1 before the row's items.
  """
  pos_bt = ends[:, None] - width + np.arange(width)
  valid_bt = pos_bt >= starts[:, None]
  if not values.size:
    return np.full(pos_bt.shape, -1, np.int32)
  out_bt = values[np.clip(pos_bt, 0, values.shape[0] - 1)]
  return np.where(valid_bt, out_bt, -1).astype(np.int32)


class SequenceSource:
  """Next-item training examples: one user's history per example.

  A history ``h`` (oldest first, ``len(h) >= 2``) gives inputs ``h[:-1]``
  and targets ``h[1:]``, both cut to their last ``max_len`` items and
  left-padded with -1, so position ``T - 1`` always holds the latest input
  and target ``labels[b, t]`` is the item that followed ``items[b, t]``.
  Histories shorter than 2 give no pair and are left out
  (:attr:`num_skipped`).

  Args:
    histories: the users' training histories (dense item ids).
    max_len: T, positions per example.

  Attributes:
    rows: int64 ``[N]``: the history behind each example.
    num_skipped: histories left out (fewer than 2 items).
  """

  def __init__(self, histories: Sequences, max_len: int):
    if max_len < 1:
      raise ValueError(f"max_len must be >= 1, got {max_len}")
    self.histories = histories
    self.max_len = int(max_len)
    self.rows = np.flatnonzero(histories.lengths >= 2).astype(np.int64)
    self.num_skipped = len(histories) - self.rows.shape[0]
    if self.rows.shape[0] > _MAX_ROWS:
      raise ValueError(f"{self.rows.shape[0]} examples; at most {_MAX_ROWS}")

  def __len__(self) -> int:
    return int(self.rows.shape[0])

  @property
  def element_spec(self) -> dict[str, FieldSpec]:
    return {"items": FieldSpec((self.max_len,), np.dtype(np.int32), -1),
            "labels": FieldSpec((self.max_len,), np.dtype(np.int32), -1)}

  def target_counts(self, num_items: int) -> np.ndarray:
    """int64 ``[num_items]``: how often each item is a training target."""
    h = self.histories
    keep = np.ones(h.values.shape[0], bool)
    keep[h.offsets[:-1][h.lengths > 0]] = False  # first items are no target
    return np.bincount(h.values[keep], minlength=num_items).astype(np.int64)

  def gather(self, indices: np.ndarray) -> Batch:
    """See :class:`Source`."""
    valid = indices >= 0
    rows = self.rows[np.where(valid, indices, 0)]
    starts = np.where(valid, self.histories.offsets[rows], 0)
    ends = np.where(valid, self.histories.offsets[rows + 1], 1)
    values = self.histories.values
    return {"items": _last_items(values, starts, ends - 1, self.max_len),
            "labels": _last_items(values, starts + 1, ends, self.max_len)}


class SequenceEvalSource:
  """Leave-one-out evaluation examples: input sequence -> held-out item.

  Args:
    examples: the examples (:class:`~mhe_jax.data.interactions.EvalExamples`).
    max_len: T, input positions (the last ``T`` input items, left-padded).
    item_counts: optional int ``[C]`` item popularity (interactions per item
      over the log), kept for the sampled-negatives protocol.

  Attributes:
    max_history: Hmax, the longest input sequence (the ``"history"`` width).
  """

  def __init__(self, examples: EvalExamples, max_len: int,
               item_counts: np.ndarray | None = None):
    if max_len < 1:
      raise ValueError(f"max_len must be >= 1, got {max_len}")
    if len(examples) > _MAX_ROWS:
      raise ValueError(f"{len(examples)} examples; at most {_MAX_ROWS}")
    self.examples = examples
    self.max_len = int(max_len)
    lengths = examples.inputs.lengths
    self.max_history = max(int(lengths.max()) if lengths.size else 0, 1)
    self.item_counts = (None if item_counts is None
                        else np.asarray(item_counts, np.int64))

  def __len__(self) -> int:
    return len(self.examples)

  @property
  def element_spec(self) -> dict[str, FieldSpec]:
    return {"items": FieldSpec((self.max_len,), np.dtype(np.int32), -1),
            "labels": FieldSpec((), np.dtype(np.int32), -1),
            "history": FieldSpec((self.max_history,), np.dtype(np.int32), -1)}

  def gather(self, indices: np.ndarray) -> Batch:
    """See :class:`Source`."""
    valid = indices >= 0
    safe = np.where(valid, indices, 0)
    offsets = self.examples.inputs.offsets
    starts = np.where(valid, offsets[safe], 0)
    ends = np.where(valid, offsets[safe + 1], 0)
    values = self.examples.inputs.values
    return {"items": _last_items(values, starts, ends, self.max_len),
            "labels": np.where(valid, self.examples.targets[safe],
                               -1).astype(np.int32),
            "history": _last_items(values, starts, ends, self.max_history)}


# ----------------------------------------------------------------------------
# Batch index plans and the grain data source over them.


def _process(process_index: int | None,
             process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = (jax.process_index() if process_index is None
                     else process_index)
    process_count = (jax.process_count() if process_count is None
                     else process_count)
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"bad process_index {process_index} of process_count "
                     f"{process_count}")
  return process_index, process_count


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size < 1:
    raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size {global_batch_size} is not divisible "
                     f"by process_count {process_count}")
  return global_batch_size // process_count


class _TrainPlan:
  """Step -> this process's example indices, reshuffled every epoch."""

  def __init__(self, num_examples: int, global_batch_size: int, seed: int,
               process_index: int, local_batch_size: int):
    self.num_examples = num_examples
    self.global_batch_size = global_batch_size
    self.seed = seed
    self.steps_per_epoch = num_examples // global_batch_size
    self._lo = process_index * local_batch_size
    self._hi = self._lo + local_batch_size
    self._lock = threading.Lock()
    self._cache: dict[int, np.ndarray] = {}  # The two latest epochs.

  def permutation(self, epoch: int) -> np.ndarray:
    """int64 ``[N]``: the order of epoch ``epoch``."""
    with self._lock:
      perm = self._cache.get(epoch)
      if perm is None:
        perm = np.random.default_rng([self.seed, epoch]).permutation(
            self.num_examples)
        self._cache[epoch] = perm
        for old in sorted(self._cache)[:-2]:
          del self._cache[old]
      return perm

  def __call__(self, step: int) -> np.ndarray:
    epoch, k = divmod(step, self.steps_per_epoch)
    start = k * self.global_batch_size
    return self.permutation(epoch)[start + self._lo:start + self._hi]


class _EvalPlan:
  """Step -> this process's example indices in order, -1 past the end."""

  def __init__(self, num_examples: int, global_batch_size: int,
               process_index: int, local_batch_size: int):
    self.num_examples = num_examples
    self.global_batch_size = global_batch_size
    self._offsets = process_index * local_batch_size + np.arange(
        local_batch_size)

  def __call__(self, step: int) -> np.ndarray:
    positions = step * self.global_batch_size + self._offsets
    return np.where(positions < self.num_examples, positions, -1)


class _BatchSequence:
  """A grain random-access data source whose records are whole batches."""

  def __init__(self, source: Source, plan: Callable[[int], np.ndarray],
               num_steps: int):
    self.source = source
    self.plan = plan
    self.num_steps = num_steps

  def __len__(self) -> int:
    return self.num_steps

  def __getitem__(self, step: int) -> Batch:
    if not 0 <= step < self.num_steps:
      raise IndexError(f"step {step} out of range [0, {self.num_steps})")
    indices = self.plan(int(step))
    batch = self.source.gather(indices)
    batch["mask"] = indices >= 0
    batch["index"] = indices.astype(np.int32)
    return batch


# ----------------------------------------------------------------------------
# The iterator.


class BatchIterator(grain.DatasetIterator):
  """Iterator over a loader's batches with an exact, JSON-able position.

  ``get_state()`` returns ``{"step": k, ...}`` plus the settings that define
  the batch stream (kind, seed, number of examples, global batch size);
  ``set_state`` on an iterator made with the same settings (any process
  count) continues with batch ``k``. Iteration ends after
  :attr:`num_batches` batches (never for an endless training loader).

  Attributes:
    num_batches: batches this iterator yields in all (``sys.maxsize`` when
      endless).
    steps_per_epoch: batches per pass over the data.
    batch_size: rows per batch on this process.
    element_spec: field specs of a batch, batch axis included.
  """

  def __init__(self, batches: _BatchSequence, fingerprint: dict[str, Any],
               read_options: grain.ReadOptions, steps_per_epoch: int,
               batch_size: int):
    self._fingerprint = fingerprint
    self._batches = batches
    inner = iter(grain.MapDataset.source(batches).to_iter_dataset(read_options))
    super().__init__(inner)
    self._inner = inner
    self.num_batches = batches.num_steps
    self.steps_per_epoch = steps_per_epoch
    self.batch_size = batch_size
    spec = {k: FieldSpec((batch_size,) + s.shape, s.dtype, s.pad)
            for k, s in batches.source.element_spec.items()}
    spec["mask"] = FieldSpec((batch_size,), np.dtype(np.bool_), False)
    spec["index"] = FieldSpec((batch_size,), np.dtype(np.int32), -1)
    self.element_spec = spec

  def __next__(self) -> Batch:
    return next(self._inner)

  def __len__(self) -> int:
    return self.num_batches

  def get_state(self) -> dict[str, Any]:
    """``{"step": next batch number, ...stream settings}``, JSON-able."""
    state = dict(self._fingerprint)
    state["step"] = int(self._inner.get_state()["next_index"])
    return state

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Continues from a :meth:`get_state` result.

    Raises:
      ValueError: if ``state`` comes from a loader with other settings, or
        its step is out of range.
    """
    wrong = {k: (state.get(k), v) for k, v in self._fingerprint.items()
             if state.get(k) != v}
    if wrong:
      raise ValueError("iterator state is for another stream; (state, this) "
                       f"differ in {wrong}")
    step = int(state["step"])
    if not 0 <= step <= self.num_batches:
      raise ValueError(f"step {step} out of range [0, {self.num_batches}]")
    self._inner.set_state({"next_index": step})


def _read_options(num_threads: int, prefetch: int) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=num_threads,
                           prefetch_buffer_size=prefetch if num_threads else 0)


def train_loader(
    source: Source,
    global_batch_size: int,
    *,
    seed: int,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    num_threads: int = 1,
    prefetch: int = 2,
) -> BatchIterator:
  """Shuffled, drop-remainder training batches, reshuffled every epoch.

  Args:
    source: the examples.
    global_batch_size: rows per step summed over processes; divisible by
      ``process_count`` and at most ``len(source)``.
    seed: shuffling seed (non-negative int); same seed, same batches.
    num_epochs: passes over the data, or None to repeat forever.
    process_index: this process, default ``jax.process_index()``.
    process_count: processes, default ``jax.process_count()``.
    num_threads: grain threads making batches ahead (0: made on demand).
    prefetch: batches made ahead when ``num_threads > 0``.

  Returns:
    An iterator of batches with ``global_batch_size // process_count`` rows,
    all ``mask`` True.
  """
  n = len(source)
  process_index, process_count = _process(process_index, process_count)
  local = _local_batch_size(global_batch_size, process_count)
  if global_batch_size > n:
    raise ValueError(f"global_batch_size {global_batch_size} > {n} examples; "
                     "no full batch per epoch")
  if seed < 0:
    raise ValueError(f"seed must be non-negative, got {seed}")
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"num_epochs must be >= 1 or None, got {num_epochs}")
  plan = _TrainPlan(n, global_batch_size, int(seed), process_index, local)
  num_steps = (sys.maxsize if num_epochs is None
               else num_epochs * plan.steps_per_epoch)
  fingerprint = {"kind": "train", "seed": int(seed), "num_examples": n,
                 "global_batch_size": global_batch_size}
  return BatchIterator(_BatchSequence(source, plan, num_steps), fingerprint,
                       _read_options(num_threads, prefetch),
                       plan.steps_per_epoch, local)


def eval_loader(
    source: Source,
    global_batch_size: int,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    num_threads: int = 1,
    prefetch: int = 2,
) -> BatchIterator:
  """Every example exactly once, in order, the last batch padded.

  Global batch ``k`` holds examples ``[k * G, (k + 1) * G)`` (``G`` the global
  batch size), rows past ``N`` being padding with ``mask`` False; process
  ``i`` gets rows ``[i * B, (i + 1) * B)`` of it. All processes make
  ``ceil(N / G)`` batches.

  Args:
    source: the examples.
    global_batch_size: rows per step summed over processes; divisible by
      ``process_count``.
    process_index: this process, default ``jax.process_index()``.
    process_count: processes, default ``jax.process_count()``.
    num_threads: grain threads making batches ahead (0: made on demand).
    prefetch: batches made ahead when ``num_threads > 0``.

  Returns:
    A finite iterator of batches with ``global_batch_size // process_count``
    rows.
  """
  n = len(source)
  process_index, process_count = _process(process_index, process_count)
  local = _local_batch_size(global_batch_size, process_count)
  plan = _EvalPlan(n, global_batch_size, process_index, local)
  num_steps = -(-n // global_batch_size)
  fingerprint = {"kind": "eval", "num_examples": n,
                 "global_batch_size": global_batch_size}
  return BatchIterator(_BatchSequence(source, plan, num_steps), fingerprint,
                       _read_options(num_threads, prefetch), num_steps, local)
