"""The model description a training workdir holds, written and read.

The trainer (:func:`mhe_jax.train.train_and_evaluate`) writes, next to its
checkpoints, what :func:`mhe_jax.load` needs to rebuild the model without the
training data:

* ``config.json``: the config that trained the run;
* ``model_info.json``: the dataset facts the model's shapes depend on
  (classes, input keys and size, widths, label names);
* ``label_permutation.npy``: a label order clustered from the training data
  (heads with ``label_order='clustered'``);
* ``label_features.npz``: UniDEC's label feature rows (``head.type='unidec'``).

This module owns that format: :func:`write` is the trainer's side;
:func:`resolve` finds the workdir and checkpoint a path names, and
:func:`read` returns the config and a :class:`~mhe_jax.data.datasets.Dataset`
stand-in (the facts, no data) that ``registry.build_model`` builds the model
from. Restoring the weights is :mod:`mhe_jax.inference`'s job.

Example::

  from mhe_jax import model_info
  model_info.write(workdir, config, data)                 # the trainer
  workdir, step_dir = model_info.resolve(workdir, None)   # newest checkpoint
  config, info, spec = model_info.read(workdir)
"""

from __future__ import annotations

import json
import os
import pathlib
import types
from collections.abc import Mapping
from typing import Any

import numpy as np

from mhe_jax import _extras

with _extras.requires("train"):
  import ml_collections

from mhe_jax import config_lib
from mhe_jax import registry
from mhe_jax import workdir as workdir_lib
from mhe_jax.data import datasets

PathLike = str | os.PathLike

CONFIG_FILE = workdir_lib.CONFIG_FILE
CHECKPOINT_DIR = workdir_lib.CHECKPOINT_DIR
MODEL_INFO_FILE = workdir_lib.MODEL_INFO_FILE
PERMUTATION_FILE = workdir_lib.PERMUTATION_FILE
LABEL_FEATURES_FILE = workdir_lib.LABEL_FEATURES_FILE


def write(workdir: PathLike, config: ml_collections.ConfigDict,
          data: datasets.Dataset) -> None:
  """Writes ``config.json`` and ``model_info.json`` into a training workdir.

  These hold what :func:`read` needs to rebuild the model without the
  training data: the config, and the dataset facts the model's shapes depend
  on (the tf-idf weights themselves are in the checkpoint). Models built from
  the training data write that part too: a clustered label order
  (``label_permutation.npy``) and UniDEC's label feature rows
  (``label_features.npz``: ``ids``, ``values``, ``input_size`` and, when the
  encoder weights by idf, ``idf``).

  Args:
    workdir: the run's directory.
    config: the run's config.
    data: the dataset the trainer loaded.
  """
  workdir = pathlib.Path(workdir)
  info = {
      "num_classes": int(data.num_classes),
      "multilabel": bool(data.multilabel),
      "input_keys": list(data.input_keys),
      "input_size": int(data.input_size),
      "has_idf": data.idf is not None,
      "context": getattr(data.train, "context", None),
      "max_features": getattr(data.train, "max_features", None),
      "max_len": getattr(data.train, "max_len", None),
      "label_names": (None if data.label_names is None
                      else [str(n) for n in data.label_names]),
  }
  if _clustered(config):
    # A label order clustered from the training data is not in the
    # checkpoint (the codec is static): keep its permutation.
    codec = registry.make_codec(config.head, data.num_classes, data)
    np.save(workdir / PERMUTATION_FILE, codec.permutation)
  if config.head.type == "unidec":
    rows = registry.unidec_label_features(config, data)
    arrays = dict(ids=rows.ids, values=rows.values,
                  input_size=np.int64(rows.input_size))
    if rows.idf is not None:
      arrays["idf"] = rows.idf
    tmp = workdir / (LABEL_FEATURES_FILE + ".tmp")
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
    tmp.replace(workdir / LABEL_FEATURES_FILE)
  _atomic_write(workdir / CONFIG_FILE, config.to_json_best_effort(indent=1))
  _atomic_write(workdir / MODEL_INFO_FILE, json.dumps(info))


def _clustered(config: ml_collections.ConfigDict) -> bool:
  return (config.head.type != "vanilla"
          and config.head.get("label_order", "given") == "clustered")


def _atomic_write(path: pathlib.Path, text: str) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(path)


