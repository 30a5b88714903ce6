"""Orbax checkpoints: atomic, keep-N, with the data iterator's position.

A checkpoint holds the whole training state pytree (parameters, optimiser
state, step; saved with ``StandardSave``, restored against a sharded abstract
target) and the data iterator's JSON state. Orbax writes each step into a
temporary directory and renames it when complete, so a crash mid-save leaves
the previous checkpoints intact; :meth:`Checkpointer.remove_unfinished`
deletes such a leftover temporary directory.

:meth:`Checkpointer.restore_latest` tells two failures apart:

* a checkpoint of a different structure (leaf paths, shapes or dtypes other
  than the target's, read from the checkpoint's metadata before any array)
  raises :class:`CheckpointMismatchError` and leaves every checkpoint where
  it is: the config asks for another model than the one saved;
* a damaged checkpoint (unreadable metadata or files, truncated arrays,
  non-finite values, arrays or data state that do not match the checksums
  saved with them) is skipped with a warning and renamed to
  ``<step>.unreadable`` (kept, not deleted, so that step can be saved
  again), and the next older one is tried.

Checksums. Orbax checks its own metadata (the OCDBT manifest and b-tree
nodes carry CRC-32C; JSON must parse), but the compressed array chunks have
no checksum, so a flipped byte there restores as different values. Each
checkpoint therefore also holds a ``checksums`` item: per array, the sum of
its 32-bit words modulo 2**32 (computed on device; any single flipped bit
changes it), and a SHA-256 of the data state's JSON. A restore recomputes
both and treats a mismatch as damage. Checkpoints written without the item
restore unchecked.

Example::

  ckpt = Checkpointer(workdir / "checkpoints", keep=3)
  ckpt.save(step, state, data_state)
  restored = ckpt.restore_latest(abstract_state)   # None on a fresh workdir
  if restored:
    step, state, data_state = restored
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from mhe_jax import _extras

with _extras.requires("train"):
  import orbax.checkpoint as ocp


# Orbax's suffix of a step directory being written (renamed away when done).
_TMP_SUFFIX = ".orbax-checkpoint-tmp"


def _to_savable(tree: Any) -> Any:
  """Typed PRNG key arrays -> their raw uint32 data (orbax saves arrays)."""
  def one(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key):
      return jax.random.key_data(x)
    return x
  return jax.tree.map(one, tree)


def _abstract_savable(tree: Any) -> Any:
  def one(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      data = jax.eval_shape(jax.random.key_data, x)
      sharding = getattr(x, "sharding", None)
      return jax.ShapeDtypeStruct(data.shape, data.dtype,
                                  sharding=_key_data_sharding(sharding, data))
    return x
  return jax.tree.map(one, tree)


def _key_data_sharding(sharding, data):
  if sharding is None:
    return None
  spec = tuple(sharding.spec) + (None,) * (data.ndim - len(sharding.spec))
  return jax.sharding.NamedSharding(sharding.mesh,
                                    jax.sharding.PartitionSpec(*spec))


class CheckpointMismatchError(ValueError):
  """A checkpoint's structure (paths, shapes, dtypes) is not the target's."""


class DamagedCheckpointError(ValueError):
  """A checkpoint's arrays are unusable (non-finite values)."""


def _path_name(path) -> str:
  """``('0', 'head', 'kernel', 'value')`` -> ``"0/head/kernel/value"``."""
  parts = []
  for entry in path:
    for attr in ("key", "idx", "name"):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
    else:
      parts.append(str(entry))
  return "/".join(parts)


def _dtype_name(dtype) -> str:
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return str(dtype)
  return np.dtype(dtype).name


