"""Checkpoints with orbax-checkpoint: periodic save, keep the last K, resume.

The train state is a pytree of arrays (step, params, batch_stats, opt_state).
PRNG keys and the data order are functions of (seed, step), so the state
alone makes a resumed run continue exactly where it stopped. Saves are
atomic: orbax writes to a temporary folder and renames it when complete, so a
run killed mid-save resumes from the previous checkpoint (the temporary folders
such a run leaves are removed when the next run opens the checkpoints). A save
that the file system refuses (a full disk) leaves the previous checkpoints
intact; `abandon_open` ends the managers of such a run quietly.
"""

from __future__ import annotations

import gc
import logging as py_logging
import os
import re
import shutil
import sys
import threading
import weakref
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from etils import epath

from simclr_jax import storage

# What orbax adds to the name of a checkpoint's folder while it is written.
TMP_MARK = '.orbax-checkpoint-tmp'
# The managers that write (create_manager), for abandon_open.
_OPEN: weakref.WeakSet = weakref.WeakSet()


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def create_manager(workdir: str, *, keep: int = 3,
                   save_every_steps: int = 0) -> ocp.CheckpointManager:
  """A manager for `workdir/checkpoints` keeping the last `keep` checkpoints.

  `save_every_steps` > 0 makes `manager.save(step, ...)` skip steps that are
  not multiples of it (a `force=True` save always happens). The temporary
  folders of saves that never finished (a run killed mid-save) are removed.
  orbax's own reports of saves that the file system refuses are dropped
  (`storage.OrbaxWriteReports`): the failure is raised by the next save or
  wait, and main.py tells it in one line.
  """
  storage.drop_orbax_write_reports()
  if jax.process_index() == 0:
    remove_unfinished_saves(workdir)
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep if keep > 0 else None,
      save_interval_steps=max(save_every_steps, 1),
      create=True,
      enable_async_checkpointing=True)
  manager = ocp.CheckpointManager(checkpoint_dir(workdir), options=options)
  _OPEN.add(manager)
  return manager


def remove_unfinished_saves(workdir: str) -> int:
  """Removes the temporary folders of saves that never finished; how many.

  A run killed mid-save leaves `checkpoints/<step>.orbax-checkpoint-tmp...`.
  Removed here, at once, rather than by orbax's `cleanup_tmp_directories`,
  whose background thread can outlive a run that stops at once (a refused
  resume) and then fails noisily at interpreter exit.
  """
  folder = checkpoint_dir(workdir)
  try:
    names = [n for n in os.listdir(folder) if TMP_MARK in n]
  except OSError:
    return 0
  for name in names:
    shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
  return len(names)


def abandon_open(timeout: float = 60.0) -> bool:
  """Ends every manager still open after a failure; False if it timed out.

  Waits for the save in flight (whose failure, if any, was already told or
  is told by the caller) and closes, dropping their errors, so that no
  background thread reports it again. Complete checkpoints stay. orbax's
  threads can wait forever for a save that the file system refused (seen
  with a read-only workdir), so this waits at most `timeout` seconds and
  the caller should then leave with `os._exit`, which does not wait for
  them.
  """
  managers = list(_OPEN)

  def end_all():
    for manager in managers:
      for end in (manager.wait_until_finished, manager.close):
        try:
          end()
        except Exception:  # pylint: disable=broad-except
          pass
      _OPEN.discard(manager)

  worker = threading.Thread(target=end_all, daemon=True,
                            name='simclr_jax-abandon')
  worker.start()
  worker.join(timeout)
  return not worker.is_alive()


def save(manager: ocp.CheckpointManager, step: int, state: Any, *,
         force: bool = False) -> bool:
  """Saves `state` at `step` (asynchronously). Returns whether it saved."""
  return manager.save(step, args=ocp.args.StandardSave(state), force=force)


def restore(manager: ocp.CheckpointManager, target: Any,
            step: int | None = None) -> Any:
  """Restores the checkpoint at `step` (default the latest) shaped like `target`.

  `target` is a pytree of arrays or `jax.ShapeDtypeStruct`s with shardings;
  the restored arrays get the same shapes, dtypes and shardings.
  """
  if step is None:
    step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {manager.directory}')
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def mismatched_params(manager: ocp.CheckpointManager, step: int,
                      params: Any) -> list[str]:
  """Parameter paths whose shape differs between checkpoint `step` and `params`.

  Reads only the checkpoint's metadata, so a workdir of another model is
  recognised before any array is read.
  """
  path = epath.Path(manager.directory) / str(step) / 'default'
  tree = ocp.StandardCheckpointHandler().metadata(path)
  shapes = lambda t: {jax.tree_util.keystr(p): tuple(x.shape) for p, x in
                      jax.tree_util.tree_flatten_with_path(t)[0]}
  stored, wanted = shapes(tree['params']), shapes(params)
  return sorted(k for k in stored.keys() | wanted.keys()
                if stored.get(k) != wanted.get(k))


