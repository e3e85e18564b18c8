"""Image files as a data source: a folder of images, or any list of files.

`FileSource` reads encoded image files by path with tf.data: per-epoch
permutations for training, decoded per step (or read or decoded once with
data.cache), and one ordered pass for evaluation. `FolderSource` is a
`FileSource` of the files that `scan.scan_folder` finds.

Decode failures: a file that fails to decode during training is replaced
by a spare example of the same step (`order.num_spares` are read per batch);
one that fails during evaluation is left out. Both are logged.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Any, Callable, Iterator

import numpy as np
import tensorflow as tf

from simclr_jax.data import arrays
from simclr_jax.data import base
from simclr_jax.data import host_ops
from simclr_jax.data import order
from simclr_jax.data import scan
from simclr_jax.data import streams

# Decoded images per batch when data.cache decodes a split into memory.
_DECODE_BATCH = 1024


def _read_all(paths: np.ndarray) -> np.ndarray:
  """The bytes of every file, as an object array (for data.cache)."""
  def read(p):
    with open(p, 'rb') as f:
      return f.read()
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    out = np.empty(len(paths), dtype=object)
    out[:] = list(pool.map(read, paths, chunksize=256))
  return out


class FileSource(base.DataSource):
  """Encoded image files with labels, in one split (and a holdout).

  A subclass only calls `__init__` with the files. The host crops unless
  data.crop is 'device'; then train images have one size (data.resize_to,
  or that of the first image that decodes) and data.cache decodes each
  process's part once into memory; with the host crop, data.cache keeps
  the files' bytes in memory.
  """

  def __init__(self, config: Any, paths: np.ndarray, labels: np.ndarray,
               num_classes: int, what: str):
    """Files and labels of a source.

    Args:
      config: the run config.
      paths: (N,) object array of file paths (str).
      labels: int32 (N,), -1 for unlabelled examples.
      num_classes: 0 when unlabelled.
      what: the source in error messages, plural ('image folders').
    """
    self.paths = paths
    self.labels = labels
    self.split_indices = base.single_split(config, len(paths), what)
    super().__init__(config, num_classes=num_classes,
                     crop_on_host=base.crop_on_host(config, auto_host=True))
    self._fixed_shape = None
    self._decoded = None

  def counts(self, split, process_count):
    return order.part_sizes(len(self.split_indices[split]), process_count)

  def _train_shape(self):
    """(H, W, 3) of device-crop train images: resize_to or the first image's."""
    if self._fixed_shape is None:
      r = int(self.config.data.resize_to)
      if r > 0:
        self._fixed_shape = (r, r, 3)
      else:
        for path in self.paths[:20]:
          try:
            shape = host_ops.decode_full(tf.io.read_file(path)).shape
          except tf.errors.OpError:
            continue
          self._fixed_shape = (int(shape[0]), int(shape[1]), 3)
          break
        else:
          raise ValueError(
              f'cannot decode the first images of {self.config.data.data_dir!r}'
              " to find their size: set data.resize_to for data.crop='device'")
    return self._fixed_shape

  def local(self, split: str, process_index: int,
            process_count: int) -> tuple[np.ndarray, np.ndarray]:
    """This process's (paths: bytes object array (n,), int32 labels (n,))."""
    idx = order.process_part(self.split_indices[split], process_index,
                             process_count)
    paths = np.empty(len(idx), dtype=object)
    paths[:] = [os.fsencode(p) for p in self.paths[idx]]
    return paths, self.labels[idx]

  def decoded_batches(
      self, split: str, batch: int, process_index: int, process_count: int,
      view: Callable[[tf.Tensor], tf.Tensor]
  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images, int32 labels) batches of this process's part, decoded by `view`.

    `view` maps the encoded contents of a file to a uint8 image; files that
    fail are left out (and logged).
    """
    paths, labels = self.local(split, process_index, process_count)
    examples = tf.data.Dataset.from_tensor_slices((paths, labels))
    return streams.eval_batches(
        examples, lambda path: view(tf.io.read_file(path)), batch, self.config)

  def _train_batches(self, batch, start_step, process_index, process_count):
    if not self.crop_on_host and self.config.data.cache:
      if self._decoded is None:
        self._decoded = _DecodedFiles(self)
      return self._decoded._train_batches(  # pylint: disable=protected-access
          batch, start_step, process_index, process_count)
    fns = host_ops.ElementFns(self.config)
    spe = order.steps_per_epoch(self.counts('pretrain', process_count), batch)
    paths, labels = self.local('pretrain', process_index, process_count)
    epochs = order.EpochOrder(base.config_seed(self.config), process_index,
                              len(paths), batch, spe)
    spares = order.num_spares(batch)
    cached = bool(self.config.data.cache)
    if self.crop_on_host:
      load = fns.host_views
    else:
      h, w, _ = self._train_shape()
      load = lambda contents, key: fns.fixed_size(contents, h, w)
    if cached:
      view = load
    else:
      view = lambda path, key: load(tf.io.read_file(path), key)
    steps = streams.ordered_steps(
        epochs, _read_all(paths) if cached else paths, labels, start_step,
        spares, process_index, process_count)
    return streams.train_views(steps, view, batch, spares,
                               self.config).as_numpy_iterator()

  def _eval_batches(self, split, batch, process_index, process_count):
    fns = host_ops.ElementFns(self.config)
    return self.decoded_batches(split, batch, process_index, process_count,
                                fns.eval_view)


class _DecodedFiles(arrays.ArraySource):
  """The files of a FileSource decoded once into memory (data.cache)."""

  def __init__(self, files: FileSource):
    shape = files._train_shape()  # pylint: disable=protected-access
    super().__init__(files.config, files.num_classes, shape)
    self.files = files
    self._parts = {}

  def counts(self, split, process_count):
    return self.files.counts(split, process_count)

  def local(self, split, process_index, process_count):
    key = (split, process_index, process_count)
    if key not in self._parts:
      h, w, _ = self.image_shape
      fns = host_ops.ElementFns(self.config)
      batches = self.files.decoded_batches(
          split, _DECODE_BATCH, process_index, process_count,
          lambda contents: fns.fixed_size(contents, h, w))
      self._parts[key] = arrays.ArrayData(*streams.collect(batches, h, w))
    return self._parts[key]


class FolderSource(FileSource):
  """A folder of images (`scan.scan_folder`), searched recursively."""

  def __init__(self, config: Any):
    self.scan = scan.scan_folder(str(config.data.data_dir))
    super().__init__(config, self.scan.paths, self.scan.labels,
                     len(self.scan.class_names), 'image folders')
