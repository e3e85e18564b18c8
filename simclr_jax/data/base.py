"""What every data source shares: `DatasetInfo` and the `DataSource` class.

NumPy only. `DataSource` gives every source the same public methods
(`info`, `train_iterator`, `eval_iterator`) with the same argument checks and
the same padded evaluation batches; a source writes how many examples each
process has (`counts`) and how it makes its train and eval batches.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Iterator

import numpy as np

from simclr_jax.data import order

# Images this small are not centre-cropped for evaluation.
NO_EVAL_CROP_MAX_SIDE = 32
# The splits of a source: 'pretrain' is read by the train iterator, 'train'
# (its labelled part) and 'eval' by the eval iterator.
SPLITS = ('pretrain', 'train', 'eval')

Batch = dict[str, np.ndarray]


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


def config_seed(config: Any) -> int:
  """`config.seed`, checked to be >= 0."""
  seed = int(config.seed)
  if seed < 0:
    raise ValueError(f'config.seed must be >= 0, got {seed}')
  return seed


def crop_on_host(config: Any, auto_host: bool) -> bool:
  """Whether the host crops (`data.crop`); `auto_host` decides for 'auto'."""
  crop = config.data.crop
  if crop == 'auto':
    return auto_host
  if crop in ('host', 'device'):
    return crop == 'host'
  raise ValueError(
      f"data.crop must be 'auto', 'device' or 'host', got {crop!r}")


def single_split(config: Any, num_examples: int,
                 what: str) -> dict[str, np.ndarray]:
  """Example indices of the SPLITS of a source with one split (a holdout).

  Args:
    config: the run config (uses data.eval_split, data.holdout_fraction).
    num_examples: examples of the source.
    what: the source in the error message, plural ('image folders').

  Returns:
    {'pretrain' and 'train': the kept indices, 'eval': the held-out ones},
    sorted int64 arrays.
  """
  if config.data.eval_split:
    raise ValueError(
        f'{what} have a single split: set data.eval_split = "" to hold out '
        f'data.holdout_fraction of it for evaluation (got data.eval_split='
        f'{config.data.eval_split!r})')
  kept, held = order.holdout_split(num_examples,
                                   config.data.holdout_fraction)
  return {'pretrain': kept, 'train': kept, 'eval': held}


def _process(process_index: int | None,
             process_count: int | None) -> tuple[int, int]:
  """(process_index, process_count), JAX's where not given, checked."""
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


def _pad_batch(batch: Batch, size: int) -> Batch:
  """Pads every array of `batch` with zeros to `size` rows (mask False)."""
  n = len(batch['label'])
  if n == size:
    return batch
  out = {}
  for k, v in batch.items():
    pad = np.zeros((size - n,) + v.shape[1:], v.dtype)
    out[k] = np.concatenate([v, pad])
  return out


def _padded(batches: Iterable[tuple[np.ndarray, np.ndarray]],
            num_batches: int, batch: int, size: int) -> Iterator[Batch]:
  """`num_batches` eval batches of (images, labels), the last ones padded."""
  yielded = 0
  for images, labels in batches:
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


class DataSource:
  """The images and labels of a run's `config.data`, by split and process.

  Made once per run by `simclr_jax.data.make_source`; a source keeps what it
  has read (a folder's file list, decoded arrays) for its later calls.

  A subclass writes:
    counts(split, process_count): examples of a split on each process.
    _train_batches(batch, start_step, process_index, process_count): the
      train batches (arguments checked).
    _eval_batches(split, batch, process_index, process_count): unpadded
      (images, labels) eval batches of this process's part, in order.
    _train_shape(): (H, W, 3) of train images when the device crops.
  `ArraySource` (in memory) and `FileSource` (image files) write all but
  `counts` for the common cases.
  """

  def __init__(self, config: Any, *, num_classes: int, crop_on_host: bool):
    self.config = config
    self.num_classes = num_classes
    self.crop_on_host = crop_on_host

  def counts(self, split: str, process_count: int) -> list[int]:
    """Examples of `split` (one of SPLITS) on each of `process_count`."""
    raise NotImplementedError

  def _train_shape(self) -> tuple[int, int, int]:
    raise NotImplementedError

  def _train_batches(self, batch: int, start_step: int, process_index: int,
                     process_count: int) -> Iterator[Batch]:
    raise NotImplementedError

  def _eval_batches(
      self, split: str, batch: int, process_index: int, process_count: int
  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    raise NotImplementedError

  def info(self) -> DatasetInfo:
    """Sizes, classes and train-batch image shape of `config.data`.

    Raises:
      ValueError: the data cannot be found or read (one clear message).
    """
    s = int(self.config.augment.output_size)  # The host's crops, if it crops.
    shape = (2, s, s, 3) if self.crop_on_host else tuple(self._train_shape())
    return DatasetInfo(
        num_train_examples=sum(self.counts('pretrain', 1)),
        num_eval_examples=sum(self.counts('eval', 1)),
        num_classes=self.num_classes, train_image_shape=shape,
        crop_on_host=self.crop_on_host)

  def train_iterator(
      self, local_batch_size: int, start_step: int = 0,
      process_index: int | None = None, process_count: int | None = None
  ) -> Iterator[Batch]:
    """Infinite iterator of this process's training batches.

    Args:
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
    return self._train_batches(int(local_batch_size), int(start_step), p, n)

  def eval_iterator(
      self, split: str, local_batch_size: int,
      process_index: int | None = None, process_count: int | None = None
  ) -> Iterator[Batch]:
    """One pass over this process's part of an evaluation split, in order.

    Args:
      split: 'train' (the labelled pretraining split, without the holdout) or
        'eval' (data.eval_split, or the holdout when data.eval_split is '').
      local_batch_size: examples per batch on this process.
      process_index, process_count: as for `train_iterator`.

    Yields:
      {'image': uint8 (local_batch_size, S, S, 3) centre-cropped
       (data.eval_crop_fraction; not for images of 32 px or less) and resized
       to S = config.image_size, 'label': int32 (local_batch_size,),
       'mask': bool (local_batch_size,), False on padding rows}. Every process
      yields the same number of batches; the last ones are padded.
    """
    _check_batch_size(local_batch_size)
    if split not in ('train', 'eval'):
      raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    p, n = _process(process_index, process_count)
    batch = int(local_batch_size)
    # Enough batches for the largest part.
    num_batches = -(-max(self.counts(split, n)) // batch)
    return _padded(self._eval_batches(split, batch, p, n), num_batches, batch,
                   int(self.config.image_size))
