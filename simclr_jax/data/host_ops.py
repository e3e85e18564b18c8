"""TensorFlow image ops of the host: decoding, crop windows and resizes.

Importing this module imports TensorFlow and hides every accelerator from it
(JAX owns them). It holds the per-image ops (decode, decode-and-crop of JPEG
windows, the random-resized-crop window sampler, eval centre windows,
resizes) and `ElementFns`, the per-example functions that the tf.data
pipelines of `streams` map over files, TFDS records or decoded arrays.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

from simclr_jax import augment
from simclr_jax.data import base

for _kind in ('GPU', 'TPU'):
  try:
    tf.config.set_visible_devices([], _kind)
  except (RuntimeError, ValueError):  # Initialised already, or no such.
    pass


def plain(fn: Callable) -> Callable:
  """`fn` for tf.data as written: no AutoGraph (it branches with tf.cond)."""
  return tf.autograph.experimental.do_not_convert(fn)


def to_uint8(x: tf.Tensor) -> tf.Tensor:
  """Rounds and clips float pixels to uint8."""
  return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def resize(image: tf.Tensor, size: int, method: str) -> tf.Tensor:
  """Resizes a uint8 (H, W, 3) or (N, H, W, 3) image to size x size, uint8."""
  return to_uint8(tf.image.resize(image, [size, size], method=method))


def resize_to_shape(image: tf.Tensor, height: int, width: int) -> tf.Tensor:
  """Antialiased bilinear resize of uint8 (H, W, 3) to (height, width, 3)."""
  return to_uint8(tf.image.resize(image, [height, width], method='bilinear',
                                  antialias=True))


def center_window(height: tf.Tensor, width: tf.Tensor,
                  fraction: float) -> tf.Tensor:
  """Square centre window [y, x, h, w] (int32) of `fraction` of the short side.

  google-research/simclr's `center_crop` for a square output: side
  rint(fraction * short side) (float32, half to even), offsets
  ((H - side) + 1) // 2 and ((W - side) + 1) // 2. Images whose short side
  is 32 px or less are not cropped (whole image), as google's CIFAR eval.
  """
  side = tf.minimum(height, width)
  crop = tf.logical_and(side > base.NO_EVAL_CROP_MAX_SIDE, fraction < 1.0)
  cropped = tf.maximum(
      tf.cast(tf.math.rint(fraction * tf.cast(side, tf.float32)), tf.int32), 1)
  h = tf.where(crop, cropped, height)
  w = tf.where(crop, cropped, width)
  return tf.stack([(height - h + 1) // 2, (width - w + 1) // 2, h, w])


def eval_crop_batch(images: np.ndarray, size: int, fraction: float,
                    crop: bool) -> np.ndarray:
  """Centre crop (if `crop`) and bicubic resize of uint8 (N, H, W, 3).

  Returns uint8 (N, size, size, 3).
  """
  images = tf.constant(images)
  if crop:
    h, w = images.shape[1], images.shape[2]
    window = center_window(tf.constant(h), tf.constant(w), fraction)
    y, x, ch, cw = (int(v) for v in window.numpy())
    images = images[:, y:y + ch, x:x + cw]
  return resize(images, size, 'bicubic').numpy()


def sample_window(height: tf.Tensor, width: tf.Tensor, seed: tf.Tensor,
                  scale: Sequence[float], ratio: Sequence[float],
                  max_attempts: int = augment.CROP_ATTEMPTS) -> tf.Tensor:
  """A random-resized-crop window [y, x, h, w] (int32) of an image.

  google-research/simclr's own sampler: `tf.image`'s
  (stateless) `sample_distorted_bounding_box` with the whole image as the
  bounding box, `area_range=scale`, `aspect_ratio_range=ratio`,
  `min_object_covered=0.1` and `max_attempts` (100), whole image as the
  fallback. The device crop (`simclr_jax.augment.sample_crop`) draws from
  the same distribution (tested), so host- and device-cropped runs see the
  same views. `seed` is a stateless seed, int (2,).
  """
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.stack([height, width, tf.constant(3, height.dtype)]),
      bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
      seed=seed,
      min_object_covered=augment.CROP_MIN_COVERED,
      aspect_ratio_range=(float(ratio[0]), float(ratio[1])),
      area_range=(float(scale[0]), float(scale[1])),
      max_attempts=max_attempts,
      use_image_if_no_bounding_boxes=True)
  return tf.cast(tf.stack([begin[0], begin[1], size[0], size[1]]), tf.int32)


def decode_full(contents: tf.Tensor) -> tf.Tensor:
  """Decodes any supported image (JPEG, PNG, BMP, GIF, WebP) to uint8 (H, W, 3).

  Grayscale, palette, RGBA and 16-bit images become RGB uint8; of an
  animated GIF only the first frame is kept.
  """
  image = tf.io.decode_image(contents, channels=3, dtype=tf.uint8,
                             expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def crop(image: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
  """The [y, x, h, w] `window` of an (H, W, C) image."""
  return image[window[0]:window[0] + window[2], window[1]:window[1] + window[3]]


def decode_windows(contents: tf.Tensor, window_fn: Callable,
                   num: int) -> list[tf.Tensor]:
  """Decodes `num` windows of an encoded image, a JPEG only where needed.

  `window_fn(height, width, i)` gives window i as int32 [y, x, h, w]. A JPEG
  is decoded only inside the columns spanning the windows, from their top
  row to the image's last row (`tf.image.decode_and_crop_jpeg`: one partial
  decode, never more work than a full decode). Down to the last row: a
  decode that stops above it leaves the rest of the file unread, and
  libjpeg then returns grey or garbage for a file whose data is damaged
  (a bad marker, a cut) instead of failing as a full decode does; read to
  the end it fails alike, so a damaged file is replaced or left out on the
  host-crop path too. Other formats are decoded whole. Returns a list of
  uint8 (h_i, w_i, 3) crops.
  """
  def jpeg():
    shape = tf.image.extract_jpeg_shape(contents)
    windows = [window_fn(shape[0], shape[1], i) for i in range(num)]
    w = tf.stack(windows)
    top, left = tf.reduce_min(w[:, 0]), tf.reduce_min(w[:, 1])
    bottom = shape[0]  # Read to the end: damage is seen (see above).
    right = tf.reduce_max(w[:, 1] + w[:, 3])
    region = tf.image.decode_and_crop_jpeg(
        contents, tf.stack([top, left, bottom - top, right - left]),
        channels=3)
    origin = tf.stack([top, left, 0, 0])
    return [crop(region, window - origin) for window in windows]

  def other():
    image = decode_full(contents)
    shape = tf.shape(image)
    return [crop(image, window_fn(shape[0], shape[1], i)) for i in range(num)]

  out = tf.cond(tf.io.is_jpeg(contents), jpeg, other)
  for x in out:
    x.set_shape([None, None, 3])
  return out


def view_seeds(seed: int, key: tf.Tensor) -> tf.Tensor:
  """Stateless seeds (2, 2) int64 of the two views of the example `key`."""
  key = tf.cast(key, tf.int64)
  return tf.stack([tf.stack([tf.constant(seed, tf.int64), 2 * key]),
                   tf.stack([tf.constant(seed, tf.int64), 2 * key + 1])])


class ElementFns:
  """Per-example TensorFlow functions of a config, for tf.data maps.

  Encoded images are scalar tf.string tensors; `key` is the int64 key of
  the example (`order.step_keys`) that seeds its two host crops.
  """

  def __init__(self, config: Any):
    self.seed = base.config_seed(config)
    self.size = int(config.image_size)  # Evaluation images.
    self.view_size = int(config.augment.output_size)  # Training views.
    self.scale = tuple(float(v) for v in config.augment.crop_scale)
    self.ratio = tuple(float(v) for v in config.augment.crop_ratio)
    self.eval_fraction = float(config.data.eval_crop_fraction)
    if self.size < 1:
      raise ValueError(f'image_size must be positive, got {self.size}')
    if self.view_size < 1:
      raise ValueError('augment.output_size must be positive, got '
                       f'{self.view_size}')

  def host_views(self, contents: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """Two random-resized crops of an encoded image: uint8 (2, S, S, 3).

    S is augment.output_size (the training views' side).
    """
    seeds = view_seeds(self.seed, key)
    crops = decode_windows(
        contents,
        lambda h, w, i: sample_window(h, w, seeds[i], self.scale, self.ratio),
        2)
    return tf.stack([resize(c, self.view_size, 'bicubic') for c in crops])

  def host_views_decoded(self, image: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """Two random-resized crops of a decoded uint8 (H, W, 3) image.

    Returns uint8 (2, S, S, 3), as `host_views` of the encoded image.
    """
    seeds = view_seeds(self.seed, key)
    shape = tf.shape(image)
    views = []
    for i in range(2):
      window = sample_window(shape[0], shape[1], seeds[i], self.scale,
                             self.ratio)
      views.append(resize(crop(image, window), self.view_size, 'bicubic'))
    return tf.stack(views)

  def eval_view(self, contents: tf.Tensor) -> tf.Tensor:
    """Centre crop of an encoded image, resized to uint8 (S, S, 3)."""
    window, = decode_windows(
        contents,
        lambda h, w, i: center_window(h, w, self.eval_fraction), 1)
    return resize(window, self.size, 'bicubic')

  def fixed_size(self, contents: tf.Tensor, height: int,
                 width: int) -> tf.Tensor:
    """Whole image, resized (bilinear) to uint8 (height, width, 3) if needed."""
    image = decode_full(contents)
    shape = tf.shape(image)
    same = tf.logical_and(tf.equal(shape[0], height), tf.equal(shape[1], width))
    image = tf.cond(same, lambda: image,
                    lambda: resize_to_shape(image, height, width))
    image.set_shape([height, width, 3])
    return image
