"""Inference: load a trained model from its workdir and predict top-k fast.

:func:`load` rebuilds the model a run of :func:`mhe_jax.train.train_and_evaluate`
trained (from the model description the trainer writes next to its
checkpoints, :mod:`mhe_jax.model_info`, so the training data is not needed)
and restores only the model's part of the newest (or a chosen) orbax
checkpoint, on one device. The returned :class:`Predictor` decodes a batch to
its top-k labels with the head's own exact decoder (``model.topk``),
compiled once per *bucket*: a chunk of ``n`` rows is padded up to the
smallest batch bucket ``>= n`` (default ``(1, 8, 64, 512)``; larger requests
run in chunks), and bag-of-words rows, sorted by length, to the smallest
feature width bucket (8, 16, 32, ... up to the training run's longest row)
that holds the chunk's longest row, so serving requests of any size never
recompiles after :meth:`Predictor.warmup`. :meth:`Predictor.predict_one`
answers one example (``indices, values``) with numpy-only input conversion
and one compiled call (docs/inference.md, "One-request latency": where its
time goes). A Predictor may be called from several threads at once.

Inputs to :meth:`Predictor.predict` (``N`` examples):

* an :class:`~mhe_jax.data.formats.XMCData` or a scipy sparse ``[N, F]``
  matrix (bag-of-words models; labels of an XMCData are ignored);
* a tuple ``(indices, values)`` of padded int ``[N, M]`` feature indices
  (negative = padding) and float ``[N, M]`` values (bag-of-words models);
* an int ``[N, context]`` array of token ids, or a list of N strings whose
  last ``context`` tokens are the context (next-token models);
* a dict of the model's input arrays (``model_info.json``'s ``input_keys``).

Predicting a whole file, a batch at a time, is :mod:`mhe_jax.streaming`;
the ``jax.export`` artifact and its jax + numpy runner are
:mod:`mhe_jax.export`.

Example::

  from mhe_jax import inference
  predictor = inference.load("/tmp/delicious_mhp")    # a training workdir
  scores, labels = predictor.predict(test_data, k=5)  # numpy [N, 5] each
  pred = predictor.predict(test_data, k=5)
  pred.names                  # [N, 5] label names (None if the data had none)
  scores, labels = predictor.predict_one(indices, values, k=5)  # one example
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from mhe_jax import _extras

with _extras.requires("train"):
  import orbax.checkpoint as ocp

from mhe_jax import averaging
from mhe_jax import checkpointing
from mhe_jax import model_info
from mhe_jax import registry
from mhe_jax.data import corpus as corpus_lib
from mhe_jax.data import formats

PathLike = str | os.PathLike

DEFAULT_BATCH_SIZES = (1, 8, 64, 512)
# CPU programs of at most this many rows are compiled without intra-op
# parallel loops (see Predictor._program).
SERIAL_BATCH = 8
_BOW_KEYS = ("feature_ids", "feature_values")
_TOKEN_KEYS = ("features",)


def _fresh(abstract: jax.ShapeDtypeStruct, device: jax.Device) -> jax.Array:
  """A concrete placeholder for a random-number stream's key or count."""
  if jax.dtypes.issubdtype(abstract.dtype, jax.dtypes.prng_key):
    key = jax.random.key(0)
    return jax.device_put(jnp.broadcast_to(key, abstract.shape), device)
  return jax.device_put(np.zeros(abstract.shape, abstract.dtype), device)


