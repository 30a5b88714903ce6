"""The training workdir: which runs may resume in it, archiving, the lock.

A workdir (``python -m mhe_jax.main --workdir=DIR``) holds one run:
``config.json`` (the config that trained it), ``model_info.json`` and the
files the loader needs, ``checkpoints/``, ``metrics.jsonl``, TensorBoard
events and ``results.json``. This module decides whether a requested config
may continue that run, moves a run aside when the user asks to start over,
and keeps a second trainer out while one is running.

* Resume rule. Every config key is classified in :data:`KEY_EFFECTS`: keys
  that leave the training state and its trajectory alone (run length,
  intervals, evaluation, locations, device layout) may change between runs
  in one workdir; every other key, including any key not in the table,
  refuses. :func:`check_resume` raises :class:`ConfigMismatchError` listing
  each refusing key with its saved and requested value and the two ways out:
  a new workdir, or starting over (``--fresh``).
* Archive. :func:`archive` moves the run's files into
  ``DIR/archive/<YYYYmmdd-HHMMSS>/`` (nothing is deleted; the archived folder
  is itself a workdir that ``mhe_jax.load`` reads).
* Lock. :func:`lock` takes an exclusive ``flock`` on ``DIR/trainer.lock`` for
  as long as the trainer runs; a second trainer on the same workdir raises
  :class:`WorkdirLockedError` naming the workdir and the holder's pid. The
  operating system releases the lock when its process ends, so a crashed or
  killed trainer never leaves a lock behind that blocks the next run.

Example::

  with workdir.lock(path):
    workdir.check_resume(path, config)   # or workdir.archive(path)
    ...train...
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import pathlib
import socket
from collections.abc import Iterator
from typing import Any

from absl import logging

from mhe_jax import _extras

with _extras.requires("train"):
  import ml_collections

from mhe_jax import config_lib

CONFIG_FILE = "config.json"
LOCK_FILE = "trainer.lock"
ARCHIVE_DIR = "archive"
CHECKPOINT_DIR = "checkpoints"
RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.jsonl"
# The model description mhe_jax.load reads (see mhe_jax.model_info).
MODEL_INFO_FILE = "model_info.json"
PERMUTATION_FILE = "label_permutation.npy"
LABEL_FEATURES_FILE = "label_features.npz"
# Files of one run, moved together by archive() (with the TensorBoard events).
RUN_FILES = (CHECKPOINT_DIR, RESULTS_FILE, METRICS_FILE, CONFIG_FILE,
             MODEL_INFO_FILE, PERMUTATION_FILE, LABEL_FEATURES_FILE)

KEEPS_STATE = False
CHANGES_STATE = True

# What a config key changing between two runs in one workdir means for the
# saved training state. KEEPS_STATE: the new run resumes from the checkpoint
# with the new value. CHANGES_STATE: the checkpoint belongs to a different
# model, optimiser or training trajectory, so resuming refuses. A key missing
# here counts as CHANGES_STATE (see changes_state), so a new key refuses until
# it is classified.
KEY_EFFECTS: dict[str, bool] = {
    # Bookkeeping, run length and evaluation: resume.
    "name": KEEPS_STATE,                # recorded in results.json only
    # A longer (or shorter) run from the same state; the learning-rate
    # schedule is laid out over the new total from the restored step on.
    "num_train_steps": KEEPS_STATE,
    "log_every": KEEPS_STATE,
    "eval_every": KEEPS_STATE,
    "checkpoint_every": KEEPS_STATE,
    "keep_checkpoints": KEEPS_STATE,
    # What happens at a non-finite step; the trajectory of finite steps is
    # the same under either value.
    "nonfinite": KEEPS_STATE,
    "eval_batch_size": KEEPS_STATE,
    "eval.ks": KEEPS_STATE,
    "eval.propensity_a": KEEPS_STATE,
    "eval.propensity_b": KEEPS_STATE,
    "eval.exclude_history": KEEPS_STATE,
    "eval.num_negatives": KEEPS_STATE,
    "eval.negatives_seed": KEEPS_STATE,
    # Where the same named data lives, not what it is.
    "data.data_dir": KEEPS_STATE,
    "data.tfds_data_dir": KEEPS_STATE,
    # Device layout: orbax restores into any sharding. A layout that changes
    # parameter shapes (a class-sharded vanilla head pads C to the classes
    # axis) is caught by the checkpoint's structure check instead.
    "mesh.shape": KEEPS_STATE,
    "mesh.axes": KEEPS_STATE,
    "mesh.axis_type": KEEPS_STATE,
    "mesh.rules": KEEPS_STATE,
    # vanilla: the class chunk of the loss computation, not a parameter.
    "head.chunk_size": KEEPS_STATE,
    # sequence training: which rows the head scores, not which it learns from
    # (every labelled position either way; more raises).
    "data.train_rows": KEEPS_STATE,

    # Initialisation, data order and sampling: refuse.
    "seed": CHANGES_STATE,
    "batch_size": CHANGES_STATE,
    # The dataset: which examples, labels and features the state learnt.
    "data.name": CHANGES_STATE,
    "data.train": CHANGES_STATE,
    "data.test": CHANGES_STATE,
    "data.labels_xml": CHANGES_STATE,
    "data.tfds_name": CHANGES_STATE,
    "data.multilabel": CHANGES_STATE,
    "data.num_classes": CHANGES_STATE,
    "data.num_features": CHANGES_STATE,
    "data.num_train": CHANGES_STATE,
    "data.num_test": CHANGES_STATE,
    "data.zipf_exponent": CHANGES_STATE,
    "data.context": CHANGES_STATE,
    "data.min_count": CHANGES_STATE,
    "data.validation_fraction": CHANGES_STATE,
    "data.max_features": CHANGES_STATE,
    "data.max_labels": CHANGES_STATE,
    "data.max_len": CHANGES_STATE,
    "data.train_max_features": CHANGES_STATE,
    "encoder.sublinear_tf": CHANGES_STATE,
    "encoder.activation": CHANGES_STATE,
    "encoder.embed_init": CHANGES_STATE,
    # The encoder: shapes and what its training step computes.
    "encoder.type": CHANGES_STATE,
    "encoder.embed_dim": CHANGES_STATE,
    "encoder.hidden": CHANGES_STATE,
    "encoder.dropout": CHANGES_STATE,
    "encoder.tfidf": CHANGES_STATE,
    "encoder.input_dropout": CHANGES_STATE,
    "encoder.num_blocks": CHANGES_STATE,
    "encoder.num_attention_heads": CHANGES_STATE,
    "encoder.ffn_dim": CHANGES_STATE,
    "encoder.init_std": CHANGES_STATE,
    "encoder.block_layout": CHANGES_STATE,
    "encoder.dense_init_std": CHANGES_STATE,
    # The head: type, sizes, radices, label order, losses, shortlists.
    "head.type": CHANGES_STATE,
    "head.num_heads": CHANGES_STATE,
    "head.radices": CHANGES_STATE,
    "head.beam": CHANGES_STATE,
    "head.hidden": CHANGES_STATE,
    "head.num_sampled_groups": CHANGES_STATE,
    # Another optimiser state and trajectory of the classifier rows.
    "head.sparse_update": CHANGES_STATE,
    "head.multilabel_loss": CHANGES_STATE,
    "head.fit": CHANGES_STATE,
    "head.ridge_lambda": CHANGES_STATE,
    "head.label_order": CHANGES_STATE,
    "head.label_order_seed": CHANGES_STATE,
    "head.num_picked": CHANGES_STATE,
    "head.num_hard_negatives": CHANGES_STATE,
    "head.shortlist_size": CHANGES_STATE,
    "head.refresh_every": CHANGES_STATE,
    "head.logit_scale": CHANGES_STATE,
    "head.score_mix": CHANGES_STATE,
    "head.label_to_query": CHANGES_STATE,
    "head.label_features": CHANGES_STATE,
    "head.label_feature_width": CHANGES_STATE,
    "head.label_hash_buckets": CHANGES_STATE,
    "head.index": CHANGES_STATE,
    "head.exact_index_max_labels": CHANGES_STATE,
    "head.index_clusters": CHANGES_STATE,
    "head.index_probe": CHANGES_STATE,
    "head.proxy_steps": CHANGES_STATE,
    "head.classifier_steps": CHANGES_STATE,
    "head.tie_embeddings": CHANGES_STATE,
    "head.child_embedding": CHANGES_STATE,
    "head.bias_init": CHANGES_STATE,
    # The optimiser: its state's structure and the update rule.
    "optimizer.name": CHANGES_STATE,
    "optimizer.learning_rate": CHANGES_STATE,
    "optimizer.schedule": CHANGES_STATE,
    "optimizer.warmup_steps": CHANGES_STATE,
    "optimizer.weight_decay": CHANGES_STATE,
    "optimizer.grad_clip": CHANGES_STATE,
    "optimizer.ema_decay": CHANGES_STATE,
    "optimizer.classifier": CHANGES_STATE,
    "optimizer.classifier_learning_rate": CHANGES_STATE,
}


class WorkdirError(Exception):
  """A trainer refused to start in a workdir (the message says why)."""


class ConfigMismatchError(WorkdirError, ValueError):
  """The workdir's saved run has a different model, optimiser or data."""


