"""The one validator of run configs: one clear message instead of a traceback.

`validate(config)` is the single entry point. Each module stays the single
source of what is valid for its own section and raises `ValueError` naming
the field:

* `config.model`: `models.validate_model_config`;
* `config.augment`: `augment.AugmentSpec` (built from the section);
* `config.optim`: `optim.validate_config`;
* `config.data`: `data_checks` below (the sources themselves raise
  `ValueError` for data that cannot be read, once the data is opened);
* the run fields (seed, image size, `train`, `loss`, `eval`, `distributed`):
  here.

`validate` turns every such `ValueError` into a `ConfigError`, and
`user_errors()` does the same for code that can only fail later (the mesh, the
data sources). The CLI prints a `ConfigError` as one line on stderr and exits
with status 2.
"""

from __future__ import annotations

import contextlib
import numbers
import os
from typing import Any, Iterator

SOURCES = ('tfds', 'folder', 'digits')
CROPS = ('auto', 'device', 'host')
ON_UNDECODABLE = ('skip', 'stop')


class ConfigError(ValueError):
  """A configuration or input that cannot work, with a message for the user."""

  def __init__(self, message: str):
    # One line, whatever the wrapped exception's message looked like.
    lines = [l.strip() for l in str(message).strip().splitlines() if l.strip()]
    super().__init__('; '.join(lines) or 'invalid configuration')


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
  """Turns `ValueError` (and a missing file) raised inside into `ConfigError`."""
  try:
    yield
  except ConfigError:
    raise
  except (ValueError, FileNotFoundError, NotADirectoryError) as e:
    raise ConfigError(str(e)) from e


def _require(condition: bool, message: str) -> None:
  if not condition:
    raise ConfigError(message)


def has_field(config: Any, dotted: str) -> bool:
  """Whether `config` (a ConfigDict) has the field `dotted` ('a.b.c')."""
  node = config
  for part in dotted.split('.'):
    if not hasattr(node, 'keys') or part not in node.keys():
      return False
    node = node[part]
  return True


def _get(config: Any, dotted: str) -> Any:
  value = config
  for part in dotted.split('.'):
    value = getattr(value, part)
  return value


def _is_int(v: Any) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _int_at_least(config: Any, dotted: str, low: int) -> None:
  value = _get(config, dotted)
  what = 'positive (an integer >= 1)' if low == 1 else f'an integer >= {low}'
  _require(_is_int(value) and value >= low,
           f'{dotted} must be {what}, got {value!r}')


def _number_at_least(config: Any, dotted: str, low: float,
                     strict: bool = False) -> None:
  value = _get(config, dotted)
  ok = _is_number(value) and (value > low if strict else value >= low)
  _require(ok, f'{dotted} must be a number {">" if strict else ">="} {low}, '
           f'got {value!r}')


def _fraction(config: Any, dotted: str, low_open: bool, high_open: bool) -> None:
  value = _get(config, dotted)
  lo_ok = _is_number(value) and (value > 0 if low_open else value >= 0)
  hi_ok = _is_number(value) and (value < 1 if high_open else value <= 1)
  _require(lo_ok and hi_ok,
           f'{dotted} must be in {"(" if low_open else "["}0, 1'
           f'{")" if high_open else "]"}, got {value!r}')


def _bool(config: Any, dotted: str) -> None:
  value = _get(config, dotted)
  _require(isinstance(value, bool), f'{dotted} must be True or False, '
           f'got {value!r}')


def _one_of(value: Any, allowed: tuple, name: str) -> None:
  _require(value in allowed,
           f'{name} must be one of {", ".join(map(repr, allowed))}, got {value!r}')


