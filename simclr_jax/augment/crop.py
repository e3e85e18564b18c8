"""The random resized crop: draw a box, then crop and resize it bicubically.

`sample_crop` draws a `CropDraw` (box [y0, x0, height, width]) with the
distribution of `tf.image.sample_distorted_bounding_box` as
google-research/simclr uses it (area in `scale`, aspect ratio uniform in
`ratio`, integer height uniform, at least `CROP_MIN_COVERED` of the image,
`CROP_ATTEMPTS` attempts computed at once, whole-image fallback).
`crop_and_resize` crops a traced box and resizes it to a static S x S as
`tf.image.resize(..., 'bicubic')` does (4-tap gathers per axis, a flip folded
into the column taps). Both are jittable and vmappable with static shapes.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

# tf.image.resize(method='bicubic') (ResizeBicubic, half-pixel centres) uses
# Keys' cubic kernel with a = -0.5 read from a table of this many entries per
# pixel, so sub-pixel offsets are rounded to 1/1024 of a pixel.
_BICUBIC_A = -0.5
_BICUBIC_TABLE_SIZE = 1024
# tf.image.sample_distorted_bounding_box's minimum fraction of the image
# (google-research/simclr's min_object_covered, with the whole image as the
# one bounding box) and its number of attempts in google's crop.
CROP_MIN_COVERED = 0.1
CROP_ATTEMPTS = 100


def _keys_cubic(x: jax.Array) -> jax.Array:
  """Keys' cubic convolution kernel with a = -0.5 at distances x >= 0."""
  a = _BICUBIC_A
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return jnp.where(x <= 1, near, jnp.where(x < 2, far, 0.0))


def _resize_taps(start: jax.Array, length: jax.Array, in_size: int,
                 out_size: int) -> tuple[jax.Array, jax.Array]:
  """Bicubic taps resizing input [start, start + length) to out_size samples.

  Follows TF's ResizeBicubic (half-pixel centres): sample position
  (o + 0.5) * length / out_size - 0.5 in crop coordinates, 4 taps, offsets
  rounded to 1/1024 pixel, taps outside the crop dropped and the rest
  renormalised.

  Returns:
    int32 (out_size, 4) indices into [0, in_size) and float32 (out_size, 4)
    weights summing to 1 per row.
  """
  length = length.astype(jnp.int32)
  scale = length.astype(jnp.float32) / jnp.float32(out_size)
  pos = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale - 0.5
  base = jnp.floor(pos)
  frac = jnp.round((pos - base) * _BICUBIC_TABLE_SIZE) / _BICUBIC_TABLE_SIZE
  offsets = jnp.arange(-1, 3, dtype=jnp.int32)
  local = base.astype(jnp.int32)[:, None] + offsets
  dist = jnp.abs(frac[:, None] - offsets.astype(jnp.float32))
  weights = _keys_cubic(dist)
  weights = jnp.where((local >= 0) & (local < length), weights, 0.0)
  weights = weights / jnp.sum(weights, axis=1, keepdims=True)
  index = jnp.minimum(jnp.maximum(start.astype(jnp.int32) + local, 0), in_size - 1)
  return index, weights


def crop_and_resize(image: jax.Array, box: jax.Array, output_size: int,
                    flip: jax.Array | bool = False) -> jax.Array:
  """Crops `box` and resizes it to output_size^2 with bicubic interpolation.

  Equals tf.image.resize(tf.image.crop_to_bounding_box(image, *box),
  [S, S], 'bicubic') (antialias off, as google's crop_and_resize), with a
  traced box and static shapes: per axis, 4 gathers of one input row (or
  column) per output row, weighted and summed (exact float32 arithmetic, no
  matmul, so no reduced-precision matmul passes on GPU/TPU). No clipping
  (bicubic overshoots slightly, as in the reference).

  `flip` mirrors the output left-right by reversing the column taps: exactly
  the crop followed by a flip, without a select over the image.

  Args:
    image: float32 (H, W, C).
    box: int32 (4,) [y0, x0, height, width], inside the image.
    output_size: static int S.
    flip: bool scalar (traced is fine).
  Returns:
    float32 (S, S, C).
  """
  chex.assert_rank(image, 3)
  chex.assert_shape(box, (4,))
  height, width = image.shape[0], image.shape[1]
  box = jnp.asarray(box, jnp.int32)
  row_index, row_weights = _resize_taps(box[0], box[2], height, output_size)
  col_index, col_weights = _resize_taps(box[1], box[3], width, output_size)
  col_index = jnp.where(flip, col_index[::-1], col_index)
  col_weights = jnp.where(flip, col_weights[::-1], col_weights)
  row_weights = row_weights.astype(image.dtype)
  col_weights = col_weights.astype(image.dtype)
  rows = sum(jnp.take(image, row_index[:, t], axis=0, mode='clip')
             * row_weights[:, t, None, None] for t in range(4))  # (S, W, C)
  return sum(jnp.take(rows, col_index[:, t], axis=1, mode='clip')
             * col_weights[None, :, t, None] for t in range(4))  # (S, S, C)


def _uniform_int(u: jax.Array, n: jax.Array) -> jax.Array:
  """Integer uniform in {0, ..., n - 1} from u uniform in [0, 1)."""
  return jnp.minimum(jnp.floor(u * n.astype(jnp.float32)).astype(jnp.int32),
                     n - 1)


