"""Imports a SimCLR v1/v2 model saved by google-research/simclr's TF2 code.

    python -m simclr_jax.import_tf --source=PATH --workdir=DIR

PATH is a TF2 training checkpoint (`ckpt-N` prefix, its `.index` file, or a
folder with a `checkpoint` file: the latest) or a SavedModel that google's
`run.py` exported (a folder with `saved_model.pb`, or `saved_model/` holding
one, or step-numbered ones: the highest). The architecture (depth, width,
selective kernels, stem, projection head, supervised head) is read from the
variables' paths and shapes. DIR gets

* `checkpoints/<step>`: an orbax checkpoint {'step', 'params',
  'batch_stats'} of our `SimCLRModel` (the supervised head as the probe),
  written through `simclr_jax.checkpoint`; optimizer slots are not kept,
  BatchNorm moving statistics are;
* `config.json`: configs/default.py with the inferred `model` fields (and
  `image_size`, `data.name`, `train.online_probe` to match);
* `import_tf.json`: where it came from and google's flags for the model.

A bad path or a checkpoint that is not such a model is one line on stderr and
exit status 2. From Python: `config = import_checkpoint(source, workdir)`.

In a SavedModel the variables are stored under aggregate keys such as
`model/resnet_model/variables/100`; their object paths are recovered from the
object graph stored with them, never from positions.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax import checkpoint
from simclr_jax import models
from simclr_jax import tf_layout

SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'
OBJECT_GRAPH_KEY = '_CHECKPOINTABLE_OBJECT_GRAPH'
# google's longest variable path has 11 parts (an SK attention BN's).
MAX_PATH_LENGTH = 16


class ImportTFError(ValueError):
  """A source that cannot be imported, with a one-line message."""


def load_tensorflow() -> Any:
  """Imports TensorFlow quietly (only the commands need it)."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # Quiet start-up.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf


# ------------------------------------------------------------------ sources


def _latest_saved_model(folder: str) -> str | None:
  """`folder` if it is a SavedModel, else its highest-step SavedModel child."""
  if os.path.isfile(os.path.join(folder, 'saved_model.pb')):
    return folder
  steps = [d for d in os.listdir(folder) if d.isdigit()
           and os.path.isfile(os.path.join(folder, d, 'saved_model.pb'))]
  return os.path.join(folder, max(steps, key=int)) if steps else None


def resolve_source(source: str) -> tuple[str, int | None]:
  """The checkpoint prefix to read, and the step a SavedModel's folder names.

  Args:
    source: a `ckpt-N` prefix or its `.index` file, a folder with a TF2
      `checkpoint` file, a SavedModel folder, or a folder holding
      `saved_model/` (step-numbered SavedModels in it: the highest).

  Returns:
    (prefix for `tf.train.load_checkpoint`, step or None).

  Raises:
    ImportTFError: nothing to import there.
  """
  path = os.path.abspath(os.path.expanduser(source))
  if path.endswith('.index') and os.path.isfile(path):
    return path[:-len('.index')], None
  if os.path.isfile(path + '.index'):
    return path, None
  if not os.path.isdir(path):
    raise ImportTFError(f'--source={source}: no such checkpoint or folder')
  if os.path.isfile(os.path.join(path, 'checkpoint')):
    prefix = load_tensorflow().train.latest_checkpoint(path)
    if prefix and os.path.isfile(prefix + '.index'):
      return prefix, None
  for folder in (path, os.path.join(path, 'saved_model')):
    saved = _latest_saved_model(folder) if os.path.isdir(folder) else None
    if saved:
      prefix = os.path.join(saved, 'variables', 'variables')
      if not os.path.isfile(prefix + '.index'):
        raise ImportTFError(f'SavedModel {saved} has no variables/')
      name = os.path.basename(saved)
      return prefix, int(name) if name.isdigit() else None
  raise ImportTFError(
      f'--source={source}: no TF2 checkpoint (ckpt-N.index, checkpoint) or '
      'SavedModel (saved_model.pb) there')


