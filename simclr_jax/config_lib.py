"""Validation of run configs: one clear message instead of a traceback.

`validate` checks what can be checked before any data is read or any device
is touched. The CLI prints a `ConfigError` as one line on stderr and exits
with status 2.
"""

from __future__ import annotations

import os
from typing import Any

from simclr_jax import augment
from simclr_jax import models

SOURCES = ('tfds', 'folder', 'digits')
CROPS = ('auto', 'device', 'host')
OPTIMIZERS = ('lars', 'sgd', 'adam', 'adamw')
LR_SCALINGS = ('linear', 'sqrt', 'none')


class ConfigError(ValueError):
  """A configuration or input that cannot work, with a message for the user."""


def _require(condition: bool, message: str) -> None:
  if not condition:
    raise ConfigError(message)


def _positive(config: Any, dotted: str) -> None:
  value = config
  for part in dotted.split('.'):
    value = getattr(value, part)
  _require(value > 0, f'{dotted} must be positive, got {value}')


def _one_of(value: Any, allowed: tuple, name: str) -> None:
  _require(value in allowed,
           f'{name} must be one of {", ".join(map(repr, allowed))}, got {value!r}')


def validate(config: Any, workdir: str | None = None) -> None:
  """Raises ConfigError naming the first field of `config` that cannot work."""
  for field in ('image_size', 'train.global_batch_size', 'train.log_every_steps',
                'train.checkpoint_every_steps', 'loss.temperature',
                'eval.batch_size'):
    _positive(config, field)
  t = config.train
  _require(t.num_steps >= 0, f'train.num_steps must be >= 0, got {t.num_steps}')
  _require(t.num_steps > 0 or t.num_epochs > 0,
           'train.num_steps or train.num_epochs must be positive '
           f'(got {t.num_steps} and {t.num_epochs})')
  _require(t.keep_checkpoints >= 0,
           f'train.keep_checkpoints must be >= 0, got {t.keep_checkpoints}')
  d = config.data
  _one_of(d.source, SOURCES, 'data.source')
  _one_of(d.crop, CROPS, 'data.crop')
  _require(0 < d.eval_crop_fraction <= 1,
           f'data.eval_crop_fraction must be in (0, 1], got {d.eval_crop_fraction}')
  _require(0 <= d.holdout_fraction < 1,
           f'data.holdout_fraction must be in [0, 1), got {d.holdout_fraction}')
  if d.source == 'tfds':
    _require(bool(d.name), 'data.name must name a TFDS dataset when '
             "data.source is 'tfds'")
  if d.source == 'folder':
    _require(bool(d.data_dir), "data.data_dir must be set when data.source is 'folder'")
  if d.data_dir and (d.source == 'folder' or not d.download):
    _require(os.path.isdir(d.data_dir),
             f'data.data_dir {d.data_dir!r} is not a directory')
  m = config.model
  _one_of(m.dtype, tuple(models.DTYPES), 'model.dtype')
  _positive(config, 'model.proj_out_dim')
  _positive(config, 'model.base_width')
  _require(m.num_proj_layers >= 1,
           f'model.num_proj_layers must be >= 1, got {m.num_proj_layers}')
  o = config.optim
  _one_of(o.name, OPTIMIZERS, 'optim.name')
  _one_of(o.lr_scaling, LR_SCALINGS, 'optim.lr_scaling')
  _require(o.base_learning_rate > 0,
           f'optim.base_learning_rate must be positive, got {o.base_learning_rate}')
  _require(o.warmup_epochs >= 0,
           f'optim.warmup_epochs must be >= 0, got {o.warmup_epochs}')
  a = config.augment
  for name in ('flip_prob', 'color_jitter_prob', 'grayscale_prob', 'blur_prob'):
    value = getattr(a, name)
    _require(0 <= value <= 1, f'augment.{name} must be in [0, 1], got {value}')
  _require(0 < a.crop_scale[0] <= a.crop_scale[1] <= 1,
           f'augment.crop_scale must satisfy 0 < min <= max <= 1, got {a.crop_scale}')
  _require(0 < a.crop_ratio[0] <= a.crop_ratio[1],
           f'augment.crop_ratio must satisfy 0 < min <= max, got {a.crop_ratio}')
  _one_of(a.brightness_mode, ('v1', 'v2'), 'augment.brightness_mode')
  _one_of(a.strategy, augment.STRATEGIES, 'augment.strategy')
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
