"""Data of SimCLR pretraining and evaluation: TFDS, image folders, digits.

Make the source of a run once, then read it::

  source = data.make_source(config)   # config.data.source picks the class
  info = source.info()                # sizes, classes, train image shape
  batches = source.train_iterator(local_batch_size, start_step)
  for batch in source.eval_iterator('eval', local_batch_size): ...

Three sources (`config.data.source`):

* 'digits' (`arrays.DigitsSource`): scikit-learn's 1,797 handwritten 8x8
  digits, as uint8 RGB, upsampled once on the host to data.resize_to. Pure
  NumPy with the device crop: no TensorFlow.
* 'folder' (`folder.FolderSource`): a folder of images (JPEG, PNG, BMP, GIF,
  WebP), searched recursively. The first-level subfolders are the classes
  when every image is inside one; otherwise the images are unlabelled (-1).
* 'tfds' (`tfds.TfdsArraySource`, `tfds.TfdsStreamSource`): any TFDS dataset
  with an `image` feature, by name and split.

Where the random-resized crop happens (data.crop): on the device, the host
sends whole uint8 images (H, W, 3) of one size and the accelerator does all
augmentation (CIFAR, STL-10, digits); on the host, for large images of any
size (ImageNet, folders), the host samples two crop windows per image,
decodes only the rectangle spanning them (JPEG) and resizes each window to
augment.output_size (by default image_size): the batch holds (2, S, S, 3)
uint8 views. Evaluation batches are always image_size.

Determinism: the batch of global step k on process p is a function of
(config.seed, k, p), so resuming at step k gives the batches of an unbroken
run (`order.EpochOrder`, or per-epoch seeded shuffles for TFDS streams).

Modules: `base` (DatasetInfo, DataSource), `order` (which examples a process
reads, in which order), `arrays` (in memory, digits), `scan` (finding a
folder's images, each real file once), `folder` (image files), `failures`
(undecodable files: named once; `DataError` when nothing decodes), `tfds`,
`host_ops` (TensorFlow image ops), `streams` (tf.data pipelines, and the
deterministic replacement of files that fail to decode). Importing this package does not
import TensorFlow; `make_source` imports it for folders and TFDS.

Adding a data source: subclass one of

* `arrays.ArraySource` for decoded images of one size that fit in memory:
  write `counts(split, process_count)` (examples of 'pretrain', 'train' or
  'eval' on each process) and `local(split, process_index, process_count)`
  (this process's part as `arrays.ArrayData`), and call
  `super().__init__(config, num_classes, image_shape)`;
* `folder.FileSource` for encoded image files: only call
  `super().__init__(config, paths, labels, num_classes, what)`;
* `base.DataSource` for anything else (a stream): write `counts`,
  `_train_batches`, `_eval_batches` and `_train_shape`.

Then return it from `make_source` for a new value of config.data.source.
Every source gets the same `info`, `train_iterator` and `eval_iterator`.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from simclr_jax.data.arrays import ArrayData
from simclr_jax.data.arrays import ArraySource
from simclr_jax.data.arrays import resize_bilinear_uint8
from simclr_jax.data.base import DataSource
from simclr_jax.data.base import DatasetInfo
from simclr_jax.data.failures import DataError
from simclr_jax.data.order import EpochOrder
from simclr_jax.data.order import holdout_split
from simclr_jax.data.order import process_part
from simclr_jax.data.scan import FolderScan
from simclr_jax.data.scan import IMAGE_EXTENSIONS
from simclr_jax.data.scan import scan_folder

__all__ = [
    'ArrayData', 'ArraySource', 'DataError', 'DataSource', 'DatasetInfo',
    'EpochOrder',
    'FolderScan', 'IMAGE_EXTENSIONS', 'create_eval_iterator',
    'create_train_iterator', 'get_info', 'holdout_split', 'make_source',
    'process_part', 'resize_bilinear_uint8', 'scan_folder',
]


def make_source(config: Any) -> DataSource:
  """The data source of `config.data` (made once per run; it keeps its reads).

  Raises:
    ValueError: the data cannot be found or read, or config.data is wrong
      (one clear message).
  """
  # pylint: disable=g-import-not-at-top
  source = config.data.source
  if source == 'digits':
    from simclr_jax.data import arrays
    return arrays.DigitsSource(config)
  if source == 'folder':
    from simclr_jax.data import folder
    return folder.FolderSource(config)
  if source == 'tfds':
    from simclr_jax.data import tfds
    return tfds.make_source(config)
  raise ValueError(
      f"data.source must be 'tfds', 'folder' or 'digits', got {source!r}")


def get_info(config: Any) -> DatasetInfo:
  """`make_source(config).info()`: sizes, classes, train image shape."""
  return make_source(config).info()


def create_train_iterator(
    config: Any, *, local_batch_size: int, start_step: int = 0,
    process_index: int | None = None, process_count: int | None = None
) -> Iterator[dict[str, np.ndarray]]:
  """`make_source(config).train_iterator(...)`; see DataSource.train_iterator.

  Yields {'image': uint8 (local_batch_size, *info.train_image_shape),
  'label': int32 (local_batch_size,)}, the batches of global steps
  start_step, start_step + 1, ...
  """
  return make_source(config).train_iterator(local_batch_size, start_step,
                                            process_index, process_count)


def create_eval_iterator(
    config: Any, split: str, *, local_batch_size: int,
    process_index: int | None = None, process_count: int | None = None
) -> Iterator[dict[str, np.ndarray]]:
  """`make_source(config).eval_iterator(...)`; see DataSource.eval_iterator.

  Yields {'image': uint8 (local_batch_size, S, S, 3), 'label': int32
  (local_batch_size,), 'mask': bool (local_batch_size,)}, padded batches.
  """
  return make_source(config).eval_iterator(split, local_batch_size,
                                           process_index, process_count)
