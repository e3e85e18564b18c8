"""The tf.data pipelines of the sources that decode or crop with TensorFlow.

* `train_views`: train batches built step by step from per-example views
  (TFDS records, or in-memory images cropped on the host).
* `FileBatches`: train batches of files in an `order.EpochOrder`, where a
  file that fails to decode is replaced deterministically.
* `ordered_steps`: the steps of data that can be read in any order
  (arrays, files), following an `order.EpochOrder`.
* `eval_batches`: a pass over (encoded image, label) examples in order.
* `collect`: such batches gathered into memory.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import tensorflow as tf

from simclr_jax import signals
from simclr_jax.data import failures as failures_lib
from simclr_jax.data import host_ops
from simclr_jax.data import order

# Train steps decoded concurrently.
STEPS_IN_FLIGHT = 4


def _parallel(config: Any) -> int:
  n = int(config.data.num_parallel_calls)
  return -1 if n <= 0 else n  # -1 is tf.data.AUTOTUNE.


def _step_parallel(config: Any) -> int:
  """Parallel decodes within one step's dataset: data.num_parallel_calls, or
  every core when it is <= 0. Fixed: AUTOTUNE would start anew for every
  step's dataset."""
  n = int(config.data.num_parallel_calls)
  return n if n > 0 else (os.cpu_count() or 1)


def train_views(steps: tf.data.Dataset, view: Callable, batch: int,
                config: Any) -> tf.data.Dataset:
  """Train batches from a dataset of whole steps, in step order.

  Args:
    steps: tf.data whose elements are the reads of one step each: (raw,
      label int32, key int64), each with a leading dimension `batch`; raw is
      whatever `view` takes (encoded images, paths, decoded images).
    view: (raw, key) -> uint8 image of one example, in TF ops; a failure
      stops the iterator (undecodable files are replaced before this, see
      `FileBatches`).
    batch: examples per batch.
    config: the run config (data.num_parallel_calls, data.prefetch).

  Returns:
    tf.data of {'image': uint8 (batch, ...), 'label': int32 (batch,)}.
  """
  parallel = _step_parallel(config)

  def one_step(raw, labels, keys):
    ds = tf.data.Dataset.from_tensor_slices((raw, labels, keys))
    ds = ds.map(host_ops.plain(lambda r, y, k: {'image': view(r, k),
                                                'label': y}),
                num_parallel_calls=parallel, deterministic=True)
    return ds.batch(batch, drop_remainder=True)

  # Up to STEPS_IN_FLIGHT steps decode at once; each gives one batch, so the
  # batches come out in step order.
  ds = steps.interleave(host_ops.plain(one_step), cycle_length=STEPS_IN_FLIGHT,
                        block_length=1, num_parallel_calls=STEPS_IN_FLIGHT,
                        deterministic=True)
  return ds.prefetch(max(int(config.data.prefetch), 1))


def _decoded_or_empty(candidates: tf.data.Dataset, view: Callable,
                      parallel: int) -> tf.data.Dataset:
  """One element: the (images, labels, positions) of the candidates that decode.

  `candidates`: (raw, label, key, position) of one step. Those whose
  `view(raw, key)` fails are left out; when none decodes the element is
  empty (a step always gives one element).
  """
  ds = candidates.map(host_ops.plain(lambda r, y, k, q: (view(r, k), y, q)),
                      num_parallel_calls=parallel, deterministic=True)
  shape = [0] + [d or 0 for d in ds.element_spec[0].shape.as_list()]
  empty = tf.data.Dataset.from_tensors(
      (tf.zeros(shape, tf.uint8), tf.zeros([0], tf.int32),
       tf.zeros([0], tf.int32)))
  return ds.ignore_errors().batch(1 << 20).concatenate(empty).take(1)


def overflow_key(step: int, position: int, num_local: int,
                 process_index: int, process_count: int) -> int:
  """Crop key of candidate `position` >= width of a step (negative, unique)."""
  return -1 - ((step * process_count + process_index) * num_local + position)


