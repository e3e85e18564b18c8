"""Image files as a data source: a folder of images, or any list of files.

`FileSource` reads encoded image files by path with tf.data: per-epoch
permutations for training, decoded per step (or read or decoded once with
data.cache), and one ordered pass for evaluation. `FolderSource` is a
`FileSource` of the files that `scan.scan_folder` finds.

Decode failures: a file that fails to decode during training is replaced
deterministically by the next one of its epoch's order that decodes
(`streams.FileBatches`); one that fails during evaluation is left out; each
is named once in a warning line. With data.cache and the device crop, every
file is decoded once up front and those that fail are left out of the
source (one summary line), so the counts are those of the images used.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Any, Callable, Iterator

import numpy as np
import tensorflow as tf

from absl import logging

from simclr_jax.data import arrays
from simclr_jax.data import base
from simclr_jax.data import failures as failures_lib
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
  """Encoded image files with labels, in one split (and a holdout) or two.

  A subclass only calls `__init__` with the files. The host crops unless
  data.crop is 'device'; then train images have one size (data.resize_to,
  or that of the first image that decodes) and data.cache decodes every file
  once into memory, leaving out (and summing up in one warning line) those
  that fail, so that the counts are those of the images used; with the host
  crop, data.cache keeps the files' bytes in memory.

  Files that fail to decode while training are replaced deterministically
  (`streams.FileBatches`), and while evaluating left out; both are named
  once, in `self.failures`.
  """

  def __init__(self, config: Any, paths: np.ndarray, labels: np.ndarray,
               num_classes: int, what: str, num_eval: int = 0):
    """Files and labels of a source.

    Args:
      config: the run config.
      paths: (N,) object array of file paths (str).
      labels: int32 (N,), -1 for unlabelled examples.
      num_classes: 0 when unlabelled.
      what: the source in error messages, plural ('image folders').
      num_eval: when > 0, the last num_eval files are the evaluation split
        and nothing is held out of the others (data.eval_dir); when 0,
        data.holdout_fraction of the files is held out for evaluation.
    """
    super().__init__(config, num_classes=num_classes,
                     crop_on_host=base.crop_on_host(config, auto_host=True))
    self.paths, self.labels = paths, labels
    self.failures = failures_lib.DecodeFailures(paths, self._stop())
    self._fixed_shape = None
    self._decoded = None
    self._check_some_decode()
    if config.data.cache and not self.crop_on_host:
      num_eval = self._decode_all(num_eval)
    if num_eval:
      n = len(self.paths)
      kept = np.arange(n - num_eval, dtype=np.int64)
      self.split_indices = {'pretrain': kept, 'train': kept,
                            'eval': np.arange(n - num_eval, n, dtype=np.int64)}
    else:
      self.split_indices = base.single_split(config, len(self.paths), what)

  def _decode_all(self, num_eval: int) -> int:
    """Decodes every file once (data.cache, device crop); keeps those that do.

    Returns the number of evaluation files kept.
    """
    h, w, _ = self._train_shape()
    fns = host_ops.ElementFns(self.config)
    failed = []
    examples = tf.data.Dataset.from_tensor_slices(
        (_encoded_paths(self.paths), self.labels))
    batches = streams.eval_batches(
        examples, lambda path: fns.fixed_size(tf.io.read_file(path), h, w),
        _DECODE_BATCH, self.config, failed.extend)
    images, _ = streams.collect(batches, h, w)
    n = len(self.paths)
    ok = np.ones(n, bool)
    ok[failed] = False
    if failed:
      names = [str(p) for p in self.paths[failed]]
      if not ok.any():
        raise failures_lib.nothing_decodes(n, self._where(), names)
      if self._stop():
        raise failures_lib.stop_error(names)
      where = failures_lib.list_files(names, 'left out (data.cache)')
      logging.warning('%d of the %d images of %s cannot be decoded and are '
                      'left out%s: %s', len(failed), n, self._where(), where,
                      failures_lib.examples(names, len(names)))
    num_eval = int(ok[n - num_eval:].sum()) if num_eval else 0
    self.paths, self.labels = self.paths[ok], self.labels[ok]
    self.failures = failures_lib.DecodeFailures(self.paths, self._stop())
    self._decoded = _DecodedFiles(self, images)
    return num_eval

  def _check_some_decode(self) -> None:
    """Fails early, in one line, when the first files tried all fail.

    Up to failures_lib.GIVE_UP_AFTER files, in a fixed random order, until
    one decodes (usually the first): data of which nothing decodes is
    refused before a model is built (the train iterator checks its own
    part again).
    """
    fns = host_ops.ElementFns(self.config)
    if self.crop_on_host:
      view = lambda contents: fns.host_views(contents, 0)
    else:
      h, w, _ = self._train_shape()
      view = lambda contents: fns.fixed_size(contents, h, w)
    perm = np.random.default_rng(0).permutation(len(self.paths))
    names = []
    for i in perm[:failures_lib.GIVE_UP_AFTER]:
      try:
        view(tf.io.read_file(self.paths[i]))
        return
      except tf.errors.OpError:
        names.append(str(self.paths[i]))
    total = len(self.paths)
    raise failures_lib.DataError(
        f'none of the {len(names)} images tried of the {total} of '
        f'{self._where()} can be decoded '
        f'({failures_lib.examples(names, len(names))}); the files are '
        'damaged or not images')

  def _stop(self) -> bool:
    return self.config.data.on_undecodable == 'stop'

  def _where(self) -> str:
    return repr(str(self.config.data.data_dir))

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
          names = [str(p) for p in self.paths[:20]]
          raise failures_lib.DataError(
              f'none of the first {len(names)} images of {self._where()} can '
              f'be decoded ({failures_lib.examples(names, len(names))}), so '
              "their size is unknown: set data.resize_to for data.crop='device'"
              ' if the others are intact')
    return self._fixed_shape

  def local_indices(self, split: str, process_index: int,
                    process_count: int) -> np.ndarray:
    """int64 indices (into self.paths) of this process's part of `split`."""
    return order.process_part(self.split_indices[split], process_index,
                              process_count)

  def kept_rows(self, split: str, process_index: int, process_count: int
                ) -> tuple[np.ndarray, list[str]]:
    """The rows a pass over this process's part of `split` yielded.

    Call after the pass: files that failed in it are left out. Returns
    (int64 positions in the split's order (n,), the n files' paths), in the
    order of the pass's rows.
    """
    idx = self.local_indices(split, process_index, process_count)
    positions = process_index + process_count * np.arange(len(idx),
                                                          dtype=np.int64)
    ok = ~self.failures.bad[idx]
    return positions[ok], [str(p) for p in self.paths[idx[ok]]]

  def local(self, split: str, process_index: int,
            process_count: int) -> tuple[np.ndarray, np.ndarray]:
    """This process's (paths: bytes object array (n,), int32 labels (n,))."""
    idx = self.local_indices(split, process_index, process_count)
    return _encoded_paths(self.paths[idx]), self.labels[idx]

  def decoded_batches(
      self, split: str, batch: int, process_index: int, process_count: int,
      view: Callable[[tf.Tensor], tf.Tensor]
  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images, int32 labels) batches of this process's part, decoded by `view`.

    `view` maps the encoded contents of a file to a uint8 image; files that
    fail are left out and named once (`self.failures`). A pass in which
    nothing decodes raises `failures_lib.DataError`.
    """
    idx = self.local_indices(split, process_index, process_count)
    every = idx
    idx = idx[~self.failures.bad[idx]]  # Known to fail: not read again.
    examples = tf.data.Dataset.from_tensor_slices(
        (_encoded_paths(self.paths[idx]), self.labels[idx]))

    def failed(local):
      self.failures.record(idx[local], f'left out of the {split!r} split')

    batches = streams.eval_batches(
        examples, lambda path: view(tf.io.read_file(path)), batch,
        self.config, failed)
    decoded = 0
    for images, labels in batches:
      decoded += len(labels)
      yield images, labels
    if len(every) and not decoded:
      names = [str(p) for p in self.paths[every]]
      raise failures_lib.nothing_decodes(
          len(every), f'the {split!r} split of {self._where()}', names)

  def _train_batches(self, batch, start_step, process_index, process_count):
    if self._decoded is not None:
      return self._decoded._train_batches(  # pylint: disable=protected-access
          batch, start_step, process_index, process_count)
    fns = host_ops.ElementFns(self.config)
    spe = order.steps_per_epoch(self.counts('pretrain', process_count), batch)
    idx = self.local_indices('pretrain', process_index, process_count)
    paths, labels = _encoded_paths(self.paths[idx]), self.labels[idx]
    epochs = order.EpochOrder(base.config_seed(self.config), process_index,
                              len(paths), batch, spe)
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
    return iter(streams.FileBatches(
        self.config, epochs, _read_all(paths) if cached else paths, labels,
        idx, view, self.failures, start_step, process_index, process_count,
        f'the training images of {self._where()}'))

  def _eval_batches(self, split, batch, process_index, process_count):
    fns = host_ops.ElementFns(self.config)
    return self.decoded_batches(split, batch, process_index, process_count,
                                fns.eval_view)


def _encoded_paths(paths: np.ndarray) -> np.ndarray:
  """File paths as an object array of bytes (for tf.data)."""
  out = np.empty(len(paths), dtype=object)
  out[:] = [os.fsencode(p) for p in paths]
  return out


class _DecodedFiles(arrays.ArraySource):
  """The files of a FileSource decoded once into memory (data.cache)."""

  def __init__(self, files: FileSource, images: np.ndarray):
    """`images`: uint8 (N, H, W, 3), of every file of `files` (in order)."""
    super().__init__(files.config, files.num_classes, images.shape[1:])
    self.files = files
    self.images = images

  def counts(self, split, process_count):
    return self.files.counts(split, process_count)

  def local(self, split, process_index, process_count):
    idx = self.files.local_indices(split, process_index, process_count)
    return arrays.ArrayData(self.images[idx], self.files.labels[idx])


class FolderSource(FileSource):
  """A folder of images (`scan.scan_folder`), searched recursively.

  With data.eval_dir, a second folder (with the same class subfolders) is
  the evaluation split, and all of data.data_dir is trained on.
  """

  def __init__(self, config: Any):
    self.scan = scan.scan_folder(str(config.data.data_dir))
    paths, labels = self.scan.paths, self.scan.labels
    num_eval = 0
    if config.data.eval_dir:
      paths, labels, num_eval = _with_eval_folder(
          self.scan, str(config.data.data_dir), str(config.data.eval_dir))
    super().__init__(config, paths, labels, len(self.scan.class_names),
                     'image folders', num_eval)


def _with_eval_folder(train: scan.FolderScan, data_dir: str,
                      eval_dir: str) -> tuple[np.ndarray, np.ndarray, int]:
  """The files of both folders: (paths, labels, number of eval files last).

  A file of data_dir that is also in eval_dir (the same real file) is left
  out of training, so the two splits never share an image.

  Raises:
    ValueError: eval_dir is not a folder of images with the same classes.
  """
  real_train = os.path.realpath(data_dir)
  real_eval = os.path.realpath(eval_dir)
  for a, b in ((real_eval, real_train), (real_train, real_eval)):
    if a == b or a.startswith(b.rstrip(os.sep) + os.sep):
      raise ValueError(
          f'data.eval_dir {eval_dir!r} and data.data_dir {data_dir!r} must be '
          'separate folders (neither inside the other)')
  ev = scan.scan_folder(eval_dir)
  if ev.class_names != train.class_names:
    raise ValueError(
        f'data.eval_dir {eval_dir!r} has the classes '
        f'{list(ev.class_names) or "none (unlabelled)"} but data.data_dir '
        f'{data_dir!r} has {list(train.class_names) or "none (unlabelled)"}: '
        'they must have the same class subfolders')
  eval_ids = set(scan.file_ids(ev.paths))
  shared = np.array([i in eval_ids for i in scan.file_ids(train.paths)], bool)
  if shared.all():
    raise ValueError(f'every image of data.data_dir {data_dir!r} is also in '
                     f'data.eval_dir {eval_dir!r}')
  if shared.any():
    logging.warning('%d image(s) of %s are also in data.eval_dir %s (the same '
                    'files): they are only evaluated on', int(shared.sum()),
                    data_dir, eval_dir)
  paths = np.concatenate([train.paths[~shared], ev.paths])
  labels = np.concatenate([train.labels[~shared], ev.labels]).astype(np.int32)
  return paths, labels, len(ev.paths)
