"""The one trainer: ``train_and_evaluate(config, workdir)``.

Builds the mesh, dataset, model (encoder + head, chosen by name) and optax
optimiser from an ``ml_collections`` config (see :mod:`mhe_jax.config_lib`
for every key), creates the state already sharded (``nnx.eval_shape`` ->
logical partition specs -> ``NamedSharding`` -> ``jit(init,
out_shardings=...)``), trains with a jitted, donating
``train_step(state, batch, rng)`` whose rng is ``fold_in(key, step)``,
checkpoints with orbax (resuming automatically from the newest usable
checkpoint in ``workdir``), evaluates by decoding straight to top-k labels,
and writes ``workdir/results.json``.

Every step's loss and gradient norm are checked for NaN and infinity (the
jitted step returns a flag; the host reads it one step behind, so the device
is never left idle). A non-finite step's update is never applied: the step
returns the state it was given. ``config.nonfinite='stop'`` (the default)
then raises :class:`NonFiniteError` naming the step, leaving the last
checkpoint on disk as the newest (a non-finite state is never saved);
``'skip'`` drops that batch, logs a warning and counts it in the
``train/skipped_steps`` metric.

One trainer at a time holds a workdir (:func:`mhe_jax.workdir.lock`). A run
resumes only when its config matches the saved ``workdir/config.json`` in
every key that shapes the state (:data:`mhe_jax.workdir.KEY_EFFECTS`);
otherwise it refuses before building anything, unless ``fresh=True``, which
first moves the old run into ``workdir/archive/<time>/``. A run that resumes
at or past ``num_train_steps`` trains nothing: it re-evaluates the restored
checkpoint and returns the results without writing ``results.json``,
``metrics.jsonl`` or ``config.json`` (they stay those of the run that
trained).

Example::

  from configs import default
  results = train_and_evaluate(default.get_config(), "/tmp/mhe")
  results["P@1"]
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

from absl import logging
from flax import nnx
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax

from mhe_jax import _extras

with _extras.requires("train"):
  from clu import parameter_overview
  import ml_collections

from mhe_jax import averaging
from mhe_jax import checkpointing
from mhe_jax import config_lib
from mhe_jax import fit as fit_lib
from mhe_jax import metrics as metrics_lib
from mhe_jax import model_info
from mhe_jax import registry
from mhe_jax import sequence_eval
from mhe_jax import sharding as sharding_lib
from mhe_jax import workdir as workdir_lib
from mhe_jax import writers
from mhe_jax.data import datasets
from mhe_jax.data import pipeline
from mhe_jax.nn import mhs
from mhe_jax.nn import models as models_lib

# What train_and_evaluate raises when it refuses to start (a config that does
# not match the saved run, a workdir another trainer holds, a checkpoint of
# another structure, a data path in the config that does not exist); the
# message says what to do.
REFUSALS = (workdir_lib.WorkdirError, checkpointing.CheckpointMismatchError,
            config_lib.ConfigPathError)


class NonFiniteError(FloatingPointError):
  """A training step's loss or gradient norm was NaN or infinite."""


def _mesh_and_rules(config):
  axes = tuple(config.mesh.axes)
  for required in ("data", "classes"):
    if required not in axes:
      raise ValueError(f"config.mesh.axes={axes} must contain {required!r}")
  mesh = sharding_lib.make_mesh(tuple(config.mesh.shape), axes,
                                axis_type=config.mesh.axis_type)
  rules = tuple((str(a), None if b is None else str(b))
                for a, b in config.mesh.rules)
  for _, axis in rules:
    if axis is not None and axis not in axes:
      raise ValueError(f"config.mesh.rules maps to mesh axis {axis!r}, which "
                       f"is not in config.mesh.axes={axes}")
  sharding_lib.check_divisible(config.batch_size, mesh, rules, "batch_size")
  sharding_lib.check_divisible(config.eval_batch_size, mesh, rules,
                               "eval_batch_size")
  return mesh, rules


def _param_count(state: nnx.State) -> int:
  """Trainable parameters (nnx.Param leaves) of the model in a state."""
  model_state = state[0]  # state of (model, optimizer)
  return int(sum(np.prod(x.shape)
                 for x in jax.tree.leaves(nnx.filter_state(model_state, nnx.Param))))


