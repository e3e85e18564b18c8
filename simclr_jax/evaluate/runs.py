"""What every mode of `main.py` shares: the run, the encoder it reads, the step loop.

`Run` holds the mesh, the workdir lock and the data source of one mode's
run; `load_encoder` reads the encoder of another workdir
(`config.init_from`) and checks it is of `config.model`; `run_steps` is the
checkpointed, stoppable loop of the supervised modes (linear evaluation,
fine-tuning, the final probe of pretraining). Imported by `train.py` and the
modes; imports neither.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp

from simclr_jax import checkpoint
from simclr_jax import config_lib
from simclr_jax import models
from simclr_jax import parallel
from simclr_jax import reporting
from simclr_jax import signals
from simclr_jax import workdir as workdir_lib
from simclr_jax.data import failures


def _shapes(tree: Any) -> dict[str, tuple]:
  return {jax.tree_util.keystr(p): tuple(x.shape) for p, x in
          jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_shapes(have: Any, wanted: Any, source: str, expected: str,
                 hint: str) -> None:
  """Raises config_lib.ConfigError unless two trees hold the same arrays.

  Args:
    have: {'params', 'batch_stats'} read from the checkpoint of `source`.
    wanted: the same collections as a model's `init` (or `eval_shape`) has
      them; missing collections count as empty.
    source: the workdir read (for the message).
    expected: what `wanted` is of, e.g. 'config.model' (for the message).
    hint: what to do about it (the end of the one-line message).
  """
  have, want = (_shapes({c: t.get(c, {}) for c in ('params', 'batch_stats')})
                for t in (have, wanted))
  differ = sorted(k for k in have.keys() | want.keys()
                  if have.get(k) != want.get(k))
  if differ:
    raise config_lib.ConfigError(
        f'the checkpoint of {source!r} is of another model ({len(differ)} '
        f'arrays differ, e.g. {differ[0]}: {have.get(differ[0])} in the '
        f'checkpoint, {want.get(differ[0])} for {expected}); {hint}')


def read_checkpoint(source: str, mesh: jax.sharding.Mesh,
                    step: int | None = None) -> tuple[dict, int]:
  """The variables {'params', 'batch_stats'} of workdir `source`, replicated.

  `step` None: the latest checkpoint. Raises config_lib.ConfigError (one
  line) for a missing workdir or checkpoint and a damaged one.
  """
  try:
    return checkpoint.restore_variables(source, mesh, step)
  except FileNotFoundError as e:
    raise config_lib.ConfigError(str(e)) from e
  except checkpoint.DamagedCheckpoint as e:
    raise config_lib.ConfigError(
        f'the checkpoint of {source!r} cannot be read: '
        f'{str(e).splitlines()[0][:200]}') from e


def load_encoder(config: Any, mesh: jax.sharding.Mesh,
                 source: str | None = None, step: int | None = None
                 ) -> tuple[Any, dict, int]:
  """The model of `config.model` with the variables of a checkpoint.

  Args:
    config: the run config.
    mesh: where to place the variables (replicated).
    source: the workdir to read; None: `config.init_from` at
      `config.init_step`.
    step: with `source`, its checkpoint step; None: the latest.

  Returns:
    (model without probe, {'params', 'batch_stats'} replicated, step).

  Raises:
    config_lib.ConfigError: no such workdir or checkpoint, a damaged one, or
      a checkpoint of another model.
  """
  if source is None:
    source = config.init_from
    step = None if config.init_step < 0 else int(config.init_step)
  if not source:
    raise config_lib.ConfigError(
        f'config.mode={config.mode!r} needs --config.init_from=WORKDIR (a '
        'pretraining run, or a workdir written by simclr_jax.import_tf)')
  variables, step = read_checkpoint(source, mesh, step)
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
  check_shapes(kept, wanted, source, 'config.model',
               'set the model.* fields of that run (see '
               f'{os.path.join(source, "config.json")})')
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
    failures.list_in(workdir)  # Undecodable files: workdir/undecodable.txt.
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

  def reporters(self, total: int, start: int, global_batch: int, label: str
                ) -> tuple[reporting.MetricsWriter, reporting.Progress]:
    """`metrics.jsonl`'s writer and the progress line (chief only) of a
    loop over steps start .. total - 1 of `global_batch` images."""
    return (reporting.MetricsWriter(self.workdir),
            reporting.Progress(total, start, enabled=self.is_chief,
                               images_per_step=global_batch, label=label))

  def local_batch(self, global_batch: int) -> int:
    config_lib.check_batch(global_batch, self.mesh.size, jax.process_count())
    return global_batch // jax.process_count()

  def close(self) -> None:
    failures.report_total()
    if self.lock is not None:
      self.lock.release()


def feature_dim(config: Any) -> int:
  m = config.model
  return models.feature_dim(m.depth, m.width_multiplier, m.base_width)


def eval_batch(config: Any, mesh: jax.sharding.Mesh) -> int:
  n = mesh.size
  return -(-config.eval.batch_size // n) * n


def eval_local_batch(config: Any, mesh: jax.sharding.Mesh) -> int:
  """Per-process eval batch: eval.batch_size rounded up to the mesh size."""
  return eval_batch(config, mesh) // jax.process_count()


def count_eval_split(run: 'Run', counts_fn: Callable[..., dict]
                     ) -> dict[str, int]:
  """Sums `counts_fn(images, labels, mask)` over the 'eval' split.

  `counts_fn` is a jitted sharded function of one global batch (centre-crop
  uint8 images (B, S, S, 3), int32 labels (B,), bool mask (B,)) returning
  int scalars summed over the mesh (e.g. `linear.topk_counts`). Returns
  their sums over every batch, as Python ints.
  """
  totals: dict[str, int] = {}
  batch = eval_local_batch(run.config, run.mesh)
  for b in run.source.eval_iterator('eval', batch):
    g = parallel.host_to_global(b, run.mesh)
    got = jax.device_get(counts_fn(g['image'], g['label'], g['mask']))
    for k, v in got.items():
      totals[k] = totals.get(k, 0) + int(v)
  return totals


def run_steps(config: Any, state: Any, manager: Any,
              one_step: Callable[[Any, int], tuple[Any, dict]], *,
              total: int, schedule: Callable[[int], float],
              writer: reporting.MetricsWriter, progress: reporting.Progress,
              checkpoint_every: int) -> tuple[Any, dict | None]:
  """The loop of the supervised modes: steps state.step .. total - 1.

  `one_step(state, step) -> (state, metrics)` does one step. Logs every
  train.log_every_steps (and the last step), checkpoints every
  `checkpoint_every` and at the end, and stops cleanly on SIGTERM / Ctrl-C
  (saving first). Closes `progress` and `manager`; when stopped, also
  writes the record {'step', 'preempted': True} and closes `writer`.

  Returns:
    (state, None), or (state, the stopped record) when a signal stopped it.
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
  if not preempted:
    return state, None
  record = writer.write(int(state.step), {}, preempted=True)
  writer.close()
  return state, record