class FileBatches:
  """Train batches of files in which a file that fails to decode is replaced.

  The candidates of global step k are the positions q = 0, 1, ... of
  `epochs.step_indices(k, num_local - b)`: the b examples of the step, then
  the next examples of the same epoch's permutation (wrapping), each file
  once. The batch is the first b candidates that decode, in position order.
  Candidate q's crops use the key `order.step_keys(k, width)[q]` for q <
  width = b + spares (the candidates decoded in parallel by tf.data) and
  `overflow_key(k, q)` beyond (decoded one by one, only when more than the
  spares fail). So a batch is a function of (seed, step, process) and of
  which files decode, whatever was read before: a resumed run reads the
  batches it would have read, and no image appears twice in a batch.

  A file that fails is recorded in `failures` (named once in a warning) and
  not decoded again. If the first `failures_lib.GIVE_UP_AFTER` files tried
  all fail, or fewer than b files of the part decode, iterating raises
  `failures_lib.DataError` (one line). The iterator ends early when a stop
  is requested (`signals.stop_requested`), so a run waiting for its input
  still obeys SIGTERM and Ctrl-C.
  """

  def __init__(self, config: Any, epochs: order.EpochOrder, raw: np.ndarray,
               labels: np.ndarray, ids: np.ndarray, view: Callable,
               failures: failures_lib.DecodeFailures, start_step: int,
               process_index: int, process_count: int, what: str):
    """Args:
      config: the run config (data.num_parallel_calls, data.prefetch).
      epochs: this process's order.
      raw: (n,) object array of this process's files: paths or contents
        (bytes), what `view` takes.
      labels: int32 (n,).
      ids: int64 (n,), the index of each file in `failures`.
      view: (raw, key) -> uint8 image of one example, in TF ops.
      failures: the source's record of undecodable files.
      start_step: the first global step.
      process_index, process_count: this process, and how many there are.
      what: the data in messages ('the training images of /data').
    """
    self.config = config
    self.epochs = epochs
    self.raw, self.labels, self.ids = raw, labels, ids
    self.view = view
    self.failures = failures
    self.start_step = start_step
    self.p, self.n = process_index, process_count
    self.what = what
    self.batch = epochs.batch
    self.num_local = len(raw)
    self.spares = min(order.num_spares(self.batch),
                      self.num_local - self.batch)
    self.width = self.batch + self.spares
    self.decoded = 0  # Images decoded by this iterator (its first steps').
    self.failed = 0

  # --------------------------------------------------------------- helpers

  def _key(self, step: int, position: int) -> int:
    if position < self.width:
      return int(order.step_keys(step, self.width, self.p, self.n)[position])
    return overflow_key(step, position, self.num_local, self.p, self.n)

  def _decode_one(self, index: int, key: int) -> np.ndarray | None:
    """One file's view, decoded now; None if it fails."""
    try:
      return self.view(tf.constant(self.raw[index]),
                       tf.constant(key, tf.int64)).numpy()
    except tf.errors.OpError:
      return None

  def _candidates(self, epochs: order.EpochOrder, step: int) -> np.ndarray:
    """Local indices of every candidate of `step`, in position order."""
    return epochs.step_indices(step, self.num_local - self.batch)

  def _give_up(self, names: list[str]) -> None:
    if self.decoded == 0 and self.failed >= failures_lib.GIVE_UP_AFTER:
      raise failures_lib.DataError(
          f'none of the first {self.failed} images read from {self.what} can '
          f'be decoded ({failures_lib.examples(names, self.failed)}); the '
          'files are damaged or not images: check data.data_dir')

  # -------------------------------------------------------------- pipeline

  def _probe(self, epochs: order.EpochOrder) -> bool:
    """Decodes the first step's candidates until one decodes.

    Data where nothing decodes then ends in one line after a few files,
    before tf.data decodes whole steps of them. Returns False when a stop
    was requested.
    """
    names, bad = [], []
    for q, i in enumerate(self._candidates(epochs, self.start_step)):
      if signals.stop_requested():
        return False
      if self.failures.bad[self.ids[i]]:
        continue
      if self._decode_one(i, self._key(self.start_step, q)) is not None:
        self.failures.record(bad, 'replaced in its batch')
        return True
      bad.append(int(self.ids[i]))
      names.append(str(self.failures.names[self.ids[i]]))
      self.failed += 1
      self._give_up(names)
    raise failures_lib.nothing_decodes(self.num_local, self.what, names)

  def _pipeline(self) -> tf.data.Dataset:
    """tf.data of (images, labels, positions, step): one element per step.

    The images are the views of the step's first `width` candidates that
    decode (files known to fail are not read), in position order.
    """
    epochs = copy.copy(self.epochs)  # Its own permutation cache (a thread).
    width, ids, bad = self.width, self.ids, self.failures.bad
    positions = np.arange(width, dtype=np.int32)

    def generate():
      step = self.start_step
      while not signals.stop_requested():
        idx = epochs.step_indices(step, self.spares)
        keep = ~bad[ids[idx]]
        keys = order.step_keys(step, width, self.p, self.n)
        yield (self.raw[idx][keep], self.labels[idx][keep], keys[keep],
               positions[keep], np.int64(step))
        step += 1

    raw_spec = tf.TensorSpec((None,), tf.string)
    steps = tf.data.Dataset.from_generator(generate, output_signature=(
        raw_spec, tf.TensorSpec((None,), tf.int32),
        tf.TensorSpec((None,), tf.int64), tf.TensorSpec((None,), tf.int32),
        tf.TensorSpec((), tf.int64)))
    parallel = _step_parallel(self.config)
    view = self.view

    def one_step(raw, labels, keys, positions, step):
      ds = _decoded_or_empty(tf.data.Dataset.from_tensor_slices(
          (raw, labels, keys, positions)), view, parallel)
      return ds.map(host_ops.plain(lambda x, y, q: (x, y, q, step)))

    ds = steps.interleave(host_ops.plain(one_step),
                          cycle_length=STEPS_IN_FLIGHT, block_length=1,
                          num_parallel_calls=STEPS_IN_FLIGHT,
                          deterministic=True)
    return ds.prefetch(max(int(self.config.data.prefetch), 1))

  def _assemble(self, epochs: order.EpochOrder, step: int, images: np.ndarray,
                labels: np.ndarray, positions: np.ndarray
                ) -> dict[str, np.ndarray] | None:
    """The batch of `step` from its decoded candidates (more if needed)."""
    b = self.batch
    idx = self._candidates(epochs, step)
    got = set(positions.tolist())
    failed = [q for q in range(self.width) if q not in got]
    new = [int(self.ids[idx[q]]) for q in failed
           if not self.failures.bad[self.ids[idx[q]]]]
    self.failed += len(new)
    self.decoded += len(positions)
    self.failures.record(new, 'replaced in its batch')
    if len(positions) >= b:
      return {'image': images[:b], 'label': labels[:b].astype(np.int32)}
    extra_images, extra_labels = [], []
    for q in range(self.width, self.num_local):
      if signals.stop_requested():
        return None
      i = idx[q]
      if self.failures.bad[self.ids[i]]:
        continue
      image = self._decode_one(i, self._key(step, q))
      if image is None:
        self.failed += 1
        self.failures.record([int(self.ids[i])], 'replaced in its batch')
        self._give_up(self.failures.bad_names())
        continue
      self.decoded += 1
      extra_images.append(image)
      extra_labels.append(self.labels[i])
      if len(positions) + len(extra_images) == b:
        return {'image': np.concatenate([images, np.stack(extra_images)]),
                'label': np.concatenate(
                    [labels, np.array(extra_labels)]).astype(np.int32)}
    good = len(positions) + len(extra_images)
    raise failures_lib.DataError(
        f'only {good} of the {self.num_local} images of {self.what} can be '
        f'decoded, fewer than a batch of {b} '
        f'({self.failures.count} cannot: '
        f'{failures_lib.examples(self.failures.bad_names(), self.failures.count)})')

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    """{'image': uint8 (b, ...), 'label': int32 (b,)} of each step in turn."""
    epochs = copy.copy(self.epochs)
    if not self._probe(epochs):
      return
    step = self.start_step
    for images, labels, positions, got in self._pipeline().as_numpy_iterator():
      assert got == step, (got, step)
      batch = self._assemble(epochs, step, images, labels, positions)
      if batch is None:
        return
      yield batch
      step += 1
    if not signals.stop_requested():
      raise RuntimeError('the training input ended')