class WorkdirLockedError(WorkdirError):
  """Another trainer holds the workdir's lock."""


def changes_state(key: str) -> bool:
  """Whether a change of config ``key`` (dotted) refuses a resume."""
  return KEY_EFFECTS.get(key, CHANGES_STATE)


def _flat_json(config: ml_collections.ConfigDict | dict[str, Any]
               ) -> dict[str, Any]:
  """Dotted key -> JSON value (tuples become lists, so both sides compare)."""
  if isinstance(config, ml_collections.ConfigDict):
    config = json.loads(config.to_json_best_effort())
  return config_lib._flatten(config)  # pylint: disable=protected-access


def config_differences(saved: ml_collections.ConfigDict | dict[str, Any],
                       requested: ml_collections.ConfigDict
                       ) -> tuple[list[tuple[str, Any, Any]],
                                  list[tuple[str, Any, Any]]]:
  """``(refusing, resumable)`` lists of ``(key, saved, requested)``.

  A key the saved config lacks (one added to :func:`config_lib.base_config`
  since) counts as its default value; a saved key this version no longer
  declares is ignored (this version cannot build it either way).
  """
  defaults = _flat_json(config_lib.base_config())
  old = {**defaults, **_flat_json(saved)}
  new = _flat_json(requested)
  refusing, resumable = [], []
  for key in sorted(new):
    if key in old and old[key] != new[key]:
      (refusing if changes_state(key) else resumable).append(
          (key, old[key], new[key]))
  return refusing, resumable


