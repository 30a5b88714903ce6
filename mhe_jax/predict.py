"""Command line: top-k predictions of a trained model for a file of examples.

``python -m mhe_jax.predict --workdir=DIR --input=FILE --k=5 --output=FILE``

Parses flags and calls :func:`mhe_jax.streaming.predict_file`;
nothing else. ``--workdir`` is a training workdir (``python -m mhe_jax.main
--workdir=DIR``) or one of its checkpoints. The input is an Extreme
Classification Repository text file, a Mulan ARFF file (with
``--labels_xml``), or, for next-token models, plain text (one example per
line); XC and text files are streamed a batch at a time. Each output line is
``label:score label:score ...`` (best first), or with ``--names`` the label
names, tab-separated. A progress line is logged every ``--progress_every``
seconds. Bad input (no checkpoint, a feature index beyond the model's input
size, ``--k`` above the class count) ends with a one-line error, exit code 1.
"""

from absl import app
from absl import flags
from absl import logging

from mhe_jax import inference
from mhe_jax import streaming
from mhe_jax.data import formats

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Training workdir, or a checkpoint directory in it.",
    required=True)
_INPUT = flags.DEFINE_string("input", None, "Examples to predict.",
                             required=True)
_OUTPUT = flags.DEFINE_string("output", "-", "Output file; '-' for stdout.")
_K = flags.DEFINE_integer("k", 5, "Labels per example.")
_FORMAT = flags.DEFINE_enum("format", "auto", ["auto", "xc", "arff", "text"],
                            "Input format; auto: .arff -> arff, a next-token "
                            "model -> text, else xc.")
_LABELS_XML = flags.DEFINE_string("labels_xml", None,
                                  "Mulan XML of an ARFF input.")
_NAMES = flags.DEFINE_bool("names", False,
                           "Write label names instead of label:score.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 512, "Rows per batch.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default newest).")
_PROGRESS_EVERY = flags.DEFINE_float("progress_every", 10.0,
                                     "Seconds between progress lines.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    predictor = inference.load(_WORKDIR.value, step=_STEP.value,
                               batch_sizes=(1, 8, 64, _BATCH_SIZE.value))
    n = streaming.predict_file(
        predictor, _INPUT.value, _OUTPUT.value, k=_K.value,
        batch_size=_BATCH_SIZE.value, file_format=_FORMAT.value,
        labels_xml=_LABELS_XML.value,
        write_names=_NAMES.value, progress_every=_PROGRESS_EVERY.value)
  except (ValueError, FileNotFoundError, formats.FormatError) as e:
    raise SystemExit(f"error: {e}") from None
  logging.info("wrote %d predictions to %s", n, _OUTPUT.value)


if __name__ == "__main__":
  app.run(main)
