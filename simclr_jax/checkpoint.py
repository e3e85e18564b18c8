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


class DamagedCheckpoint(RuntimeError):
  """A checkpoint that exists but cannot be read."""


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
  try:
    mismatch = mismatched_params(manager, step, target.params)
  except Exception as e:  # pylint: disable=broad-except
    raise DamagedCheckpoint(f'{type(e).__name__}: {e}') from e
  if mismatch:
    raise ValueError(
        f'the checkpoint in {manager.directory} is of another model '
        f'({len(mismatch)} parameters differ, e.g. {mismatch[0]}); use a new '
        '--workdir')
  try:
    return restore(manager, target, step)
  except Exception as e:  # pylint: disable=broad-except
    raise DamagedCheckpoint(f'{type(e).__name__}: {e}') from e
