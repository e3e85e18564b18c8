"""Gaussian blur as google-research/simclr's `gaussian_blur`.

Separable, zero-padded ('SAME'), side 2 * (kernel_size // 2) + 1 with a
static kernel size and a traced sigma; computed as a static sum of shifted
copies (a fused element-wise loop, no per-image convolution under vmap).
"""

from __future__ import annotations

import jax
from jax import lax
import jax.numpy as jnp

def blur_radius(kernel_size: int) -> int:
  """google's gaussian_blur: radius = kernel_size // 2, side 2 * radius + 1."""
  return int(kernel_size) // 2


def gaussian_kernel(sigma: jax.Array | float, radius: int) -> jax.Array:
  """Normalised 1-D Gaussian taps exp(-x^2 / 2 sigma^2), x in [-r, r].

  Returns:
    float32 (2 * radius + 1,), summing to 1.
  """
  x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  sigma = jnp.asarray(sigma, jnp.float32)
  taps = jnp.exp(-(x * x) / (2 * sigma * sigma))
  return taps / jnp.sum(taps)


def _correlate_axis(image: jax.Array, taps: jax.Array, axis: int) -> jax.Array:
  """'SAME' zero-padded 1-D correlation along `axis` as a sum of shifts."""
  radius = (taps.shape[0] - 1) // 2
  n = image.shape[axis]
  pad = [(0, 0)] * image.ndim
  pad[axis] = (radius, radius)
  padded = jnp.pad(image, pad)
  out = taps[0] * lax.slice_in_dim(padded, 0, n, axis=axis)
  for k in range(1, 2 * radius + 1):
    out = out + taps[k] * lax.slice_in_dim(padded, k, k + n, axis=axis)
  return out


def gaussian_blur(image: jax.Array, sigma: jax.Array | float,
                  kernel_size: int) -> jax.Array:
  """Separable Gaussian blur as google-research/simclr's `gaussian_blur`.

  Side 2 * (kernel_size // 2) + 1, zero padding ('SAME'), horizontal pass
  then vertical. Written as a static sum of shifted copies: a fused
  element-wise loop (no per-image convolution kernels under vmap).

  Args:
    image: float32 (H, W, C).
    sigma: float32 scalar (traced is fine).
    kernel_size: static int (google: image height // 10).
  Returns:
    float32 (H, W, C).
  """
  radius = blur_radius(kernel_size)
  if radius == 0:
    return image
  taps = gaussian_kernel(sigma, radius).astype(image.dtype)
  out = _correlate_axis(image, taps, axis=image.ndim - 2)
  return _correlate_axis(out, taps, axis=image.ndim - 3)