def data_checks(config: Any) -> None:
  """Checks `config.data` without reading any data; raises ConfigError."""
  d = config.data
  _one_of(d.source, SOURCES, 'data.source')
  _one_of(d.crop, CROPS, 'data.crop')
  _one_of(d.on_undecodable, ON_UNDECODABLE, 'data.on_undecodable')
  _fraction(config, 'data.eval_crop_fraction', low_open=True, high_open=False)
  _fraction(config, 'data.holdout_fraction', low_open=False, high_open=True)
  _int_at_least(config, 'data.resize_to', 0)
  _int_at_least(config, 'data.shuffle_buffer', 1)
  _int_at_least(config, 'data.prefetch', 0)
  value = d.num_parallel_calls
  _require(_is_int(value) and (value == -1 or value >= 1),
           'data.num_parallel_calls must be -1 (AUTOTUNE) or a positive '
           f'integer, got {value!r}')
  for field in ('download', 'cache'):
    _bool(config, f'data.{field}')
  if d.source == 'tfds':
    _require(bool(d.name), 'data.name must name a TFDS dataset when '
             "data.source is 'tfds'")
    _require(bool(d.train_split), 'data.train_split must name a split')
  if d.source in ('digits', 'folder'):
    _require(not d.eval_split,
             f"data.source={d.source!r} has a single split: set "
             "data.eval_split = '' to hold out data.holdout_fraction of it for "
             f'evaluation (got data.eval_split={d.eval_split!r})')
  if d.source == 'folder':
    _require(bool(d.data_dir),
             "data.data_dir must be set when data.source is 'folder'")
  _require(isinstance(d.eval_dir, str),
           f'data.eval_dir must be a folder path, got {d.eval_dir!r}')
  if d.eval_dir:
    _require(d.source == 'folder',
             "data.eval_dir is for data.source='folder' (got data.source="
             f"{d.source!r}); TFDS datasets use data.eval_split")
    _require(os.path.isdir(d.eval_dir),
             f'data.eval_dir {d.eval_dir!r} is not a directory')
  if d.data_dir and (d.source == 'folder' or not d.download):
    _require(os.path.isdir(d.data_dir),
             f'data.data_dir {d.data_dir!r} is not a directory')


def _run_checks(config: Any) -> None:
  """The fields that belong to the run itself (not to one module)."""
  _int_at_least(config, 'seed', 0)
  _int_at_least(config, 'image_size', 1)
  t = config.train
  for field in ('global_batch_size', 'log_every_steps',
                'checkpoint_every_steps'):
    _int_at_least(config, f'train.{field}', 1)
  for field in ('num_steps', 'keep_checkpoints', 'num_devices', 'cpu_devices'):
    _int_at_least(config, f'train.{field}', 0)
  _number_at_least(config, 'train.num_epochs', 0)
  _require(t.num_steps > 0 or t.num_epochs > 0,
           'train.num_steps or train.num_epochs must be positive '
           f'(got {t.num_steps} and {t.num_epochs})')
  _bool(config, 'train.online_probe')
  _bool(config, 'train.allow_config_change')
  _bool(config, 'train.cpu_ynnpack_convs')
  _bool(config, 'train.cpu_materialize_conv_inputs')
  _bool(config, 'train.cpu_strided_gradient_forms')
  _bool(config, 'train.cpu_border_forms')
  _number_at_least(config, 'loss.temperature', 0, strict=True)
  _bool(config, 'eval.linear_probe')
  _bool(config, 'eval.compare_random_init')
  _number_at_least(config, 'eval.probe_l2', 0)
  _number_at_least(config, 'eval.probe_epochs', 0, strict=True)
  _number_at_least(config, 'eval.probe_learning_rate', 0, strict=True)
  _int_at_least(config, 'eval.knn_k', 0)
  _number_at_least(config, 'eval.knn_temperature', 0, strict=True)
  _int_at_least(config, 'eval.every_steps', 0)
  _int_at_least(config, 'eval.batch_size', 1)
  _bool(config, 'distributed.initialize')
  address = config.distributed.coordinator_address
  host, _, port = str(address).rpartition(':')
  _require(not address or (host and port.isdigit()),
           'distributed.coordinator_address must be host:port (or empty to '
           f'let JAX find it), got {address!r}')
  _int_at_least(config, 'distributed.num_processes', 0)
  _int_at_least(config, 'distributed.process_id', -1)


MODES = ('pretrain', 'linear_eval', 'finetune', 'export', 'distill')