class Trainer:
  """Holds what train_and_evaluate builds; tests may drive it step by step."""

  def __init__(self, config: ml_collections.ConfigDict,
               workdir: str | pathlib.Path):
    config_lib.validate(config)
    config_lib.check_paths(config)
    registry.check_names(config)
    self.config = config
    self.workdir = pathlib.Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.mesh, self.rules = _mesh_and_rules(config)
    self.data = datasets.load_dataset(config.data, config.seed)
    if config.head.type != "vanilla":
      registry.make_codec(config.head, self.data.num_classes,  # fail early
                          self.data)
    self.ks = tuple(int(k) for k in config.eval.ks)
    if not self.ks or min(self.ks) < 1:
      raise ValueError(f"config.eval.ks must be positive, got {self.ks}")
    self.k_max = min(max(self.ks), self.data.num_classes)
    # head.sparse_update: the MHS classifier's sampled rows follow the sparse
    # form of the classifier's rule, at its rate; tx has every other
    # parameter.
    self.sparse_update = bool(config.head.sparse_update)
    self.tx = registry.make_optimizer(config.optimizer, config.num_train_steps,
                                      classifier=not self.sparse_update)
    rule, self.row_schedule, decay = registry.sparse_rule(
        config.optimizer, config.num_train_steps)

    def create():
      model = registry.build_model(config, self.data, nnx.Rngs(config.seed),
                                   mesh=self.mesh)
      if self.sparse_update:
        return model, mhs.SparseUpdateOptimizer(model, self.tx, rule=rule,
                                                weight_decay=decay)
      return model, nnx.Optimizer(model, self.tx, wrt=nnx.Param)

    with jax.set_mesh(self.mesh), nnx.logical_axis_rules(self.rules):
      abstract = nnx.eval_shape(create)
    with jax.set_mesh(self.mesh):
      self.graphdef, abstract_state = nnx.split(abstract)
      logical = nnx.get_partition_spec(abstract_state)
      self.state_shardings = sharding_lib.tree_shardings(
          logical, self.mesh, self.rules)
      self.abstract_state = jax.tree.map(
          lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
          abstract_state, self.state_shardings)
      self._init = jax.jit(lambda: nnx.split(create())[1],
                           out_shardings=self.state_shardings)
    self.num_params = _param_count(abstract_state)
    self.checkpointer = checkpointing.Checkpointer(
        self.workdir / "checkpoints", keep=config.keep_checkpoints)
    self._train_step = jax.jit(self._step, donate_argnums=0,
                               out_shardings=(self.state_shardings, None))
    self._predict = jax.jit(self._topk)

  # ------------------------------------------------------------ jitted fns
  def _step(self, state, batch, rng):
    """One update; a non-finite loss or gradient returns ``state`` unchanged.

    ``metrics["finite"]`` says which happened. The select over the state
    fuses into the update's elementwise ops.
    """
    # A copy of the tree: the update mutates the Variables merged from state.
    previous = jax.tree.map(lambda x: x, state)
    model, optimizer = nnx.merge(self.graphdef, state)
    loss_fn = lambda m: m.loss(batch, rng=rng, train=True)
    if self.sparse_update:
      row_lr = self.row_schedule(optimizer.step[...])
      loss, grads, rows = optimizer.value_and_grad(loss_fn, model)
      # The norm of the full gradient (zero off the sampled rows); clipped
      # here over all of it, which leaves tx's own clip with nothing to do.
      grad_norm = optax.tree.norm((grads, rows.kernel_grad, rows.bias_grad))
      if self.config.optimizer.grad_clip:
        clip = self.config.optimizer.grad_clip
        scale = clip / jnp.maximum(grad_norm, clip)
        grads, rows = jax.tree.map(lambda g: g * scale, grads), rows.scaled(scale)
    else:
      loss, grads = nnx.value_and_grad(loss_fn)(model)
      grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    optimizer.update(model, grads)
    # Leaves the update did not touch (the sparse rows' tables) skip the
    # select, so they are never copied.
    new_state = jax.tree.map(
        lambda new, old: new if new is old else jnp.where(finite, new, old),
        nnx.state((model, optimizer)), previous)
    if self.sparse_update:
      nnx.update((model, optimizer), new_state)
      optimizer.update_rows(model, rows, row_lr, apply=finite)
      new_state = nnx.state((model, optimizer))
    metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite}
    return new_state, metrics

  def _topk(self, state, batch):
    model, _ = nnx.merge(self.graphdef, state)
    return model.topk(batch, self.k_max)[1]

  # --------------------------------------------------------------- helpers
  def init_state(self):
    with jax.set_mesh(self.mesh), nnx.logical_axis_rules(self.rules):
      return self._init()

  def device_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    out = {}
    for key, value in batch.items():
      if key == "index":
        continue
      sh = sharding_lib.batch_sharding(self.mesh, self.rules, value.ndim)
      out[key] = jax.make_array_from_process_local_data(sh, value)
    return out

  def eval_state(self, state):
    """The state that evaluation reads: with ``optimizer.ema_decay`` the
    model's parameters replaced by their moving average
    (:func:`mhe_jax.averaging.averaged_state`), else ``state``."""
    if self.config.optimizer.get("ema_decay", 0.0):
      return averaging.averaged_state(state)
    return state

  def train_step(self, state, batch, step: int):
    rows = self.config.data.train_rows
    if rows and isinstance(self.data.train, pipeline.SequenceSource):
      # Model.loss compacts each batch shard's rows into rows / shards.
      shards = sharding_lib.batch_shards(self.mesh, self.rules)
      local = max(shards // jax.process_count(), 1)
      got = models_lib.labelled_rows(batch["labels"], batch.get("mask"), local)
      if got > rows // shards:
        raise ValueError(
            f"step {step}: a batch shard has {got} labelled positions but "
            f"config.data.train_rows={rows} scores at most {rows // shards} "
            f"per shard ({shards} batch shards); raise data.train_rows (or "
            "set it to 0 to score all B * T rows)")
    rng = jax.random.fold_in(jax.random.key(self.config.seed), step)
    with jax.set_mesh(self.mesh):
      return self._train_step(state, self.device_batch(batch), rng)

  def evaluate(self, state) -> dict[str, float]:
    """Top-k decode of the eval split, metrics merged over all batches.

    Next-item (leave-one-out) data: HR@k / NDCG@k, see
    :mod:`mhe_jax.sequence_eval`. With ``optimizer.ema_decay`` the moving
    average of the parameters is evaluated (:meth:`eval_state`).
    """
    state = self.eval_state(state)
    if isinstance(self.data.eval, pipeline.SequenceEvalSource):
      return sequence_eval.evaluate(self, state)
    inv_p = metrics_lib.inverse_propensity(
        self.data.label_counts, self.data.num_train,
        A=self.config.eval.propensity_a, B=self.config.eval.propensity_b)
    acc = metrics_lib.XMCMetrics(
        ks=tuple(k for k in self.ks if k <= self.k_max),
        inv_propensity=inv_p if self.data.multilabel else None,
        num_labels=self.data.num_classes)
    loader = pipeline.eval_loader(self.data.eval, self.config.eval_batch_size,
                                  num_threads=0)
    for batch in loader:
      dev = self.device_batch(batch)
      with jax.set_mesh(self.mesh):
        pred = self._predict(state, dev)
      if jax.process_count() > 1:
        pred, labels, mask = multihost_utils.process_allgather(
            (pred, dev["labels"], dev["mask"]), tiled=True)
      else:
        labels, mask = batch["labels"], batch["mask"]
      acc.update(np.asarray(pred), np.asarray(labels), mask=np.asarray(mask))
    return acc.compute()


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str | pathlib.Path, *,
                       fresh: bool = False) -> dict[str, Any]:
  """Trains, checkpoints and evaluates; returns (and writes) the results.

  Args:
    config: the run's config (:func:`mhe_jax.config_lib.base_config` keys).
    workdir: the run's directory; an existing run in it is resumed.
    fresh: start over: move the run already in ``workdir`` (checkpoints,
      results, metrics, config) into ``workdir/archive/<time>/`` first.

  Returns:
    The results dict (what ``results.json`` holds).

  Raises:
    mhe_jax.workdir.ConfigMismatchError: ``workdir`` holds a run whose
      config differs in a key that changes the state (and not ``fresh``).
    mhe_jax.workdir.WorkdirLockedError: another trainer holds ``workdir``.
    mhe_jax.checkpointing.CheckpointMismatchError: a checkpoint of another
      structure than ``config`` builds.
    mhe_jax.config_lib.ConfigPathError: a data path (``data.train``,
      ``data.test``, ``data.labels_xml``, ``data.data_dir``,
      ``data.tfds_data_dir``) is set but does not exist.
    NonFiniteError: with ``config.nonfinite='stop'``, a step's loss or
      gradient norm was NaN or infinite (the message names the step).
  """
  writers.quiet_library_logs()
  config_lib.validate(config)
  config_lib.check_paths(config)  # before a lock, archive or data read
  leader = jax.process_index() == 0
  with workdir_lib.lock(workdir, enabled=leader):
    if fresh:
      if leader:
        workdir_lib.archive(workdir)
    else:
      workdir_lib.check_resume(workdir, config)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("mhe_jax.train workdir ready")
    return _train_and_evaluate(config, workdir)