def resolve(path: PathLike,
            step: int | None) -> tuple[pathlib.Path, pathlib.Path]:
  """The workdir and the checkpoint directory a path names.

  Args:
    path: a training workdir, its ``checkpoints`` directory, or one
      checkpoint ``workdir/checkpoints/<step>``.
    step: which checkpoint (default: the newest, or the one ``path`` names).

  Returns:
    ``(workdir, workdir/checkpoints/<step>)``, resolved.

  Raises:
    FileNotFoundError: no such path, no ``config.json``/``model_info.json``,
      or no such checkpoint.
    ValueError: ``step`` differs from the checkpoint ``path`` names.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such workdir or checkpoint")
  path = path.resolve()
  step_dir = None
  if path.name.isdigit() and (path / "state").is_dir():  # .../checkpoints/<step>
    step_dir, path = path, path.parent
  if path.name == CHECKPOINT_DIR and not (path / CONFIG_FILE).exists():
    workdir, ckpt_dir = path.parent, path
  else:
    workdir, ckpt_dir = path, path / CHECKPOINT_DIR
  for name in (CONFIG_FILE, MODEL_INFO_FILE):
    if not (workdir / name).is_file():
      raise FileNotFoundError(
          f"{workdir / name} not found: {workdir} is not a training workdir "
          "written by this version of mhe_jax.train (it writes config.json "
          "and model_info.json next to its checkpoints)")
  if step_dir is not None:
    if step is not None and step != int(step_dir.name):
      raise ValueError(f"step={step} but the path names checkpoint "
                       f"{step_dir.name}")
    return workdir, step_dir
  steps = sorted(int(p.name) for p in ckpt_dir.iterdir()
                 if p.name.isdigit() and (p / "state").is_dir()) \
      if ckpt_dir.is_dir() else []
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {ckpt_dir}: train first "
                            "(python -m mhe_jax.main --workdir=...)")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise FileNotFoundError(f"no checkpoint {step} in {ckpt_dir}; there are "
                            f"{steps}")
  return workdir, ckpt_dir / str(step)


def dataset_spec(info: Mapping[str, Any]) -> datasets.Dataset:
  """A Dataset with the facts ``registry.build_model`` reads, and no data.

  Args:
    info: the contents of ``model_info.json``.
  """
  idf = (np.ones(info["input_size"], np.float32) if info["has_idf"] else None)
  return datasets.Dataset(
      train=types.SimpleNamespace(context=info["context"],
                                  max_features=info["max_features"],
                                  max_len=info.get("max_len")),
      eval=None, num_classes=info["num_classes"],
      multilabel=info["multilabel"], input_keys=tuple(info["input_keys"]),
      input_size=info["input_size"],
      label_counts=np.zeros(info["num_classes"], np.int64), num_train=0,
      idf=idf,
      label_names=info["label_names"])


def _unidec_label_features(workdir: pathlib.Path
                           ) -> registry.UniDECLabelFeatures:
  """The label feature rows the trainer saved (``label_features.npz``)."""
  path = workdir / LABEL_FEATURES_FILE
  if not path.is_file():
    raise FileNotFoundError(
        f"{path} not found: a head.type='unidec' model's label features "
        "cannot be rebuilt without it (the trainer writes it at the start "
        "of training)")
  with np.load(path) as npz:
    missing = {"ids", "values", "input_size"} - set(npz.files)
    if missing:
      raise ValueError(f"{path} lacks {sorted(missing)}")
    return registry.UniDECLabelFeatures(
        ids=npz["ids"], values=npz["values"],
        input_size=int(npz["input_size"]),
        idf=npz["idf"] if "idf" in npz.files else None)


def read(workdir: PathLike) -> tuple[ml_collections.ConfigDict,
                                     dict[str, Any], datasets.Dataset]:
  """The config, ``model_info.json`` and a Dataset stand-in of a workdir.

  Args:
    workdir: a training workdir (see :func:`resolve`).

  Returns:
    ``(config, info, spec)``: the run's config, the model info dict, and
    :func:`dataset_spec` of it with the saved clustered label order and
    UniDEC label features attached where the model has them.

  Raises:
    FileNotFoundError: a file the model needs is missing.
    ValueError: a malformed ``label_features.npz``.
  """
  workdir = pathlib.Path(workdir)
  config = config_lib.from_json(workdir / CONFIG_FILE)
  info = json.loads((workdir / MODEL_INFO_FILE).read_text())
  spec = dataset_spec(info)
  if _clustered(config):
    perm_path = workdir / PERMUTATION_FILE
    if not perm_path.is_file():
      raise FileNotFoundError(f"{perm_path} not found: the model's clustered "
                              "label order cannot be rebuilt without it")
    spec.label_permutation = np.load(perm_path)
  if config.head.type == "unidec":
    spec.label_features = _unidec_label_features(workdir)
  return config, info, spec
