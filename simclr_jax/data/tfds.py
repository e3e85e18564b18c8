"""TFDS datasets as a data source: builders, splits, in memory or streamed.

Any TFDS dataset with an `image` feature, by name and split. A fixed-size
dataset whose largest split fits in memory (`MAX_IN_MEMORY_BYTES` per
process) is decoded once into memory (`TfdsArraySource`); others are
streamed from their files with per-epoch file and buffer shuffles seeded from
(seed, epoch, process), skipping the first records of an epoch before any
decoding to resume (`TfdsStreamSource`). Each process reads
`tfds.even_splits` of a split.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from absl import logging
import tensorflow as tf
import tensorflow_datasets as tfds

from simclr_jax.data import arrays
from simclr_jax.data import base
from simclr_jax.data import failures as failures_lib
from simclr_jax.data import host_ops
from simclr_jax.data import order
from simclr_jax.data import streams

# Fixed-size TFDS splits up to this size (per process) are read into memory.
MAX_IN_MEMORY_BYTES = 4 << 30
# Decoded images per batch when a split is read into memory.
_DECODE_BATCH = 1024


def _first_line(e: Exception) -> str:
  return str(e).strip().splitlines()[0] if str(e).strip() else repr(e)


@contextlib.contextmanager
def _quiet_tfds() -> Iterator[None]:
  """Hides TFDS's warnings (e.g. about an empty dataset folder) inside.

  Opening a builder that is not prepared logs warnings that would precede
  (and contradict) the one-line error that follows.
  """
  previous = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    yield
  finally:
    logging.set_verbosity(previous)


def _manual_advice(builder: tfds.core.DatasetBuilder, name: str,
                   data_dir: str) -> str:
  """How to prepare a dataset whose files TFDS cannot download."""
  root = data_dir or os.path.expanduser('~/tensorflow_datasets')
  manual = os.path.join(root, 'downloads', 'manual')
  what = ' '.join(str(builder.MANUAL_DOWNLOAD_INSTRUCTIONS).split())
  return (f'TFDS cannot download it: get its files by hand into {manual} '
          f'({what}), then prepare it once: tfds build {name} '
          f'--data_dir={root} --manual_dir={manual}')


def load_builder(name: str, data_dir: str,
                 download: bool) -> tfds.core.DatasetBuilder:
  """The prepared TFDS builder of `name`, offline unless `download`.

  Raises:
    ValueError: unknown dataset, or not prepared and download is False (or
      TFDS cannot download it: then how to prepare it by hand).
  """
  where = data_dir or '~/tensorflow_datasets (the TFDS default)'
  if ':' in name and not download:
    # Community datasets (huggingface:..., etc.) are looked up online.
    raise ValueError(f'TFDS dataset {name!r} is a community dataset: set '
                     'data.download = True to fetch it (needs internet)')
  try:
    with _quiet_tfds():
      builder = tfds.builder(name, data_dir=data_dir or None)
      prepared = builder.is_prepared()
  except Exception as e:  # pylint: disable=broad-except
    # DatasetNotFoundError, bad config or version: all "no such dataset".
    raise ValueError(f'TFDS dataset {name!r} cannot be loaded from {where}: '
                     f'{_first_line(e)}') from e
  manual = bool(getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None))
  if not prepared:
    if not download:
      if manual:
        raise ValueError(f'TFDS dataset {name!r} is not prepared in {where}; '
                         + _manual_advice(builder, name, data_dir))
      raise ValueError(
          f'TFDS dataset {name!r} is not prepared in {where}; set '
          'data.download = True to download and prepare it (needs internet), '
          f'or prepare it first: tfds build {name} --data_dir=DIR')
    try:
      builder.download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except
      advice = f'; {_manual_advice(builder, name, data_dir)}' if manual else ''
      raise ValueError(f'preparing TFDS dataset {name!r} in {where} failed: '
                       f'{_first_line(e)}{advice}') from e
  if 'image' not in builder.info.features:
    raise ValueError(f'TFDS dataset {name!r} has no "image" feature (features:'
                     f' {", ".join(builder.info.features.keys())})')
  return builder


def num_examples(builder: tfds.core.DatasetBuilder, split: Any) -> int:
  """Examples in `split` (a split name, slice or even split)."""
  try:
    return int(builder.info.splits[split].num_examples)
  except (KeyError, ValueError, TypeError, AttributeError):
    # No split metadata (e.g. tfds.testing.mock_data): count the records.
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={'image': tfds.decode.SkipDecoding()})
    n = int(ds.cardinality())
    if n < 0:
      n = int(ds.reduce(tf.constant(0, tf.int64),
                        host_ops.plain(lambda c, _: c + 1)))
    return n


def labelled_part(split: str, known: Sequence[str]) -> str:
  """`split` without its unlabelled parts: 'train+unlabelled' -> 'train'.

  A split of unlabelled examples only (STL-10's 'unlabelled') gives 'train'.
  """
  unlabelled = ('unlabelled', 'unlabeled')
  parts = [p for p in split.split('+')
           if p.strip().split('[')[0] not in unlabelled]
  if parts:
    return '+'.join(parts)
  return 'train' if not known or 'train' in known else split


class Splits:
  """The splits (base.SPLITS) of a TFDS dataset and their per-process parts."""

  def __init__(self, config: Any, builder: tfds.core.DatasetBuilder):
    d = config.data
    self.builder = builder
    known = list(builder.info.splits.keys())
    for what, split in (('train_split', d.train_split),
                        ('eval_split', d.eval_split)):
      for part in (p.strip().split('[')[0] for p in split.split('+')):
        if split and known and part not in known:
          raise ValueError(f'TFDS dataset {d.name!r} has no split {part!r} '
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
      n = num_examples(builder, d.train_split)
      keep = n - int(round(float(d.holdout_fraction) * n))
      pretrain = f'{d.train_split}[:{keep}]'
      evaluation = f'{d.train_split}[{keep}:]'
    self.splits = {'pretrain': pretrain, 'eval': evaluation,
                   'train': labelled_part(pretrain, known)}
    self._counts = {}

  def part(self, split: str, process_index: int, process_count: int) -> Any:
    """This process's part of `split`, for `builder.as_dataset`."""
    if process_count == 1:
      return self.splits[split]
    return tfds.even_splits(self.splits[split], n=process_count)[process_index]

  def offset(self, split: str, process_index: int, process_count: int) -> int:
    """Position in `split` of the first example of this process's part."""
    return sum(self.counts(split, process_count)[:process_index])

  def record_name(self, split: str, position: int) -> str:
    """A record by its position in `split`, for messages and the list."""
    return (f'tfds {self.builder.name} split {self.splits[split]!r} record '
            f'{position}')

  def counts(self, split: str, process_count: int) -> list[int]:
    """Examples of `split` on each of `process_count` processes."""
    key = (split, process_count)
    if key not in self._counts:
      self._counts[key] = [
          num_examples(self.builder, self.part(split, p, process_count))
          for p in range(process_count)]
    return self._counts[key]


def _pair_fn(builder: tfds.core.DatasetBuilder, with_id: bool = False
             ) -> Callable:
  """Maps a TFDS example dict to (image, label int32; -1 when none).

  `with_id`: (image, label, tfds_id), the record's name in its file.
  """
  has_label = 'label' in builder.info.features

  def pair(ex):
    y = (tf.cast(ex['label'], tf.int32) if has_label
         else tf.constant(-1, tf.int32))
    return (ex['image'], y, ex['tfds_id']) if with_id else (ex['image'], y)
  return pair


def examples(builder: tfds.core.DatasetBuilder, split: Any,
             decode_image: bool) -> tf.data.Dataset:
  """tf.data of (image, label int32) of a split, in stored order.

  The image is uint8 (H, W, C) when `decode_image`, else the encoded bytes.
  """
  decoders = None if decode_image else {'image': tfds.decode.SkipDecoding()}
  ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders,
                          read_config=tfds.ReadConfig(try_autocache=False))
  return ds.map(host_ops.plain(_pair_fn(builder)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def make_source(config: Any) -> base.DataSource:
  """The TFDS source of `config.data`: in memory when it fits, else streamed."""
  d = config.data
  builder = load_builder(str(d.name), str(d.data_dir), bool(d.download))
  splits = Splits(config, builder)
  features = builder.info.features
  label = features['label'] if 'label' in features else None
  num_classes = int(getattr(label, 'num_classes', 0) or 0)
  shape = tuple(features['image'].shape)
  fixed = len(shape) == 3 and shape[0] is not None and shape[1] is not None
  on_host = base.crop_on_host(config, auto_host=not fixed)
  r = int(d.resize_to)
  if fixed:
    h, w = (r, r) if r > 0 else (shape[0], shape[1])
    largest = max(splits.counts('pretrain', 1)[0], splits.counts('eval', 1)[0])
    if largest * h * w * 3 <= MAX_IN_MEMORY_BYTES:
      return TfdsArraySource(config, splits, num_classes, (h, w, 3))
  return TfdsStreamSource(config, splits, num_classes, on_host)


def _record_failed(splits: Splits, failed_parts: dict, config: Any,
                   split: str, process_index: int, process_count: int,
                   failed: list[int]) -> None:
  """Keeps the local positions of a pass's undecodable records; tells them."""
  key = (split, process_index, process_count)
  known = set(failed_parts.get(key, []))
  failed_parts[key] = sorted(known | set(failed))
  first = splits.offset(split, process_index, process_count)
  failures_lib.undecodable(  # Each told once, however many passes.
      [splits.record_name(split, first + i) for i in failed if i not in known],
      f'left out of the {split!r} split',
      config.data.on_undecodable == 'stop')


def _kept(splits: Splits, failed_parts: dict, split: str, process_index: int,
          process_count: int) -> np.ndarray:
  """Positions in `split` of a process's records minus those that failed."""
  n = splits.counts(split, process_count)[process_index]
  local = np.delete(np.arange(n, dtype=np.int64),
                    failed_parts.get((split, process_index, process_count),
                                     []))
  return splits.offset(split, process_index, process_count) + local


class TfdsArraySource(arrays.ArraySource):
  """A fixed-size TFDS dataset that fits in memory: decoded once per process."""

  def __init__(self, config: Any, splits: Splits, num_classes: int,
               image_shape: tuple):
    super().__init__(config, num_classes, image_shape)
    self.splits = splits
    self._parts = {}
    self._failed = {}  # (split, process, count) -> local positions left out.

  def counts(self, split, process_count):
    """The records of `split` (those that fail to decode included)."""
    return self.splits.counts(split, process_count)

  def local(self, split, process_index, process_count):
    key = (split, process_index, process_count)
    if key not in self._parts:
      self._parts[key] = self._decode(*key)
    return self._parts[key]

  def kept_index(self, split: str, process_index: int,
                 process_count: int) -> np.ndarray:
    """int64 positions in `split` of this process's examples that decode."""
    return _kept(self.splits, self._failed, split, process_index,
                 process_count)

  def _decode(self, split: str, process_index: int,
              process_count: int) -> arrays.ArrayData:
    """Decodes this process's part of a split into uint8 (N, H, W, 3).

    Records whose image fails to decode are left out and told
    (`failures_lib.undecodable`: listed and counted, or data.on_undecodable
    = 'stop' ends the run naming the first).
    """
    builder = self.splits.builder
    part = self.splits.part(split, process_index, process_count)
    h, w, _ = self.image_shape
    stored = tuple(builder.info.features['image'].shape[:2])

    def view(contents):
      image = host_ops.decode_full(contents)
      if (h, w) != stored:
        image = host_ops.resize_to_shape(image, h, w)
      image.set_shape([h, w, 3])
      return image

    failed = []
    batches = streams.eval_batches(
        examples(builder, part, False), view, _DECODE_BATCH, self.config,
        failed.extend, f'TFDS dataset {builder.name!r} split {part!r}')
    data = arrays.ArrayData(*streams.collect(batches, h, w))
    _record_failed(self.splits, self._failed, self.config, split,
                   process_index, process_count, failed)
    return data


class TfdsStreamSource(base.DataSource):
  """A TFDS dataset streamed from its files (large or variable-size images)."""

  def __init__(self, config: Any, splits: Splits, num_classes: int,
               crop_on_host: bool):
    super().__init__(config, num_classes=num_classes,
                     crop_on_host=crop_on_host)
    self.splits = splits
    self.builder = splits.builder
    self._failed = {}  # (split, process, count) -> local positions left out.
    r = int(config.data.resize_to)
    shape = tuple(self.builder.info.features['image'].shape)
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

  def counts(self, split, process_count):
    """The records of `split` (those that fail to decode included)."""
    return self.splits.counts(split, process_count)

  def kept_index(self, split: str, process_index: int,
                 process_count: int) -> np.ndarray:
    """int64 positions in `split` of the rows of the last pass over it."""
    return _kept(self.splits, self._failed, split, process_index,
                 process_count)

  def _train_shape(self):
    return self.fixed + (3,)

  def _epoch_steps(self, epoch: int, first_step: int, batch: int, spe: int,
                   process_index: int, process_count: int) -> tf.data.Dataset:
    """The steps [first_step, spe) of one epoch, for streams.SpareSteps.

    Each step's candidates are its `batch` records and the next
    `order.num_spares(batch)` ones of the epoch's order (fewer at its end):
    (contents, label, key, tfds_id) with a leading dimension of their number.
    """
    seed = base.config_seed(self.config)
    # One 31-bit seed per (run seed, epoch, process).
    epoch_seed = int(np.random.default_rng(
        [seed, epoch, process_index]).integers(2**31 - 1))
    part = self.splits.part('pretrain', process_index, process_count)
    ds = self.builder.as_dataset(
        split=part, shuffle_files=True,
        decoders={'image': tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(shuffle_seed=epoch_seed,
                                    try_autocache=False, add_tfds_id=True))
    ds = ds.map(host_ops.plain(_pair_fn(self.builder, with_id=True)))
    buffer = max(int(self.config.data.shuffle_buffer), 1)
    ds = ds.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=False)
    spares = order.num_spares(batch)
    ds = ds.take(spe * batch + spares).enumerate().skip(first_step * batch)
    first_key = epoch * spe * batch

    def keyed(i, example):
      contents, y, name = example
      return contents, y, (first_key + i) * process_count + process_index, name

    ds = ds.map(host_ops.plain(keyed))
    windows = ds.window(batch + spares, shift=batch).take(spe - first_step)
    return windows.flat_map(host_ops.plain(
        lambda *w: tf.data.Dataset.zip(w).batch(batch + spares)))

  def _train_batches(self, batch, start_step, process_index, process_count):
    spe = order.steps_per_epoch(self.splits.counts('pretrain', process_count),
                                batch)
    stop = self.config.data.on_undecodable == 'stop'
    name = self.builder.name

    def failed(ids):
      failures_lib.undecodable(
          [f'tfds {name} record {i.decode(errors="replace")}' for i in ids],
          'replaced in its batch', stop)

    def generate():
      fns = host_ops.ElementFns(self.config)
      if self.crop_on_host:
        view = fns.host_views
      else:
        view = lambda contents, key: fns.fixed_size(contents, *self.fixed)
      epoch, first = divmod(start_step, spe)
      while True:
        steps = self._epoch_steps(epoch, first, batch, spe, process_index,
                                  process_count)
        yield from streams.SpareSteps(steps, view, batch, self.config, failed,
                                      f'TFDS dataset {name!r}')
        epoch, first = epoch + 1, 0
    return generate()

  def _eval_batches(self, split, batch, process_index, process_count):
    fns = host_ops.ElementFns(self.config)
    part = self.splits.part(split, process_index, process_count)
    failed = lambda local: _record_failed(
        self.splits, self._failed, self.config, split, process_index,
        process_count, local)
    return streams.eval_batches(
        examples(self.builder, part, False), fns.eval_view, batch, self.config,
        failed, f'TFDS dataset {self.builder.name!r} split {part!r}')