class SpareSteps:
  """Train batches of records read in an order with spares, for streams.

  Each element of `steps` holds the candidates of one step: its b records,
  then a few of the next ones of the same order (their keys are their own,
  so a spare is cropped as in its own step). The batch is the first b
  candidates whose view decodes, in order, so it depends only on (seed,
  step) and the data: a resumed run reads the batches it would have read.
  When fewer than b decode (more failures than spares in one step), those
  that do are repeated in order to fill it. Records that fail before the
  b-th that decodes are given, once each, to `on_failed`. A step where
  nothing decodes raises `failures_lib.DataError` (one line). The iterator
  ends early when a stop is requested (`signals.stop_requested`).
  """

  def __init__(self, steps: tf.data.Dataset, view: Callable, batch: int,
               config: Any, on_failed: Callable[[list[bytes]], None],
               what: str):
    """Args:
      steps: tf.data of (raw, label int32, key int64, name string), each with
        a leading dimension of the step's candidates.
      view: (raw, key) -> uint8 image of one example, in TF ops.
      batch: examples per batch.
      config: the run config (data.num_parallel_calls, data.prefetch).
      on_failed: gets the names (bytes) of candidates that failed.
      what: the data in messages.
    """
    self.steps, self.view, self.batch = steps, view, batch
    self.config, self.on_failed, self.what = config, on_failed, what
    self._told = set()

  def _pipeline(self) -> tf.data.Dataset:
    """(decoded images, labels, positions, all names) of each step."""
    parallel, view = _step_parallel(self.config), self.view

    def one_step(raw, labels, keys, names):
      positions = tf.range(tf.shape(raw)[0])
      ds = _decoded_or_empty(tf.data.Dataset.from_tensor_slices(
          (raw, labels, keys, positions)), view, parallel)
      return ds.map(host_ops.plain(lambda x, y, q: (x, y, q, names)))

    ds = self.steps.interleave(host_ops.plain(one_step),
                               cycle_length=STEPS_IN_FLIGHT, block_length=1,
                               num_parallel_calls=STEPS_IN_FLIGHT,
                               deterministic=True)
    return ds.prefetch(max(int(self.config.data.prefetch), 1))

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    b = self.batch
    for images, labels, positions, names in told_read_errors(
        self._pipeline().as_numpy_iterator(), self.what):
      if signals.stop_requested():
        return
      if not len(positions):
        raise failures_lib.DataError(
            f'none of the {len(names)} images of a training step of '
            f'{self.what} can be decoded '
            f'({failures_lib.examples([n.decode() for n in names], len(names))})')
      # Candidates skipped before the b-th that decoded (or all, if fewer).
      last = positions[b - 1] if len(positions) >= b else len(names) - 1
      failed = sorted(set(range(last + 1)) - set(positions.tolist()))
      new = [names[q] for q in failed if names[q] not in self._told]
      self._told.update(new)
      if new:
        self.on_failed(new)
      keep = np.arange(b) % len(positions)
      yield {'image': images[keep], 'label': labels[keep].astype(np.int32)}


