"""Exports a workdir's model to google-research/simclr's TF2 checkpoint layout.

    python -m simclr_jax.export_tf --workdir=DIR --out=PATH

Reads DIR/config.json and the latest checkpoint in DIR (a training run's or
one written by `simclr_jax.import_tf`) and writes PATH/ckpt-<step>.index,
.data-* and PATH/checkpoint: a `tf.train.Checkpoint(model=..., global_step=...)`
whose variables have the object paths google's TF2 `Model` gives them
(`model/resnet_model/...`, `model/_projection_head/...`, the probe as
`model/supervised_head/...`), so google's `run.py` restores it (with
`--resnet_depth`, `--width_multiplier`, `--sk_ratio`, `--num_proj_layers`,
`--proj_out_dim` and `--image_size` of the model, as `import_tf.json` or the
workdir's config says), and `simclr_jax.import_tf` reads it back bit-exactly.
Optimiser state is not exported.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np

from simclr_jax import checkpoint
from simclr_jax import import_tf
from simclr_jax import tf_layout


class ExportTFError(ValueError):
  """A workdir or output that cannot be used, with a one-line message."""


def _nest(arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """{'a/b/0/c': x} -> {'a': {'b': {'0': {'c': x}}}}."""
  tree: dict[str, Any] = {}
  for path, value in arrays.items():
    node = tree
    *parents, leaf = path.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def _trackable(tree: Any) -> Any:
  """Nested dicts -> tf.Modules, lists (digit keys) and tf.Variables.

  A list gets an empty `tf.Module` at each index without variables (google's
  identity, pooling and DropBlock layers), so indices match google's.
  """
  tf = import_tf.load_tensorflow()
  if not isinstance(tree, dict):
    return tf.Variable(tree, trainable=True)
  if all(k.isdigit() for k in tree):
    return [_trackable(tree[str(i)]) if str(i) in tree else tf.Module()
            for i in range(max(map(int, tree)) + 1)]
  module = tf.Module()
  for k, v in tree.items():
    setattr(module, k, _trackable(v))
  return module


def write_checkpoint(arrays: Mapping[str, np.ndarray], out: str,
                     step: int) -> str:
  """Writes {google path: array} as a TF2 checkpoint `out/ckpt-<step>`.

  Args:
    arrays: google object paths (under `model/`, no suffix) and values.
    out: output folder (created; must not hold a TF checkpoint already).
    step: stored as `global_step` (int64) and in the file name.

  Returns:
    The checkpoint prefix.
  """
  tf = import_tf.load_tensorflow()
  tree = _nest(arrays)
  ckpt = tf.train.Checkpoint(
      model=_trackable(tree['model']),
      global_step=tf.Variable(step, dtype=tf.int64, trainable=False))
  manager = tf.train.CheckpointManager(ckpt, out, max_to_keep=None)
  return manager.save(checkpoint_number=step)


def _model_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f)['model'])
  except (OSError, ValueError, KeyError) as e:
    raise ExportTFError(f'cannot read the model config {path}: {e}') from e


def export_checkpoint(workdir: str, out: str, step: int | None = None) -> str:
  """Exports the model of `workdir` (latest checkpoint) to `out`.

  Args:
    workdir: a training or imported workdir (config.json, checkpoints/).
    out: a new folder for the TF2 checkpoint.
    step: the checkpoint to export (default the latest).

  Returns:
    The written checkpoint prefix (`out/ckpt-<step>`).

  Raises:
    ExportTFError: no checkpoint or config, an output folder that already
      holds a TF checkpoint, or variables that are not the config's model.
  """
  if os.path.exists(os.path.join(out, 'checkpoint')):
    raise ExportTFError(f'{out} already holds a TF checkpoint; use a new '
                        '--out')
  model_config = _model_config(workdir)
  try:
    variables, step = checkpoint.restore_variables(workdir, step=step)
  except FileNotFoundError as e:
    raise ExportTFError(str(e)) from e
  variables = jax.tree.map(np.asarray, variables)
  probe = variables['params'].get('probe', {}).get('kernel')
  arch = tf_layout.Architecture.from_model_config(
      model_config, num_classes=probe.shape[-1] if probe is not None else 0)
  try:
    arrays = tf_layout.to_google(variables, arch)
  except ValueError as e:
    raise ExportTFError(f'{workdir}: {e}') from e
  return write_checkpoint(arrays, out, int(step))


if __name__ == '__main__':
  import_tf.run_cli(
      {'workdir': 'Workdir with config.json and checkpoints.',
       'out': 'New folder for the TF2 checkpoint.'},
      lambda workdir, out: f'wrote {export_checkpoint(workdir, out)}',
      ExportTFError)
