"""The tf.data pipelines of the sources that decode or crop with TensorFlow.

* `train_views`: train batches built step by step from per-example views
  (files, TFDS records, or in-memory images cropped on the host); with
  spares, an example that fails to decode is replaced by a spare.
* `ordered_steps`: the steps of data that can be read in any order
  (arrays, files), following an `order.EpochOrder`.
* `eval_batches`: a pass over (encoded image, label) examples in order.
* `collect`: such batches gathered into memory.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import tensorflow as tf

from simclr_jax.data import host_ops
from simclr_jax.data import order

# Train steps decoded concurrently.
STEPS_IN_FLIGHT = 4


def _parallel(config: Any) -> int:
  n = int(config.data.num_parallel_calls)
  return -1 if n <= 0 else n  # -1 is tf.data.AUTOTUNE.


def train_views(steps: tf.data.Dataset, view: Callable, batch: int,
                spares: int, config: Any) -> tf.data.Dataset:
  """Train batches from a dataset of whole steps, in step order.

  Args:
    steps: tf.data whose elements are the reads of one step each: (raw,
      label int32, key int64), each with a leading dimension batch + spares;
      raw is whatever `view` takes (encoded images, paths, decoded images).
    view: (raw, key) -> uint8 image of one example, in TF ops.
    batch: examples per batch.
    spares: the reads after the first `batch` of a step: when > 0, examples
      whose view fails are dropped (and logged) and the spares fill in;
      when 0, a failure stops the iterator.
    config: the run config (data.num_parallel_calls, data.prefetch).

  Returns:
    tf.data of {'image': uint8 (batch, ...), 'label': int32 (batch,)}.
  """
  # A fixed parallelism: AUTOTUNE would start anew for every step's dataset.
  parallel = int(config.data.num_parallel_calls)
  parallel = parallel if parallel > 0 else (os.cpu_count() or 1)

  def one_step(raw, labels, keys):
    ds = tf.data.Dataset.from_tensor_slices((raw, labels, keys))
    ds = ds.map(host_ops.plain(lambda r, y, k: {'image': view(r, k),
                                                'label': y}),
                num_parallel_calls=parallel, deterministic=True)
    if spares:
      ds = ds.ignore_errors(log_warning=True).take(batch)
    return ds.batch(batch, drop_remainder=True)

  # Up to STEPS_IN_FLIGHT steps decode at once; each gives one batch, so the
  # batches come out in step order.
  ds = steps.interleave(host_ops.plain(one_step), cycle_length=STEPS_IN_FLIGHT,
                        block_length=1, num_parallel_calls=STEPS_IN_FLIGHT,
                        deterministic=True)
  return ds.prefetch(max(int(config.data.prefetch), 1))


def ordered_steps(epochs: order.EpochOrder, raw: np.ndarray,
                  labels: np.ndarray, start_step: int, spares: int,
                  process_index: int, process_count: int) -> tf.data.Dataset:
  """The steps from `start_step` on of data read in an `EpochOrder`.

  Args:
    epochs: this process's order.
    raw: (N, ...) this process's examples: paths or encoded images as an
      object array of bytes, or uint8 (N, H, W, 3) decoded images.
    labels: int32 (N,).
    start_step: the first global step.
    spares: examples read after each batch (`EpochOrder.step_indices`).
    process_index, process_count: this process, and how many there are.

  Returns:
    Infinite tf.data of steps (raw, label int32, key int64), each with a
    leading dimension epochs.batch + spares, for `train_views`.
  """
  width = epochs.batch + spares

  def generate():
    step = start_step
    while True:
      idx = epochs.step_indices(step, spares)
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
  steps = ordered_steps(epochs, images, labels, start_step, 0, process_index,
                        process_count)
  return train_views(steps, fns.host_views_decoded, epochs.batch, 0,
                     config).as_numpy_iterator()


def eval_batches(examples: tf.data.Dataset, view: Callable, batch: int,
                 config: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Batches of views of (raw, label int32) examples, in order.

  Examples whose view fails are dropped and logged. Yields (uint8 images
  (n, ...), int32 labels (n,)), n = batch but for the last batch.
  """
  ds = examples.map(host_ops.plain(lambda r, y: (view(r), y)),
                    num_parallel_calls=_parallel(config), deterministic=True)
  return ds.ignore_errors(log_warning=True).batch(batch).as_numpy_iterator()


def collect(batches: Iterable[tuple[np.ndarray, np.ndarray]], height: int,
            width: int) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 (N, height, width, 3), int32 (N,)) of (images, labels) batches."""
  images = [np.zeros((0, height, width, 3), np.uint8)]
  labels = [np.zeros((0,), np.int32)]
  for x, y in batches:
    images.append(x)
    labels.append(y.astype(np.int32))
  return np.concatenate(images), np.concatenate(labels)