def ordered_steps(epochs: order.EpochOrder, raw: np.ndarray,
                  labels: np.ndarray, start_step: int,
                  process_index: int, process_count: int) -> tf.data.Dataset:
  """The steps from `start_step` on of data read in an `EpochOrder`.

  Args:
    epochs: this process's order.
    raw: (N, ...) this process's examples: paths or encoded images as an
      object array of bytes, or uint8 (N, H, W, 3) decoded images.
    labels: int32 (N,).
    start_step: the first global step.
    process_index, process_count: this process, and how many there are.

  Returns:
    Infinite tf.data of steps (raw, label int32, key int64), each with a
    leading dimension epochs.batch, for `train_views`.
  """
  width = epochs.batch

  def generate():
    step = start_step
    while True:
      idx = epochs.step_indices(step)
      yield raw[idx], labels[idx], order.step_keys(step, width, process_index,
                                                   process_count)
      step += 1

  if raw.dtype == object:
    raw_spec = tf.TensorSpec((width,), tf.string)
  else:
    raw_spec = tf.TensorSpec((width,) + raw.shape[1:], tf.uint8)
  return tf.data.Dataset.from_generator(generate, output_signature=(
      raw_spec, tf.TensorSpec((width,), tf.int32),
      tf.TensorSpec((width,), tf.int64)))