def load(path: PathLike, *, step: int | None = None,
         batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
         device: jax.Device | None = None) -> Predictor:
  """Loads a trained model for prediction.

  Args:
    path: a training workdir, its ``checkpoints`` directory, or one
      checkpoint ``workdir/checkpoints/<step>``.
    step: which checkpoint (default: the newest, or the one ``path`` names).
    batch_sizes: the batch buckets (see :class:`Predictor`).
    device: where the parameters live (default ``jax.devices()[0]``).

  Returns:
    A :class:`Predictor` holding the model (not the optimiser state).

  Raises:
    FileNotFoundError: no such path, no ``config.json``/``model_info.json``,
      or no checkpoint.
    ValueError: a checkpoint that does not fit the config.
  """
  workdir, step_dir = model_info.resolve(path, step)
  config, info, data = model_info.read(workdir)
  device = device or jax.devices()[0]
  abstract = nnx.eval_shape(
      lambda: registry.build_model(config, data, nnx.Rngs(config.seed)))
  # Random-number streams (dropout) are not restored: predict never draws.
  graphdef, abstract_rng, abstract_state = nnx.split(
      abstract, nnx.RngState, ...)
  sharding = jax.sharding.SingleDeviceSharding(device)
  rng_state = jax.tree.map(lambda a: _fresh(a, device), abstract_rng)
  placed = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)
  target = jax.tree.map(placed, abstract_state)
  # The checkpoint holds nnx.state((model, optimizer)); restore item 0 (and,
  # with optimizer.ema_decay, the parameters' average from item 1) only. The
  # average is a tree of the model's Params (param_ema's init takes them).
  item = nnx.State({0: target})
  ema = bool(config.optimizer.get("ema_decay", 0.0))
  if ema:
    item[1] = averaging.optimizer_item(jax.tree.map(
        placed, nnx.filter_state(abstract_state, nnx.Param)))
  try:
    restored = ocp.PyTreeCheckpointer().restore(
        step_dir / "state", args=ocp.args.PyTreeRestore(
            item=item,
            restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True))
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(
        f"checkpoint {step_dir} does not hold the model that "
        f"{workdir / model_info.CONFIG_FILE} describes: "
        f"{type(e).__name__}: {e}") from None
  state = restored[0]
  checkpointing.check_finite_structure(state, target, where=str(step_dir))
  if ema:  # serve the average, as the trainer evaluated it
    state = averaging.replace_params(
        state, averaging.average_of(nnx.State(restored)))
  graphdef, state = nnx.split(nnx.merge(graphdef, rng_state, state))
  logging.info("loaded %s (%s head, %d classes) from %s", config.name,
               config.head.type, info["num_classes"], step_dir)
  return Predictor(graphdef, state, info, batch_sizes=batch_sizes,
                   name=f"{config.name} ({config.head.type})")


# --------------------------------------------------------------- predicting
@dataclasses.dataclass(frozen=True)
class Prediction:
  """Top-k predictions; unpacks as ``scores, labels = prediction``.

  Attributes:
    scores: float32 ``[N, k]``, descending per row (the head's scores:
      log-probabilities, or logits for the vanilla head).
    labels: int32 ``[N, k]`` label ids.
    names: object ``[N, k]`` label names, or None when the dataset had none.
  """

  scores: np.ndarray
  labels: np.ndarray
  names: np.ndarray | None = None

  def __iter__(self):
    return iter((self.scores, self.labels))

  def __len__(self) -> int:
    return 2


def _next_pow2(n: int) -> int:
  return 1 << max(0, int(n) - 1).bit_length()


def _fit_width(ids: np.ndarray, values: np.ndarray,
               width: int) -> tuple[np.ndarray, np.ndarray]:
  """Left-aligned padded features cut or padded to ``width`` columns."""
  if width <= ids.shape[1]:
    return ids[:, :width], values[:, :width]
  out_ids = np.full((ids.shape[0], width), -1, np.int32)
  out_values = np.zeros((ids.shape[0], width), np.float32)
  out_ids[:, :ids.shape[1]] = ids
  out_values[:, :ids.shape[1]] = values
  return out_ids, out_values


