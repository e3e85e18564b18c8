"""What the figures read: a workdir's config, its encoder, and its features.

`load_run_config` and `load_config_file` give the config; `load_encoder`
(the run's checkpoint) and `random_init_encoder` (step 0 of pretraining) the
encoder's variables; `features` its `h` on uint8 images.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np


class VisualizeError(ValueError):
  """A workdir, config or option that cannot give the figures (one line)."""


def _tuples(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def load_run_config(workdir: str) -> Any:
  """The `ml_collections.ConfigDict` a run recorded in `workdir/config.json`.

  JSON lists become tuples again (as in the config files).

  Raises:
    VisualizeError: no such directory or no readable config.json in it.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(workdir):
    raise VisualizeError(f'--workdir {workdir!r} is not a directory')
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise VisualizeError(
        f'no config.json in {workdir!r}: not the workdir of a simclr_jax run '
        '(main.py writes it when a run starts)')
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(_tuples(json.load(f)))
  except (OSError, ValueError) as e:
    raise VisualizeError(f'{path} cannot be read: {e}') from e


def load_config_file(path: str) -> Any:
  """`get_config()` of a Python config file (as main.py's --config)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise VisualizeError(f'--config {path!r} is not a file')
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  if root not in sys.path:
    sys.path.insert(0, root)  # So configs can `from configs import default`.
  spec = importlib.util.spec_from_file_location('_visualize_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise VisualizeError(f'config file {path!r} defines no get_config()')
  return module.get_config()


def make_source(config: Any) -> Any:
  """`data.make_source(config)`; a data error is a VisualizeError (one line)."""
  from simclr_jax import data  # pylint: disable=g-import-not-at-top
  try:
    return data.make_source(config)
  except ValueError as e:
    raise VisualizeError(str(e).splitlines()[0]) from e


def encoder_source(config: Any, workdir: str) -> tuple[str, int | None]:
  """(workdir holding the encoder's checkpoint, its step or None = latest).

  Pretraining and fine-tuning runs hold their own encoder; linear evaluation
  and export runs evaluate the one of `config.init_from`.
  """
  mode = config.get('mode', 'pretrain')
  if mode in ('linear_eval', 'export') and config.get('init_from', ''):
    step = int(config.get('init_step', -1))
    return str(config.init_from), (None if step < 0 else step)
  return workdir, None


def load_encoder(config: Any, workdir: str, mesh: Any
                 ) -> tuple[Any, dict, int]:
  """The run's encoder: (model without probe, variables, checkpoint step).

  Only the encoder's variables are read (`h` needs nothing else), so the
  checkpoint of any mode that holds `params['encoder']` works.

  Raises:
    VisualizeError: no checkpoint, a damaged one, or one of another model.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from simclr_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from simclr_jax import models  # pylint: disable=g-import-not-at-top
  source, step = encoder_source(config, workdir)
  try:
    variables, step = checkpoint.restore_variables(source, mesh, step)
  except FileNotFoundError as e:
    raise VisualizeError(f'{e} (run it longer, or draw only --figures '
                         'curves)') from e
  except checkpoint.DamagedCheckpoint as e:
    raise VisualizeError(f'the checkpoint of {source!r} cannot be read: '
                         f'{str(e).splitlines()[0][:200]}') from e
  model = models.create_model(config.model, num_classes=0)
  size = int(config.image_size)
  wanted = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
  kept = {}
  for collection in ('params', 'batch_stats'):
    want = wanted.get(collection, {}).get('encoder')
    if want is None:
      continue
    have = variables.get(collection, {}).get('encoder') or {}
    shapes = [{jax.tree_util.keystr(p): tuple(x.shape) for p, x in
               jax.tree_util.tree_flatten_with_path(t)[0]}
              for t in (have, want)]
    differ = sorted(n for n in shapes[0].keys() | shapes[1].keys()
                    if shapes[0].get(n) != shapes[1].get(n))
    if differ:
      raise VisualizeError(
          f'the checkpoint of {source!r} is not an encoder of config.model '
          f'({len(differ)} {collection} arrays differ, e.g. encoder'
          f'{differ[0]}: {shapes[0].get(differ[0])} in the checkpoint, '
          f'{shapes[1].get(differ[0])} for config.model)')
    kept[collection] = {'encoder': have}
  return model, kept, step


def random_init_encoder(config: Any, mesh: Any) -> tuple[Any, dict]:
  """The encoder at initialisation, as pretraining starts it (same seed).

  `train.build` draws the initial parameters with the first half of
  `jax.random.split(jax.random.key(config.seed))`; Flax derives every
  submodule's key from its name, so the encoder equals step 0 of the run.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from simclr_jax import models  # pylint: disable=g-import-not-at-top
  from simclr_jax import parallel  # pylint: disable=g-import-not-at-top
  model = models.create_model(config.model, num_classes=0)
  init_key, _ = jax.random.split(jax.random.key(int(config.seed)))
  size = int(config.image_size)

  def init():
    variables = model.init(init_key, jnp.zeros((2, size, size, 3)),
                           train=False)
    return {c: {'encoder': variables[c]['encoder']}
            for c in ('params', 'batch_stats') if c in variables}

  return model, jax.jit(init, out_shardings=parallel.replicated(mesh))()


def eval_batch(config: Any, mesh: Any) -> int:
  """config.eval.batch_size rounded up to a multiple of the mesh size."""
  n = mesh.size
  return -(-int(config.eval.batch_size) // n) * n


def features(feature_fn: Any, variables: Any, images: np.ndarray, mesh: Any,
             batch: int) -> np.ndarray:
  """float32 `h` (n, C) of uint8 images (n, S, S, 3), `batch` at a time.

  Args:
    feature_fn: `evaluate.features.make_feature_fn(model, mesh)` (made once:
      every new one compiles again).
    variables: the encoder's variables, replicated.
    images: uint8 (n, S, S, 3).
    mesh: the mesh.
    batch: rows per call, a multiple of the mesh size.
  """
  from simclr_jax.evaluate import features as features_lib  # pylint: disable=g-import-not-at-top
  out = []
  for start in range(0, len(images), batch):
    chunk = images[start:start + batch]
    mask = np.zeros(batch, bool)
    mask[:len(chunk)] = True
    padded = np.zeros((batch,) + images.shape[1:], np.uint8)
    padded[:len(chunk)] = chunk
    got = features_lib.local_rows(
        feature_fn, variables, {'image': padded, 'label': np.zeros(
            batch, np.int32), 'mask': mask}, mesh)
    out.append(got['h'])
  return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