def host_crops(config: Any, epochs: order.EpochOrder, images: np.ndarray,
               labels: np.ndarray, start_step: int, process_index: int,
               process_count: int) -> Iterator[dict[str, np.ndarray]]:
  """Train batches of host crops of uint8 (N, H, W, 3) images in memory.

  Yields {'image': uint8 (b, 2, S, S, 3), 'label': int32 (b,)}.
  """
  fns = host_ops.ElementFns(config)
  steps = ordered_steps(epochs, images, labels, start_step, process_index,
                        process_count)
  return train_views(steps, fns.host_views_decoded, epochs.batch,
                     config).as_numpy_iterator()


# Examples decoded in chunks of this many by eval_batches (see there).
EVAL_CHUNK = 256


# What reading a record file raises when the file is damaged (a checksum that
# fails, a record cut short) or a shard is missing.
READ_ERRORS = (tf.errors.DataLossError, tf.errors.NotFoundError)


def told_read_errors(items: Iterable, what: str) -> Iterator:
  """`items`, with a damaged record file raised as one line (DataError)."""
  it = iter(items)
  while True:
    try:
      item = next(it)
    except StopIteration:
      return
    except READ_ERRORS as e:
      raise failures_lib.unreadable_records(e, what) from None
    yield item


def eval_batches(
    examples: tf.data.Dataset, view: Callable, batch: int, config: Any,
    on_failed: Callable[[list[int]], None] | None = None,
    what: str = 'the data'
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Batches of views of (raw, label int32) examples, in order.

  Examples whose view fails are left out; `on_failed` (if given) gets the
  list of their indices (in `examples`) as they are found, once each. Yields
  (uint8 images (n, ...), int32 labels (n,)), n = batch but for the last.
  Reading `examples` is not inside the `ignore_errors` that leaves failed
  views out: examples are read EVAL_CHUNK at a time and each chunk decoded
  as its own dataset. A record that cannot be read (a damaged TFRecord file)
  then raises `failures_lib.DataError` (one line naming `what`) instead of
  being retried forever, which `ignore_errors` over a TFDS reader does.
  """
  parallel = _parallel(config)

  def decode_chunk(index, raw, label):
    ds = tf.data.Dataset.from_tensor_slices((index, raw, label))
    ds = ds.map(host_ops.plain(lambda i, r, y: (view(r), y, i)),
                num_parallel_calls=parallel, deterministic=True)
    return ds.ignore_errors()

  chunks = examples.enumerate().map(
      host_ops.plain(lambda i, ex: (i, ex[0], ex[1]))).batch(EVAL_CHUNK)
  # Two chunks at once, each at most EVAL_CHUNK elements: in order.
  ds = chunks.interleave(host_ops.plain(decode_chunk), cycle_length=2,
                         block_length=EVAL_CHUNK, num_parallel_calls=2,
                         deterministic=True)
  batches = told_read_errors(ds.batch(batch).as_numpy_iterator(), what)

  def generate():
    expected = 0
    for images, labels, index in batches:
      if on_failed is not None and index[-1] - expected + 1 > len(index):
        on_failed(sorted(set(range(expected, int(index[-1]))) -
                         set(index.tolist())))
      expected = int(index[-1]) + 1
      yield images, labels
    if on_failed is not None:
      n = int(examples.cardinality())
      if n > expected:
        on_failed(list(range(expected, n)))
  return generate()


def collect(batches: Iterable[tuple[np.ndarray, np.ndarray]], height: int,
            width: int) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 (N, height, width, 3), int32 (N,)) of (images, labels) batches."""
  images = [np.zeros((0, height, width, 3), np.uint8)]
  labels = [np.zeros((0,), np.int32)]
  for x, y in batches:
    images.append(x)
    labels.append(y.astype(np.int32))
  return np.concatenate(images), np.concatenate(labels)