@dataclasses.dataclass(frozen=True)
class _Weights:
  """A Predictor's weights, flattened once, and the programs compiled for
  them, keyed by ``(k, input shapes and dtypes)``."""

  state: nnx.State
  leaves: list[Any]
  treedef: Any
  avals: tuple[Any, ...]
  sharding: jax.sharding.Sharding | None
  platform: str
  programs: dict[tuple[Any, ...], tuple[Any, bool]]


class Predictor:
  """A trained model, compiled for top-k prediction on fixed batch buckets.

  Build with :func:`load`. A request of ``n`` rows runs as chunks of at
  most the largest batch bucket, each padded to the smallest bucket that
  holds it; bag-of-words rows are sorted by length and each chunk is padded
  to its feature-width bucket (rows longer than the training width: the
  next power of two, compiled on first use). Each (bucket, width, k) is
  compiled once, ahead of time (``jax.jit(...).lower(...).compile()``), as
  a program of the model's flattened weight arrays and the inputs, so a call
  neither flattens the ``nnx.State`` pytree nor looks up a jit cache; it
  returns scores and labels in one array (one device-to-host copy).
  :meth:`warmup` compiles every bucket ahead of time. Results come back in
  the request's row order. :meth:`predict_one` answers one example with the
  least host work per request.

  Attributes:
    num_classes: C.
    input_keys: the encoder's inputs.
    input_size: bag-of-words features, or token vocabulary size.
    context: tokens per example (next-token models), else None.
    label_names: list of C names, or None.
    batch_sizes: the batch buckets, ascending.
    widths: the feature-width buckets (bag-of-words models).
    max_k: the largest k the head's decoder accepts.
    num_traces: programs compiled so far (one per bucket, width and k).
  """

  def __init__(self, graphdef: nnx.GraphDef, state: nnx.State,
               info: Mapping[str, Any], *,
               batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
               name: str = "model"):
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1:
      raise ValueError(f"batch_sizes must be positive, got {batch_sizes}")
    self._compile_lock = threading.Lock()
    self._weights: _Weights | None = None
    self.graphdef, self.state = graphdef, state
    self.name = name
    self.num_classes = int(info["num_classes"])
    self.multilabel = bool(info["multilabel"])
    self.input_keys = tuple(info["input_keys"])
    self.input_size = int(info["input_size"])
    self.context = info.get("context")
    self.max_len = info.get("max_len")  # item sequences: positions T
    self.max_features = info.get("max_features") or 1
    self.max_cells = sizes[-1] * 16  # feature slots per chunk (see _run)
    self.widths = tuple(sorted(
        {min(2**i, self.max_features) for i in range(3, 32)
         if 2**(i - 1) < self.max_features} | {self.max_features}))
    self.label_names = info.get("label_names")
    self._names = (None if self.label_names is None
                   else np.asarray(self.label_names, dtype=object))
    self._token_to_id = None
    self.batch_sizes = tuple(sizes)
    model = nnx.merge(graphdef, state)
    head = getattr(model, "head", model)  # whole-model methods have no head
    self.max_k = int(getattr(head, "max_k", self.num_classes))
    self._checked_k: set[int] = set()  # ks check_k accepted (predict_one)
    self.num_traces = 0

  @property
  def state(self) -> nnx.State:
    """The model's state; setting it re-flattens the weights once."""
    return self._weights.state

  @state.setter
  def state(self, state: nnx.State) -> None:
    leaves, treedef = jax.tree.flatten(state)
    avals = tuple(jax.typeof(l) for l in leaves)
    devices = {d for l in leaves if isinstance(l, jax.Array)
               for d in l.devices()}
    if len(devices) > 1:
      raise ValueError(f"a Predictor's weights live on one device, got "
                       f"{sorted(map(str, devices))}")
    device = devices.pop() if devices else None
    sharding = None if device is None else jax.sharding.SingleDeviceSharding(
        device)
    platform = jax.default_backend() if device is None else device.platform
    old = self._weights
    programs = ({} if old is None or (old.treedef, old.avals, old.sharding)
                != (treedef, avals, sharding) else old.programs)
    # One assignment: a request running in another thread sees the old
    # weights with their programs or the new ones with theirs.
    self._weights = _Weights(state, leaves, treedef, avals, sharding,
                             platform, programs)

  # ------------------------------------------------------------- compiled
  def _program(self, weights: _Weights, inputs: Sequence[np.ndarray],
               k: int) -> tuple[Any, bool]:
    """The compiled program for these input shapes and ``k`` (built once)."""
    key = (k, *((a.shape, a.dtype) for a in inputs))
    program = weights.programs.get(key)
    if program is not None:
      return program
    with self._compile_lock:
      program = weights.programs.get(key)
      if program is not None:  # another thread compiled it meanwhile
        return program
      graphdef, treedef, keys = self.graphdef, weights.treedef, self.input_keys

      def topk(leaves, inputs):
        model = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
        scores, labels = model.topk(dict(zip(keys, inputs)), k)
        if scores.dtype == jnp.float32 and labels.dtype == jnp.int32:
          # One output array, so one device-to-host copy: int32 [B, 2k], the
          # scores' bits in columns :k (moved as integers, never as floats).
          return jnp.concatenate(
              [jax.lax.bitcast_convert_type(scores, jnp.int32), labels], axis=1)
        return scores, labels

      specs = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype,
                                         sharding=weights.sharding)
                    for a in inputs)
      lowered = jax.jit(topk).lower(weights.leaves, specs)
      packed = isinstance(lowered.out_info, jax.ShapeDtypeStruct)
      options = None
      if weights.platform == "cpu" and inputs[0].shape[0] <= SERIAL_BATCH:
        # A small batch runs as one thread: XLA's CPU compiler would split
        # its larger loops across the intra-op thread pool, and the hand-off
        # and the weights' cache misses on another core cost more than the
        # split saves (Delicious MHP, batch 1: 71 -> 49 us a call).
        options = {"xla_disable_hlo_passes": "cpu-parallel-task-assigner"}
      program = (lowered.compile(compiler_options=options), packed)
      self.num_traces += 1
      weights.programs[key] = program
    return program

  def _call(self, inputs: Sequence[np.ndarray], k: int):
    """Dispatches one chunk: ``(device output, packed?)``, asynchronously."""
    weights = self._weights  # one read: weights and programs that match
    compiled, packed = self._program(weights, inputs, k)
    return compiled(weights.leaves, tuple(inputs)), packed

  @staticmethod
  def _fetch(out, packed: bool, k: int,
             rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Host ``(scores [rows, k], labels [rows, k])`` of a dispatched chunk."""
    if packed:
      host = np.asarray(out)[:rows]
      return host[:, :k].view(np.float32), host[:, k:]
    scores, labels = out
    return np.asarray(scores)[:rows], np.asarray(labels)[:rows]

  @property
  def is_bag_of_words(self) -> bool:
    return self.input_keys == _BOW_KEYS

  @property
  def _is_token_model(self) -> bool:
    return self.input_keys == _TOKEN_KEYS and self.context is not None

  def check_k(self, k: int) -> int:
    """``k`` as an int, or a ValueError naming the class count."""
    if isinstance(k, bool) or int(k) != k:
      raise ValueError(f"k must be an integer, got {k!r}")
    k = int(k)
    if not 1 <= k <= self.num_classes:
      raise ValueError(f"k={k} is not in [1, {self.num_classes}]: the model "
                       f"has {self.num_classes} classes")
    if k > self.max_k:
      raise ValueError(f"k={k} is above {self.max_k}, the most this head "
                       "can return (MHC: limited by its beam)")
    return k

  # ------------------------------------------------------ input handling
  def to_inputs(self, features: Any,
                width: int | None = None) -> tuple[np.ndarray, ...]:
    """Any accepted input (module docstring) -> checked model input arrays.

    Bag-of-words inputs come back as ``(feature_ids, feature_values)`` with
    each row's features first, ``width`` wide (default: the longest row).
    """
    if isinstance(features, Mapping):
      missing = [k for k in self.input_keys if k not in features]
      if missing:
        raise ValueError(f"input dict lacks {missing}; the model reads "
                         f"{list(self.input_keys)}")
      features = tuple(features[k] for k in self.input_keys)
      if len(features) == 1:
        features = features[0]
    if self.is_bag_of_words:
      return self._bow_inputs(features, width)
    if self._is_token_model:
      return self._token_inputs(features)
    arrays = features if isinstance(features, tuple) else (features,)
    arrays = tuple(np.asarray(a) for a in arrays)
    # The dtypes the programs take (int64 -> int32 without jax_enable_x64),
    # so that each request shape compiles once.
    return tuple(a if a.dtype == jax.dtypes.canonicalize_dtype(a.dtype)
                 else a.astype(jax.dtypes.canonicalize_dtype(a.dtype))
                 for a in arrays)

  def _bow_inputs(self, features, width):
    if isinstance(features, formats.XMCData):
      features = features.X
    if sp.issparse(features):
      return self._csr_inputs(features, width)
    if not (isinstance(features, tuple) and len(features) == 2):
      raise TypeError(
          "a bag-of-words model takes an XMCData, a scipy sparse matrix, or "
          f"a tuple (indices, values); got {type(features).__name__}")
    ids = np.asarray(features[0])
    values = np.asarray(features[1], np.float32)
    if ids.ndim == 1:
      row = self._bow_row(ids, values, width)
      if row is not None:
        return row
      ids, values = ids[None], values[None]
    if ids.ndim != 2 or ids.shape != values.shape:
      raise ValueError(f"indices and values must both be [N, M], got "
                       f"{ids.shape} and {values.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f"feature indices must be integers, got {ids.dtype}")
    ids = ids.astype(np.int64, copy=False)
    bad = np.argwhere(ids >= self.input_size)
    if bad.size:
      r, c = bad[0]
      raise ValueError(
          f"feature index {ids[r, c]} in row {r} is beyond the model's input "
          f"size {self.input_size} (valid indices 0..{self.input_size - 1})")
    if not np.all(np.isfinite(values[ids >= 0])):
      raise ValueError("feature values must be finite")
    valid = ids >= 0
    if np.any(valid[:, 1:] & ~valid[:, :-1]):  # padding before a feature
      order = np.argsort(~valid, axis=1, kind="stable")
      ids = np.take_along_axis(ids, order, 1)
      values = np.take_along_axis(values, order, 1)
      valid = ids >= 0
    longest = int(valid.sum(1).max()) if ids.shape[0] else 0
    if width is not None and longest > width:
      raise ValueError(f"a row has {longest} features, more than width={width}")
    ids, values = _fit_width(np.where(valid, ids, -1).astype(np.int32),
                             np.where(valid, values, 0).astype(np.float32),
                             width or max(longest, 1))
    return ids, values

  def _csr_inputs(self, m: sp.spmatrix,
                  width: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Padded ``(ids, values)`` of sparse rows
    (:func:`mhe_jax.data.formats.padded_rows`, numpy only: no scipy
    operation on a CSR matrix whose indices are sorted; other formats are
    converted to one first)."""
    if m.format != "csr":
      m = m.tocsr()
    if not m.has_sorted_indices:  # rows in feature order, as in training
      m = m.sorted_indices()
    indptr, indices = m.indptr, m.indices
    n, nnz = m.shape[0], int(indptr[-1] - indptr[0])
    if m.shape[1] > self.input_size and nnz:
      top = int(indices[indptr[0]:indptr[-1]].max())
      if top >= self.input_size:
        at = indptr[0] + int(np.argmax(indices[indptr[0]:indptr[-1]] == top))
        row = int(np.searchsorted(indptr, at, side="right") - 1)
        raise ValueError(
            f"feature index {top} in row {row} is beyond the model's input "
            f"size {self.input_size} (valid indices 0..{self.input_size - 1})")
    counts = np.diff(indptr)
    longest = int(counts.max()) if n else 0
    if width is None:
      width = max(longest, 1)
    elif longest > width:
      raise ValueError(f"row {int(np.argmax(counts))} has {longest} "
                       f"features, more than the padded width {width}")
    return formats.padded_rows(m, width)

  def _width(self, longest: int) -> int:
    """The feature-width bucket of a chunk whose longest row is ``longest``."""
    for w in self.widths:
      if w >= longest:
        return w
    return _next_pow2(longest)

  def _token_inputs(self, features):
    if isinstance(features, str):
      raise TypeError("pass a list of strings, not one string")
    if (isinstance(features, Sequence) and not isinstance(features, np.ndarray)
        and features and all(isinstance(f, str) for f in features)):
      return (self.encode_text(features),)
    ids = np.asarray(features)
    if ids.ndim == 1:
      ids = ids[None]
    if ids.ndim != 2 or ids.shape[1] != self.context:
      raise ValueError(f"token contexts must be [N, {self.context}], got "
                       f"{ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f"token ids must be integers, got {ids.dtype}")
    bad = np.argwhere((ids < 0) | (ids >= self.input_size))
    if bad.size:
      r, c = bad[0]
      raise ValueError(f"token id {ids[r, c]} in row {r} is outside the "
                       f"model's vocabulary [0, {self.input_size})")
    return (ids.astype(np.int32),)

  def encode_text(self, texts: Sequence[str]) -> np.ndarray:
    """Each text's last ``context`` tokens as ids (``<unk>``-padded left)."""
    if self.label_names is None or self.context is None:
      raise ValueError("text input needs a next-token model with a "
                       "vocabulary (label names)")
    if self._token_to_id is None:
      self._token_to_id = {t: i for i, t in enumerate(self.label_names)}
    out = np.full((len(texts), self.context), corpus_lib.UNK_ID, np.int32)
    for i, text in enumerate(texts):
      tokens = corpus_lib.tokenize(text)[-self.context:]
      ids = [self._token_to_id.get(t, corpus_lib.UNK_ID) for t in tokens]
      if ids:
        out[i, self.context - len(ids):] = ids
    return out

  # ---------------------------------------------------------- prediction
  def bucket(self, n: int) -> int:
    """The batch size a chunk of ``n <= max bucket`` rows runs at."""
    for b in self.batch_sizes:
      if b >= n:
        return b
    return self.batch_sizes[-1]

  def _run(self, inputs: tuple[np.ndarray, ...], k: int):
    """(row order, device results per chunk), dispatched asynchronously.

    Bag-of-words rows are sorted by length and cut into chunks, each padded
    only to its longest row's width bucket; a chunk of long rows uses a
    smaller batch bucket, so that a chunk holds at most ``max_cells``
    feature slots (Delicious' median row has 6 features, its longest 335:
    padding every row to 335 makes a test-set pass 5x slower). ``max_cells``
    is 16 x the largest bucket, so that a chunk's gathered embedding rows
    stay small (Delicious MHP test set on 2 CPU cores: 103k examples/s,
    62k at 64 x).
    """
    n = inputs[0].shape[0]
    order = lengths = None
    if self.is_bag_of_words:
      lengths = (inputs[0] >= 0).sum(1)
      if n > 1:
        order = np.argsort(lengths, kind="stable")
    outs = []
    start = 0
    while start < n:
      for b in reversed(self.batch_sizes):
        rows = (slice(start, start + b) if order is None
                else order[start:start + b])
        width = (None if lengths is None
                 else self._width(int(lengths[rows].max())))
        if (width is None or b * width <= self.max_cells
            or b == self.batch_sizes[0]):
          break
      chunk = [a[rows] for a in inputs]
      if width is not None:
        chunk = _fit_width(*chunk, width)
      m = chunk[0].shape[0]
      size = self.bucket(m)
      if size != m:
        chunk = [np.concatenate(
            [a, np.full((size - m,) + a.shape[1:], -1 if a.dtype.kind == "i"
                        else 0, a.dtype)]) for a in chunk]
      outs.append((m, *self._call(chunk, k)))
      start += m
    return order, outs

  def predict(self, features: Any, k: int = 5) -> Prediction:
    """Top-k labels of a batch.

    Args:
      features: N examples in any form the module docstring lists.
      k: labels per example, ``1 <= k <= C``.

    Returns:
      A :class:`Prediction` (``scores, labels = ...`` unpacks it).

    Raises:
      ValueError: k out of range, a feature index beyond the model's input
        size, a token id outside the vocabulary, or malformed arrays.
    """
    k = self.check_k(k)
    inputs = self.to_inputs(features)
    n = inputs[0].shape[0]
    if n == 0:
      empty = np.zeros((0, k))
      return Prediction(empty.astype(np.float32), empty.astype(np.int32),
                        None if self._names is None else empty.astype(object))
    order, outs = self._run(inputs, k)
    parts = [self._fetch(out, packed, k, r) for r, out, packed in outs]
    scores = np.concatenate([s for s, _ in parts])
    labels = np.concatenate([l for _, l in parts])
    if order is not None:
      scores[order], labels[order] = scores.copy(), labels.copy()
    names = None if self._names is None else self._names[labels]
    return Prediction(scores, labels.astype(np.int32), names)

  def warmup(self, k: int = 5, max_width: int | None = None) -> None:
    """Compiles and runs every (batch bucket, feature-width bucket) program.

    After it, requests for this ``k`` whose rows are at most the training
    width long (or ``max_width``) never compile (next-token and
    item-sequence models: every request of this ``k``).

    Args:
      k: the k to compile for.
      max_width: bag-of-words models: also compile the power-of-two widths
        above the training width up to the one that holds ``max_width``
        features (rows longer than the training rows, e.g. test rows that
        were not cut to the training width).
    """
    k = self.check_k(k)
    longer = []  # widths above the training width, and the buckets of each
    if max_width is not None and max_width > self.max_features:
      w = _next_pow2(self.max_features + 1)
      while True:
        longer.append(w)
        if w >= max_width:
          break
        w *= 2
    for b in self.batch_sizes:
      if self.is_bag_of_words:
        # Above the training width only the buckets _run gives such rows.
        for w in list(self.widths) + [
            w for w in longer
            if b * w <= self.max_cells or b == self.batch_sizes[0]]:
          inputs = (np.full((b, w), -1, np.int32), np.zeros((b, w), np.float32))
          jax.block_until_ready(self._call(inputs, k)[0])
      elif self.context is not None:
        inputs = (np.zeros((b, self.context), np.int32),)
        jax.block_until_ready(self._call(inputs, k)[0])
      elif self.input_keys == ("items",) and self.max_len:
        inputs = (np.full((b, self.max_len), -1, np.int32),)
        jax.block_until_ready(self._call(inputs, k)[0])

  def predict_one(self, *row: Any, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Top-k labels of one example, with the least host work per request.

    The same program and the same result as ``predict`` on that one row,
    without the batch machinery: a bag-of-words row of ``M`` features is
    copied into the batch-1 bucket of its width bucket with numpy only
    (no scipy, no sorting), the compiled program runs on the flattened
    weights, and one host copy brings back scores and labels. Inputs it does
    not take directly (padding ids, other shapes) go through
    :meth:`to_inputs`, with its checks and errors.

    Args:
      *row: bag-of-words models: ``indices, values``, int and float ``[M]``
        (any order; negative indices are padding); next-token models: one
        int ``[context]`` token row or one text; item-sequence models: one
        ``[T]`` item row (-1 padded), or a dict of the model's input arrays
        for the one example.
      k: labels, ``1 <= k <= max_k``.

    Returns:
      ``(scores [k] float32, labels [k] int32)``, best first.

    Raises:
      ValueError: as :meth:`predict` (k out of range, a feature index beyond
        the model's input size, non-finite values, malformed arrays), or
        when ``row`` holds more than one example.
    """
    if type(k) is not int or k not in self._checked_k:  # pylint: disable=unidiomatic-typecheck
      k = self.check_k(k)
      self._checked_k.add(k)
    inputs = None
    if self.is_bag_of_words and len(row) == 2:
      inputs = self._bow_row(np.asarray(row[0]), np.asarray(row[1], np.float32),
                             -1)
    if inputs is None:
      inputs = self._one_row(row)
    b = self.batch_sizes[0]
    if b > 1:
      inputs = [np.concatenate(
          [a, np.full((b - 1,) + a.shape[1:], -1 if a.dtype.kind == "i"
                      else 0, a.dtype)]) for a in inputs]
    out, packed = self._call(inputs, k)
    if packed:
      host = np.asarray(out)[0]
      return host[:k].view(np.float32).copy(), host[k:].copy()
    scores, labels = out
    return np.asarray(scores)[0].copy(), np.asarray(labels)[0].copy()

  def _bow_row(self, ids: np.ndarray, values: np.ndarray,
               width: int | None) -> tuple[np.ndarray, np.ndarray] | None:
    """One row of ``M`` features as ``[1, width]`` arrays (``width``:
    default ``max(M, 1)``; ``-1``: its width bucket), with numpy only.

    Returns None when the row is not of the common form (1-D integer ids
    without padding, float values of the same shape): the general path then
    checks it and says what is wrong.
    """
    if (ids.ndim != 1 or values.shape != ids.shape
        or ids.dtype.kind not in "iu"):
      return None
    m = ids.shape[0]
    if m:
      if ids.min() < 0:  # padding among the ids: the general path moves it
        return None
      if ids.max() >= self.input_size:
        c = int(np.argmax(ids >= self.input_size))
        raise ValueError(
            f"feature index {ids[c]} in row 0 is beyond the model's input "
            f"size {self.input_size} (valid indices 0..{self.input_size - 1})")
      if not np.isfinite(values).all():
        raise ValueError("feature values must be finite")
    if width is None:
      width = max(m, 1)
    elif width < 0:
      width = self._width(m)
    elif m > width:
      raise ValueError(f"a row has {m} features, more than width={width}")
    out_ids = np.full((1, width), -1, np.int32)
    out_values = np.zeros((1, width), np.float32)
    out_ids[0, :m] = ids
    out_values[0, :m] = values
    return out_ids, out_values

  def _one_row(self, row: tuple[Any, ...]) -> list[np.ndarray]:
    """One example's model inputs through :meth:`to_inputs` (its checks)."""
    features = row[0] if len(row) == 1 else tuple(row)
    if isinstance(features, str):
      features = [features]  # one text
    elif not (self.is_bag_of_words or self._is_token_model):
      # to_inputs reads these as [N, ...] batches: add the batch axis.
      if isinstance(features, Mapping):
        features = {key: np.asarray(a)[None] for key, a in features.items()}
      elif isinstance(features, tuple):
        features = tuple(np.asarray(a)[None] for a in features)
      else:
        features = np.asarray(features)[None]
    inputs = self.to_inputs(features)
    if inputs[0].shape[0] != 1:
      raise ValueError(f"predict_one takes one example, got "
                       f"{inputs[0].shape[0]} rows")
    if self.is_bag_of_words:
      length = int((inputs[0] >= 0).sum())
      inputs = _fit_width(*inputs, self._width(length))
    return list(inputs)