def has_run(workdir: str | os.PathLike) -> bool:
  """Whether ``workdir`` holds work a new run could lose.

  That is a checkpoint step directory, ``results.json`` or ``metrics.jsonl``.
  """
  workdir = pathlib.Path(workdir)
  ckpt = workdir / CHECKPOINT_DIR
  has_ckpt = ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir())
  return (has_ckpt or (workdir / RESULTS_FILE).exists()
          or (workdir / METRICS_FILE).exists())


def check_resume(workdir: str | os.PathLike,
                 config: ml_collections.ConfigDict) -> None:
  """Raises unless ``config`` may continue the run saved in ``workdir``.

  A workdir with no saved run (no checkpoint, results or metrics), or no
  ``config.json``, passes. Resumable differences are logged.

  Raises:
    ConfigMismatchError: a key of :data:`KEY_EFFECTS` that changes the state
      (or a key not in it) differs from ``workdir/config.json``; the message
      lists every such key with both values and the two ways out.
  """
  workdir = pathlib.Path(workdir)
  saved_path = workdir / CONFIG_FILE
  if not saved_path.is_file() or not has_run(workdir):
    return
  try:
    saved = json.loads(saved_path.read_text())
  except (OSError, ValueError) as e:
    raise ConfigMismatchError(
        f"{saved_path} cannot be read ({type(e).__name__}: {e}), so there "
        f"is no telling whether the run in {workdir} matches this config: "
        "train in a new --workdir, or start over here with --fresh (python "
        "-m mhe_jax.main) / train_and_evaluate(..., fresh=True), which moves "
        f"the old run into {workdir / ARCHIVE_DIR}/") from None
  refusing, resumable = config_differences(saved, config)
  for key, old, new in resumable:
    logging.info("resuming %s with %s=%r (was %r)", workdir, key, new, old)
  if refusing:
    width = max(len(k) for k, _, _ in refusing)
    lines = "\n".join(f"  {k:<{width}}  {json.dumps(o)} -> {json.dumps(n)}"
                      for k, o, n in refusing)
    raise ConfigMismatchError(
        f"{workdir} holds a run of a different model, optimiser or data than "
        f"the requested config, so it cannot resume. Keys that differ "
        f"({saved_path} -> requested):\n{lines}\n"
        "Either train in a new workdir (--workdir=...), or start over in "
        "this one with --fresh (python -m mhe_jax.main) / "
        "train_and_evaluate(..., fresh=True), which moves the old "
        f"checkpoints, results and metrics into {workdir / ARCHIVE_DIR}/"
        "<time>/ (nothing is deleted).")


