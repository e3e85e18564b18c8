"""Orbax checkpoints: exact round trip, keep-last-K, atomicity of saves."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax import checkpoint
from simclr_jax import parallel
from simclr_jax.train import TrainState


def _state(mesh, seed):
  rng = np.random.default_rng(seed)
  state = TrainState(
      step=jnp.asarray(seed, jnp.int32),
      params={'encoder': {'kernel': rng.normal(size=(3, 5)).astype(np.float32)}},
      batch_stats={'mean': rng.normal(size=(5,)).astype(np.float32)},
      opt_state=({'trace': rng.normal(size=(3, 5)).astype(np.float32)},))
  return parallel.replicate(state, mesh)


def test_round_trip_is_exact_and_keeps_sharding(tmp_path):
  mesh = parallel.make_mesh()
  manager = checkpoint.create_manager(str(tmp_path), keep=2)
  state = _state(mesh, 7)
  checkpoint.save(manager, 7, state, force=True)
  manager.wait_until_finished()
  restored = checkpoint.restore(manager, _state(mesh, 1))
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert b.sharding.is_equivalent_to(a.sharding, a.ndim)
  manager.close()


def test_keeps_the_last_k(tmp_path):
  mesh = parallel.make_mesh()
  manager = checkpoint.create_manager(str(tmp_path), keep=2, save_every_steps=5)
  for step in range(1, 21):
    checkpoint.save(manager, step, _state(mesh, step))
  manager.wait_until_finished()
  assert manager.all_steps() == [15, 20]
  assert manager.latest_step() == 20
  manager.close()
  # A new manager (a new process) finds the same checkpoints.
  again = checkpoint.create_manager(str(tmp_path), keep=2)
  assert again.latest_step() == 20
  again.close()


def test_unfinished_save_is_ignored(tmp_path):
  """A save interrupted mid-way (a temporary folder) is not a checkpoint."""
  mesh = parallel.make_mesh()
  manager = checkpoint.create_manager(str(tmp_path), keep=3)
  checkpoint.save(manager, 4, _state(mesh, 4), force=True)
  manager.wait_until_finished()
  manager.close()
  # What orbax leaves behind when killed during a save of step 8.
  os.makedirs(os.path.join(checkpoint.checkpoint_dir(str(tmp_path)),
                           '8.orbax-checkpoint-tmp-123'))
  again = checkpoint.create_manager(str(tmp_path), keep=3)
  assert again.latest_step() == 4
  restored = checkpoint.restore(again, _state(mesh, 0))
  assert int(restored.step) == 4
  again.close()
