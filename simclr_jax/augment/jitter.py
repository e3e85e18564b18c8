"""SimCLR's random colour jitter: draw its parameters, apply them in order.

`sample_jitter` draws a `JitterParams` (brightness, contrast, saturation and
hue of strength s, and a uniformly random order of the four), as
google-research/simclr's `color_jitter` with random order; `apply_jitter`
applies the four ops of `color.py` in that order, clipping to [0, 1] after
each, by selects (for vmap) or by `lax.switch` (real branches).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
from jax import lax
import jax.numpy as jnp

from simclr_jax.augment.color import adjust_brightness
from simclr_jax.augment.color import adjust_contrast
from simclr_jax.augment.color import adjust_hue
from simclr_jax.augment.color import adjust_saturation
from simclr_jax.augment.color import clip_unit
from simclr_jax.augment.color import scale_brightness

# Indices of the colour-jitter ops in `JitterParams.order`.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3


class JitterParams(NamedTuple):
  """Parameters of one colour jitter.

  Attributes:
    order: int32 (4,), a permutation of (BRIGHTNESS, CONTRAST, SATURATION,
      HUE): the order the ops are applied in.
    brightness: float32, the additive delta ('v1') or factor ('v2').
    contrast: float32 factor.
    saturation: float32 factor.
    hue: float32 delta (turns).
  """
  order: jax.Array
  brightness: jax.Array
  contrast: jax.Array
  saturation: jax.Array
  hue: jax.Array


def sample_jitter(key: jax.Array, strength: float,
                  brightness_mode: str = 'v2') -> JitterParams:
  """Draws colour-jitter parameters of strength s (google's color_jitter).

  brightness: 'v2' factor uniform in [max(0, 1 - 0.8s), 1 + 0.8s]; 'v1'
  delta uniform in [-0.8s, 0.8s]. contrast and saturation factors uniform
  in [1 - 0.8s, 1 + 0.8s]; hue delta uniform in [-0.2s, 0.2s]; the order a
  uniformly random permutation.
  """
  if brightness_mode not in ('v1', 'v2'):
    raise ValueError("brightness_mode must be 'v1' or 'v2', got "
                     f'{brightness_mode!r}')
  u = jax.random.uniform(key, (_NUM_JITTER_UNIFORMS,), jnp.float32)
  return _jitter_from_uniforms(u, strength, brightness_mode)


_NUM_JITTER_UNIFORMS = 8


def _random_permutation(u: jax.Array) -> jax.Array:
  """The argsort of n uniforms (ties broken by index): a uniform permutation.

  Element-wise comparisons instead of jnp.argsort, whose sorted iota JAX 0.10
  types as device-invariant inside shard_map (then rejected under lax.cond).

  Args:
    u: float32 (n,).
  Returns:
    int32 (n,), a permutation of 0..n-1.
  """
  n = u.shape[0]
  index = jnp.arange(n)
  before = (u[None, :] < u[:, None]) | ((u[None, :] == u[:, None])
                                        & (index[None, :] < index[:, None]))
  rank = jnp.sum(before, axis=1)  # Position of element j in sorted order.
  return jnp.sum(jnp.where(rank[None, :] == index[:, None], index[None, :], 0),
                 axis=1).astype(jnp.int32)


def _jitter_from_uniforms(u: jax.Array, strength: float,
                          brightness_mode: str) -> JitterParams:
  """`sample_jitter` given its uniforms u: float32 (8,)."""
  s = 0.8 * strength

  def between(lo, hi, v):
    return lo + (hi - lo) * v

  if brightness_mode == 'v2':
    brightness = between(max(0.0, 1 - s), 1 + s, u[4])
  else:
    brightness = between(-s, s, u[4])
  return JitterParams(
      order=_random_permutation(u[:4]),
      brightness=brightness,
      contrast=between(1 - s, 1 + s, u[5]),
      saturation=between(1 - s, 1 + s, u[6]),
      hue=between(-0.2 * strength, 0.2 * strength, u[7]))


def apply_jitter(image: jax.Array, params: JitterParams,
                 brightness_mode: str = 'v2', branch: str = 'select'
                 ) -> jax.Array:
  """Applies the four colour ops in `params.order`, clipping after each.

  Args:
    image: float32 (H, W, 3).
    params: `JitterParams`.
    brightness_mode: 'v1' (additive) or 'v2' (multiplicative).
    branch: 'select' computes the four ops at each step and selects one
      (what vmap makes of a branch anyway); 'cond' computes only the chosen
      op (lax.switch; for unbatched use, e.g. inside lax.map).
  Returns:
    float32 (H, W, 3) in [0, 1].
  """
  _check_branch(branch)
  bright = adjust_brightness if brightness_mode == 'v1' else scale_brightness
  ops = (lambda x: bright(x, params.brightness),
         lambda x: adjust_contrast(x, params.contrast),
         lambda x: adjust_saturation(x, params.saturation),
         lambda x: adjust_hue(x, params.hue))
  for i in range(4):
    if branch == 'cond':
      image = lax.switch(params.order[i], ops, image)
    else:
      image = lax.select_n(params.order[i], *[op(image) for op in ops])
    image = clip_unit(image)
  return image


def _check_branch(branch: str) -> None:
  if branch not in ('select', 'cond'):
    raise ValueError(f"branch must be 'select' or 'cond', got {branch!r}")