def _layout(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """Leaf path -> (shape, dtype name) of arrays or array metadata."""
  return {_path_name(path): (tuple(leaf.shape), _dtype_name(leaf.dtype))
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _layout_differences(got: Any, want: Any, limit: int = 8) -> list[str]:
  """Human-readable differences between two trees' layouts (at most limit)."""
  a, b = _layout(got), _layout(want)
  out = []
  for name in sorted(set(a) | set(b)):
    if name not in a:
      out.append(f"{name}: missing (expected {b[name][0]} {b[name][1]})")
    elif name not in b:
      out.append(f"{name}: {a[name][0]} {a[name][1]} is not in the target")
    elif a[name] != b[name]:
      out.append(f"{name}: {a[name][0]} {a[name][1]}, expected "
                 f"{b[name][0]} {b[name][1]}")
  if len(out) > limit:
    out = out[:limit] + [f"... and {len(out) - limit} more"]
  return out


def check_finite_structure(state: Any, abstract_state: Any, *,
                           where: str = "the checkpoint") -> None:
  """Checks a restored state against its target, leaf by leaf.

  Args:
    state: the restored pytree of arrays.
    abstract_state: the target (arrays or ``jax.ShapeDtypeStruct``).
    where: names the checkpoint in error messages.

  Raises:
    CheckpointMismatchError: a different leaf count, leaf paths, shapes or
      dtypes (the checkpoint holds another model).
    DamagedCheckpointError: a floating-point leaf holds NaN or infinity.
  """
  n_got = len(jax.tree.leaves(state))
  n_want = len(jax.tree.leaves(abstract_state))
  diffs = _layout_differences(state, abstract_state)
  if n_got != n_want or diffs:
    raise CheckpointMismatchError(
        f"{where} does not hold the expected state ({n_got} arrays, "
        f"expected {n_want}): " + "; ".join(diffs or ["leaf paths differ"]))
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    if (jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
        or not jnp.issubdtype(leaf.dtype, jnp.inexact)):
      continue
    bad = int(np.size(leaf)) - int(jnp.isfinite(leaf).sum())
    if bad:
      raise DamagedCheckpointError(
          f"{where}: {_path_name(path)} holds {bad} non-finite value(s) of "
          f"{np.size(leaf)}")


def _words(x: jax.Array) -> jax.Array:
  """The array's bits as unsigned integers of at most 32 bits."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  bits = np.dtype(x.dtype).itemsize * 8
  unsigned = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint32}
  return jax.lax.bitcast_convert_type(x, unsigned[bits])


@jax.jit
def _array_sums(tree: Any) -> Any:
  return jax.tree.map(
      lambda x: jnp.sum(_words(x).astype(jnp.uint32), dtype=jnp.uint32), tree)


def checksums(savable: Any) -> dict[str, int]:
  """Leaf path -> sum of the leaf's 32-bit words mod 2**32 (see above)."""
  sums = jax.device_get(_array_sums(savable))
  return {_path_name(path): int(v)
          for path, v in jax.tree_util.tree_leaves_with_path(sums)}


def _data_digest(data_state: dict[str, Any]) -> str:
  text = json.dumps(data_state, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()


def _check_sums(saved: dict[str, Any], savable: Any, data_state: dict[str, Any],
                where: str) -> None:
  got = checksums(savable)
  want = saved.get("arrays", {})
  bad = sorted(name for name in set(got) | set(want)
               if got.get(name) != want.get(name))
  if bad:
    listed = ", ".join(bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8
                                   else "")
    raise DamagedCheckpointError(
        f"{where}: {len(bad)} array(s) do not match the checksums saved with "
        f"them ({listed})")
  if saved.get("data") != _data_digest(data_state):
    raise DamagedCheckpointError(
        f"{where}: the data iterator state does not match its saved SHA-256")


def _from_savable(tree: Any, like: Any) -> Any:
  def one(x, ref):
    if jax.dtypes.issubdtype(ref.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref)
                                      if isinstance(ref, jax.Array) else None)
    return x
  return jax.tree.map(one, tree, like)


class Checkpointer:
  """Saves and restores (step, state pytree, data-iterator state)."""

  def __init__(self, directory: str | pathlib.Path, *, keep: int = 3):
    if keep < 1:
      raise ValueError(f"keep must be >= 1, got {keep}")
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False)
    # Handlers named up front, so a step's metadata can be read (restore
    # checks it) before anything was saved or restored in this process.
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": ocp.JsonCheckpointHandler(),
                       "checksums": ocp.JsonCheckpointHandler()})

  def save(self, step: int, state: Any, data_state: dict[str, Any],
           *, force: bool = True) -> None:
    """Writes checkpoint ``step`` atomically and waits until it is on disk."""
    savable = _to_savable(state)
    sums = {"arrays": checksums(savable), "data": _data_digest(data_state)}
    self.manager.save(
        int(step),
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(savable),
            data=ocp.args.JsonSave(data_state),
            checksums=ocp.args.JsonSave(sums)),
        force=force)
    self.manager.wait_until_finished()

  def remove_unfinished(self) -> list[pathlib.Path]:
    """Deletes the temporary directories of saves that never finished.

    A save writes ``<step>.orbax-checkpoint-tmp*`` and renames it to
    ``<step>`` when complete; a trainer killed before the rename leaves the
    temporary directory, which no restore reads. Only the trainer holding
    the workdir's lock may call this (another process may be mid-save).

    Returns:
      The removed directories (on process 0; other processes remove none).
    """
    removed = []
    if jax.process_index() == 0 and self.directory.is_dir():
      for path in sorted(self.directory.glob("*" + _TMP_SUFFIX + "*")):
        if path.is_dir():
          logging.warning("removing %s, the unfinished save of a trainer "
                          "that stopped before it completed", path)
          shutil.rmtree(path)
          removed.append(path)
    self.manager.reload()
    return removed

  def all_steps(self) -> list[int]:
    self.manager.reload()
    return sorted(self.manager.all_steps())

  def restore_latest(self, abstract_state: Any):
    """``(step, state, data_state)`` of the newest usable checkpoint.

    Damaged checkpoints (see the module docstring) are set aside with a
    warning and the next older one is tried.

    Args:
      abstract_state: pytree of ``jax.ShapeDtypeStruct`` with shardings, the
        layout to restore into.

    Returns:
      None when there is no usable checkpoint.

    Raises:
      CheckpointMismatchError: a readable checkpoint of a different
        structure than ``abstract_state``; nothing is moved.
    """
    target = _abstract_savable(abstract_state)
    for step in reversed(self.all_steps()):
      where = f"checkpoint {step} in {self.directory}"
      try:
        saved = self.manager.item_metadata(step)["state"]
        if saved is None:
          raise ValueError("no state metadata")
        diffs = _layout_differences(saved, target)
      except Exception as e:  # pylint: disable=broad-except
        self._skip_damaged(step, e)
        continue
      if diffs:
        raise CheckpointMismatchError(
            f"{where} holds a state of a different structure than this "
            "config builds: " + "; ".join(diffs) + ". Its config.json "
            "matches in every key that shapes the model, so the difference "
            "comes from the data or the device layout (e.g. a class-sharded "
            "vanilla head pads its classes to the classes mesh axis). "
            "Nothing was moved: train in a new workdir, use the previous "
            "layout, or start over with --fresh / "
            "train_and_evaluate(..., fresh=True).")
      try:
        items = dict(state=ocp.args.StandardRestore(target),
                     data=ocp.args.JsonRestore())
        summed = (self.directory / str(step) / "checksums").is_dir()
        if summed:
          items["checksums"] = ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        # The checksums first: a flipped byte that decompresses to NaN is
        # reported as what it is (damage on disk), not as a diverged run.
        if summed:
          _check_sums(dict(restored["checksums"]), restored["state"],
                      dict(restored["data"]), where)
        state = _from_savable(restored["state"], abstract_state)
        check_finite_structure(state, abstract_state, where=where)
      except CheckpointMismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        self._skip_damaged(step, e)
        continue
      return step, state, dict(restored["data"])
    return None

  def _skip_damaged(self, step: int, error: Exception) -> None:
    aside = self._set_aside(step)
    logging.warning(
        "checkpoint %d in %s is damaged, skipping it (moved to %s; an older "
        "checkpoint is tried next): %s: %s", step, self.directory, aside,
        type(error).__name__, error)

  def _set_aside(self, step: int) -> pathlib.Path:
    """Renames a damaged step directory so the step can be saved again.

    Nothing is deleted: the damaged files stay for inspection.
    """
    src = self.directory / str(step)
    dst = self.directory / f"{step}.unreadable"
    n = 1
    while dst.exists():
      n += 1
      dst = self.directory / f"{step}.unreadable{n}"
    if jax.process_index() == 0 and src.exists():
      src.rename(dst)
    self.manager.reload()
    return dst

  def close(self) -> None:
    self.manager.close()
