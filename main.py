"""Pretrains SimCLR: python main.py --config=configs/demo.py --workdir=/tmp/simclr

With --config.mode=linear_eval, finetune or export (and
--config.init_from=PRETRAIN_WORKDIR) it evaluates a pretrained encoder instead;
with --config.mode=distill (and --config.init_from=FINETUNE_WORKDIR) it
distils a fine-tuned teacher into a student on the unlabelled images.

Flags:
  --config   an ml_collections config file; override fields with
             --config.train.num_steps=100 and the like.
  --workdir  where checkpoints, TensorBoard events and metrics.jsonl go; a run
             started again with the same workdir resumes.

A bad flag, config file or config value is one line on stderr and exit
status 2.
"""

import os
import sys

if __name__ == '__main__':
  # First, before anything allocates: restart once with glibc's huge-page
  # malloc, which makes the CPU train step faster (simclr_jax/hostmem.py).
  from simclr_jax import hostmem  # pylint: disable=g-import-not-at-top
  hostmem.reexec_with_huge_pages()

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # Also silences TF's start-up notice.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS,
                 sys_argv: list[str] | None = None) -> None:
  """Defines --config and --workdir (tests define them on their own FlagValues).

  `sys_argv`: the command line to find config overrides in (default
  sys.argv).
  """
  flags.DEFINE_string('workdir', None,
                      'Directory for checkpoints, logs and metrics.',
                      flag_values=flag_values)
  config_flags.DEFINE_config_file('config', None, 'Config file (see configs/).',
                                  flag_values=flag_values, lock_config=True,
                                  sys_argv=sys_argv)
  flags.mark_flags_as_required(['config', 'workdir'], flag_values=flag_values)


define_flags()


def _fail(message: str) -> None:
  lines = [l.strip() for l in str(message).strip().splitlines() if l.strip()]
  print(f'error: {"; ".join(lines) or "invalid flags"}', file=sys.stderr)
  sys.exit(2)


def _config_path(argv: list[str]) -> str:
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return '?'


def parse_flags(argv: list[str],
                flag_values: flags.FlagValues = FLAGS) -> list[str]:
  """Parses the flags; a bad flag, config file or override is one line, exit 2.

  Covers a misspelled field (with ml_collections' "did you mean"), a value
  of the wrong type, a missing config file and one that fails to load.
  """
  path = _config_path(argv)
  if path != '?' and not os.path.isfile(path):
    _fail(f'config file {path!r} does not exist (--config)')
  try:
    rest = flag_values(argv)
    # The config file may be loaded (run) and overridden lazily, on first use.
    flag_values.config  # pylint: disable=pointless-statement
  except flags.Error as e:
    _fail(e)
  except (AttributeError, KeyError) as e:
    # An override of a field that does not exist. ml_collections' message is
    # the quoted field name, maybe with 'Did you mean "..." instead of ...?'.
    detail = e
    while isinstance(detail, BaseException) and detail.args:
      detail = detail.args[0]
    detail = str(detail)
    parts = [p.strip().strip('"').strip("'") for p in detail.splitlines()]
    _fail(f'{path} has no field {parts[0]!r}' +
          (f' ({parts[1]})' if len(parts) > 1 else '') +
          '; every field is declared in configs/default.py')
  except Exception as e:  # pylint: disable=broad-except
    # A syntax error or an exception in get_config().
    _fail(f'cannot load the config file {path}: {type(e).__name__}: {e}')
  return rest


def validate(flag_values: flags.FlagValues = FLAGS) -> None:
  """Checks the parsed config and workdir; a bad value is one line, exit 2."""
  from simclr_jax import config_lib  # pylint: disable=g-import-not-at-top
  try:
    config_lib.validate(flag_values.config, flag_values.workdir)
  except config_lib.ConfigError as e:
    _fail(e)


def main(argv):
  if len(argv) > 1:
    _fail(f'unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS['verbosity'].present:
    # Library INFO logs (orbax, TFDS) drown the progress; --verbosity=0 shows them.
    logging.set_verbosity(logging.WARNING)
  # Validate before the heavy imports: a bad value costs a second, not ten.
  validate()
  # The image decoders' own lines (libjpeg, libpng) go to the workdir.
  from simclr_jax import native_stderr  # pylint: disable=g-import-not-at-top
  native_stderr.divert(os.path.join(os.path.abspath(FLAGS.workdir),
                                    native_stderr.LOG_NAME))
  from simclr_jax import config_lib  # pylint: disable=g-import-not-at-top
  from simclr_jax import train  # pylint: disable=g-import-not-at-top
  from simclr_jax.evaluate import modes  # pylint: disable=g-import-not-at-top
  try:
    modes.run_mode(FLAGS.config, FLAGS.workdir)
  except config_lib.ConfigError as e:
    _fail(e)
  except train.TrainingDiverged as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  except Exception as e:  # pylint: disable=broad-except
    return _write_failed(e)
  return 0


def _write_failed(e: Exception) -> int:
  """A full disk or read-only workdir: one line, exit 1; anything else raises.

  Saves still in flight are waited for (a while) and their managers closed
  first, so no background thread reports the failure again. The process
  then ends at once (`os._exit`): orbax's threads of a refused save may
  never end, and the interpreter's exit would wait for them forever.
  """
  from simclr_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from simclr_jax import storage  # pylint: disable=g-import-not-at-top
  line = storage.failure_line(e, os.path.abspath(FLAGS.workdir))
  if line is None:
    raise e
  del e  # Its traceback holds orbax's failed tasks: collected before exit.
  checkpoint.abandon_open()
  print(f'error: {line}', file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(1)  # pylint: disable=protected-access


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