class _FinitenessCheck:
  """Reads each step's finiteness flag one step late and acts on it.

  ``push`` queues a step's metrics and checks the one queued before it (by
  then finished, so reading it does not stall the device); ``drain`` checks
  everything queued. A non-finite step raises :class:`NonFiniteError` under
  ``nonfinite='stop'``; under ``'skip'`` it is logged and counted.
  """

  def __init__(self, mode: str, checkpointer, num_steps: int):
    self.mode = mode
    self.checkpointer = checkpointer
    self.num_steps = num_steps
    self.pending: list[tuple[int, dict[str, jax.Array]]] = []
    self.skipped = 0  # since the last take_skipped()

  def push(self, step: int, metrics: dict[str, jax.Array],
           last_saved: int) -> None:
    self.pending.append((step, metrics))
    while len(self.pending) > 1:
      self._check(*self.pending.pop(0), last_saved)

  def drain(self, last_saved: int) -> None:
    while self.pending:
      self._check(*self.pending.pop(0), last_saved)

  def take_skipped(self) -> int:
    n, self.skipped = self.skipped, 0
    return n

  def _check(self, step: int, metrics: dict[str, jax.Array],
             last_saved: int) -> None:
    if bool(metrics["finite"]):
      return
    values = (f"loss={float(metrics['loss'])}, "
              f"grad_norm={float(metrics['grad_norm'])}")
    if self.mode == "skip":
      self.skipped += 1
      logging.warning("training step %d of %d is non-finite (%s): skipped "
                      "its batch (config.nonfinite='skip')", step,
                      self.num_steps, values)
      return
    kept = (f"the newest checkpoint on disk is still step {last_saved} in "
            f"{self.checkpointer.directory}" if last_saved >= 0 else
            "no checkpoint was saved")
    raise NonFiniteError(
        f"training stopped at step {step} of {self.num_steps}: the loss or "
        f"gradient norm is non-finite ({values}). That update was not "
        f"applied and no later state was saved; {kept}. Lower the learning "
        "rate or clip gradients (config.optimizer.grad_clip), or set "
        "config.nonfinite='skip' to skip such batches.")


