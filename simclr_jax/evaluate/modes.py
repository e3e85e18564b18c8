"""The evaluation modes of `main.py`: linear evaluation, fine-tuning, export.

    python main.py --config=configs/cifar10.py --workdir=EVAL_DIR \\
        --config.mode=linear_eval --config.init_from=PRETRAIN_DIR

Each mode reads the encoder from a checkpoint of another workdir
(`config.init_from`; `config.init_step`, -1 for the latest), works in its own
`--workdir`, and behaves like pretraining there: a lock against a second run,
every config kept, checkpoints, resuming after kill -9 or SIGTERM, progress
and `metrics.jsonl`. A checkpoint of another model (other `config.model`) is
refused in one line.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax import checkpoint
from simclr_jax import config_lib
from simclr_jax import models
from simclr_jax import parallel
from simclr_jax import reporting
from simclr_jax import signals
from simclr_jax import workdir as workdir_lib
from simclr_jax.evaluate import features as features_lib
from simclr_jax.evaluate import linear

MODES = ('pretrain', 'linear_eval', 'finetune', 'export')


def _shapes(tree: Any) -> dict[str, tuple]:
  return {jax.tree_util.keystr(p): tuple(x.shape) for p, x in
          jax.tree_util.tree_flatten_with_path(tree)[0]}


def load_encoder(config: Any, mesh: jax.sharding.Mesh
                 ) -> tuple[Any, dict, int]:
  """The model of `config.model` with the variables of `config.init_from`.

  Returns:
    (model without probe, {'params', 'batch_stats'} replicated, step).

  Raises:
    config_lib.ConfigError: no such workdir or checkpoint, a damaged one, or
      a checkpoint of another model.
  """
  source = config.init_from
  if not source:
    raise config_lib.ConfigError(
        f'config.mode={config.mode!r} needs --config.init_from=WORKDIR (a '
        'pretraining run, or a workdir written by simclr_jax.import_tf)')
  step = None if config.init_step < 0 else int(config.init_step)
  try:
    variables, step = checkpoint.restore_variables(source, mesh, step)
  except FileNotFoundError as e:
    raise config_lib.ConfigError(str(e)) from e
  except checkpoint.DamagedCheckpoint as e:
    raise config_lib.ConfigError(
        f'the checkpoint of {source!r} cannot be read: '
        f'{str(e).splitlines()[0][:200]}') from e
  with config_lib.user_errors():
    model = models.create_model(config.model, num_classes=0)
  size = int(config.image_size)
  wanted = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                         train=False))
  kept = {}
  for collection in ('params', 'batch_stats'):
    have = variables.get(collection, {})
    kept[collection] = {k: have[k] for k in wanted.get(collection, {})
                        if k in have}
  have, want = _shapes(kept), _shapes(
      {c: wanted.get(c, {}) for c in ('params', 'batch_stats')})
  differ = sorted(k for k in have.keys() | want.keys()
                  if have.get(k) != want.get(k))
  if differ:
    raise config_lib.ConfigError(
        f'the checkpoint of {source!r} is of another model ({len(differ)} '
        f'arrays differ, e.g. {differ[0]}: {have.get(differ[0])} in the '
        f'checkpoint, {want.get(differ[0])} for config.model); set the '
        f'model.* fields of that run (see {os.path.join(source, "config.json")})')
  return model, kept, step


class Run:
  """The parts every mode shares: mesh, workdir lock, data, reporting."""

  def __init__(self, config: Any, workdir: str):
    from simclr_jax import data  # pylint: disable=g-import-not-at-top
    config_lib.validate(config, workdir)
    parallel.setup_cpu_devices(config.train.cpu_devices,
                               config.train.cpu_ynnpack_convs)
    parallel.maybe_initialize_distributed(config.distributed)
    with config_lib.user_errors():
      self.mesh = parallel.make_mesh(config.train.num_devices)
    self.config = config
    self.workdir = workdir
    self.is_chief = jax.process_index() == 0
    self.lock = workdir_lib.WorkdirLock(workdir)
    if self.is_chief:
      workdir_lib.prepare(workdir)
      self.lock.acquire()
    try:
      with config_lib.user_errors():
        self.source = data.make_source(config)
        self.info = self.source.info()
    except BaseException:
      self.lock.release()
      raise

  @classmethod
  def attach(cls, config: Any, workdir: str, mesh: jax.sharding.Mesh,
             source: Any, info: Any) -> 'Run':
    """A run inside another (the end of pretraining): no lock of its own."""
    run = cls.__new__(cls)
    run.config, run.workdir, run.mesh = config, workdir, mesh
    run.source, run.info = source, info
    run.is_chief = jax.process_index() == 0
    run.lock = None
    return run

  def local_batch(self, global_batch: int) -> int:
    config_lib.check_batch(global_batch, self.mesh.size, jax.process_count())
    return global_batch // jax.process_count()

  def close(self) -> None:
    if self.lock is not None:
      self.lock.release()


def _feature_dim(config: Any) -> int:
  m = config.model
  return models.feature_dim(m.depth, m.width_multiplier, m.base_width)


def _eval_batch(config: Any, mesh: jax.sharding.Mesh) -> int:
  n = mesh.size
  return -(-config.eval.batch_size // n) * n


def eval_local_batch(config: Any, mesh: jax.sharding.Mesh) -> int:
  """Per-process eval batch: eval.batch_size rounded up to the mesh size."""
  return _eval_batch(config, mesh) // jax.process_count()


# ------------------------------------------------------------------ export


def _write_npy(path: str, array: np.ndarray) -> None:
  tmp = f'{path}.tmp.{os.getpid()}.npy'
  np.save(tmp, array)
  os.replace(tmp, path)


def export(config: Any, workdir: str) -> dict[str, Any]:
  """Writes `h` (and `z` with export.include_z) of every image of the splits.

  Files in `workdir/export/` (one set per process, suffix `.pN` when there
  are several): `{split}_h.npy` float32 (N, C), `{split}_z.npy`,
  `{split}_labels.npy` int32 (N,), `{split}_index.npy` int64 (N,) (the
  example's position in the split's order: a folder's sorted file list
  after the holdout, a TFDS split's stored order), and for folders
  `{split}_paths.txt`. Each file is written atomically; a split already
  exported is skipped, so a killed export resumes.
  """
  run = Run(config, workdir)
  try:
    model, variables, step = load_encoder(config, run.mesh)
    splits = (('train', 'eval') if config.export.split == 'both'
              else (config.export.split,))
    out_dir = os.path.join(workdir, 'export')
    os.makedirs(out_dir, exist_ok=True)
    suffix = (f'.p{jax.process_index()}' if jax.process_count() > 1 else '')
    method = 'encode' if not config.export.include_z else None
    fn = features_lib.make_feature_fn(model, run.mesh, method=method)
    batch = _eval_batch(config, run.mesh) // jax.process_count()
    counts = {}
    if run.is_chief:
      workdir_lib.record_config(workdir, config, 0)
    for split in splits:
      h_path = os.path.join(out_dir, f'{split}_h{suffix}.npy')
      if os.path.exists(h_path):
        counts[split] = len(features_lib.RowFile(h_path))
        continue
      n_proc, p = jax.process_count(), jax.process_index()
      rows = run.source.counts(split, n_proc)[p]
      dim = _feature_dim(config)
      writers = {'labels': features_lib.RowWriter(
          os.path.join(out_dir, f'{split}_labels{suffix}.npy'), (rows,),
          np.int32)}
      if config.export.include_z:
        writers['z'] = features_lib.RowWriter(
            os.path.join(out_dir, f'{split}_z{suffix}.npy'),
            (rows, int(config.model.proj_out_dim)
             if config.model.num_proj_layers else dim), np.float32)
      writers['h'] = features_lib.RowWriter(h_path, (rows, dim), np.float32)
      progress = reporting.Progress(None, enabled=run.is_chief,
                                    label=f'export: {split} split, batch')
      for i, b in enumerate(run.source.eval_iterator(split, batch)):
        out = features_lib.local_rows(fn, variables, b, run.mesh)
        out['labels'] = out.pop('label')
        for name, writer in writers.items():
          writer.append(out[name])
        progress.update(i + 1)
      progress.close()
      index = p + n_proc * np.arange(rows, dtype=np.int64)
      _write_npy(os.path.join(out_dir, f'{split}_index{suffix}.npy'), index)
      paths = getattr(run.source, 'split_paths', None)
      if paths is not None:
        text = '\n'.join(str(x) for x in paths(split, p, n_proc)) + '\n'
        tmp = os.path.join(out_dir, f'.{split}_paths.{os.getpid()}')
        with open(tmp, 'w') as f:
          f.write(text)
        os.replace(tmp, os.path.join(out_dir, f'{split}_paths{suffix}.txt'))
      for name in [n for n in writers if n != 'h'] + ['h']:
        writers[name].close()  # h last: its presence marks the split done.
      counts[split] = rows
    writer = reporting.MetricsWriter(workdir)
    record = writer.write(step, {}, mode='export', init_from=config.init_from,
                          exported=counts, final=True)
    writer.close()
    if run.is_chief:
      print(f'simclr_jax: exported {", ".join(f"{n} {s}" for s, n in counts.items())}'
            f' examples to {out_dir}', flush=True)
    return record
  finally:
    run.close()


# ------------------------------------------------------------ linear eval


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
  batch = _eval_batch(run.config, run.mesh) // jax.process_count()
  rows = run.source.counts(split, jax.process_count())[jax.process_index()]
  # `rows` is an upper bound: images that fail to decode are left out.
  out_h = features_lib.RowWriter(path_h, (rows, _feature_dim(run.config)),
                                 np.float32, fewer_ok=True)
  out_y = features_lib.RowWriter(path_y, (rows,), np.int32, fewer_ok=True)
  progress = reporting.Progress(None, enabled=run.is_chief,
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


def run_steps(config: Any, state: Any, manager: Any,
              one_step: Callable[[Any, int], tuple[Any, dict]], *,
              total: int, schedule: Callable[[int], float],
              writer: reporting.MetricsWriter, progress: reporting.Progress,
              checkpoint_every: int) -> tuple[Any, bool]:
  """The loop of the supervised modes: steps state.step .. total - 1.

  `one_step(state, step) -> (state, metrics)` does one step. Logs every
  train.log_every_steps (and the last step), checkpoints every
  `checkpoint_every` and at the end, and stops cleanly on SIGTERM / Ctrl-C
  (saving first). Closes `progress` and `manager`.

  Returns:
    (state, preempted).
  """
  preempted = False
  with signals.StopRequests() as stop:
    start = int(state.step)
    for step in range(start, total):
      stop.step = step + 1
      try:
        state, metrics = one_step(state, step)
      except StopIteration:  # The input ended early: a stop was requested.
        if not stop.requested:
          raise
        if step > start and manager.latest_step() != step:
          checkpoint.save(manager, step, state, force=True)
        preempted = True
        break
      done = step + 1
      if done % config.train.log_every_steps == 0 or done == total or (
          stop.requested):
        scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
        scalars['learning_rate'] = float(schedule(step))
        writer.write(done, scalars)
        progress.update(done, scalars, force=True)
      else:
        progress.update(done)
      if done % checkpoint_every == 0 or stop.requested:
        checkpoint.save(manager, done, state, force=True)
      if stop.requested:
        preempted = True
        break
  progress.close()
  checkpoint.finish(manager, total, state, preempted)
  return state, preempted


def train_linear_head(run: Run, model: Any, variables: Any, *,
                      section: Any, workdir: str, features_folder: str,
                      label: str = 'linear eval') -> dict[str, float]:
  """Trains and scores a linear head on the frozen encoder (see `linear`).

  `section` holds epochs, batch_size, base_learning_rate, momentum,
  weight_decay, augment, checkpoint_every_steps. Resumes from
  `workdir/checkpoints`. Returns {'top1', 'top5', 'count'} on the 'eval'
  split, or {'preempted': True}.
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
  dim = _feature_dim(config)
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
  writer = reporting.MetricsWriter(workdir)
  progress = reporting.Progress(total, start, enabled=run.is_chief,
                                images_per_step=gbs, label=label)

  def one_step(state, step):
    batch = parallel.host_to_global(next(host), run.mesh)
    return step_fn(state, variables, batch['image'], batch['label'],
                   jax.random.fold_in(key, step))

  state, preempted = run_steps(
      config, state, manager, one_step, total=total, schedule=schedule,
      writer=writer, progress=progress,
      checkpoint_every=int(section.checkpoint_every_steps))
  if preempted:
    writer.write(int(state.step), {}, preempted=True)
    writer.close()
    return {'preempted': True}
  writer.close()
  return score_linear_head(run, model, variables, state)


def score_linear_head(run: Run, model: Any, variables: Any,
                      state: linear.HeadState) -> dict[str, float]:
  """Top-1 and top-5 accuracy of a head on the centre-cropped 'eval' split."""
  eval_step = linear.make_eval_step(model, run.mesh, inputs='images')
  batch = _eval_batch(run.config, run.mesh) // jax.process_count()
  totals = {'top1': 0, 'top5': 0, 'count': 0}
  progress = reporting.Progress(None, enabled=run.is_chief,
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


def linear_eval(config: Any, workdir: str) -> dict[str, Any]:
  """Linear evaluation of `config.init_from`'s encoder (see module `linear`).

  Returns the final record (also the last line of `workdir/metrics.jsonl`):
  {'linear_eval_top1', 'linear_eval_top5', 'eval_examples', ...}, or a
  record with 'preempted': True.
  """
  run = Run(config, workdir)
  try:
    model, variables, step = load_encoder(config, run.mesh)
    t0 = time.perf_counter()
    result = train_linear_head(
        run, model, variables, section=config.linear_eval, workdir=workdir,
        features_folder=os.path.join(workdir, 'features'))
    writer = reporting.MetricsWriter(workdir)
    if result.get('preempted'):
      if run.is_chief:
        print('simclr_jax: stopped by a signal; saved. Run the same command '
              'to resume.', flush=True)
      return writer.write(0, {}, preempted=True)
    record = writer.write(
        int(math.ceil(config.linear_eval.epochs)),
        {'linear_eval_top1': result['top1'],
         'linear_eval_top5': result['top5']},
        eval_examples=result['count'], init_from=config.init_from,
        init_step=step, seconds=round(time.perf_counter() - t0, 1),
        final=True)
    writer.close()
    if run.is_chief:
      print(f'simclr_jax: linear evaluation: top-1 {result["top1"]:.4f}, '
            f'top-5 {result["top5"]:.4f} on {result["count"]} examples',
            flush=True)
    return record
  finally:
    run.close()


def run_mode(config: Any, workdir: str) -> dict[str, Any]:
  """Runs `config.mode` (one of MODES)."""
  mode = config.mode
  if mode == 'pretrain':
    from simclr_jax import train  # pylint: disable=g-import-not-at-top
    return train.train_and_evaluate(config, workdir)
  if mode == 'linear_eval':
    return linear_eval(config, workdir)
  if mode == 'export':
    return export(config, workdir)
  if mode == 'finetune':
    from simclr_jax.evaluate import finetune  # pylint: disable=g-import-not-at-top
    return finetune.finetune(config, workdir)
  raise config_lib.ConfigError(f'mode must be one of {MODES}, got {mode!r}')

