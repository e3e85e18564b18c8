"""Checkpoints with orbax-checkpoint: periodic save, keep the last K, resume.

The train state is a pytree of arrays (step, params, batch_stats, opt_state).
PRNG keys and the data order are functions of (seed, step), so the state
alone makes a resumed run continue exactly where it stopped. Saves are
atomic: orbax writes to a temporary folder and renames it when complete, so a
run killed mid-save resumes from the previous checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def create_manager(workdir: str, *, keep: int = 3,
                   save_every_steps: int = 0) -> ocp.CheckpointManager:
  """A manager for `workdir/checkpoints` keeping the last `keep` checkpoints.

  `save_every_steps` > 0 makes `manager.save(step, ...)` skip steps that are
  not multiples of it (a `force=True` save always happens).
  """
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep if keep > 0 else None,
      save_interval_steps=max(save_every_steps, 1),
      create=True,
      enable_async_checkpointing=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


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


def latest_step(workdir: str) -> int | None:
  """The newest checkpoint step in `workdir`, or None."""
  manager = ocp.CheckpointManager(checkpoint_dir(workdir))
  try:
    return manager.latest_step()
  finally:
    manager.close()


def restore_model_variables(workdir: str,
                            step: int | None = None) -> tuple[int, Any]:
  """Restores only the model of a workdir's checkpoint, on one device.

  Works for training workdirs (any optimiser state is skipped, not read) and
  for workdirs written by `simclr_jax.import_tf` (which have none).

  Args:
    workdir: a folder with `checkpoints/<step>`.
    step: the checkpoint (default the latest).

  Returns:
    (step, {'params': ..., 'batch_stats': ...}) as arrays shaped and typed as
    stored.

  Raises:
    FileNotFoundError: no checkpoint in `workdir`.
  """
  if step is None:
    step = latest_step(workdir)
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {checkpoint_dir(workdir)}')
  path = epath.Path(checkpoint_dir(workdir)) / str(step) / 'default'
  stored = ocp.StandardCheckpointHandler().metadata(path)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      {k: stored[k] for k in ('params', 'batch_stats') if k in stored})
  with ocp.PyTreeCheckpointer() as checkpointer:
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        target, restore_args=ocp.checkpoint_utils.construct_restore_args(
            target), partial_restore=True))
  return step, restored