def restore_for_evaluation(workdir: str, target: Any,
                           step: int | None = None) -> Any:
  """Restores a train state of `workdir` for evaluation or fine-tuning."""
  manager = ocp.CheckpointManager(checkpoint_dir(workdir))
  try:
    return restore(manager, target, step)
  finally:
    manager.close()


class DamagedCheckpoint(RuntimeError):
  """A checkpoint that exists but cannot be read."""


def first_cause(e: BaseException) -> str:
  """The innermost cause of `e` in one short line ('ValueError: ...').

  orbax wraps TensorStore's error (which names the file and what is wrong
  with it) in an exception whose text is a whole TensorStore spec.
  """
  while e.__cause__ is not None:
    e = e.__cause__
  line = (str(e).strip().splitlines() or [''])[0]
  # The checkpoint's folder is named by the caller: keep room for the cause.
  line = re.sub(r' in OCDBT database at local file "[^"]*"', '', line)
  return f'{type(e).__name__}: {line}'[:240]


# orbax reads the arrays of a checkpoint as concurrent asyncio tasks. When
# some fail, the first failure is raised and the others are reported by
# asyncio as 'Task exception was never retrieved' (a traceback and a
# TensorStore spec each, dozens of them for one damaged file) or by the
# interpreter as 'Exception ignored in: <coroutine ...>'. These name the
# coroutines of such a read.
_READ_COROUTINES = ('async_deserialize', '_read_array_index_and_device_put',
                    '_read_and_create_array', '_read_shard')


def _about_a_read(text: str) -> bool:
  return any(name in text for name in _READ_COROUTINES)


_DROPPING: list[bool] = []


def _drop_read_reports() -> None:
  """From now on, asyncio's and the interpreter's reports of orbax reads are dropped.

  Installed (once) by the first read: the reports of a failed read's tasks
  come as they are collected, which may be long after the failure (when
  orbax's event loop lets them go, e.g. as its manager closes). Only
  reports that name orbax's read coroutines are dropped.
  """
  if _DROPPING:
    return
  py_logging.getLogger('asyncio').addFilter(
      lambda record: not _about_a_read(record.getMessage()))
  previous_hook = sys.unraisablehook

  def hook(unraisable):
    if not _about_a_read(repr(unraisable.object)):
      previous_hook(unraisable)

  sys.unraisablehook = hook
  _DROPPING.append(True)


def read_or_damaged(read: Callable[[], Any]) -> Any:
  """`read()`, or `DamagedCheckpoint` with the one line of why it failed.

  When one array of a checkpoint cannot be read, orbax raises the first
  failure; the sibling read tasks fail too and are reported when they are
  garbage-collected, by asyncio's logger ('Task exception was never
  retrieved', a traceback and a TensorStore spec each) or by the
  interpreter ('Exception ignored in: <coroutine ...>'): dozens for one
  damaged file, or hundreds (a zeroed file: every chunk fails to
  decompress), some of them only when orbax's manager closes. Here the
  failure becomes one line, its traceback (whose frames hold those tasks)
  is dropped and the garbage collected, and reports about orbax's read
  coroutines, and only those, are dropped from then on
  (`_drop_read_reports`).

  Raises:
    DamagedCheckpoint: `read` raised; its message is the innermost cause.
  """
  _drop_read_reports()
  message = None
  try:
    return read()
  except Exception as e:  # pylint: disable=broad-except
    message = first_cause(e)
  gc.collect()  # `e` is gone: its tasks are collected (and dropped) here.
  raise DamagedCheckpoint(message)


def set_aside(workdir: str, step: int) -> str:
  """Moves checkpoint `step` out of `workdir/checkpoints` (kept for a post-mortem).

  Returns where it went: `workdir/damaged_checkpoints/<step>[.<n>]`.
  """
  source = os.path.join(checkpoint_dir(workdir), str(step))
  folder = os.path.join(os.path.abspath(workdir), 'damaged_checkpoints')
  os.makedirs(folder, exist_ok=True)
  target = os.path.join(folder, str(step))
  n = 0
  while os.path.exists(target):
    n += 1
    target = os.path.join(folder, f'{step}.{n}')
  os.replace(source, target)
  return target


def restore_step(manager: ocp.CheckpointManager, target: Any, step: int) -> Any:
  """Restores checkpoint `step` shaped like `target`.

  Raises:
    ValueError: the checkpoint holds another model (parameter shapes differ).
    DamagedCheckpoint: the checkpoint cannot be read (a missing or truncated
      file, missing metadata).
  """
  mismatch = read_or_damaged(
      lambda: mismatched_params(manager, step, target.params))
  if mismatch:
    raise ValueError(
        f'the checkpoint in {manager.directory} is of another model '
        f'({len(mismatch)} parameters differ, e.g. {mismatch[0]}); use a new '
        '--workdir')
  return read_or_damaged(lambda: restore(manager, target, step))


