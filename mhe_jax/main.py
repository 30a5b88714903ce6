"""Command line: ``python -m mhe_jax.main --config=configs/NAME.py --workdir=DIR``.

Parses flags and calls :func:`mhe_jax.train.train_and_evaluate`; nothing else.
Override any config value with ``--config.a.b=value``; unknown keys fail.
A workdir resumes only a run of a matching config; ``--fresh`` starts over,
moving the run already there into ``DIR/archive/<time>/``. A refusal to
start (config mismatch, a workdir another trainer holds, a data path that
does not exist) and a stop at a non-finite loss end with the error message
on stderr (no traceback) and exit code 1.
"""

from absl import app
from absl import flags

from mhe_jax import _extras

with _extras.requires("train"):
  from ml_collections import config_flags

from mhe_jax import distributed
from mhe_jax import train

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, "
                               "metrics and results.json.", required=True)
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py).", lock_config=True)
_FRESH = flags.DEFINE_bool(
    "fresh", False, "Start over: move the run already in --workdir "
    "(checkpoints, results, metrics, config) to --workdir/archive/<time>/ "
    "instead of resuming it.")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  distributed.initialize()
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, fresh=_FRESH.value)
  except (*train.REFUSALS, train.NonFiniteError) as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  app.run(main)