def archive(workdir: str | os.PathLike) -> pathlib.Path | None:
  """Moves the run in ``workdir`` into ``workdir/archive/<time>/``.

  Moves checkpoints, ``results.json``, metrics, TensorBoard events and the
  files that describe the model (``config.json``, ``model_info.json``, ...),
  so the archived folder is a workdir of its own. Nothing is deleted.

  Returns:
    The archive folder, or None when there was nothing to move.
  """
  workdir = pathlib.Path(workdir)
  names = [n for n in RUN_FILES if (workdir / n).exists()]
  names += sorted(p.name for p in workdir.glob("events.out.tfevents.*"))
  if not names:
    return None
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  dest = workdir / ARCHIVE_DIR / stamp
  n = 1
  while dest.exists():
    n += 1
    dest = workdir / ARCHIVE_DIR / f"{stamp}-{n}"
  dest.mkdir(parents=True)
  for name in names:
    (workdir / name).rename(dest / name)
  logging.warning("started over in %s: moved the previous run (%s) to %s",
                  workdir, ", ".join(names), dest)
  return dest


@contextlib.contextmanager
def lock(workdir: str | os.PathLike, *, enabled: bool = True
         ) -> Iterator[pathlib.Path]:
  """Holds ``workdir/trainer.lock`` exclusively (``flock``) while inside.

  Args:
    workdir: the run's directory (created if needed).
    enabled: False makes this a no-op (processes other than 0 of a
      multi-process run, which share process 0's workdir).

  Yields:
    The lock file's path.

  Raises:
    WorkdirLockedError: another process holds the lock; the message names
      the workdir and the holder's pid and host.
  """
  workdir = pathlib.Path(workdir)
  path = workdir / LOCK_FILE
  if not enabled:
    yield path
    return
  workdir.mkdir(parents=True, exist_ok=True)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise
      holder = os.pread(fd, 256, 0).decode("utf-8", "replace").split()
      who = (f"pid {holder[0]} on {holder[1]}" if len(holder) >= 2
             else "a process that has not written its pid yet")
      raise WorkdirLockedError(
          f"{workdir} is in use by another trainer ({who}; lock file "
          f"{path}): wait for it to finish, or train in another "
          "--workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    yield path
    os.ftruncate(fd, 0)
  finally:
    os.close(fd)  # closing the descriptor releases the flock
