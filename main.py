"""Pretrains SimCLR: python main.py --config=configs/demo.py --workdir=/tmp/simclr

Flags:
  --config   an ml_collections config file; override fields with
             --config.train.num_steps=100 and the like.
  --workdir  where checkpoints, TensorBoard events and metrics.jsonl go; a run
             started again with the same workdir resumes.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # Also silences TF's start-up notice.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and metrics.')
config_flags.DEFINE_config_file('config', None, 'Config file (see configs/).',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    print(f'error: unexpected arguments: {" ".join(argv[1:])}', file=sys.stderr)
    return 2
  if not FLAGS['verbosity'].present:
    # Library INFO logs (orbax, TFDS) drown the progress; --verbosity=0 shows them.
    logging.set_verbosity(logging.WARNING)
  from simclr_jax import config_lib  # pylint: disable=g-import-not-at-top
  from simclr_jax import train
  try:
    record = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except config_lib.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except train.TrainingDiverged as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  del record
  return 0


if __name__ == '__main__':
  app.run(main)
