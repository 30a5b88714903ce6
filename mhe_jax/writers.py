"""Metric writers and progress reporting, TensorFlow-free.

CLU's ``metric_writers`` and ``periodic_actions`` import TensorFlow at import
time, which this project does not install, so the trainer uses this small
equivalent with CLU's ``write_scalars(step, dict)`` interface: TensorBoard
event files (through ``tensorboardX``), one JSON line per write
(``metrics.jsonl``) and absl logging. Only process 0 writes.

Example::

  writer = create_writer(workdir)
  writer.write_scalars(100, {"train/loss": 0.3})
  progress = Progress(num_train_steps=1000)
  progress.update(100)      # -> "steps/s" and ETA, logged
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Mapping

from absl import logging
import jax

from mhe_jax import _extras


class MetricWriter:
  """Writes scalars to TensorBoard, metrics.jsonl and the log."""

  def __init__(self, logdir: str | pathlib.Path, *, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if enabled:
      logdir = pathlib.Path(logdir)
      logdir.mkdir(parents=True, exist_ok=True)
      with _extras.requires("train"):
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(str(logdir))
      self._jsonl = open(logdir / "metrics.jsonl", "a", encoding="utf-8")

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    values = {k: float(v) for k, v in scalars.items()}
    for k, v in values.items():
      # TensorBoard tag names may not hold '@' (P@5 -> P_at_5).
      self._tb.add_scalar(k.replace("@", "_at_"), v, step)
    self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
    self._jsonl.flush()
    logging.info("[%d] %s", step,
                 ", ".join(f"{k}={v:.6g}" for k, v in sorted(values.items())))

  def write_text(self, step: int, name: str, text: str) -> None:
    if self.enabled:
      self._tb.add_text(name, text, step)
      logging.info("[%d] %s: %s", step, name, text)

  def flush(self) -> None:
    if self.enabled:
      self._tb.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()
      self.enabled = False


class _DropLibraryInfo:
  """A logging filter that keeps orbax's per-save INFO chatter out of the log."""

  def filter(self, record) -> bool:
    return record.levelno >= 30 or "/orbax/" not in record.pathname


def quiet_library_logs() -> None:
  """Hides INFO records of orbax (warnings and errors still show)."""
  logger = logging.get_absl_logger()
  if not any(isinstance(f, _DropLibraryInfo) for f in logger.filters):
    logger.addFilter(_DropLibraryInfo())


def create_writer(workdir: str | pathlib.Path) -> MetricWriter:
  """A writer into ``workdir`` on process 0, a no-op elsewhere."""
  return MetricWriter(workdir, enabled=jax.process_index() == 0)


class Progress:
  """Steps per second and ETA between calls (CLU ReportProgress's job)."""

  def __init__(self, num_train_steps: int, first_step: int = 0):
    self.num_train_steps = num_train_steps
    self._last_step = first_step
    self._last_time = time.perf_counter()

  def update(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    steps = step - self._last_step
    rate = steps / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    eta = (self.num_train_steps - step) / rate if rate > 0 else float("inf")
    logging.info("step %d/%d: %.2f steps/s, ETA %s", step,
                 self.num_train_steps, rate, _fmt_seconds(eta))
    return {"steps_per_sec": rate}


def _fmt_seconds(s: float) -> str:
  if s == float("inf"):
    return "?"
  s = int(s)
  return f"{s // 3600}h{(s % 3600) // 60:02d}m{s % 60:02d}s"
