"""``python -m mhe_jax.main`` that SIGKILLs itself at one point of a save.

Test-only: ``python tests/kill_during_save.py --config=... --workdir=...``
with ``MHE_KILL_AT=<point>`` and ``MHE_KILL_STEP=<step>`` in the
environment. While checkpoint ``<step>`` is being saved, the process writes
``<workdir>/killed_at`` (the point's name) and sends itself SIGKILL at
``<point>``, one of :data:`POINTS`. Orbax writes a step into
``<step>.orbax-checkpoint-tmp``, finalizes it (``commit_success.txt``) and
renames it to ``<step>``; the points fall before, inside and after that.
"""

import os
import pathlib
import signal
import sys

POINTS = (
    "mid_write",      # the state's arrays are written, the data item is not
    "before_rename",  # everything and commit_success.txt written, not renamed
    "after_rename",   # renamed to <step>; the save has not returned
)


def _kill(workdir: pathlib.Path, point: str) -> None:
  (workdir / "killed_at").write_text(point)
  os.kill(os.getpid(), signal.SIGKILL)


def install(point: str, step: int, workdir: pathlib.Path) -> None:
  """Patches mhe_jax's and orbax's save path to die at ``point``."""
  if point not in POINTS:
    raise ValueError(f"MHE_KILL_AT={point!r}; known: {list(POINTS)}")
  from orbax.checkpoint._src.handlers import json_checkpoint_handler  # pylint: disable=g-import-not-at-top
  from orbax.checkpoint._src.path import async_path  # pylint: disable=g-import-not-at-top
  from mhe_jax import checkpointing  # pylint: disable=g-import-not-at-top

  saving = {"step": None}
  save = checkpointing.Checkpointer.save

  def patched_save(self, step_, *args, **kwargs):
    saving["step"] = int(step_)
    try:
      return save(self, step_, *args, **kwargs)
    finally:
      saving["step"] = None

  checkpointing.Checkpointer.save = patched_save

  json_save = json_checkpoint_handler.JsonCheckpointHandler.async_save

  async def patched_json_save(self, *args, **kwargs):
    if point == "mid_write" and saving["step"] == step:
      _kill(workdir, point)
    return await json_save(self, *args, **kwargs)

  json_checkpoint_handler.JsonCheckpointHandler.async_save = patched_json_save

  rename = async_path.rename

  async def patched_rename(src, dst):
    ours = (saving["step"] == step and pathlib.Path(dst).name == str(step)
            and pathlib.Path(src).name.startswith(f"{step}.orbax-checkpoint-tmp"))
    if ours and point == "before_rename":
      _kill(workdir, point)
    result = await rename(src, dst)
    if ours and point == "after_rename":
      _kill(workdir, point)
    return result

  async_path.rename = patched_rename


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from mhe_jax import main  # pylint: disable=g-import-not-at-top
  workdir_flag = [a for a in sys.argv if a.startswith("--workdir=")]
  install(os.environ["MHE_KILL_AT"], int(os.environ["MHE_KILL_STEP"]),
          pathlib.Path(workdir_flag[0].split("=", 1)[1]))
  app.run(main.main)