class CropDraw(NamedTuple):
  """A random-resized-crop draw.

  Attributes:
    box: int32 (4,) [y0, x0, height, width] in pixels.
    area: float32 scalar, the box's area as a fraction of the image's.
    ratio: float32 scalar, the box's aspect ratio width / height.
    found: bool scalar, False when no attempt was accepted (whole-image
      fallback).
  """
  box: jax.Array
  area: jax.Array
  ratio: jax.Array
  found: jax.Array


def _num_crop_uniforms(max_attempts: int) -> int:
  return 2 * max_attempts + 2


def _rint(x: jax.Array) -> jax.Array:
  """lrintf: round half to even, to int32."""
  return jnp.round(x).astype(jnp.int32)


def _crop_from_uniforms(u: jax.Array, height: int, width: int,
                        scale: tuple[float, float], ratio: tuple[float, float],
                        max_attempts: int,
                        min_covered: float = CROP_MIN_COVERED) -> CropDraw:
  """`sample_crop` given its uniforms u: float32 (2 * max_attempts + 2,).

  Attempt i uses u[i] (aspect ratio) and u[max_attempts + i] (height); the
  accepted box's offsets use the last two. Every attempt is computed at once
  (static shapes) and the first accepted one is taken, which has the
  distribution of TF's sequential loop.
  """
  f32 = jnp.float32
  hw = f32(height) * f32(width)
  min_area = f32(scale[0]) * hw
  max_area = f32(scale[1]) * hw
  aspect = (u[:max_attempts] * (f32(ratio[1]) - f32(ratio[0]))
            + f32(ratio[0]))  # Uniform, as TF (not log-uniform).
  h_lo = _rint(jnp.sqrt(min_area / aspect))
  h_hi = _rint(jnp.sqrt(max_area / aspect))
  # The largest height whose rounded width still fits (TF computes the
  # bound in double; float32 can only overshoot it, which the check below
  # corrects).
  too_wide = _rint(h_hi.astype(f32) * aspect) > width
  h_fit = jnp.floor((f32(width) + f32(0.5)) / aspect).astype(jnp.int32)
  h_fit = jnp.where(_rint(h_fit.astype(f32) * aspect) > width, h_fit - 1,
                    h_fit)
  h_hi = jnp.minimum(jnp.where(too_wide, h_fit, h_hi), height)
  h_lo = jnp.minimum(h_lo, h_hi)
  # Height uniform in the integers {h_lo, ..., h_hi}.
  h = h_lo + _uniform_int(u[max_attempts:2 * max_attempts], h_hi - h_lo + 1)

  def sides(h):
    w = _rint(h.astype(f32) * aspect)
    return h, w, (w * h).astype(f32)

  h, w, area = sides(h)
  h, w, area = jax.tree.map(lambda a, b: jnp.where(area < min_area, a, b),
                            sides(h + 1), (h, w, area))
  h, w, area = jax.tree.map(lambda a, b: jnp.where(area > max_area, a, b),
                            sides(h - 1), (h, w, area))
  ok = ((area >= min_area) & (area <= max_area) & (w <= width) &
        (h <= height) & (w > 0) & (h > 0))
  # The overlap constraint with the whole image as the one bounding box.
  ok &= (area >= 1.0) & (area / hw >= f32(min_covered))
  first = jnp.argmax(ok)
  found = ok[first]
  h = jnp.where(found, h[first], height)
  w = jnp.where(found, w[first], width)
  # As TF: offsets uniform in {0, ..., H - h - 1} (H - h itself is never
  # drawn), 0 when the box spans the side.
  y0 = _uniform_int(u[2 * max_attempts], jnp.maximum(height - h, 1))
  x0 = _uniform_int(u[2 * max_attempts + 1], jnp.maximum(width - w, 1))
  return CropDraw(
      box=jnp.stack([y0, x0, h, w]).astype(jnp.int32),
      area=(h * w).astype(f32) / hw,
      ratio=w.astype(f32) / h.astype(f32),
      found=found)


def sample_crop(key: jax.Array, height: int, width: int,
                scale: tuple[float, float] = (0.08, 1.0),
                ratio: tuple[float, float] = (3 / 4, 4 / 3),
                max_attempts: int = CROP_ATTEMPTS,
                min_covered: float = CROP_MIN_COVERED) -> CropDraw:
  """Draws a random-resized-crop box for a static (height, width) image.

  The distribution of google-research/simclr's crop,
  `tf.image.sample_distorted_bounding_box` with the whole image as the
  bounding box, `area_range=scale`, `aspect_ratio_range=ratio`,
  `min_object_covered=min_covered` and `max_attempts` (0.08-1, 3/4-4/3, 0.1
  and 100 there). Each attempt draws an aspect ratio a uniform in `ratio`
  and an integer height uniform between round(sqrt(scale[0] H W / a)) and
  round(sqrt(scale[1] H W / a)) (capped so the width fits), sets the width
  to round(a h) (half to even), nudges the height by one if rounding left
  the area outside `scale`, and is accepted if the box fits and covers at
  least `min_covered` of the image. The first accepted box is placed with
  offsets uniform in {0, ..., H - h - 1} and {0, ..., W - w - 1} (TF's, which
  never touch the last row or column unless the box spans the side); if
  none is accepted, the whole image. Tested against TF's op by two-sample
  KS tests.

  Returns:
    `CropDraw`.
  """
  u = jax.random.uniform(key, (_num_crop_uniforms(max_attempts),), jnp.float32)
  return _crop_from_uniforms(u, height, width, scale, ratio, max_attempts,
                             min_covered)
