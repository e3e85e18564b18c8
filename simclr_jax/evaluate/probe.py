"""A linear head on frozen features: cached once on disk, trained, scored.

The paper's linear evaluation (`--config.mode=linear_eval`) and the final
probe of pretraining both use `train_linear_head`: features of the train
split are computed once into a row file (`cache_features`; memory: one
batch), standardised with streamed statistics and read back batch by batch
in a seeded order per epoch; the head is trained with `runs.run_steps`
(checkpointed, stoppable) and scored top-1/top-5 on the centre-cropped
'eval' split (`score_linear_head`).
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterator

import jax
import numpy as np

from simclr_jax import checkpoint
from simclr_jax import config_lib
from simclr_jax import parallel
from simclr_jax import reporting
from simclr_jax.evaluate import features as features_lib
from simclr_jax.evaluate import linear
from simclr_jax.evaluate import runs as runs_lib
from simclr_jax.evaluate.runs import Run


def _feature_file_batches(path_h: str, path_y: str, seed: int,
                          local_batch: int, start_step: int, spe: int
                          ) -> Iterator[dict[str, np.ndarray]]:
  """Mini-batches of precomputed features read from disk, one permutation
  per epoch (memory: one batch, whatever the number of examples)."""
  from simclr_jax.data import order  # pylint: disable=g-import-not-at-top
  h = features_lib.RowFile(path_h)
  y = features_lib.RowFile(path_y)
  epoch_order = order.EpochOrder(seed, jax.process_index(), len(y),
                                 local_batch, spe)
  step = start_step
  while True:
    idx = epoch_order.step_indices(step)
    yield {'image': h.rows(idx), 'label': y.rows(idx)}
    step += 1


def _feature_stats(path_h: str) -> dict[str, np.ndarray]:
  """Per-feature mean and standard deviation of a features file, streamed.

  Over every process's rows (a sum over processes when there are several).
  """
  h = features_lib.RowFile(path_h)
  total = np.zeros(h.shape[1], np.float64)
  squares = np.zeros(h.shape[1], np.float64)
  for x in h.chunks():
    x = x.astype(np.float64)
    total += x.sum(0)
    squares += (x * x).sum(0)
  count = np.array(float(len(h)))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    total, squares, count = (
        np.sum(multihost_utils.process_allgather(v), 0)
        for v in (total, squares, count))
  mean = total / max(count, 1)
  std = np.sqrt(np.maximum(squares / max(count, 1) - mean * mean, 0)) + 1e-6
  return {'mean': mean.astype(np.float32), 'std': std.astype(np.float32)}


def cache_features(run: Run, model: Any, variables: Any, split: str,
                   folder: str) -> tuple[str, str, int]:
  """`h` and labels of this process's part of `split`, on disk, once.

  Written batch by batch (`features.write_rows`; renamed into place when
  complete), so host memory does not grow with the dataset (but for the
  labels, 4 bytes an example); an existing file is reused, so a resumed run
  does not compute them again.

  Returns:
    (features path, labels path, number of rows).
  """
  os.makedirs(folder, exist_ok=True)
  suffix = f'.p{jax.process_index()}' if jax.process_count() > 1 else ''
  path_h = os.path.join(folder, f'{split}_h{suffix}.npy')
  path_y = os.path.join(folder, f'{split}_labels{suffix}.npy')
  if os.path.exists(path_h) and os.path.exists(path_y):
    return path_h, path_y, len(features_lib.RowFile(path_y))
  fn = features_lib.make_feature_fn(model, run.mesh)
  batch = runs_lib.eval_batch(run.config, run.mesh) // jax.process_count()
  rows = run.source.counts(split, jax.process_count())[jax.process_index()]
  # `rows` is an upper bound: images that fail to decode are left out.
  out_h = features_lib.RowWriter(path_h, (rows, runs_lib.feature_dim(run.config)),
                                 np.float32, fewer_ok=True)
  out_y = features_lib.RowWriter(path_y, (rows,), np.int32, fewer_ok=True)
  progress = reporting.Progress(-(-rows // batch), enabled=run.is_chief,
                                label=f'features: {split} split, batch')
  for i, b in enumerate(run.source.eval_iterator(split, batch)):
    got = features_lib.local_rows(fn, variables, b, run.mesh)
    out_h.append(got['h'])
    out_y.append(got['label'])
    progress.update(i + 1)
  progress.close()
  out_y.close()
  out_h.close()  # Last: its presence marks the cache complete.
  return path_h, path_y, out_y.written


def train_linear_head(run: Run, model: Any, variables: Any, *,
                      section: Any, workdir: str, features_folder: str,
                      label: str = 'linear eval') -> dict[str, float]:
  """Trains and scores a linear head on the frozen encoder (see `linear`).

  `section` holds epochs, batch_size, base_learning_rate, momentum,
  weight_decay, augment, checkpoint_every_steps. Resumes from
  `workdir/checkpoints`. Returns {'top1', 'top5', 'count'} on the 'eval'
  split and 'steps' (the steps trained), or {'preempted': True}.
  """
  config = run.config
  num_classes = run.info.num_classes
  if num_classes == 0:
    raise config_lib.ConfigError(
        'linear evaluation needs labels: this data has none')
  gbs = int(section.batch_size)
  local = run.local_batch(gbs)
  stats = None
  if section.augment:
    num_examples = run.info.num_train_examples
  else:
    path_h, path_y, rows = cache_features(run, model, variables, 'train',
                                          features_folder)
    # The rows cached (images that fail to decode are left out); every
    # process takes as many steps as the one with the fewest.
    num_examples = parallel.min_over_processes(rows) * jax.process_count()
    stats = _feature_stats(path_h)
  counts = [num_examples // jax.process_count()] * jax.process_count()
  spe = max(min(counts) // local, 1)
  if num_examples < gbs:
    raise config_lib.ConfigError(
        f'{label}: batch_size={gbs} is larger than the training data '
        f'({num_examples} examples)')
  total = max(int(math.ceil(float(section.epochs) * spe)), 1)
  peak = float(section.base_learning_rate) * gbs / 256
  tx, schedule = linear.create_optimizer(
      peak, total, momentum=float(section.momentum),
      weight_decay=float(section.weight_decay))
  dim = runs_lib.feature_dim(config)
  state = linear.create_state(tx, dim, num_classes, run.mesh, stats)
  manager, state = checkpoint.resume_or_start(
      config, workdir, state, keep=2,
      save_every_steps=int(section.checkpoint_every_steps), total_steps=total)
  start = int(state.step)
  inputs = 'images' if section.augment else 'features'
  step_fn = linear.make_train_step(
      model, tx, run.mesh, inputs=inputs,
      spec=linear.crop_flip_spec(config) if section.augment else None)
  if section.augment:
    host = run.source.train_iterator(local, start)
  else:
    host = _feature_file_batches(path_h, path_y, config.seed, local, start,
                                 spe)
  key = parallel.replicate(jax.random.key(config.seed), run.mesh)
  writer, progress = run.reporters(total, start, gbs, label)

  def one_step(state, step):
    batch = parallel.host_to_global(next(host), run.mesh)
    return step_fn(state, variables, batch['image'], batch['label'],
                   jax.random.fold_in(key, step))

  state, stopped = runs_lib.run_steps(
      config, state, manager, one_step, total=total, schedule=schedule,
      writer=writer, progress=progress,
      checkpoint_every=int(section.checkpoint_every_steps))
  if stopped:
    return {'preempted': True}
  writer.close()
  return {**score_linear_head(run, model, variables, state), 'steps': total}


def score_linear_head(run: Run, model: Any, variables: Any,
                      state: linear.HeadState) -> dict[str, float]:
  """Top-1 and top-5 accuracy of a head on the centre-cropped 'eval' split."""
  eval_step = linear.make_eval_step(model, run.mesh, inputs='images')
  batch = runs_lib.eval_batch(run.config, run.mesh) // jax.process_count()
  totals = {'top1': 0, 'top5': 0, 'count': 0}
  rows = max(run.source.counts('eval', jax.process_count()))
  progress = reporting.Progress(-(-rows // batch), enabled=run.is_chief,
                                label='scoring: eval split, batch')
  for i, b in enumerate(run.source.eval_iterator('eval', batch)):
    g = parallel.host_to_global(b, run.mesh)
    got = jax.device_get(eval_step(state, variables, g['image'], g['label'],
                                   g['mask']))
    for k in totals:
      totals[k] += int(got[k])
    progress.update(i + 1)
  progress.close()
  if totals['count'] == 0:
    raise config_lib.ConfigError('no labelled evaluation example')
  return {'top1': totals['top1'] / totals['count'],
          'top5': totals['top5'] / totals['count'],
          'count': totals['count']}
