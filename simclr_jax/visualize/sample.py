"""Which images the figures show: seeded, class-balanced samples of a split.

A class-folder data set (CIFAR-10 as PNG folders, ImageNet) is sorted by
class, so the first images of a split are of one or two classes.
`sample_split` draws every figure's images instead: each class in turn gives
one more of its images (in a seeded random order) until the sample is full,
so every class shows, with equal counts where the classes have enough.

How it reads a split (one process, `eval_iterator`'s preprocessing):

* image files (`data.folder.FileSource`): labels are known before decoding,
  so only the chosen files are decoded;
* arrays in memory (`data.arrays.ArraySource`: digits, small TFDS sets): one
  pass, keeping the chosen rows;
* streamed TFDS sets: one pass with a seeded reservoir per class of
  2 * ceil(limit / num_classes) images (so at most twice `limit` images in
  memory), then balanced as the others.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Iterable, Sequence

import numpy as np

Sample = dict[str, np.ndarray]


def balanced_positions(labels: np.ndarray, limit: int,
                       seed: Any = 0) -> np.ndarray:
  """Sorted int64 positions of min(limit, n) rows of `labels`, class-balanced.

  The classes (label values; -1, unlabelled, is one more) take turns in a
  seeded random order, each giving the next of its rows in a seeded random
  order: every class gets floor(limit / classes) or one more row where it
  has that many, the classes with more rows fill the rest, and when
  `limit` is smaller than the number of classes, `limit` classes chosen at
  random give one row each.

  Args:
    labels: int (n,).
    limit: rows wanted.
    seed: anything `np.random.default_rng` takes.
  """
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  classes = np.unique(labels)
  rng.shuffle(classes)
  rows, ranks, turns = [], [], []
  for turn, c in enumerate(classes):
    members = rng.permutation(np.flatnonzero(labels == c))
    rows.append(members)
    ranks.append(np.arange(len(members)))
    turns.append(np.full(len(members), turn))
  if not rows:
    return np.zeros((0,), np.int64)
  rows, ranks, turns = map(np.concatenate, (rows, ranks, turns))
  # Round robin: all first rows (in turn order), then all second rows, ...
  order = np.lexsort((turns, ranks))
  return np.sort(rows[order[:limit]]).astype(np.int64)


def pick_queries(labels: np.ndarray, n: int) -> np.ndarray:
  """`n` row indices, one per class in turn (classes in order of first
  appearance, each class's rows in order), so every class shows."""
  labels = np.asarray(labels)
  by_class = {}
  for i, y in enumerate(labels):
    by_class.setdefault(int(y), []).append(i)
  queues = list(by_class.values())
  out = []
  depth = 0
  while len(out) < min(n, len(labels)):
    for rows in queues:
      if depth < len(rows) and len(out) < n:
        out.append(rows[depth])
    depth += 1
  return np.asarray(out, np.int64)


def _empty() -> Sample:
  return {'image': np.zeros((0, 1, 1, 3), np.uint8),
          'label': np.zeros((0,), np.int32)}


def _concat(images: list, labels: list) -> Sample:
  if not labels:
    return _empty()
  return {'image': np.concatenate(images),
          'label': np.concatenate(labels).astype(np.int32)}


def _rows(batches: Iterable[dict]) -> Iterable[tuple[np.ndarray, np.ndarray]]:
  """(images, labels) of the unpadded rows of eval batches."""
  for b in batches:
    mask = np.asarray(b['mask'], bool)
    yield np.asarray(b['image'])[mask], np.asarray(b['label'], np.int32)[mask]


def _keep(batches: Iterable[dict], positions: np.ndarray | None) -> Sample:
  """The rows at sorted `positions` of a pass (every row when None)."""
  images, labels, start = [], [], 0
  for x, y in _rows(batches):
    if positions is None:
      sel = slice(None)
    else:
      sel = positions[(positions >= start) & (positions < start + len(y))]
      sel = sel - start
    images.append(x[sel])
    labels.append(y[sel])
    start += len(y)
    if positions is not None and (not len(positions) or
                                  start > positions[-1]):
      break
  return _concat(images, labels)


def reservoir(batches: Iterable[dict], limit: int, num_classes: int,
              seed: Any = 0) -> Sample:
  """A class-balanced sample of a stream of eval batches, in one pass.

  A seeded uniform sample of up to 2 * ceil(limit / num_classes) rows per
  label (room for the classes with more rows to fill in for those with
  fewer), cut to `limit` rows by `balanced_positions`.

  Returns:
    {'image', 'label'} as `sample_split`, rows in order of their label, then
    of the stream.
  """
  cap = 2 * math.ceil(limit / max(num_classes, 1))
  rng = np.random.default_rng(seed)
  kept, seen = {}, {}
  for x, y in _rows(batches):
    for image, label in zip(x, y):
      label = int(label)
      seen[label] = seen.get(label, 0) + 1
      rows = kept.setdefault(label, [])
      if len(rows) < cap:
        rows.append((seen[label], image))
      else:
        j = int(rng.integers(seen[label]))
        if j < cap:
          rows[j] = (seen[label], image)
  if not kept:
    return _empty()
  labels, images = [], []
  for label in sorted(kept):
    for _, image in sorted(kept[label], key=lambda r: r[0]):
      labels.append(label)
      images.append(image)
  got = {'image': np.stack(images), 'label': np.asarray(labels, np.int32)}
  pos = balanced_positions(got['label'], limit, seed)
  return {k: v[pos] for k, v in got.items()}


def sample_split(source: Any, split: str, batch: int, limit: int,
                 seed: Any = 0) -> Sample:
  """A class-balanced sample (`balanced_positions`) of `limit` images of a
  split, as the eval iterator gives them (one process).

  Args:
    source: a `data.DataSource`.
    split: 'train' or 'eval'.
    batch: rows per eval batch.
    limit: images wanted (all of the split when it has fewer).
    seed: the sample's seed.

  Returns:
    {'image': uint8 (n, S, S, 3), 'label': int32 (n,)}, n <= limit (fewer
    when chosen files fail to decode), rows in the split's order.
  """
  from simclr_jax import data  # pylint: disable=g-import-not-at-top
  if isinstance(source, data.ArraySource):
    labels = source.local(split, 0, 1).labels
    return _keep(source.eval_iterator(split, batch, 0, 1),
                 balanced_positions(labels, limit, seed))
  # Only sources that have imported TensorFlow are left.
  from simclr_jax.data import folder  # pylint: disable=g-import-not-at-top
  if isinstance(source, folder.FileSource):
    idx = source.split_indices[split]
    idx = idx[~source.failures.bad[idx]]
    subset = copy.copy(source)  # The same files; a split of the chosen ones.
    subset.split_indices = dict(source.split_indices)
    subset.split_indices[split] = idx[balanced_positions(
        source.labels[idx], limit, seed)]
    return _keep(subset.eval_iterator(split, batch, 0, 1), None)
  return reservoir(source.eval_iterator(split, batch, 0, 1), limit,
                   source.num_classes, seed)


def class_names(source: Any) -> tuple[str, ...]:
  """The names of a source's classes, by label: a folder's subfolders, a
  TFDS ClassLabel's names; () when it has none (the digits: 0-9)."""
  scan = getattr(source, 'scan', None)
  if scan is not None:
    return tuple(str(n) for n in scan.class_names)
  splits = getattr(source, 'splits', None)
  builder = getattr(splits, 'builder', None)
  if builder is not None:
    label = builder.info.features.get('label') if hasattr(
        builder.info.features, 'get') else None
    names = getattr(label, 'names', None)
    if names:
      return tuple(str(n) for n in names)
  return ()


def describe(labels: Sequence[int], noun: str = 'images') -> str:
  """'N images, C classes' (or 'unlabelled') of a sample's labels."""
  labels = np.asarray(labels)
  classes = len(np.unique(labels[labels >= 0]))
  what = (f'{classes} class{"es" if classes != 1 else ""}' if classes
          else 'unlabelled')
  return f'{len(labels)} {noun}, {what}'
