"""SimCLR pretraining: the train state, the sharded train step, and the loop.

`train_and_evaluate(config, workdir)` is the whole job: it resumes from the
latest checkpoint in `workdir` if there is one, pretrains, checkpoints, logs,
and ends with a linear-probe evaluation of the encoder.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import time
from typing import Any, Callable, Iterator

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import PartitionSpec as P

from simclr_jax import augment
from simclr_jax import checkpoint
from simclr_jax import config_lib
from simclr_jax import losses
from simclr_jax import models
from simclr_jax import optim
from simclr_jax import parallel
from simclr_jax import reporting
from simclr_jax import signals
from simclr_jax import workdir as workdir_lib
from simclr_jax.data import failures
from simclr_jax.evaluate import final as final_eval

AXIS = parallel.AXIS


class TrainingDiverged(RuntimeError):
  """The loss or the gradient became NaN or infinite."""


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training (all arrays, replicated).

  The PRNG keys and the data order are functions of (config.seed, step), so
  this state is all a checkpoint needs.
  """
  step: jax.Array  # int32 scalar: number of steps done.
  params: Any
  batch_stats: Any
  opt_state: Any


def initial_state(model: Any, tx: optax.GradientTransformation,
                  image_size: int, init_key: jax.Array) -> TrainState:
  """The initial `TrainState` (a pure function: jit it or `jax.eval_shape` it)."""
  variables = model.init(init_key, jnp.zeros((2, image_size, image_size, 3)),
                         train=False)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}),
                    opt_state=tx.init(params))


def create_train_state(model: Any, tx: optax.GradientTransformation,
                       image_size: int, init_key: jax.Array,
                       mesh: jax.sharding.Mesh) -> TrainState:
  """Initialises parameters, BatchNorm statistics and optimiser state, replicated."""
  init = functools.partial(initial_state, model, tx, image_size, init_key)
  return jax.jit(init, out_shardings=parallel.replicated(mesh))()


