"""Input pipelines: TFDS datasets, image folders and the embedded digits.

Three sources feed the same train step (`config.data.source`):

* ``'digits'``: scikit-learn's 1,797 handwritten 8x8 digits, as uint8 RGB,
  upsampled once on the host to ``data.resize_to``. Pure NumPy: no TensorFlow.
* ``'folder'``: a folder of images (JPEG, PNG, BMP, GIF, WebP), searched
  recursively. The first-level subfolders are the classes when every image is
  inside one; otherwise the images are unlabelled (label -1).
* ``'tfds'``: any TFDS dataset with an ``image`` feature, by name and split.

Where the random-resized crop happens (`data.crop`):

* device: the host sends whole uint8 images (H, W, 3) of one fixed size and
  the accelerator does all augmentation (CIFAR, STL-10, digits).
* host: for large images of any size (ImageNet, folders) the host samples two
  crop windows per image, decodes only the rectangle spanning them (JPEG:
  `tf.image.decode_and_crop_jpeg`) and resizes each window to ``image_size``
  (bicubic): the batch holds (2, S, S, 3) uint8 views.

Determinism: the batch of global step k on process p is a function of
(config.seed, k, p). Fixed-size data that fits in memory and folders use one
permutation per epoch, drawn from (seed, epoch, process), so starting at step
k costs nothing. Large TFDS datasets are streamed with per-epoch file and
buffer shuffles seeded from (seed, epoch, process) and skip the first records
of the epoch before any decoding.

Robustness: folder files that are not images are ignored by extension; image
files whose header is not a known image format are skipped, counted and
reported in one warning line; a file that still fails to decode during
training is replaced by a spare example of the same step (a few spares are
read per batch), so a bad file never stops a run.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import os
from typing import Any, Iterator, Sequence

import numpy as np
from absl import logging

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')
# Images this small are not centre-cropped for evaluation.
_NO_EVAL_CROP_MAX_SIDE = 32
# Fixed-size TFDS splits up to this size (per process) are read into memory.
_MAX_IN_MEMORY_BYTES = 4 << 30
# Spare examples read per train batch from files, used when one fails.
_MIN_SPARES = 2
_SPARE_FRACTION = 1 / 64
# Train steps of a folder decoded concurrently.
_STEPS_IN_FLIGHT = 4


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the train loop needs to know about the data.

  Attributes:
    num_train_examples: examples in the pretraining split, all processes
      together (after the holdout).
    num_eval_examples: examples in the evaluation split (or the holdout).
    num_classes: number of classes; 0 when the data is unlabelled.
    train_image_shape: per-example shape of 'image' in train batches:
      (H, W, 3) when the device crops, (2, S, S, 3) when the host crops.
    crop_on_host: whether the host does the random-resized crops.
  """
  num_train_examples: int
  num_eval_examples: int
  num_classes: int
  train_image_shape: tuple
  crop_on_host: bool


# ----------------------------------------------------------------- helpers


