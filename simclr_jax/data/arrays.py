"""Decoded images of one size in memory, and scikit-learn's digits.

`ArraySource` reads uint8 (N, H, W, 3) arrays in per-epoch permutations.
With the device crop (and for evaluation at the stored size) it is NumPy
only: the digits demo never imports TensorFlow. The host crop and eval
resizes import `host_ops` and `streams` when first needed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from simclr_jax.data import base
from simclr_jax.data import order


@dataclasses.dataclass(frozen=True)
class ArrayData:
  """Decoded examples: uint8 (N, H, W, 3) images, int32 (N,) labels."""
  images: np.ndarray
  labels: np.ndarray


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) bilinear interpolation weights, half-pixel centres."""
  scale = n_in / n_out
  x = (np.arange(n_out) + 0.5) * scale - 0.5
  x = np.clip(x, 0, n_in - 1)
  lo = np.floor(x).astype(int)
  hi = np.minimum(lo + 1, n_in - 1)
  w_hi = x - lo
  m = np.zeros((n_out, n_in), np.float64)
  m[np.arange(n_out), lo] += 1 - w_hi
  m[np.arange(n_out), hi] += w_hi
  return m


def resize_bilinear_uint8(images: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize (no antialias) of uint8 (N, H, W, C) to (N, size, size, C).

  Meant for upsampling small images once on the host (as
  `tf.image.resize(..., 'bilinear')` with half-pixel centres).
  """
  n, h, w, c = images.shape
  if (h, w) == (size, size):
    return images
  mh, mw = _bilinear_matrix(h, size), _bilinear_matrix(w, size)
  out = np.einsum('ih,nhwc,jw->nijc', mh, images.astype(np.float64), mw)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def eval_crop_arrays(images: np.ndarray, size: int,
                     fraction: float) -> np.ndarray:
  """Centre crop (not for <= 32 px) and bicubic resize of uint8 (N, H, W, 3).

  Returns uint8 (N, size, size, 3); `images` itself when nothing changes
  (then TensorFlow is not imported).
  """
  n, h, w, _ = images.shape
  crop = min(h, w) > base.NO_EVAL_CROP_MAX_SIDE and fraction < 1
  if not crop and (h, w) == (size, size):
    return images
  if n == 0:
    return np.zeros((0, size, size, 3), np.uint8)
  from simclr_jax.data import host_ops  # pylint: disable=g-import-not-at-top
  return host_ops.eval_crop_batch(images, size, fraction, crop)


class ArraySource(base.DataSource):
  """Decoded fixed-size images in memory, read in per-epoch permutations.

  A subclass writes `counts` and `local` (a process's part of a split as
  `ArrayData`) and calls `__init__` with the stored image shape. The host
  crops only when data.crop is 'host'.
  """

  def __init__(self, config: Any, num_classes: int, image_shape: tuple):
    super().__init__(config, num_classes=num_classes,
                     crop_on_host=base.crop_on_host(config, auto_host=False))
    self.image_shape = tuple(image_shape)

  def local(self, split: str, process_index: int,
            process_count: int) -> ArrayData:
    """This process's part of `split` (one of base.SPLITS), in order."""
    raise NotImplementedError

  def _train_shape(self):
    return self.image_shape

  def _train_batches(self, batch, start_step, process_index, process_count):
    spe = order.steps_per_epoch(self.counts('pretrain', process_count), batch)
    data = self.local('pretrain', process_index, process_count)
    epochs = order.EpochOrder(base.config_seed(self.config), process_index,
                              len(data.labels), batch, spe)
    if self.crop_on_host:
      from simclr_jax.data import streams  # pylint: disable=g-import-not-at-top
      return streams.host_crops(self.config, epochs, data.images, data.labels,
                                start_step, process_index, process_count)

    def generate():
      step = start_step
      while True:
        idx = epochs.step_indices(step)
        yield {'image': data.images[idx], 'label': data.labels[idx]}
        step += 1
    return generate()

  def _eval_batches(self, split, batch, process_index, process_count):
    data = self.local(split, process_index, process_count)
    size = int(self.config.image_size)
    fraction = float(self.config.data.eval_crop_fraction)

    def generate():
      for start in range(0, len(data.labels), batch):
        sl = slice(start, start + batch)
        yield eval_crop_arrays(data.images[sl], size, fraction), data.labels[sl]
    return generate()


def load_digits(resize_to: int) -> ArrayData:
  """scikit-learn's digits as uint8 RGB (1797, R, R, 3), R = resize_to or 8."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  gray = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
  images = np.repeat(gray[..., None], 3, axis=-1)
  if resize_to:
    images = resize_bilinear_uint8(images, resize_to)
  images.setflags(write=False)
  labels = digits.target.astype(np.int32)
  labels.setflags(write=False)
  return ArrayData(images, labels)


class DigitsSource(ArraySource):
  """scikit-learn's digits; a process takes every process_count-th example."""

  def __init__(self, config: Any):
    self.data = load_digits(int(config.data.resize_to))
    self.split_indices = base.single_split(config, len(self.data.labels),
                                           'the digits')
    super().__init__(config, 10, self.data.images.shape[1:])

  def counts(self, split, process_count):
    return order.part_sizes(len(self.split_indices[split]), process_count)

  def local(self, split, process_index, process_count):
    idx = order.process_part(self.split_indices[split], process_index,
                             process_count)
    return ArrayData(self.data.images[idx], self.data.labels[idx])