# ---------------------------------------------------------------- variables


def _object_paths(graph: Any) -> dict[str, str]:
  """{checkpoint key: object path} for the model variables in `graph`.

  Walks the TrackableObjectGraph from the root along edges whose names are
  in google's vocabulary (and list indices), so aggregate edges of Keras
  SavedModels (`variables/17`, `keras_api`, ...) are never taken. The edge
  `layers` is a real attribute only under `block_groups/<i>`; elsewhere it is
  Keras's list of sublayers and is skipped.
  """
  out: dict[str, str] = {}
  stack = [(0, ())]
  while stack:
    node_id, path = stack.pop()
    node = graph.nodes[node_id]
    for attr in node.attributes:
      if attr.name == 'VARIABLE_VALUE' and path:
        out.setdefault(attr.checkpoint_key, '/'.join(path))
    for child in node.children:
      name = child.local_name
      if not (name.isdigit() or name in tf_layout.VOCABULARY):
        continue
      if name == 'layers' and not (
          len(path) >= 2 and path[-2] == 'block_groups'):
        continue
      if len(path) < MAX_PATH_LENGTH:
        stack.append((child.node_id, path + (name,)))
  return out


def read_variables(prefix: str) -> tuple[dict[str, np.ndarray], int | None]:
  """The model variables of a TF2 checkpoint, by google's object paths.

  Args:
    prefix: a checkpoint prefix (a training `ckpt-N` or a SavedModel's
      `variables/variables`).

  Returns:
    ({object path: array} for the variables under `model/`, the value of
    `global_step` when the checkpoint has one).

  Raises:
    ImportTFError: unreadable, or a name-based (TF1) checkpoint.
  """
  tf = load_tensorflow()
  from tensorflow.core.protobuf import trackable_object_graph_pb2  # pylint: disable=g-import-not-at-top
  try:
    reader = tf.train.load_checkpoint(prefix)
  except (tf.errors.OpError, ValueError) as e:
    raise ImportTFError(f'cannot read checkpoint {prefix}: '
                        f'{str(e).splitlines()[0]}') from e
  keys = reader.get_variable_to_shape_map()
  if OBJECT_GRAPH_KEY not in keys:
    raise ImportTFError(
        f'{prefix} is a name-based (TF1) checkpoint; only TF2 checkpoints and '
        'SavedModels of google-research/simclr tf2/ are supported')
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(reader.get_tensor(OBJECT_GRAPH_KEY))
  arrays = {path: reader.get_tensor(key)
            for key, path in _object_paths(graph).items()
            if path.startswith('model/')}
  step_key = 'global_step' + SUFFIX
  step = int(reader.get_tensor(step_key)) if step_key in keys else None
  return arrays, step


# ------------------------------------------------------------------- import


def _config(arch: tf_layout.Architecture) -> Any:
  """configs/default.py with the architecture's fields."""
  # configs/ is no package: importable from the repository root, as main.py.
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  for k, v in arch.model_fields().items():
    config.model[k] = v
  config.model.bn_momentum = 0.9  # google's batch_norm_decay default
  config.model.bn_epsilon = 1e-5  # google's BATCH_NORM_EPSILON
  config.model.dtype = 'float32'
  if arch.stem == 'cifar':  # google picks the CIFAR stem for <= 32 px
    config.image_size = 32
    config.data.name = 'cifar10'
    config.data.eval_split = 'test'
  config.train.online_probe = arch.num_classes > 0
  return config


def _check_against_model(variables: dict[str, Any], config: Any,
                         num_classes: int) -> None:
  """The arrays have exactly the shapes our model's `init` gives."""
  model = models.create_model(config.model, num_classes=num_classes)
  size = config.image_size
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  want = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), x)
  got = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                     variables)
  if jax.tree.structure(got) != jax.tree.structure(want) or any(
      (a.shape, a.dtype) != (b.shape, b.dtype)
      for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want))):
    raise ImportTFError('the inferred model does not have the checkpoint\'s '
                        'variable shapes')


