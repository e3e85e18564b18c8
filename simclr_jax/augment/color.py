"""Colour ops equal to tf.image: float32 (H, W, 3) -> (H, W, 3), no clipping.

Brightness (additive 'v1' `adjust_brightness`, multiplicative 'v2'
`scale_brightness`), `adjust_contrast`, `adjust_saturation`, `adjust_hue`,
`to_grayscale` and the [0, 1] clip `clip_unit`: deterministic functions of an
image and a scalar (traced is fine), equal to `tf.image` to float rounding.
Saturation and hue are branch-free element-wise formulas (no HSV round trip),
so they vectorise and fuse. The random colour jitter built on them is in
`jitter.py`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# tf.image.rgb_to_grayscale weights (ITU-R BT.601 luma).
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)


def clip_unit(x: jax.Array) -> jax.Array:
  """Clips to [0, 1] (as tf.clip_by_value(x, 0., 1.)); same shape and dtype."""
  return jnp.minimum(jnp.maximum(x, 0.0), 1.0)


def adjust_brightness(image: jax.Array, delta: jax.Array | float) -> jax.Array:
  """Adds `delta` to every value, as tf.image.adjust_brightness (no clip).

  Args:
    image: float32 (H, W, C).
    delta: float32 scalar.
  Returns:
    float32 (H, W, C).
  """
  return image + jnp.asarray(delta, image.dtype)


def scale_brightness(image: jax.Array, factor: jax.Array | float) -> jax.Array:
  """Multiplies every value by `factor` (SimCLR v2 brightness; no clip).

  Args:
    image: float32 (H, W, C).
    factor: float32 scalar.
  Returns:
    float32 (H, W, C).
  """
  return image * jnp.asarray(factor, image.dtype)


def adjust_contrast(image: jax.Array, factor: jax.Array | float) -> jax.Array:
  """(x - mean) * factor + mean with per-channel means over H and W.

  As tf.image.adjust_contrast (no clip).

  Args:
    image: float32 (H, W, C).
    factor: float32 scalar.
  Returns:
    float32 (H, W, C).
  """
  mean = jnp.mean(image, axis=(-3, -2), keepdims=True)
  return (image - mean) * jnp.asarray(factor, image.dtype) + mean


def adjust_saturation(image: jax.Array, factor: jax.Array | float) -> jax.Array:
  """Multiplies the HSV saturation by `factor` (clipped to [0, 1]).

  Equal to tf.image.adjust_saturation for any float input, without the
  round trip through HSV: hue and value are unchanged, so every channel keeps
  its relative position between min and max and only the chroma (max - min)
  changes: out = v - c' * (v - x) / c, with v = max, c = max - min and
  c' = clip(factor * c / v, 0, 1) * v.

  Args:
    image: float32 (H, W, 3).
    factor: float32 scalar.
  Returns:
    float32 (H, W, 3).
  """
  factor = jnp.asarray(factor, image.dtype)
  # Reductions, not channel slices: with slices, XLA's CPU fusion of the
  # vmapped random-order jitter got 3-7x slower (bench/augment_bench.py).
  vmax = jnp.max(image, axis=-1, keepdims=True)
  vmin = jnp.min(image, axis=-1, keepdims=True)
  chroma = vmax - vmin
  saturation = jnp.where(vmax > 0, chroma / jnp.where(vmax > 0, vmax, 1), 0)
  new_chroma = clip_unit(saturation * factor) * vmax
  # Position of each channel below the max, in units of the chroma, in [0, 1].
  below = jnp.where(chroma > 0, (vmax - image) / jnp.where(chroma > 0, chroma, 1),
                    0)
  return vmax - new_chroma * below


def _hue6(image: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Hue in (-1, 6) (sextants), max and min of float (..., 3) pixels."""
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  vmax = jnp.maximum(jnp.maximum(r, g), b)
  vmin = jnp.minimum(jnp.minimum(r, g), b)
  chroma = vmax - vmin
  red_max, green_max = vmax == r, vmax == g
  # One division: numerator and sextant offset picked by the max channel.
  numerator = jnp.where(red_max, g - b, jnp.where(green_max, b - r, r - g))
  offset = jnp.where(red_max, 0.0, jnp.where(green_max, 2.0, 4.0))
  hue = offset + numerator / jnp.where(chroma > 0, chroma, 1)
  return hue, vmax, vmin


def _from_hue6(hue: jax.Array, vmax: jax.Array, vmin: jax.Array) -> jax.Array:
  """Inverse of `_hue6` for hue in [0, 6]: piecewise-linear, branch-free."""
  chroma = vmax - vmin
  red = clip_unit(jnp.abs(hue - 3) - 1)
  green = clip_unit(2 - jnp.abs(hue - 2))
  blue = clip_unit(2 - jnp.abs(hue - 4))
  return vmin[..., None] + chroma[..., None] * jnp.stack([red, green, blue], -1)


def adjust_hue(image: jax.Array, delta: jax.Array | float) -> jax.Array:
  """Rotates the HSV hue by `delta` turns, as tf.image.adjust_hue.

  Per pixel, max and min are kept and the hue moves by 6 * delta sextants;
  computed branch-free (element-wise selects and clips, about 30 flops per
  pixel), so it vectorises and fuses.

  Args:
    image: float32 (H, W, 3).
    delta: float32 scalar in [-1, 1].
  Returns:
    float32 (H, W, 3).
  """
  hue, vmax, vmin = _hue6(image)
  hue = hue + jnp.asarray(delta, image.dtype) * 6
  hue = hue - 6 * jnp.floor(hue * (1 / 6))  # In [0, 6]; 6 acts as 0.
  return _from_hue6(hue, vmax, vmin).astype(image.dtype)


def to_grayscale(image: jax.Array) -> jax.Array:
  """Luma with tf.image.rgb_to_grayscale weights, repeated on 3 channels.

  Args:
    image: float32 (H, W, 3).
  Returns:
    float32 (H, W, 3) with equal channels.
  """
  w_r, w_g, w_b = GRAY_WEIGHTS
  gray = image[..., 0] * w_r + image[..., 1] * w_g + image[..., 2] * w_b
  return jnp.broadcast_to(gray[..., None], image.shape)