def _tf():
  """Imports TensorFlow lazily, hiding every accelerator from it."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not getattr(_tf, 'configured', False):
    for kind in ('GPU', 'TPU'):
      try:
        tf.config.set_visible_devices([], kind)
      except (RuntimeError, ValueError):  # Initialised already, or no such.
        pass
    _tf.configured = True
  return tf


def _process(process_index: int | None,
             process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    if process_index is None:
      process_index = jax.process_index()
    if process_count is None:
      process_count = jax.process_count()
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is not in '
                     f'[0, process_count={process_count})')
  return int(process_index), int(process_count)


def _check_batch_size(local_batch_size: int) -> None:
  if int(local_batch_size) != local_batch_size or local_batch_size < 1:
    raise ValueError(
        f'local_batch_size must be a positive integer, got {local_batch_size}')


def _seed(config: Any) -> int:
  seed = int(config.seed)
  if seed < 0:
    raise ValueError(f'config.seed must be >= 0, got {seed}')
  return seed


def holdout_split(num_examples: int,
                  fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """Splits range(num_examples) into (kept, held out), independently of seed.

  The held-out examples are the last `round(fraction * num_examples)` of a
  permutation drawn with the fixed seed 0, so the evaluation split does not
  change with config.seed (and is not one class of a sorted folder).

  Returns:
    Two sorted int64 arrays of example indices.
  """
  if not 0 <= fraction < 1:
    raise ValueError(f'data.holdout_fraction must be in [0, 1), got {fraction}')
  num_held = int(round(fraction * num_examples))
  perm = np.random.default_rng(0).permutation(num_examples)
  return (np.sort(perm[:num_examples - num_held]),
          np.sort(perm[num_examples - num_held:]))


def process_part(indices: np.ndarray, process_index: int,
                 process_count: int) -> np.ndarray:
  """This process's part of `indices`: every process_count-th one.

  The parts of all processes are disjoint, cover `indices` and differ in
  size by at most one; striding keeps classes of sorted data balanced.
  """
  return indices[process_index::process_count]


def _steps_per_epoch(num_examples: int, process_count: int,
                     local_batch_size: int) -> int:
  """Steps per epoch, equal on every process (the smallest part decides)."""
  spe = (num_examples // process_count) // local_batch_size
  if spe < 1:
    raise ValueError(
        f'the local batch of {local_batch_size} examples is larger than this '
        f"process's part of the training data ({num_examples} examples over "
        f'{process_count} process(es))')
  return spe


class _EpochOrder:
  """Example order of one process: one permutation per epoch.

  Step k of epoch e = k // steps_per_epoch takes positions
  [j * b, (j + 1) * b) (j = k % steps_per_epoch) of the permutation drawn
  from (seed, e, process_index); the examples left over at the end of a
  permutation are not used in that epoch.
  """

  def __init__(self, seed: int, process_index: int, num_local: int,
               local_batch_size: int, steps_per_epoch: int):
    self.seed = seed
    self.process_index = process_index
    self.num_local = num_local
    self.batch = local_batch_size
    self.steps_per_epoch = steps_per_epoch
    self._epoch = None
    self._perm = None

  def permutation(self, epoch: int) -> np.ndarray:
    if epoch != self._epoch:
      rng = np.random.default_rng([self.seed, epoch, self.process_index])
      self._perm = rng.permutation(self.num_local)
      self._epoch = epoch
    return self._perm

  def step_indices(self, step: int, spares: int = 0) -> np.ndarray:
    """Local example indices (b + spares,) int64 of global step `step`.

    The spares follow the batch in the same epoch's permutation (wrapping).
    """
    epoch, j = divmod(step, self.steps_per_epoch)
    perm = self.permutation(epoch)
    pos = j * self.batch + np.arange(self.batch + spares)
    return perm[pos % self.num_local]


def _num_spares(local_batch_size: int) -> int:
  return max(_MIN_SPARES, int(math.ceil(local_batch_size * _SPARE_FRACTION)))


# ------------------------------------------------------------ resizing (NumPy)


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


# --------------------------------------------------------- in-memory sources


@dataclasses.dataclass(frozen=True)
class _ArrayData:
  """Decoded examples in memory: uint8 (N, H, W, 3) images, int32 (N,) labels."""
  images: np.ndarray
  labels: np.ndarray
  num_classes: int


@functools.lru_cache(maxsize=4)
def _load_digits(resize_to: int) -> _ArrayData:
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
  return _ArrayData(images, labels, 10)


def _single_split_indices(config: Any, num_examples: int,
                          what: str) -> tuple[np.ndarray, np.ndarray]:
  """(train, eval) indices of a source with one split (digits, folders)."""
  if config.data.eval_split:
    raise ValueError(
        f'{what} have a single split: set data.eval_split = "" to hold out '
        f'data.holdout_fraction of it for evaluation (got data.eval_split='
        f'{config.data.eval_split!r})')
  return holdout_split(num_examples, config.data.holdout_fraction)


def _crop_on_host(config: Any, auto_host: bool) -> bool:
  crop = config.data.crop
  if crop == 'auto':
    return auto_host
  if crop in ('host', 'device'):
    return crop == 'host'
  raise ValueError(
      f"data.crop must be 'auto', 'device' or 'host', got {crop!r}")


# ----------------------------------------------------------- public API


def get_info(config: Any) -> DatasetInfo:
  """Sizes, classes and train-batch image shape of `config.data`.

  Raises:
    ValueError: the data cannot be found or read (one clear message).
  """
  source = _get_source(config)
  return source.info()


def create_train_iterator(
    config: Any, *, local_batch_size: int, start_step: int = 0,
    process_index: int | None = None, process_count: int | None = None
) -> Iterator[dict[str, np.ndarray]]:
  """Infinite iterator of this process's training batches.

  Args:
    config: the run config (uses `config.data`, `config.seed`,
      `config.image_size`, `config.augment.crop_scale/crop_ratio`).
    local_batch_size: examples per batch on this process.
    start_step: global step of the first batch (to resume a run).
    process_index: this process (default `jax.process_index()`).
    process_count: number of processes (default `jax.process_count()`).

  Yields:
    {'image': uint8 (local_batch_size, *info.train_image_shape),
     'label': int32 (local_batch_size,), -1 for unlabelled examples}. The
    k-th batch is the batch of global step start_step + k, a function of
    (config.seed, step, process_index).
  """
  _check_batch_size(local_batch_size)
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}')
  p, n = _process(process_index, process_count)
  return _get_source(config).train_iterator(int(local_batch_size),
                                            int(start_step), p, n)


def create_eval_iterator(
    config: Any, split: str, *, local_batch_size: int,
    process_index: int | None = None, process_count: int | None = None
) -> Iterator[dict[str, np.ndarray]]:
  """One pass over this process's part of an evaluation split, in order.

  Args:
    config: the run config.
    split: 'train' (the labelled pretraining split, without the holdout) or
      'eval' (data.eval_split, or the holdout when data.eval_split is '').
    local_batch_size: examples per batch on this process.
    process_index, process_count: as for `create_train_iterator`.

  Yields:
    {'image': uint8 (local_batch_size, S, S, 3) centre-cropped
     (data.eval_crop_fraction; not for images of 32 px or less) and resized to
     S = config.image_size, 'label': int32 (local_batch_size,),
     'mask': bool (local_batch_size,), False on padding rows}. Every process
    yields the same number of batches; the last ones are padded.
  """
  _check_batch_size(local_batch_size)
  if split not in ('train', 'eval'):
    raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
  p, n = _process(process_index, process_count)
  return _get_source(config).eval_iterator(split, int(local_batch_size), p, n)


def _get_source(config: Any) -> '_Source':
  source = config.data.source
  if source == 'digits':
    return _DigitsSource(config)
  if source == 'folder':
    return _FolderSource(config)
  if source == 'tfds':
    return _tfds_source(config)
  raise ValueError(
      f"data.source must be 'tfds', 'folder' or 'digits', got {source!r}")


class _Source:
  """Interface of the three kinds of data."""

  def info(self) -> DatasetInfo:
    raise NotImplementedError

  def train_iterator(self, batch: int, start_step: int, process_index: int,
                     process_count: int) -> Iterator[dict[str, np.ndarray]]:
    raise NotImplementedError

  def eval_iterator(self, split: str, batch: int, process_index: int,
                    process_count: int) -> Iterator[dict[str, np.ndarray]]:
    raise NotImplementedError


def _pad_batch(batch: dict[str, np.ndarray],
               size: int) -> dict[str, np.ndarray]:
  """Pads every array of `batch` with zeros to `size` rows (mask False)."""
  n = len(batch['label'])
  if n == size:
    return batch
  out = {}
  for k, v in batch.items():
    pad = np.zeros((size - n,) + v.shape[1:], v.dtype)
    out[k] = np.concatenate([v, pad])
  return out


def _eval_batches(num_per_process: Sequence[int], batch: int) -> int:
  """Eval batches of every process: enough for the largest part."""
  return -(-max(num_per_process) // batch)


class _ArraySource(_Source):
  """Decoded fixed-size images in memory, read in per-epoch permutations.

  Subclasses say how many examples each process has (`counts`) and give a
  process's part as arrays (`local`) of the splits 'train', 'eval' and
  `PRETRAIN` (the split the train iterator reads).
  """
  PRETRAIN = 'train'

  def __init__(self, config: Any, num_classes: int, train_shape: tuple):
    self.config = config
    self.num_classes = num_classes
    self.crop_on_host = _crop_on_host(config, auto_host=False)
    self.stored_shape = tuple(train_shape)

  def counts(self, split: str, process_count: int) -> list[int]:
    """Examples of `split` ('train' or 'eval') on each process."""
    raise NotImplementedError

  def local(self, split: str, process_index: int,
            process_count: int) -> _ArrayData:
    raise NotImplementedError

  def info(self) -> DatasetInfo:
    s = int(self.config.image_size)
    shape = (2, s, s, 3) if self.crop_on_host else self.stored_shape
    return DatasetInfo(
        num_train_examples=sum(self.counts(self.PRETRAIN, 1)),
        num_eval_examples=sum(self.counts('eval', 1)),
        num_classes=self.num_classes,
        train_image_shape=shape, crop_on_host=self.crop_on_host)

  def train_iterator(self, batch, start_step, process_index, process_count):
    counts = self.counts(self.PRETRAIN, process_count)
    spe = _steps_per_epoch(sum(counts), process_count, batch)
    data = self.local(self.PRETRAIN, process_index, process_count)
    order = _EpochOrder(_seed(self.config), process_index, len(data.labels),
                        batch, spe)
    if self.crop_on_host:
      return _host_crop_array_iterator(self.config, order, data, start_step,
                                       process_index, process_count)

    def generate():
      step = start_step
      while True:
        idx = order.step_indices(step)
        yield {'image': data.images[idx], 'label': data.labels[idx]}
        step += 1
    return generate()

  def eval_iterator(self, split, batch, process_index, process_count):
    num_batches = _eval_batches(self.counts(split, process_count), batch)
    data = self.local(split, process_index, process_count)
    size = int(self.config.image_size)
    fraction = float(self.config.data.eval_crop_fraction)

    def generate():
      for i in range(num_batches):
        sl = slice(i * batch, (i + 1) * batch)
        labels = data.labels[sl]
        images = _eval_crop_arrays(data.images[sl], size, fraction)
        yield _pad_batch({'image': images, 'label': labels,
                          'mask': np.ones(len(labels), bool)}, batch)
    return generate()


class _DigitsSource(_ArraySource):
  """scikit-learn's digits; each process takes every process_count-th example."""

  def __init__(self, config: Any):
    self.data = _load_digits(int(config.data.resize_to))
    self.split_indices = dict(zip(
        ('train', 'eval'),
        _single_split_indices(config, len(self.data.labels), 'the digits')))
    super().__init__(config, self.data.num_classes, self.data.images.shape[1:])

  def counts(self, split, process_count):
    n = len(self.split_indices[split])
    return [len(range(p, n, process_count)) for p in range(process_count)]

  def local(self, split, process_index, process_count):
    idx = process_part(self.split_indices[split], process_index, process_count)
    return _ArrayData(self.data.images[idx], self.data.labels[idx],
                      self.data.num_classes)


