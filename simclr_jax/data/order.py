"""Which examples a process reads, and in which order. NumPy only.

The held-out evaluation part of a single-split source (`holdout_split`), a
process's part of a split (`process_part`), the steps of an epoch, and
`EpochOrder`: one seeded permutation per epoch and process, so that the batch
of global step k is a function of (seed, k, process) and starting at step k
costs nothing. Sources that read files also read a few spare examples per
step (`num_spares`), used in place of a file that fails to decode.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# Spare examples read per train batch from files, used when one fails.
MIN_SPARES = 2
SPARE_FRACTION = 1 / 64


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


def part_sizes(num_examples: int, process_count: int) -> list[int]:
  """Sizes of the `process_part`s of `num_examples` indices, by process."""
  return [len(range(p, num_examples, process_count))
          for p in range(process_count)]


def steps_per_epoch(counts: Sequence[int], local_batch_size: int) -> int:
  """Steps per epoch, equal on every process (the smallest part decides).

  Args:
    counts: examples of the training split on each process.
    local_batch_size: examples per batch on each process.

  Raises:
    ValueError: a local batch is larger than a process's part of the data.
  """
  num_examples, process_count = sum(counts), len(counts)
  spe = (num_examples // process_count) // local_batch_size
  if spe < 1:
    raise ValueError(
        f'the local batch of {local_batch_size} examples is larger than this '
        f"process's part of the training data ({num_examples} examples over "
        f'{process_count} process(es))')
  return min(spe, min(counts) // local_batch_size)


def num_spares(local_batch_size: int) -> int:
  """Spare examples read with each train batch of files."""
  return max(MIN_SPARES, int(math.ceil(local_batch_size * SPARE_FRACTION)))


def step_keys(step: int, width: int, process_index: int,
              process_count: int) -> np.ndarray:
  """int64 (width,) keys, unique over steps and processes, of one step's reads.

  A key seeds the random crops of one example (`host_ops.view_seeds`).
  """
  return (step * process_count + process_index) * width + np.arange(width)


class EpochOrder:
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
    """int64 (num_local,) permutation of epoch `epoch`."""
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