def schedule_steps(config: Any, num_train_examples: int) -> tuple[int, int]:
  """(steps_per_epoch, total_steps) of `config` for a data set of that size.

  Needs only the number of examples, not the data: `bench/scale_plan.py`
  sizes ImageNet's schedule from its known 1,281,167 training images.
  """
  steps_per_epoch = num_train_examples // config.train.global_batch_size
  return steps_per_epoch, _num_steps(config, steps_per_epoch)


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything built from a config to train it: the one build sequence.

  `train_and_evaluate`, the evaluation modes, the tests and the benches all
  get their model, optimiser, state and step from `build`, so none of them
  can drift from the real train step.

  Attributes:
    config: the run config.
    model: the `SimCLRModel` (global BatchNorm over the mesh axis).
    tx: the optimiser over the whole params tree (encoder and probe).
    schedule: the encoder's learning-rate schedule, step -> float.
    mesh: the 1-D mesh (axis 'batch').
    train_step: jitted (state, images, labels, key) -> (state, metrics), see
      `make_train_step`.
    num_classes: classes of the online probe (0: no probe).
    total_steps: steps of the run.
    steps_per_epoch: steps of one pass over the pretraining data.
    init_key: key of the parameter initialiser.
    train_key: the run's training key (not yet placed on the mesh).
  """
  config: Any
  model: Any
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  mesh: jax.sharding.Mesh
  train_step: Callable
  num_classes: int
  total_steps: int
  steps_per_epoch: int
  init_key: jax.Array
  train_key: jax.Array

  def init_state(self) -> TrainState:
    """The initial `TrainState`, computed and replicated on the mesh."""
    return create_train_state(self.model, self.tx, self.config.image_size,
                              self.init_key, self.mesh)

  def abstract_state(self) -> TrainState:
    """The `TrainState` as ShapeDtypeStructs replicated on the mesh.

    Nothing runs (`jax.eval_shape`): usable for restoring checkpoints and for
    compiling ahead of time for devices this host does not have.
    """
    # eval_shape of the pure initialiser: traced only, never compiled or run,
    # so the mesh's devices may be ones this host does not have.
    shapes = jax.eval_shape(functools.partial(
        initial_state, self.model, self.tx, self.config.image_size,
        self.init_key))
    sharding = parallel.replicated(self.mesh)
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
        shapes)

  def replicated_train_key(self) -> jax.Array:
    """`train_key` placed on every device of the mesh."""
    return parallel.replicate(self.train_key, self.mesh)


def build(config: Any, mesh: jax.sharding.Mesh, *, num_classes: int,
          total_steps: int, steps_per_epoch: int) -> Setup:
  """Builds the model, optimiser, keys and jitted train step of `config`.

  Args:
    config: the run config (configs/default.py).
    mesh: the mesh from `parallel.make_mesh`.
    num_classes: classes of the online probe; 0 turns it off.
    total_steps: steps of the run (sizes the schedule).
    steps_per_epoch: steps per pass over the pretraining data (warm-up).

  Returns:
    A `Setup`. Nothing is computed on the devices until `init_state`.
  """
  model = models.create_model(
      config.model, num_classes=num_classes, axis_name=AXIS,
      conv_gradients=parallel.conv_gradients(config, mesh))
  tx, schedule = optim.create_optimizer(config, total_steps, steps_per_epoch)
  init_key, train_key = jax.random.split(jax.random.key(config.seed))
  train_step = make_train_step(model, tx, config, mesh, schedule, num_classes)
  return Setup(config=config, model=model, tx=tx, schedule=schedule,
               mesh=mesh, train_step=train_step, num_classes=num_classes,
               total_steps=total_steps, steps_per_epoch=steps_per_epoch,
               init_key=init_key, train_key=train_key)


def example_keys(step_key: jax.Array, num_local: int) -> jax.Array:
  """One key per example of this device's shard: fold_in(step_key, global index).

  Folding in the example's global index (not the device index) makes the
  augmentation of every example independent of how many devices share the
  batch, so a run gives the same result on 1 or 8 devices, and after resuming
  on a different number of devices.
  """
  first = lax.axis_index(AXIS) * num_local
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
      step_key, first + jnp.arange(num_local))


def make_train_step(model: Any, tx: optax.GradientTransformation, config: Any,
                    mesh: jax.sharding.Mesh, schedule: optax.Schedule,
                    num_classes: int) -> Callable:
  """The jitted train step: (state, images, labels, key) -> (state, metrics).

  Args (of the returned function):
    state: `TrainState`, replicated on the mesh (donated).
    images: uint8, global batch (B, H, W, 3) or host-cropped (B, 2, S, S, 3),
      sharded over 'batch'.
    labels: int32 (B,), -1 for unlabelled examples, sharded over 'batch'.
    key: the run's training key (replicated).

  Each device augments its shard (augmentation keys from the example's global
  index), the model runs on both views with BatchNorm statistics over the
  global batch, NT-Xent takes negatives from every device, and the online
  probe trains on stop_gradient(h). The loss is the global mean (pmean), so
  `jax.grad` under shard_map's check_vma already gives the gradient of the
  global loss for the replicated parameters: no further pmean of gradients.

  The objective is google-research/simclr's `add_contrastive_loss`,
  mean over the N pairs of (loss_a + loss_b) = 2 * `losses.nt_xent`, so the
  published learning rates and weight decays (LARS adds the decay to this
  gradient before the trust ratio) mean what they mean there. Metrics:
  'loss' is that objective (google's `train/contrast_loss`), 'nt_xent' the
  per-anchor mean (lightly's and the paper's eq. 1 average), half of it.
  """
  temperature = config.loss.temperature
  aug_config = config.augment
  # 'auto' resolved for the mesh's devices (which may not be this host's,
  # when compiling ahead of time for a TPU topology).
  strategy = augment.resolve_strategy(aug_config.strategy,
                                      parallel.platform(mesh))

  def per_device(state: TrainState, images, labels, key):
    n = images.shape[0]
    keys = example_keys(jax.random.fold_in(key, state.step), n)
    view_a, view_b = augment.two_views(keys, images, aug_config,
                                       strategy=strategy)
    x = jnp.concatenate([view_a, view_b], axis=0)

    def loss_fn(params):
      # Per-device (varying) copies of the float32 parameters: the sum of the
      # gradient over devices (the transpose of this cast) is then a float32
      # all-reduce. Without it JAX sums where the parameters meet the
      # per-device data, after the model's cast to its compute dtype: a
      # bfloat16 all-reduce of the gradients.
      params = lax.pcast(params, AXIS, to='varying')
      out, mutated = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, x, train=True,
          mutable=['batch_stats'])
      z_a, z_b = jnp.split(out['z'], 2)
      mean_loss, metrics = losses.nt_xent_with_metrics(
          z_a, z_b, temperature=temperature, axis_name=AXIS)
      # The objective trained: google-research/simclr's contrastive loss,
      # twice the per-anchor mean (see losses.GOOGLE_OBJECTIVE_SCALE).
      loss = losses.GOOGLE_OBJECTIVE_SCALE * mean_loss
      metrics = dict(metrics, loss=loss, nt_xent=mean_loss)
      total = loss
      if num_classes:
        y = jnp.concatenate([labels, labels])
        valid = (y >= 0).astype(jnp.float32)
        logits = out['probe_logits']
        ce = optax.softmax_cross_entropy_with_integer_labels(
            logits, jnp.maximum(y, 0))
        count = jnp.maximum(lax.psum(valid.sum(), AXIS), 1.0)
        probe_loss = lax.psum(jnp.sum(ce * valid), AXIS) / count
        correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32) * valid
        metrics['probe_loss'] = probe_loss
        metrics['probe_accuracy'] = lax.psum(correct.sum(), AXIS) / count
        total = loss + probe_loss
      return total, (metrics, mutated['batch_stats'])

    grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics['grad_norm'] = optax.tree.norm(grads)
    metrics['learning_rate'] = schedule(state.step)
    new_state = TrainState(step=state.step + 1, params=params,
                           batch_stats=batch_stats, opt_state=opt_state)
    return new_state, metrics

  step = jax.shard_map(per_device, mesh=mesh,
                       in_specs=(P(), P(AXIS), P(AXIS), P()),
                       out_specs=(P(), P()))
  return jax.jit(step, donate_argnums=(0,))


def device_batches(host_batches: Iterator[dict[str, np.ndarray]],
                   mesh: jax.sharding.Mesh, prefetch: int) -> Iterator[dict]:
  """Moves host batches onto the mesh, keeping `prefetch` batches in flight."""
  queue = collections.deque()
  for batch in host_batches:
    queue.append(parallel.host_to_global(batch, mesh))
    if len(queue) > max(prefetch, 0):
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def _check_finite(metrics: dict[str, float], step: int, last_good: int | None) -> None:
  for name in ('loss', 'grad_norm'):
    value = metrics.get(name)
    if value is not None and not math.isfinite(value):
      where = (f'the last good checkpoint is step {last_good}' if last_good
               is not None else 'no checkpoint was saved')
      raise TrainingDiverged(
          f'{name} is {value} at step {step}: training stopped; {where}. '
          'Try a lower optim.base_learning_rate or a higher loss.temperature.')


def _mean_metrics(records: list[dict[str, jax.Array]]) -> dict[str, float]:
  host = jax.device_get(records)
  return {k: float(np.mean([r[k] for r in host])) for k in host[0]}


def _num_steps(config: Any, steps_per_epoch: int) -> int:
  if config.train.num_steps > 0:
    return int(config.train.num_steps)
  return max(int(math.ceil(config.train.num_epochs * steps_per_epoch)), 1)


def train_and_evaluate(config: Any, workdir: str) -> dict[str, Any]:
  """Pretrains SimCLR as `config` says, in `workdir`, then evaluates.

  Resumes from the latest checkpoint in `workdir` when there is one. Returns
  the final record (also the last line of `workdir/metrics.jsonl`), or a
  record with `'preempted': True` when SIGTERM stopped the run after saving.

  Raises:
    config_lib.ConfigError: the config or the data cannot work (one line).
    TrainingDiverged: the loss or gradient became NaN/Inf.
  """
  config_lib.validate(config, workdir)
  parallel.setup_cpu_devices(config.train.cpu_devices,
                             config.train.cpu_ynnpack_convs)
  parallel.maybe_initialize_distributed(config.distributed)
  with config_lib.user_errors():
    mesh = parallel.make_mesh(config.train.num_devices)
  gbs = config.train.global_batch_size
  config_lib.check_batch(gbs, mesh.size, jax.process_count())
  lock = workdir_lib.WorkdirLock(workdir)
  if jax.process_index() == 0:
    workdir_lib.prepare(workdir)
    lock.acquire()
  failures.list_in(workdir)  # Undecodable files: workdir/undecodable.txt.
  try:
    return _pretrain(config, workdir, mesh)
  finally:
    failures.report_total()
    lock.release()


def _pretrain(config: Any, workdir: str,
              mesh: jax.sharding.Mesh) -> dict[str, Any]:
  """`train_and_evaluate` once the mesh is made and the workdir is locked."""
  from simclr_jax import data  # pylint: disable=g-import-not-at-top
  gbs = config.train.global_batch_size
  is_chief = jax.process_index() == 0
  with config_lib.user_errors():
    source = data.make_source(config)
    info = source.info()
  if info.num_train_examples < gbs:
    raise config_lib.ConfigError(
        f'train.global_batch_size={gbs} is larger than the training data '
        f'({info.num_train_examples} examples)')
  steps_per_epoch, total_steps = schedule_steps(config,
                                                info.num_train_examples)
  num_classes = info.num_classes if config.train.online_probe else 0

  setup = build(config, mesh, num_classes=num_classes, total_steps=total_steps,
                steps_per_epoch=steps_per_epoch)
  state = setup.init_state()
  train_key = setup.replicated_train_key()

  manager, state = checkpoint.resume_or_start(
      config, workdir, state, keep=config.train.keep_checkpoints,
      save_every_steps=config.train.checkpoint_every_steps,
      total_steps=total_steps)
  start_step = int(state.step)

  writer = reporting.MetricsWriter(workdir)
  progress = reporting.Progress(total_steps, start_step, enabled=is_chief,
                                images_per_step=gbs)
  if is_chief:
    print(f'simclr_jax: {info.num_train_examples} training images, '
          f'{total_steps} steps of {gbs} on {mesh.size} '
          f'{jax.devices()[0].platform} device(s)'
          + (f', resuming at step {start_step}' if start_step else ''),
          flush=True)

  train_step = setup.train_step
  host_batches = source.train_iterator(gbs // jax.process_count(),
                                       start_step)
  batches = device_batches(host_batches, mesh, config.data.prefetch)

  # Evaluation computes features with lax's own convolutions, as the
  # evaluation and export modes do, whatever forms the train step uses
  # (models/conv.py's border forms change the forward pass to float
  # rounding).
  eval_model = setup.model.clone(conv_gradients='xla')
  monitor = None
  if config.eval.every_steps > 0 and info.num_classes and config.eval.knn_k:
    monitor = final_eval.knn_monitor(config, eval_model, mesh, source)
  earlier_seconds = reporting.earlier_train_seconds(workdir)
  t_start = time.perf_counter()
  window: list[dict[str, jax.Array]] = []
  last_checked = None
  latest = None  # Host values of the last checked step (progress lines).
  t_window, steps_in_window = time.perf_counter(), 0
  preempted = False
  with signals.StopRequests() as stop:
    for step in range(start_step, total_steps):
      stop.step = step + 1
      batch = next(batches, None)
      if batch is None:  # The input ended early: a stop was requested.
        if not stop.requested:
          raise RuntimeError('the training input ended')
        if manager.latest_step() != step and step > 0:
          checkpoint.save(manager, step, state, force=True)
        preempted = True
        break
      state, metrics = train_step(state, batch['image'], batch['label'],
                                  train_key)
      window.append(metrics)
      steps_in_window += 1
      done = step + 1
      first = step == start_step
      if first:
        # Time speed and ETA from the end of the first (compiling) step.
        jax.block_until_ready(metrics['loss'])
        t_window, steps_in_window = time.perf_counter(), 0
        progress.restart_clock(done)
      # Check the previous step while this one runs: no stall on the device.
      if last_checked is not None:
        latest = jax.device_get(last_checked)
        _check_finite(latest, done - 1, manager.latest_step())
      last_checked = {k: metrics[k] for k in ('loss', 'grad_norm')}
      last = done == total_steps
      if done % config.train.log_every_steps == 0 or last or stop.requested:
        scalars = _mean_metrics(window)
        _check_finite(scalars, done, manager.latest_step())
        elapsed = time.perf_counter() - t_window
        ips = steps_in_window * gbs / max(elapsed, 1e-9) if steps_in_window else None
        if ips is not None:
          scalars['images_per_sec'] = ips
        writer.write(done, scalars)
        progress.update(done, scalars, ips, force=True)
        window, t_window, steps_in_window = [], time.perf_counter(), 0
      elif first:
        # The first loss at once, however long the logging period.
        progress.update(done, jax.device_get(last_checked), force=True)
      else:
        progress.update(done, latest)
      if monitor is not None and done % config.eval.every_steps == 0 and (
          not last):
        accuracy = monitor(state)
        writer.write(done, {'knn_accuracy': accuracy})
        progress.update(done, {**(latest or {}), 'knn_accuracy': accuracy},
                        force=True)
      if done % config.train.checkpoint_every_steps == 0 or stop.requested:
        _check_finite(jax.device_get(last_checked), done, manager.latest_step())
        checkpoint.save(manager, done, state, force=True)
      if stop.requested:
        preempted = True
        break
  progress.close()
  checkpoint.finish(manager, total_steps, state, preempted)
  # Wall time of the run's training over its invocations (compilation
  # included; one killed by SIGKILL is not counted).
  train_seconds = round(earlier_seconds + time.perf_counter() - t_start, 1)
  if preempted:
    record = writer.write(int(state.step), {}, preempted=True,
                          train_seconds=train_seconds)
    writer.close()
    if is_chief:
      print(f'simclr_jax: stopped by a signal (SIGTERM or Ctrl-C); saved step '
            f'{int(state.step)}. Run the same command to resume.', flush=True)
    return record

  init_variables = None
  if config.eval.compare_random_init:
    init_state = setup.init_state()
    init_variables = {'params': init_state.params,
                      'batch_stats': init_state.batch_stats}
  results = final_eval.final_evaluation(
      config, workdir, eval_model,
      {'params': state.params, 'batch_stats': state.batch_stats},
      init_variables, mesh, source, info)
  if results.pop('preempted', False):
    record = writer.write(total_steps, results, preempted=True,
                          train_seconds=train_seconds)
    writer.close()
    return record
  record = writer.write(total_steps, results, train_seconds=train_seconds,
                        final=True)
  writer.close()
  if is_chief:
    print('simclr_jax: final evaluation ' + json.dumps(record), flush=True)
  return record