def _train_and_evaluate(config, workdir):
  """train_and_evaluate in a workdir this process may train in."""
  trainer = Trainer(config, workdir)
  workdir = trainer.workdir
  num_steps = config.num_train_steps

  train_iter = iter(pipeline.train_loader(trainer.data.train, config.batch_size,
                                          seed=config.seed))
  trainer.checkpointer.remove_unfinished()  # saves a killed trainer left
  restored = trainer.checkpointer.restore_latest(trainer.abstract_state)
  if restored is None:
    state, step = trainer.init_state(), 0
    logging.info("no checkpoint in %s: starting from step 0", workdir)
    if jax.process_index() == 0:
      logging.info("parameters of %s:\n%s", config.name,
                   parameter_overview.get_parameter_overview(
                       nnx.to_pure_dict(nnx.filter_state(state[0], nnx.Param)),
                       include_stats=False))
  else:
    step, state, data_state = restored
    train_iter.set_state(data_state)
    logging.info("resumed from checkpoint %d in %s", step, workdir)
  will_train = step < num_steps
  if will_train and jax.process_index() == 0:
    # What mhe_jax.load needs to rebuild the model.
    model_info.write(workdir, config, trainer.data)
  # A run that trains nothing leaves the metrics of the run that trained.
  writer = (writers.create_writer(workdir) if will_train else
            writers.MetricWriter(workdir, enabled=False))
  writer.write_scalars(step, {"num_params": trainer.num_params})

  progress = writers.Progress(num_steps, first_step=step)
  first_step = step
  losses = []
  eval_results: dict[str, float] = {}
  last_saved = step if restored else -1
  finiteness = _FinitenessCheck(config.nonfinite, trainer.checkpointer,
                                num_steps)
  other_time = compile_time = 0.0  # eval + checkpoints; the first step
  loop_start = time.perf_counter()
  if config.head.fit == "least_squares" and step < num_steps:
    # The closed-form solve is the run's one step (mhe_jax/fit.py).
    state = fit_lib.least_squares_state(trainer, state)
    step = num_steps
    progress.update(step)
  while step < num_steps:
    try:
      state, step_metrics = trainer.train_step(state, next(train_iter), step)
    except ValueError:  # a batch the config cannot take (data.train_rows)
      writer.close()
      trainer.checkpointer.close()
      raise
    step += 1
    try:
      # Reads the previous step's flag (this one's is in flight), then this
      # one's before anything that uses the state: a log, eval or save.
      finiteness.push(step, step_metrics, last_saved)
      if (step % config.log_every == 0 or step == num_steps
          or (config.eval_every and step % config.eval_every == 0)
          or (config.checkpoint_every and step % config.checkpoint_every == 0)):
        finiteness.drain(last_saved)
    except NonFiniteError:
      writer.close()
      trainer.checkpointer.close()
      raise
    losses.append(step_metrics)
    if step == first_step + 1:  # exclude compilation from the throughput
      jax.block_until_ready(state)
      compile_time = time.perf_counter() - loop_start
    if step % config.log_every == 0 or step == num_steps:
      # The mean over the interval's finite steps (NaN if none was).
      finite = jnp.stack([m["finite"] for m in losses])
      loss = float(jnp.sum(jnp.where(finite, jnp.stack(
          [m["loss"] for m in losses]), 0.0)) / jnp.sum(finite))
      losses = []
      rate = progress.update(step)
      writer.write_scalars(step, {
          "train/loss": loss,
          "train/grad_norm": float(step_metrics["grad_norm"]),
          "train/skipped_steps": finiteness.take_skipped(),
          "train/steps_per_sec": rate["steps_per_sec"]})
    t0 = time.perf_counter()
    if config.eval_every and step % config.eval_every == 0 and step < num_steps:
      eval_results = trainer.evaluate(state)
      writer.write_scalars(step, {f"eval/{k}": v for k, v in eval_results.items()})
    if config.checkpoint_every and step % config.checkpoint_every == 0:
      trainer.checkpointer.save(step, state, train_iter.get_state())
      last_saved = step
    other_time += time.perf_counter() - t0
  jax.block_until_ready(state)
  train_time = time.perf_counter() - loop_start - other_time
  if last_saved != step:
    trainer.checkpointer.save(step, state, train_iter.get_state())
  eval_results = trainer.evaluate(state)
  writer.write_scalars(step, {f"eval/{k}": v for k, v in eval_results.items()})

  trained = step - first_step
  results = {
      "config": config.name,
      "dataset": config.data.name,
      "eval_split": trainer.data.eval_split,
      "head": config.head.type,
      "encoder": config.encoder.type,
      "num_classes": trainer.data.num_classes,
      "multilabel": trainer.data.multilabel,
      "steps": step,
      "train_seconds": train_time,
      "compile_seconds": compile_time,
      "train_examples_per_second": (
          (trained - 1) * config.batch_size / (train_time - compile_time)
          if trained > 1 and train_time > compile_time else None),
      "num_params": trainer.num_params,
      "num_devices": jax.device_count(),
      "num_processes": jax.process_count(),
      **eval_results,
  }
  if not will_train:
    logging.warning(
        "checkpoint %d in %s is at or past num_train_steps=%d: nothing was "
        "trained; re-evaluated it (%s) without writing results.json or "
        "metrics, which stay those of the run that trained", step, workdir,
        num_steps, ", ".join(f"{k}={v:.4g}" for k, v in eval_results.items()
                             if isinstance(v, float)))
  elif jax.process_index() == 0:
    (workdir / "results.json").write_text(json.dumps(results, indent=1))
  writer.close()
  trainer.checkpointer.close()
  return results
