"""`AugmentSpec`: the static, validated, hashable form of `config.augment`.

Every function of `simclr_jax.augment` that takes a `config` accepts a
`config.augment` ConfigDict or an `AugmentSpec`; `AugmentSpec.from_config`
converts one (lists to tuples, integral floats to ints) and checks every
field, raising one-line `ValueError`s ('augment config: ...') that
`config_lib.validate` reports. Also the names of `two_views`' strategies
(`STRATEGIES`). Adding an augmentation option means a field here, its check
in `__post_init__` and its declaration in configs/default.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from simclr_jax.augment.crop import CROP_ATTEMPTS

# How `two_views` runs over a batch: 'vmap' (selects: every op computed for
# every image; the data-parallel form for GPU/TPU), 'map' (a sequential loop
# over views with real branches: each view pays only for its ops; fastest on
# CPU), 'auto' ('map' on CPU, else 'vmap').
STRATEGIES = ('auto', 'vmap', 'map')


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
  """Static, hashable form of `config.augment` (see configs/default.py).

  Attributes mirror the config fields; `crop_attempts` is the number of
  vectorised random-resized-crop attempts before the whole-image fallback;
  `strategy` how `two_views` runs over the batch (see `two_views`), read from
  the config when it has the field.
  Build it with `AugmentSpec.from_config(config.augment)`; every function
  taking a `config` accepts either form.
  """
  output_size: int
  crop_scale: tuple[float, float] = (0.08, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  flip_prob: float = 0.5
  color_jitter_prob: float = 0.8
  color_jitter_strength: float = 1.0
  brightness_mode: str = 'v2'
  grayscale_prob: float = 0.2
  blur: bool = True
  blur_prob: float = 0.5
  blur_sigma: tuple[float, float] = (0.1, 2.0)
  blur_kernel_fraction: float = 0.1
  crop_attempts: int = CROP_ATTEMPTS
  strategy: str = 'auto'

  def __post_init__(self):
    def bad(msg):
      raise ValueError(f'augment config: {msg}')
    if not isinstance(self.output_size, int) or self.output_size < 1:
      bad(f'output_size must be a positive int, got {self.output_size!r}')
    lo, hi = self.crop_scale
    if not 0 < lo <= hi <= 1:
      bad(f'crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}')
    lo, hi = self.crop_ratio
    if not 0 < lo <= hi:
      bad(f'crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio}')
    for name in ('flip_prob', 'color_jitter_prob', 'grayscale_prob',
                 'blur_prob'):
      value = getattr(self, name)
      if not 0 <= value <= 1:
        bad(f'{name} must be in [0, 1], got {value}')
    if self.color_jitter_strength < 0:
      bad('color_jitter_strength must be >= 0, got '
          f'{self.color_jitter_strength}')
    if self.brightness_mode not in ('v1', 'v2'):
      bad("brightness_mode must be 'v1' (additive) or 'v2' (multiplicative), "
          f'got {self.brightness_mode!r}')
    lo, hi = self.blur_sigma
    if not 0 < lo <= hi:
      bad(f'blur_sigma must satisfy 0 < min <= max, got {self.blur_sigma}')
    if not 0 <= self.blur_kernel_fraction <= 1:
      bad('blur_kernel_fraction must be in [0, 1], got '
          f'{self.blur_kernel_fraction}')
    if not isinstance(self.crop_attempts, int) or self.crop_attempts < 1:
      bad(f'crop_attempts must be a positive int, got {self.crop_attempts!r}')
    if self.strategy not in STRATEGIES:
      bad(f'strategy must be one of {STRATEGIES}, got {self.strategy!r}')

  @classmethod
  def from_config(cls, config: Any) -> 'AugmentSpec':
    """Reads the fields of a `config.augment` ConfigDict (or any attr object)."""
    if isinstance(config, cls):
      return config
    kwargs = {}
    for field in dataclasses.fields(cls):
      if hasattr(config, field.name):
        value = getattr(config, field.name)
      elif field.default is not dataclasses.MISSING:
        continue
      else:
        raise ValueError(f'augment config has no field {field.name!r}')
      if isinstance(value, list):
        value = tuple(value)
      if field.name in ('crop_scale', 'crop_ratio', 'blur_sigma'):
        if len(value) != 2:
          raise ValueError(
              f'augment config: {field.name} must be a (min, max) pair, '
              f'got {value!r}')
        value = (float(value[0]), float(value[1]))
      elif field.name in ('output_size', 'crop_attempts'):
        if isinstance(value, float) and value.is_integer():
          value = int(value)
      elif field.name == 'blur':
        value = bool(value)
      kwargs[field.name] = value
    return cls(**kwargs)

  @property
  def blur_kernel_size(self) -> int:
    """Side of the blur kernel before making it odd (google: height // 10)."""
    # The epsilon keeps e.g. 30 * 0.1 = 3.0000000000000004 and 0.1 * S at 3.
    return int(self.output_size * self.blur_kernel_fraction + 1e-6)