def _eval_crop_arrays(images: np.ndarray, size: int,
                      fraction: float) -> np.ndarray:
  """Centre crop (not for <= 32 px) and bicubic resize of uint8 (N, H, W, 3)."""
  n, h, w, _ = images.shape
  crop = min(h, w) > _NO_EVAL_CROP_MAX_SIDE and fraction < 1
  if not crop and (h, w) == (size, size):
    return images
  if n == 0:
    return np.zeros((0, size, size, 3), np.uint8)
  tf = _tf()
  out = _tf_eval_crop(tf, tf.constant(images), size, fraction, crop)
  return out.numpy()


# ------------------------------------------------- TensorFlow image functions


def _to_uint8(tf, x):
  return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def _resize(tf, image, size: int, method: str):
  """Resizes a uint8 (H, W, 3) or (N, H, W, 3) image to size x size, uint8."""
  return _to_uint8(tf, tf.image.resize(image, [size, size], method=method))


def _center_window(tf, height, width, fraction: float):
  """Square centre window [y, x, h, w] (int32) of `fraction` of the short side.

  Images whose short side is 32 px or less are not cropped (whole image).
  """
  side = tf.minimum(height, width)
  crop = tf.logical_and(side > _NO_EVAL_CROP_MAX_SIDE, fraction < 1.0)
  cropped = tf.maximum(
      tf.cast(tf.floor(fraction * tf.cast(side, tf.float32)), tf.int32), 1)
  h = tf.where(crop, cropped, height)
  w = tf.where(crop, cropped, width)
  return tf.stack([(height - h + 1) // 2, (width - w + 1) // 2, h, w])


def _tf_eval_crop(tf, images, size: int, fraction: float, crop: bool):
  """Centre crop (if `crop`) and bicubic resize of a uint8 (N, H, W, 3) batch."""
  if crop:
    h, w = images.shape[1], images.shape[2]
    window = _center_window(tf, tf.constant(h), tf.constant(w), fraction)
    y, x, ch, cw = (int(v) for v in window.numpy())
    images = images[:, y:y + ch, x:x + cw]
  return _resize(tf, images, size, 'bicubic')


def _sample_window(tf, height, width, seed, scale: Sequence[float],
                   ratio: Sequence[float], max_attempts: int = 10):
  """A random-resized-crop window [y, x, h, w] (int32) of an image.

  The same sampler as the device crop (`simclr_jax.augment.sample_crop`), in
  TF ops for the host: `max_attempts` attempts each draw an area fraction
  uniform in `scale` and an aspect ratio log-uniform in `ratio`; the first
  that fits is placed uniformly at random; if none fits, the whole image
  (google-research/simclr's fallback). So host- and device-cropped runs draw
  views from one distribution.
  """
  u = tf.random.stateless_uniform([2 * max_attempts + 2], seed=seed,
                                  dtype=tf.float32)
  pixels = tf.cast(height * width, tf.float32)
  area = scale[0] + (scale[1] - scale[0]) * u[:max_attempts]
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  aspect = tf.exp(log_lo + (log_hi - log_lo) * u[max_attempts:2 * max_attempts])
  w = tf.cast(tf.round(tf.sqrt(area * pixels * aspect)), tf.int32)
  h = tf.cast(tf.round(tf.sqrt(area * pixels / aspect)), tf.int32)
  fits = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  found = tf.gather(fits, first)
  h = tf.where(found, tf.gather(h, first), height)
  w = tf.where(found, tf.gather(w, first), width)

  def uniform_int(v, n):
    return tf.minimum(tf.cast(tf.floor(v * tf.cast(n, tf.float32)), tf.int32),
                      n - 1)

  y0 = uniform_int(u[2 * max_attempts], height - h + 1)
  x0 = uniform_int(u[2 * max_attempts + 1], width - w + 1)
  return tf.stack([y0, x0, h, w])


def _decode_full(tf, contents):
  """Decodes any supported image (JPEG, PNG, BMP, GIF, WebP) to uint8 (H, W, 3).

  Grayscale, palette, RGBA and 16-bit images become RGB uint8; of an
  animated GIF only the first frame is kept.
  """
  image = tf.io.decode_image(contents, channels=3, dtype=tf.uint8,
                             expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def _crop(image, window):
  return image[window[0]:window[0] + window[2], window[1]:window[1] + window[3]]


def _decode_windows(tf, contents, window_fn, num: int):
  """Decodes `num` windows of an encoded image, a JPEG only where needed.

  `window_fn(height, width, i)` gives window i as int32 [y, x, h, w]. A JPEG
  is decoded only inside the rectangle spanning the windows
  (`tf.image.decode_and_crop_jpeg`: one partial decode, never more work than
  a full decode, and less than decoding each window on its own); other
  formats are decoded whole. Returns a list of uint8 (h_i, w_i, 3) crops.
  """
  def jpeg():
    shape = tf.image.extract_jpeg_shape(contents)
    windows = [window_fn(shape[0], shape[1], i) for i in range(num)]
    w = tf.stack(windows)
    top, left = tf.reduce_min(w[:, 0]), tf.reduce_min(w[:, 1])
    bottom = tf.reduce_max(w[:, 0] + w[:, 2])
    right = tf.reduce_max(w[:, 1] + w[:, 3])
    region = tf.image.decode_and_crop_jpeg(
        contents, tf.stack([top, left, bottom - top, right - left]),
        channels=3)
    origin = tf.stack([top, left, 0, 0])
    return [_crop(region, window - origin) for window in windows]

  def other():
    image = _decode_full(tf, contents)
    shape = tf.shape(image)
    return [_crop(image, window_fn(shape[0], shape[1], i)) for i in range(num)]

  out = tf.cond(tf.io.is_jpeg(contents), jpeg, other)
  for x in out:
    x.set_shape([None, None, 3])
  return out


def _view_seeds(tf, seed: int, key):
  """Stateless seeds (2, 2) int64 of the two views of the example `key`."""
  key = tf.cast(key, tf.int64)
  return tf.stack([tf.stack([tf.constant(seed, tf.int64), 2 * key]),
                   tf.stack([tf.constant(seed, tf.int64), 2 * key + 1])])


class _ElementFns:
  """Per-example TensorFlow functions shared by the file and TFDS streams."""

  def __init__(self, config: Any):
    self.seed = _seed(config)
    self.size = int(config.image_size)
    self.scale = tuple(float(v) for v in config.augment.crop_scale)
    self.ratio = tuple(float(v) for v in config.augment.crop_ratio)
    self.eval_fraction = float(config.data.eval_crop_fraction)
    if self.size < 1:
      raise ValueError(f'image_size must be positive, got {self.size}')

  def host_views(self, tf, contents, key):
    """Two random-resized crops of an encoded image: uint8 (2, S, S, 3)."""
    seeds = _view_seeds(tf, self.seed, key)
    crops = _decode_windows(
        tf, contents,
        lambda h, w, i: _sample_window(tf, h, w, seeds[i], self.scale,
                                       self.ratio), 2)
    return tf.stack([_resize(tf, c, self.size, 'bicubic') for c in crops])

  def host_views_decoded(self, tf, image, key):
    """Two random-resized crops of a decoded uint8 (H, W, 3) image."""
    seeds = _view_seeds(tf, self.seed, key)
    shape = tf.shape(image)
    views = []
    for i in range(2):
      window = _sample_window(tf, shape[0], shape[1], seeds[i], self.scale,
                              self.ratio)
      views.append(_resize(tf, _crop(image, window), self.size, 'bicubic'))
    return tf.stack(views)

  def eval_view(self, tf, contents):
    """Centre crop of an encoded image, resized to uint8 (S, S, 3)."""
    crop, = _decode_windows(
        tf, contents,
        lambda h, w, i: _center_window(tf, h, w, self.eval_fraction), 1)
    return _resize(tf, crop, self.size, 'bicubic')

  def fixed_size(self, tf, contents, height: int, width: int):
    """Whole image, resized (bilinear) to uint8 (height, width, 3) if needed."""
    image = _decode_full(tf, contents)
    shape = tf.shape(image)
    same = tf.logical_and(tf.equal(shape[0], height), tf.equal(shape[1], width))
    image = tf.cond(
        same, lambda: image,
        lambda: _to_uint8(tf, tf.image.resize(image, [height, width],
                                              method='bilinear',
                                              antialias=True)))
    image.set_shape([height, width, 3])
    return image


def _host_crop_array_iterator(config: Any, order: _EpochOrder,
                              data: _ArrayData, start_step: int,
                              process_index: int, process_count: int
                              ) -> Iterator[dict[str, np.ndarray]]:
  """Host-side crops of decoded in-memory images (data.crop == 'host')."""
  tf = _tf()
  fns = _ElementFns(config)
  b = order.batch
  shape = data.images.shape[1:]

  def generate():
    step = start_step
    while True:
      idx = order.step_indices(step)
      keys = (step * process_count + process_index) * b + np.arange(b)
      yield data.images[idx], data.labels[idx], keys
      step += 1

  ds = tf.data.Dataset.from_generator(generate, output_signature=(
      tf.TensorSpec((b,) + shape, tf.uint8), tf.TensorSpec((b,), tf.int32),
      tf.TensorSpec((b,), tf.int64))).unbatch()
  ds = ds.map(_plain(lambda im, y, k: {
      'image': fns.host_views_decoded(tf, im, k), 'label': y}),
              num_parallel_calls=_parallel(config), deterministic=True)
  ds = ds.batch(b, drop_remainder=True).prefetch(max(config.data.prefetch, 1))
  return ds.as_numpy_iterator()


def _plain(fn):
  """`fn` for tf.data as written: no AutoGraph (it branches with tf.cond)."""
  return _tf().autograph.experimental.do_not_convert(fn)


def _parallel(config: Any) -> int:
  n = int(config.data.num_parallel_calls)
  return -1 if n <= 0 else n  # -1 is tf.data.AUTOTUNE.


# ------------------------------------------------------------ image folders


def _looks_like_image(path: str) -> bool:
  """Whether the file starts like a JPEG, PNG, GIF, BMP or WebP image.

  JPEG and PNG files must also end like one (an end-of-image marker or IEND
  chunk near the end): that catches truncated files, the usual corruption of
  an interrupted copy or download, before they reach the decoder.
  """
  try:
    with open(path, 'rb') as f:
      head = f.read(16)
      f.seek(max(os.fstat(f.fileno()).st_size - 64, 0))
      tail = f.read()
  except OSError:
    return False
  if head.startswith(b'\xff\xd8\xff'):
    return b'\xff\xd9' in tail
  if head.startswith(b'\x89PNG\r\n\x1a\n'):
    return b'IEND' in tail
  return (head[:6] in (b'GIF87a', b'GIF89a')
          or (head.startswith(b'BM') and len(head) >= 14)
          or (head[:4] == b'RIFF' and head[8:12] == b'WEBP'))


@dataclasses.dataclass(frozen=True)
class FolderScan:
  """The images of a folder.

  Attributes:
    paths: (N,) object array of file paths, sorted.
    labels: int32 (N,), the index of the first-level subfolder in
      `class_names`, or -1 when unlabelled.
    class_names: sorted subfolder names; empty when unlabelled.
    skipped: paths of image files whose content is not a readable image.
  """
  paths: np.ndarray
  labels: np.ndarray
  class_names: tuple
  skipped: tuple


def scan_folder(root: str) -> FolderScan:
  """Finds the images under `root` (recursively) and their labels.

  Files are chosen by extension (IMAGE_EXTENSIONS, any case); others are
  ignored. When every image lies inside a first-level subfolder, the sorted
  subfolder names are the classes; otherwise the images are unlabelled. Image
  files that do not start like an image are skipped, counted and reported in
  one warning line. The result is cached for the process (until the
  folder's own modification time changes).

  Raises:
    ValueError: `root` is not a folder, or holds no readable image.
  """
  if not root or not os.path.isdir(root):
    raise ValueError(f'image folder {root!r} (data.data_dir) is not a '
                     'directory')
  root = os.path.abspath(root)
  return _scan_folder(root, os.stat(root).st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _scan_folder(root: str, mtime_ns: int) -> FolderScan:
  del mtime_ns  # Part of the cache key only.
  found = []
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    dirnames.sort()
    for name in sorted(filenames):
      if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
        found.append(os.path.join(dirpath, name))
  if not found:
    raise ValueError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) found in '
                     f'{root!r}')
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    ok = list(pool.map(_looks_like_image, found, chunksize=256))
  good = [p for p, k in zip(found, ok) if k]
  skipped = tuple(p for p, k in zip(found, ok) if not k)
  if skipped:
    logging.warning(
        'Skipping %d unreadable image file(s) of %d in %s, e.g. %s',
        len(skipped), len(found), root, ', '.join(skipped[:3]))
  if not good:
    raise ValueError(f'none of the {len(found)} image files in {root!r} is '
                     'a readable image')
  tops = [os.path.relpath(p, root).split(os.sep) for p in good]
  labelled = all(len(t) > 1 for t in tops)
  if labelled:
    class_names = tuple(sorted({t[0] for t in tops}))
    index = {c: i for i, c in enumerate(class_names)}
    labels = np.array([index[t[0]] for t in tops], np.int32)
  else:
    class_names = ()
    labels = np.full(len(good), -1, np.int32)
  paths = np.array(good, dtype=object)
  paths.setflags(write=False)
  labels.setflags(write=False)
  return FolderScan(paths, labels, class_names, skipped)


class _FolderSource(_Source):
  """A folder of image files, read by tf.data."""

  def __init__(self, config: Any):
    self.config = config
    self.scan = scan_folder(str(config.data.data_dir))
    self.split_indices = dict(zip(
        ('train', 'eval'),
        _single_split_indices(config, len(self.scan.paths), 'image folders')))
    self.crop_on_host = _crop_on_host(config, auto_host=True)
    self.num_classes = len(self.scan.class_names)
    self._fixed_shape = None
    self._cached = None

  def fixed_shape(self) -> tuple[int, int]:
    """(H, W) of device-crop train images: resize_to, or the first image's."""
    if self._fixed_shape is None:
      r = int(self.config.data.resize_to)
      if r > 0:
        self._fixed_shape = (r, r)
      else:
        tf = _tf()
        for path in self.scan.paths[:20]:
          try:
            shape = _decode_full(tf, tf.io.read_file(path)).shape
          except tf.errors.OpError:
            continue
          self._fixed_shape = (int(shape[0]), int(shape[1]))
          break
        else:
          raise ValueError(
              f'cannot decode the first images of {self.config.data.data_dir!r}'
              " to find their size: set data.resize_to for data.crop='device'")
    return self._fixed_shape

  def counts(self, split: str, process_count: int) -> list[int]:
    n = len(self.split_indices[split])
    return [len(range(p, n, process_count)) for p in range(process_count)]

  def info(self) -> DatasetInfo:
    s = int(self.config.image_size)
    shape = ((2, s, s, 3) if self.crop_on_host
             else self.fixed_shape() + (3,))
    return DatasetInfo(
        num_train_examples=len(self.split_indices['train']),
        num_eval_examples=len(self.split_indices['eval']),
        num_classes=self.num_classes, train_image_shape=shape,
        crop_on_host=self.crop_on_host)

  def _local(self, split, process_index, process_count):
    """This process's (paths as bytes objects, labels) of `split`."""
    idx = process_part(self.split_indices[split], process_index, process_count)
    paths = np.empty(len(idx), dtype=object)
    paths[:] = [os.fsencode(p) for p in self.scan.paths[idx]]
    return paths, self.scan.labels[idx]

  def train_iterator(self, batch, start_step, process_index, process_count):
    if not self.crop_on_host and self.config.data.cache:
      return self._cached_arrays().train_iterator(
          batch, start_step, process_index, process_count)
    tf = _tf()
    fns = _ElementFns(self.config)
    spe = _steps_per_epoch(len(self.split_indices['train']), process_count,
                           batch)
    paths, labels = self._local('train', process_index, process_count)
    order = _EpochOrder(_seed(self.config), process_index, len(paths), batch,
                        spe)
    spares = _num_spares(batch)
    width = batch + spares
    contents = None
    if self.config.data.cache:
      contents = _read_all(paths)

    def generate():
      step = start_step
      while True:
        idx = order.step_indices(step, spares)
        keys = (step * process_count + process_index) * width + np.arange(
            width)
        files = contents[idx] if contents is not None else paths[idx]
        yield files, labels[idx], keys
        step += 1

    if self.crop_on_host:
      load = lambda c, k: fns.host_views(tf, c, k)
    else:
      h, w = self.fixed_shape()
      load = lambda c, k: fns.fixed_size(tf, c, h, w)
    read = ((lambda f: f) if contents is not None else tf.io.read_file)
    # A fixed parallelism: AUTOTUNE would start anew for every step's dataset.
    parallel = int(self.config.data.num_parallel_calls)
    parallel = parallel if parallel > 0 else (os.cpu_count() or 1)

    def one_step(files, ys, keys):
      ds = tf.data.Dataset.from_tensor_slices((files, ys, keys))
      ds = ds.map(_plain(lambda f, y, k: {'image': load(read(f), k),
                                          'label': y}),
                  num_parallel_calls=parallel, deterministic=True)
      ds = ds.ignore_errors(log_warning=True).take(batch)
      return ds.batch(batch, drop_remainder=True)

    ds = tf.data.Dataset.from_generator(generate, output_signature=(
        tf.TensorSpec((width,), tf.string), tf.TensorSpec((width,), tf.int32),
        tf.TensorSpec((width,), tf.int64)))
    # Up to _STEPS_IN_FLIGHT steps decode at once; each gives one batch, so
    # the batches come out in step order.
    ds = ds.interleave(_plain(one_step), cycle_length=_STEPS_IN_FLIGHT,
                       block_length=1, num_parallel_calls=_STEPS_IN_FLIGHT,
                       deterministic=True)
    ds = ds.prefetch(max(int(self.config.data.prefetch), 1))
    return ds.as_numpy_iterator()

  def _cached_arrays(self) -> '_ArraySource':
    if self._cached is None:
      self._cached = _DecodedFolder(self)
    return self._cached

  def eval_dataset(self, split, batch, process_index, process_count, view):
    """tf.data of this process's part of `split`, decoded by `view`, batched."""
    tf = _tf()
    paths, labels = self._local(split, process_index, process_count)
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    ds = ds.map(_plain(lambda f, y: (view(tf, tf.io.read_file(f)), y)),
                num_parallel_calls=_parallel(self.config), deterministic=True)
    return ds.ignore_errors(log_warning=True).batch(batch)

  def eval_iterator(self, split, batch, process_index, process_count):
    num_batches = _eval_batches(self.counts(split, process_count), batch)
    fns = _ElementFns(self.config)
    ds = self.eval_dataset(split, batch, process_index, process_count,
                           fns.eval_view)
    return _padded_eval(ds, num_batches, batch, int(self.config.image_size))


def _read_all(paths: np.ndarray) -> np.ndarray:
  """The bytes of every file, as an object array (for data.cache)."""
  def read(p):
    with open(p, 'rb') as f:
      return f.read()
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    out = np.empty(len(paths), dtype=object)
    out[:] = list(pool.map(read, paths, chunksize=256))
  return out


def _padded_eval(ds, num_batches: int, batch: int,
                 size: int) -> Iterator[dict[str, np.ndarray]]:
  """Batches of a tf.data (image, label) stream, padded to `num_batches`."""
  yielded = 0
  for images, labels in ds.as_numpy_iterator():
    if yielded == num_batches:
      break
    yield _pad_batch({'image': images, 'label': labels.astype(np.int32),
                      'mask': np.ones(len(labels), bool)}, batch)
    yielded += 1
  empty = {'image': np.zeros((batch, size, size, 3), np.uint8),
           'label': np.zeros((batch,), np.int32),
           'mask': np.zeros((batch,), bool)}
  for _ in range(num_batches - yielded):
    yield empty


class _DecodedFolder(_ArraySource):
  """A folder decoded once into memory (data.cache with the device crop)."""

  def __init__(self, folder: _FolderSource):
    self.folder = folder
    h, w = folder.fixed_shape()
    super().__init__(folder.config, folder.num_classes, (h, w, 3))
    self._parts = {}

  def counts(self, split, process_count):
    return self.folder.counts(split, process_count)

  def local(self, split, process_index, process_count):
    key = (split, process_index, process_count)
    if key not in self._parts:
      h, w = self.folder.fixed_shape()
      fns = _ElementFns(self.config)
      ds = self.folder.eval_dataset(
          split, 1024, process_index, process_count,
          lambda tf, c: fns.fixed_size(tf, c, h, w))
      images, labels = [np.zeros((0, h, w, 3), np.uint8)], [
          np.zeros((0,), np.int32)]
      for x, y in ds.as_numpy_iterator():
        images.append(x)
        labels.append(y.astype(np.int32))
      self._parts[key] = _ArrayData(np.concatenate(images),
                                    np.concatenate(labels), self.num_classes)
    return self._parts[key]


# ------------------------------------------------------------------- TFDS


def _tfds_builder(name: str, data_dir: str, download: bool):
  """The prepared TFDS builder of `name`, offline unless `download`.

  Raises:
    ValueError: unknown dataset, or not prepared and download is False.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  _tf()
  where = data_dir or '~/tensorflow_datasets (the TFDS default)'
  if ':' in name and not download:
    # Community datasets (huggingface:..., etc.) are looked up online.
    raise ValueError(f'TFDS dataset {name!r} is a community dataset: set '
                     'data.download = True to fetch it (needs internet)')
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except Exception as e:  # pylint: disable=broad-except
    # DatasetNotFoundError, bad config or version: all "no such dataset".
    first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
    raise ValueError(f'TFDS dataset {name!r} cannot be loaded from {where}: '
                     f'{first}') from e
  if not builder.is_prepared():
    if not download:
      raise ValueError(
          f'TFDS dataset {name!r} is not prepared in {where}; set '
          'data.download = True to download and prepare it (needs internet), '
          f'or prepare it first: tfds build {name} --data_dir=DIR')
    try:
      builder.download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except
      first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
      raise ValueError(f'preparing TFDS dataset {name!r} in {where} failed: '
                       f'{first}') from e
  if 'image' not in builder.info.features:
    raise ValueError(f'TFDS dataset {name!r} has no "image" feature (features:'
                     f' {", ".join(builder.info.features.keys())})')
  return builder


def _tfds_num_examples(builder, split) -> int:
  """Examples in `split` (a split name, slice or even split)."""
  try:
    return int(builder.info.splits[split].num_examples)
  except (KeyError, ValueError, TypeError, AttributeError):
    # No split metadata (e.g. tfds.testing.mock_data): count the records.
    tf = _tf()
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={'image': tfds.decode.SkipDecoding()})
    n = int(ds.cardinality())
    if n < 0:
      n = int(ds.reduce(tf.constant(0, tf.int64), _plain(lambda c, _: c + 1)))
    return n


def _labelled_part(split: str, known: Sequence[str]) -> str:
  """`split` without its unlabelled parts: 'train+unlabelled' -> 'train'.

  A split of unlabelled examples only (STL-10's 'unlabelled') gives 'train'.
  """
  unlabelled = ('unlabelled', 'unlabeled')
  parts = [p for p in split.split('+')
           if p.strip().split('[')[0] not in unlabelled]
  if parts:
    return '+'.join(parts)
  return 'train' if not known or 'train' in known else split


class _TfdsSplits:
  """The splits of a TFDS dataset and their per-process parts.

  'pretrain' is read by the train iterator, 'train' (its labelled part) and
  'eval' by the eval iterators.
  """

  def __init__(self, config: Any, builder):
    d = config.data
    self.builder = builder
    known = list(builder.info.splits.keys())
    for what, split in (('train_split', d.train_split),
                        ('eval_split', d.eval_split)):
      for base in (p.strip().split('[')[0] for p in split.split('+')):
        if split and known and base not in known:
          raise ValueError(f'TFDS dataset {d.name!r} has no split {base!r} '
                           f'(data.{what}); its splits are {", ".join(known)}')
    if not d.train_split:
      raise ValueError('data.train_split must name a split')
    if d.eval_split:
      pretrain, evaluation = d.train_split, d.eval_split
    else:
      if '[' in d.train_split:
        raise ValueError(
            f'data.train_split={d.train_split!r} is a slice: with '
            "data.eval_split = '' give a whole split (the last "
            'data.holdout_fraction of it is held out), or set data.eval_split')
      n = _tfds_num_examples(builder, d.train_split)
      keep = n - int(round(float(d.holdout_fraction) * n))
      pretrain = f'{d.train_split}[:{keep}]'
      evaluation = f'{d.train_split}[{keep}:]'
    self.splits = {'pretrain': pretrain, 'eval': evaluation,
                   'train': _labelled_part(pretrain, known)}
    self._counts = {}

  def part(self, split: str, process_index: int, process_count: int):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    if process_count == 1:
      return self.splits[split]
    return tfds.even_splits(self.splits[split], n=process_count)[process_index]

  def counts(self, split: str, process_count: int) -> list[int]:
    key = (split, process_count)
    if key not in self._counts:
      self._counts[key] = [
          _tfds_num_examples(self.builder, self.part(split, p, process_count))
          for p in range(process_count)]
    return self._counts[key]


def _tfds_source(config: Any) -> _Source:
  d = config.data
  builder = _tfds_builder(str(d.name), str(d.data_dir), bool(d.download))
  splits = _TfdsSplits(config, builder)
  features = builder.info.features
  label = features['label'] if 'label' in features else None
  num_classes = int(getattr(label, 'num_classes', 0) or 0)
  shape = tuple(features['image'].shape)
  fixed = len(shape) == 3 and shape[0] is not None and shape[1] is not None
  crop_on_host = _crop_on_host(config, auto_host=not fixed)
  r = int(d.resize_to)
  if fixed:
    h, w = (r, r) if r > 0 else (shape[0], shape[1])
    largest = max(splits.counts('pretrain', 1)[0], splits.counts('eval', 1)[0])
    if largest * h * w * 3 <= _MAX_IN_MEMORY_BYTES:
      return _TfdsArraySource(config, builder, splits, num_classes, (h, w, 3))
  return _TfdsStreamSource(config, builder, splits, num_classes,
                           crop_on_host)


def _tfds_examples(builder, split, decode_image: bool):
  """tf.data of (image, label int32) of a split, in stored order."""
  tf = _tf()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  decoders = None if decode_image else {'image': tfds.decode.SkipDecoding()}
  ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders,
                          read_config=tfds.ReadConfig(try_autocache=False))
  return ds.map(_plain(_tfds_pair(tf, builder)),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)


def _tfds_pair(tf, builder):
  """Maps a TFDS example dict to (image, label int32; -1 when none)."""
  has_label = 'label' in builder.info.features

  def pair(ex):
    y = (tf.cast(ex['label'], tf.int32) if has_label
         else tf.constant(-1, tf.int32))
    return ex['image'], y
  return pair


class _TfdsArraySource(_ArraySource):
  """A fixed-size TFDS dataset that fits in memory: decoded once per process."""
  PRETRAIN = 'pretrain'

  def __init__(self, config, builder, splits: _TfdsSplits, num_classes: int,
               shape: tuple):
    super().__init__(config, num_classes, shape)
    self.builder = builder
    self.splits = splits

  def counts(self, split, process_count):
    return self.splits.counts(split, process_count)

  def local(self, split, process_index, process_count):
    part = self.splits.part(split, process_index, process_count)
    return _load_tfds_part(self.builder, str(part), part,
                           self.stored_shape[:2])


_TFDS_PARTS: dict = {}


def _load_tfds_part(builder, part_key: str, part,
                    shape: tuple) -> _ArrayData:
  """Decodes a TFDS split (part) into uint8 (N, H, W, 3); cached per process."""
  key = (builder.info.full_name, str(builder.data_dir), part_key, shape)
  if key in _TFDS_PARTS:
    return _TFDS_PARTS[key]
  tf = _tf()
  h, w = shape

  def fix(image, y):
    if image.shape[-1] == 1:
      image = tf.image.grayscale_to_rgb(image)
    image = image[..., :3]
    if (h, w) != tuple(builder.info.features['image'].shape[:2]):
      image = _to_uint8(tf, tf.image.resize(image, [h, w], method='bilinear',
                                            antialias=True))
    image.set_shape([h, w, 3])
    return tf.cast(image, tf.uint8), y

  ds = _tfds_examples(builder, part, decode_image=True)
  ds = ds.map(_plain(fix), num_parallel_calls=tf.data.AUTOTUNE).batch(1024)
  images, labels = [np.zeros((0, h, w, 3), np.uint8)], [np.zeros(0, np.int32)]
  for x, y in ds.as_numpy_iterator():
    images.append(x)
    labels.append(y)
  features = builder.info.features
  num_classes = int(getattr(features['label'], 'num_classes', 0) or 0) if (
      'label' in features) else 0
  data = _ArrayData(np.concatenate(images), np.concatenate(labels),
                    num_classes)
  if builder.is_prepared():  # Not under tfds.testing.mock_data.
    _TFDS_PARTS[key] = data
  return data


class _TfdsStreamSource(_Source):
  """A TFDS dataset streamed from its files (large or variable-size images)."""

  def __init__(self, config, builder, splits: _TfdsSplits, num_classes: int,
               crop_on_host: bool):
    self.config = config
    self.builder = builder
    self.splits = splits
    self.num_classes = num_classes
    self.crop_on_host = crop_on_host
    r = int(config.data.resize_to)
    shape = tuple(builder.info.features['image'].shape)
    if crop_on_host:
      self.fixed = None
    elif r > 0:
      self.fixed = (r, r)
    elif shape[0] is not None and shape[1] is not None:
      self.fixed = (shape[0], shape[1])
    else:
      raise ValueError(
          f'TFDS dataset {config.data.name!r} has images of different sizes: '
          "use data.crop = 'host' (or 'auto'), or set data.resize_to for "
          "data.crop = 'device'")

  def info(self) -> DatasetInfo:
    s = int(self.config.image_size)
    shape = (2, s, s, 3) if self.crop_on_host else self.fixed + (3,)
    return DatasetInfo(
        num_train_examples=sum(self.splits.counts('pretrain', 1)),
        num_eval_examples=sum(self.splits.counts('eval', 1)),
        num_classes=self.num_classes, train_image_shape=shape,
        crop_on_host=self.crop_on_host)

  def _epoch(self, epoch: int, first_step: int, batch: int, spe: int,
             process_index: int, process_count: int):
    """tf.data of steps [first_step, spe) of one epoch, batched."""
    tf = _tf()
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    seed = _seed(self.config)
    # One 31-bit seed per (run seed, epoch, process).
    epoch_seed = int(np.random.default_rng(
        [seed, epoch, process_index]).integers(2**31 - 1))
    part = self.splits.part('pretrain', process_index, process_count)
    ds = self.builder.as_dataset(
        split=part, shuffle_files=True,
        decoders={'image': tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(shuffle_seed=epoch_seed,
                                    try_autocache=False))
    ds = ds.map(_plain(_tfds_pair(tf, self.builder)))
    buffer = max(int(self.config.data.shuffle_buffer), 1)
    ds = ds.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=False)
    ds = ds.take(spe * batch).enumerate().skip(first_step * batch)
    fns = _ElementFns(self.config)
    first_key = epoch * spe * batch

    def load(i, pair):
      contents, y = pair
      key = (first_key + i) * process_count + process_index
      if self.crop_on_host:
        image = fns.host_views(tf, contents, key)
      else:
        image = fns.fixed_size(tf, contents, *self.fixed)
      return {'image': image, 'label': y}

    ds = ds.map(_plain(load), num_parallel_calls=_parallel(self.config),
                deterministic=True)
    ds = ds.batch(batch, drop_remainder=True)
    return ds.prefetch(max(int(self.config.data.prefetch), 1))

  def train_iterator(self, batch, start_step, process_index, process_count):
    counts = self.splits.counts('pretrain', process_count)
    spe = _steps_per_epoch(sum(counts), process_count, batch)
    # The smallest part decides the steps of an epoch on every process.
    spe = min(spe, min(counts) // batch)

    def generate():
      epoch, first = divmod(start_step, spe)
      while True:
        ds = self._epoch(epoch, first, batch, spe, process_index,
                         process_count)
        yield from ds.as_numpy_iterator()
        epoch, first = epoch + 1, 0
    return generate()

  def eval_iterator(self, split, batch, process_index, process_count):
    tf = _tf()
    num_batches = _eval_batches(self.splits.counts(split, process_count), batch)
    fns = _ElementFns(self.config)
    part = self.splits.part(split, process_index, process_count)
    ds = _tfds_examples(self.builder, part, decode_image=False)
    ds = ds.map(_plain(lambda c, y: (fns.eval_view(tf, c), y)),
                num_parallel_calls=_parallel(self.config), deterministic=True)
    ds = ds.ignore_errors(log_warning=True).batch(batch)
    return _padded_eval(ds, num_batches, batch, int(self.config.image_size))