def import_checkpoint(source: str, workdir: str) -> Any:
  """Imports google's TF2 checkpoint or SavedModel at `source` into `workdir`.

  Args:
    source: see `resolve_source`.
    workdir: a new (or empty) folder; gets `checkpoints/<step>`,
      `config.json` and `import_tf.json`.

  Returns:
    The inferred config (an ml_collections ConfigDict, configs/default.py
    with the model's fields), also written to `workdir/config.json`.

  Raises:
    ImportTFError: bad path, unrecognised checkpoint or a used workdir (one
      line).
  """
  ckpt_dir = checkpoint.checkpoint_dir(workdir)
  if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
    raise ImportTFError(f'{ckpt_dir} already has checkpoints; use a new '
                        '--workdir')
  prefix, folder_step = resolve_source(source)
  arrays, step = read_variables(prefix)
  try:
    arch = tf_layout.infer_architecture(
        {k: v.shape for k, v in arrays.items()})
  except tf_layout.UnrecognisedCheckpoint as e:
    raise ImportTFError(f'{prefix}: not a SimCLR model of '
                        f'google-research/simclr: {e}') from e
  step = step if step is not None else (folder_step or 0)
  config = _config(arch)
  variables = tf_layout.to_flax(
      {k: np.asarray(v, np.float32) for k, v in arrays.items()}, arch)
  _check_against_model(variables, config, arch.num_classes)

  os.makedirs(workdir, exist_ok=True)
  manager = checkpoint.create_manager(workdir, keep=0)
  state = {'step': np.asarray(step, np.int32), **variables}
  checkpoint.save(manager, step, state, force=True)
  manager.wait_until_finished()
  manager.close()
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2))
  google_flags = {
      'resnet_depth': arch.depth,
      'width_multiplier': arch.base_width * arch.width_multiplier / 64,
      'sk_ratio': arch.sk_ratio,
      'image_size': config.image_size,
      'proj_head_mode': 'nonlinear' if arch.num_proj_layers else 'none',
      'num_proj_layers': arch.num_proj_layers,
      'proj_out_dim': arch.proj_out_dim,
  }
  with open(os.path.join(workdir, 'import_tf.json'), 'w') as f:
    json.dump({'source': os.path.abspath(source), 'checkpoint': prefix,
               'step': step, 'num_classes': arch.num_classes,
               'google_flags': google_flags}, f, indent=2)
  return config


def _summary(config: Any, workdir: str) -> str:
  m = config.model
  return (f'imported ResNet-{m.depth} (base width {m.base_width} x '
          f'{m.width_multiplier}, {m.stem} stem, sk_ratio {m.sk_ratio}, '
          f'{m.num_proj_layers}-layer head) into {workdir}')


def run_cli(flag_help: dict[str, str], action: Callable[..., str],
            errors: type[Exception]) -> None:
  """Runs `action(**flags)` as a command (this module's and export_tf's).

  Defines one required string flag per `flag_help` entry, prints the line
  `action` returns, or `error: <message>` on stderr with exit status 2 when it
  raises `errors` (or gets stray arguments).
  """
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  for name, text in flag_help.items():
    flags.DEFINE_string(name, None, text)
  flags.mark_flags_as_required(list(flag_help))

  def main(argv: list[str]) -> int:
    if len(argv) > 1:
      print(f'error: unexpected arguments: {" ".join(argv[1:])}',
            file=sys.stderr)
      return 2
    logging.set_verbosity(logging.WARNING)  # orbax's INFO lines
    try:
      print(action(**{name: flags.FLAGS[name].value for name in flag_help}))
    except errors as e:
      print(f'error: {e}', file=sys.stderr)
      return 2
    return 0

  app.run(main)


if __name__ == '__main__':
  run_cli({'source': 'google TF2 checkpoint or SavedModel.',
           'workdir': 'Folder to write our checkpoint and config to.'},
          lambda source, workdir: _summary(import_checkpoint(source, workdir),
                                           workdir),
          ImportTFError)