def restore_variables(workdir: str, mesh: jax.sharding.Mesh | None = None,
                      step: int | None = None) -> tuple[dict, int]:
  """The model variables of another run's checkpoint, replicated on `mesh`.

  The checkpoint's own metadata gives the shapes, so no optimiser (or its
  config) is needed: this reads checkpoints of any run, or imported ones.

  Args:
    workdir: the run whose `checkpoints/` to read.
    mesh: where to place the arrays (replicated); None: this process's
      first device.
    step: the checkpoint step; None for the latest.

  Returns:
    ({'params': ..., 'batch_stats': ...}, step).

  Raises:
    FileNotFoundError: no such checkpoint.
    DamagedCheckpoint: it cannot be read.
  """
  manager = ocp.CheckpointManager(checkpoint_dir(workdir))
  try:
    steps = manager.all_steps()
    if step is None:
      step = manager.latest_step()
    if step is None or step not in steps:
      raise FileNotFoundError(
          f'no checkpoint {"" if step is None else f"of step {step} "}in '
          f'{checkpoint_dir(workdir)} (steps: {sorted(steps) or "none"})')
    path = epath.Path(manager.directory) / str(step) / 'default'
    sharding = (jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
                if mesh is None else
                jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))

    def read():
      meta = ocp.StandardCheckpointHandler().metadata(path)
      wanted = {k: meta[k] for k in ('params', 'batch_stats') if k in meta}
      abstract = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
          wanted)
      return ocp.PyTreeCheckpointer().restore(
          path, args=ocp.args.PyTreeRestore(
              item=abstract,
              restore_args=ocp.checkpoint_utils.construct_restore_args(
                  abstract),
              partial_restore=True))

    restored = read_or_damaged(read)
  finally:
    manager.close()
  restored.setdefault('batch_stats', {})
  return dict(restored), int(step)


def resume_or_start(config: Any, workdir: str, state: Any, *, keep: int,
                    save_every_steps: int, total_steps: int
                    ) -> tuple[ocp.CheckpointManager, Any]:
  """Opens `workdir/checkpoints`; restores the latest intact checkpoint.

  Then process 0 keeps the config in `workdir/config_history`
  (`workdir.record_config`) with the step the run starts from.

  A damaged checkpoint (a missing or truncated file, missing metadata) is
  reported in one line, moved to `workdir/damaged_checkpoints`, and the
  previous one is tried. Resuming with a config that changes what the run
  computes is refused (`workdir.check_resume`).

  Args:
    config: the run config.
    workdir: the run's workdir.
    state: a state with `.params` and `.step` (arrays or abstract), the
      shape to restore into; returned unchanged when nothing is restored.
    keep, save_every_steps: as for `create_manager`.
    total_steps: the run's steps; a checkpoint beyond them is refused.

  Returns:
    (manager, state).

  Raises:
    config_lib.ConfigError: the checkpoints are of another model, the config
      changes what the run computes, or the latest checkpoint is beyond
      `total_steps`.
  """
  import sys  # pylint: disable=g-import-not-at-top
  from simclr_jax import config_lib  # pylint: disable=g-import-not-at-top
  from simclr_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  def open_manager():
    return create_manager(workdir, keep=keep, save_every_steps=save_every_steps)

  manager = open_manager()
  while manager.latest_step() is not None:
    step = manager.latest_step()
    try:
      with config_lib.user_errors():
        if int(step) > 0:
          workdir_lib.check_resume(workdir, config)
        restored = restore_step(manager, state, step)
    except DamagedCheckpoint as e:
      manager.close()  # The failed read's tasks end with it (dropped).
      gc.collect()
      where = set_aside(workdir, step) if jax.process_index() == 0 else ''
      print(f'simclr_jax: warning: the checkpoint of step {step} is damaged '
            f'({str(e).splitlines()[0][:240]}); moved to {where}, trying the '
            'previous one', file=sys.stderr, flush=True)
      manager = open_manager()
      continue
    except BaseException:
      manager.close()
      raise
    state = restored
    break
  start = int(state.step)
  if start > total_steps:
    manager.close()
    raise config_lib.ConfigError(
        f'the checkpoint in {workdir!r} is at step {start}, beyond this '
        f'run\'s {total_steps} steps; use a new --workdir')
  if jax.process_index() == 0:
    workdir_lib.record_config(workdir, config, start)
  return manager, state


def finish(manager: ocp.CheckpointManager, total_steps: int, state: Any,
           preempted: bool) -> None:
  """Ends a training loop: saves the final step unless stopped, then closes.

  Waits for every asynchronous save, so what was saved is on disk after it.
  """
  if not preempted and manager.latest_step() != total_steps:
    save(manager, total_steps, state, force=True)
  manager.wait_until_finished()
  manager.close()
  _OPEN.discard(manager)
