"""Command line: ``python -m mhe_jax.main --config=configs/NAME.py --workdir=DIR``.

Parses flags and calls :func:`mhe_jax.train.train_and_evaluate`; nothing else.
Override any config value with ``--config.a.b=value``; unknown keys fail.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from mhe_jax import distributed
from mhe_jax import train

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, "
                               "metrics and results.json.", required=True)
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py).", lock_config=True)
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  distributed.initialize()
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
