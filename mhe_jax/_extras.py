"""Install extras: the error that names the extra a module needs.

``pip install mhe_jax`` installs the core (``mhe_jax``, ``mhe_jax.ops``,
``mhe_jax.nn``, ``mhe_jax.data`` readers, ``mhe_jax.demo``: jax, flax, optax,
numpy, scipy, absl-py). The rest needs an extra (``setup.cfg``
``[options.extras_require]``):

* ``train``: the trainer, configs, checkpoints, metric writers, grain
  pipelines, ``mhe_jax.load`` and the ``main`` / ``predict`` commands
  (orbax-checkpoint, ml-collections, grain, clu, tensorboardX, flatbuffers);
* ``data``: the TFDS builders of ``mhe_jax.data.tfds`` (tensorflow-datasets,
  array-record).

A module that needs an extra imports its third-party packages inside
:func:`requires`, so a missing package reads as the command that installs it::

  from mhe_jax import _extras

  with _extras.requires("train"):
    import orbax.checkpoint as ocp
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

EXTRAS = {
    "train": "the trainer, configs, checkpoints, metric writers and grain "
             "pipelines",
    "data": "the TFDS builders (mhe_jax.data.tfds)",
}


def message(extra: str, missing: str) -> str:
  """The error text for a module ``missing`` that ``extra`` installs."""
  return (f"No module named {missing!r}: {EXTRAS[extra]} need the {extra!r} "
          f'extra; install it with: pip install "mhe_jax[{extra}]"')


@contextlib.contextmanager
def requires(extra: str) -> Iterator[None]:
  """Imports in this block raise an error naming ``mhe_jax[extra]``.

  A ``ModuleNotFoundError`` for a package outside mhe_jax becomes a
  ``ModuleNotFoundError`` (an ``ImportError``) whose message gives the install
  command; other errors pass through unchanged.

  Args:
    extra: the extra that installs the block's packages, a key of
      :data:`EXTRAS`.

  Raises:
    KeyError: ``extra`` is not a known extra.
  """
  if extra not in EXTRAS:
    raise KeyError(f"unknown extra {extra!r}; known: {sorted(EXTRAS)}")
  try:
    yield
  except ModuleNotFoundError as e:
    missing = e.name or ""
    if not missing or missing.split(".")[0] == "mhe_jax":
      raise
    raise ModuleNotFoundError(message(extra, missing), name=missing) from e