def _mode_checks(config: Any) -> None:
  """The mode, the checkpoint it reads, and its section's fields."""
  _one_of(config.mode, MODES, 'mode')
  _int_at_least(config, 'init_step', -1)
  if config.mode != 'pretrain':
    what = ('the teacher: a fine-tuning run, or a fine-tuned model written by '
            'simclr_jax.import_tf' if config.mode == 'distill' else
            'a pretraining run, or a workdir written by simclr_jax.import_tf')
    _require(bool(config.init_from),
             f'mode {config.mode!r} needs --config.init_from=WORKDIR ({what})')
    _require(os.path.isdir(config.init_from),
             f'init_from {config.init_from!r} is not a directory')
  for section in ('linear_eval', 'finetune', 'distill'):
    _number_at_least(config, f'{section}.epochs', 0, strict=True)
    _int_at_least(config, f'{section}.batch_size', 1)
    _number_at_least(config, f'{section}.base_learning_rate', 0, strict=True)
    _fraction(config, f'{section}.momentum', low_open=False, high_open=True)
    _number_at_least(config, f'{section}.weight_decay', 0)
    _int_at_least(config, f'{section}.checkpoint_every_steps', 1)
  _bool(config, 'linear_eval.augment')
  _fraction(config, 'finetune.label_fraction', low_open=True, high_open=False)
  subset = config.finetune.subset_file
  _require(not subset or os.path.isfile(subset),
           f'finetune.subset_file {subset!r} is not a file')
  _int_at_least(config, 'finetune.from_proj_layer', 0)
  _require(config.finetune.from_proj_layer <= max(config.model.num_proj_layers, 0),
           f'finetune.from_proj_layer={config.finetune.from_proj_layer} is '
           f'beyond the {config.model.num_proj_layers} projection-head layers')
  _distill_checks(config)
  _one_of(config.export.split, ('train', 'eval', 'both'), 'export.split')
  _bool(config, 'export.include_z')


def _distill_checks(config: Any) -> None:
  """The fields of `config.distill` beyond those it shares with finetune."""
  d = config.distill
  _number_at_least(config, 'distill.temperature', 0, strict=True)
  _fraction(config, 'distill.label_weight', low_open=False, high_open=False)
  _number_at_least(config, 'distill.warmup_epochs', 0)
  _require(isinstance(d.student_init, str) and (
      d.student_init == 'scratch' or os.path.isdir(d.student_init)),
           "distill.student_init must be 'scratch' or the workdir of a "
           f'pretraining run, got {d.student_init!r}')
  _int_at_least(config, 'distill.from_proj_layer', 0)
  _require(d.from_proj_layer <= max(config.model.num_proj_layers, 0),
           f'distill.from_proj_layer={d.from_proj_layer} is beyond the '
           f'{config.model.num_proj_layers} projection-head layers')
  _int_at_least(config, 'distill.teacher_proj_layer', -1)


def _augment_checks(config: Any) -> None:
  from simclr_jax import augment  # pylint: disable=g-import-not-at-top
  try:
    augment.AugmentSpec.from_config(config.augment)
  except (ValueError, TypeError) as e:
    message = str(e)
    prefix = 'augment config: '
    if message.startswith(prefix):
      message = 'augment.' + message[len(prefix):]
    raise ConfigError(message) from e


def validate(config: Any, workdir: str | None = None) -> None:
  """Raises ConfigError naming the first field of `config` that cannot work.

  Checks everything that can be checked before any data is read or any
  device is touched.
  """
  from simclr_jax import models  # pylint: disable=g-import-not-at-top
  from simclr_jax import optim  # pylint: disable=g-import-not-at-top
  _run_checks(config)
  _mode_checks(config)
  data_checks(config)
  _augment_checks(config)
  with user_errors():
    models.validate_model_config(config.model)
    optim.validate_config(config.optim)
  if workdir is not None:
    _require(bool(workdir), '--workdir must be given')
    _require(not os.path.exists(workdir) or os.path.isdir(workdir),
             f'workdir {workdir!r} exists and is not a directory')


def check_batch(global_batch_size: int, num_devices: int, num_processes: int) -> None:
  """The global batch must split evenly over devices (and so processes)."""
  _require(global_batch_size % num_devices == 0,
           f'train.global_batch_size={global_batch_size} is not divisible by '
           f'the number of devices ({num_devices})')
  _require(global_batch_size % num_processes == 0,
           f'train.global_batch_size={global_batch_size} is not divisible by '
           f'the number of processes ({num_processes})')
