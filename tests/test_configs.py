"""Every config file loads, declares no field beyond configs/default.py, and validates."""

import importlib
import os
import pkgutil

import pytest

import configs
from configs import default
from simclr_jax import config_lib

CONFIG_NAMES = sorted(m.name for m in pkgutil.iter_modules(configs.__path__))


def _flat_keys(cfg, prefix=''):
  keys = set()
  for k, v in cfg.items():
    if hasattr(v, 'items'):
      keys |= _flat_keys(v, prefix + k + '.')
    else:
      keys.add(prefix + k)
  return keys


def test_config_files_found():
  assert {'default', 'demo', 'imagenet', 'imagenet_v1', 'cifar10',
          'cifar10_r50', 'cifar10_folder', 'cifar10_cpu', 'cifar100', 'stl10',
          'imagenette', 'imagenet_distill'} <= set(CONFIG_NAMES)


@pytest.mark.parametrize('name', CONFIG_NAMES)
def test_config_declares_only_default_fields_and_validates(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  assert _flat_keys(config) == _flat_keys(default.get_config())
  if config.data.source == 'folder' and not config.data.data_dir:
    config.data.data_dir = os.path.dirname(__file__)  # Any existing folder.
  if config.mode != 'pretrain':  # The run it reads is named on the command line.
    config.init_from = os.path.dirname(__file__)
  config_lib.validate(config)


def test_config_docstrings_open_with_the_command():
  for name in CONFIG_NAMES:
    if name == 'default':
      continue
    doc = importlib.import_module(f'configs.{name}').__doc__
    assert f'--config=configs/{name}.py' in doc, name


def _host_cropped(config):
  """Whether the config's source sends host-cropped (B, 2, S, S, 3) views."""
  if config.data.crop != 'auto':
    return config.data.crop == 'host'
  return config.data.source == 'folder' or str(config.data.name).startswith(
      ('imagenet2012', 'imagenette'))


@pytest.mark.parametrize('name', [n for n in CONFIG_NAMES if n != 'default'])
def test_every_config_traces_one_train_step(name):
  """Each config's model, optimiser and sharded train step, built by
  train.build as a run builds them, lowers for one step on tiny shapes
  (32 px, base width 4, batch 16): no config can rot."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from simclr_jax import parallel, train  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f'configs.{name}').get_config()
  config.image_size = 32
  config.model.base_width = 4
  config.train.global_batch_size = 16
  mesh = parallel.make_mesh(8)
  setup = train.build(config, mesh, num_classes=10, total_steps=100,
                      steps_per_epoch=10)
  batch = NamedSharding(mesh, P(parallel.AXIS))
  s = config.augment.output_size  # 32 unless the config trains smaller views.
  shape = (16, 2, s, s, 3) if _host_cropped(config) else (16, 32, 32, 3)
  images = jax.ShapeDtypeStruct(shape, jnp.uint8, sharding=batch)
  labels = jax.ShapeDtypeStruct((16,), jnp.int32, sharding=batch)
  lowered = setup.train_step.lower(setup.abstract_state(), images, labels,
                                   setup.replicated_train_key())
  state_out, metrics = lowered.out_info
  assert set(metrics) >= {'loss', 'nt_xent', 'probe_accuracy',
                          'learning_rate'}
  assert jax.tree.structure(state_out) == jax.tree.structure(
      setup.abstract_state())


def test_view_size_follows_image_size_until_it_is_set():
  config = default.get_config()
  config.image_size = 48
  assert config.augment.output_size == 48
  # Setting the views' side breaks the link, and leaves image_size alone.
  config.augment.output_size = 24
  assert (config.image_size, config.augment.output_size) == (48, 24)
  config.image_size = 64
  assert (config.image_size, config.augment.output_size) == (64, 24)
  config_lib.validate(config)


def _parsed(*overrides):
  """configs/demo.py as main.py parses it, with --config.* overrides."""
  import main  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  argv = ['main.py', '--config=configs/demo.py', '--workdir=/unused',
          *overrides]
  values = flags.FlagValues()
  main.define_flags(values, sys_argv=argv)
  main.parse_flags(argv, values)
  return values.config


def test_view_size_flag_sets_only_the_views():
  demo_size = importlib.import_module('configs.demo').get_config().image_size
  config = _parsed('--config.augment.output_size=12')
  assert (config.image_size, config.augment.output_size) == (demo_size, 12)
  assert _parsed('--config.image_size=40').augment.output_size == 40


def test_probe_and_finetune_views_have_the_evaluation_side():
  from simclr_jax.evaluate import linear  # pylint: disable=g-import-not-at-top
  config = importlib.import_module('configs.cifar10_cpu').get_config()
  assert (config.image_size, config.augment.output_size) == (32, 20)
  assert linear.crop_flip_spec(config).output_size == 32


@pytest.mark.parametrize('field,value,message', [
    ('train.global_batch_size', 0, 'global_batch_size must be positive'),
    ('data.source', 'nope', 'data.source must be one of'),
    ('model.dtype', 'float16', 'model.dtype must be one of'),
    ('augment.grayscale_prob', 1.5, 'augment.grayscale_prob'),
    ('optim.name', 'rmsprop', 'optim.name'),
])
def test_validate_names_the_field(field, value, message):
  config = default.get_config()
  section, key = field.split('.')
  setattr(getattr(config, section), key, value)
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(config)


# One or more bad values for EVERY field of configs/default.py, as a user
# would type them on the command line over configs/demo.py: values out of
# range, of the wrong type, or unknown names. Each must give one line on
# stderr and exit status 2, before any data is read or device touched.
BAD_VALUES = {
    'seed': ['-1', 'abc'],
    'mode': ['evaluate', 'linear_eval', 'distill'],  # Lacking init_from.
    'init_from': ['/nonexistent/run --config.mode=export'],
    'init_step': ['-2'],
    'linear_eval.epochs': ['0'],
    'linear_eval.batch_size': ['0'],
    'linear_eval.base_learning_rate': ['-0.1'],
    'linear_eval.momentum': ['1.0'],
    'linear_eval.weight_decay': ['-1'],
    'linear_eval.augment': ['sometimes'],
    'linear_eval.checkpoint_every_steps': ['0'],
    'finetune.label_fraction': ['0', '1.5'],
    'finetune.subset_file': ['/nonexistent/ids.txt'],
    'finetune.from_proj_layer': ['-1', '9'],
    'finetune.epochs': ['-1'],
    'finetune.batch_size': ['-2'],
    'finetune.base_learning_rate': ['0'],
    'finetune.momentum': ['2'],
    'finetune.weight_decay': ['-0.1'],
    'finetune.checkpoint_every_steps': ['0'],
    'distill.temperature': ['0', '-1'],
    'distill.label_weight': ['1.5', '-0.1'],
    'distill.student_init': ['/nonexistent/pretrain', 'random'],
    'distill.from_proj_layer': ['-1', '9'],
    'distill.teacher_proj_layer': ['-2'],
    'distill.epochs': ['0'],
    'distill.batch_size': ['0'],
    'distill.base_learning_rate': ['-1'],
    'distill.warmup_epochs': ['-1'],
    'distill.momentum': ['1.5'],
    'distill.weight_decay': ['-1e-4'],
    'distill.checkpoint_every_steps': ['0'],
    'export.split': ['test'],
    'export.include_z': ['z'],
    'image_size': ['0', '16.5'],
    'augment.blur': ['maybe'],
    'augment.blur_kernel_fraction': ['-0.1', '1.5'],
    'augment.blur_prob': ['1.5'],
    'augment.blur_sigma': ['(2.0,0.1)', '(0.5,)', 'x'],
    'augment.brightness_mode': ['v3'],
    'augment.color_jitter_prob': ['-0.5'],
    'augment.color_jitter_strength': ['-1'],
    'augment.crop_ratio': ['(2.0,1.0)', '(0,1)'],
    'augment.crop_scale': ['(0.5,0.1)', '(0.0,1.0)', '(0.5,1.5)'],
    'augment.flip_prob': ['2'],
    'augment.grayscale_prob': ['-1'],
    'augment.output_size': ['0'],
    'augment.strategy': ['pmap'],
    'data.cache': ['sometimes'],
    'data.crop': ['center'],
    'data.data_dir': ['/nonexistent/photos'],
    'data.download': ['perhaps'],
    'data.eval_crop_fraction': ['0', '1.5'],
    'data.eval_split': ['test'],  # The digits have one split.
    'data.eval_dir': ['/nonexistent/test', '/tmp'],  # Digits are no folder.
    'data.holdout_fraction': ['1.0', '-0.1'],
    'data.name': [],  # Checked when the data is opened: test_cli.
    'data.num_parallel_calls': ['0', '-5'],
    'data.on_undecodable': ['ignore'],
    'data.prefetch': ['-1'],
    'data.resize_to': ['-16'],
    'data.shuffle_buffer': ['0'],
    'data.source': ['imagenet', 'tfds --config.data.name='],
    'data.train_split': [' --config.data.source=tfds'],
    'distributed.coordinator_address': ['localhost', 'host:port'],
    'distributed.initialize': ['yes please'],
    'distributed.num_processes': ['-2'],
    'distributed.process_id': ['-3'],
    'eval.batch_size': ['0'],
    'eval.compare_random_init': ['2'],
    'eval.knn_k': ['-1'],
    'eval.linear_probe': ['nope'],
    'eval.probe_l2': ['-1e-4'],
    'eval.probe_epochs': ['0'],
    'eval.probe_learning_rate': ['-1'],
    'eval.knn_temperature': ['0'],
    'eval.every_steps': ['-5'],
    'loss.temperature': ['0', '-0.5'],
    'model.base_width': ['0', '-8'],
    'model.bn_epsilon': ['0', '-1e-5'],
    'model.bn_momentum': ['1.0', '-0.1'],
    'model.depth': ['20', '0'],
    'model.dtype': ['float16', 'int8'],
    'model.num_proj_layers': ['-1'],
    'model.proj_out_dim': ['0'],
    'model.remat': ['kinda', '2'],
    'model.sk_ratio': ['-0.0625', 'inf'],
    'model.stem': ['resnet'],
    'model.width_multiplier': ['5', '0'],
    'model.zero_init_residual': ['kinda'],
    'optim.base_learning_rate': ['0', '-0.1'],
    'optim.eeta': ['0'],
    'optim.exclude_bn_and_bias': ['often'],
    'optim.lr_scaling': ['quadratic'],
    'optim.momentum': ['1.0', '-0.5'],
    'optim.name': ['rmsprop'],
    'optim.warmup_epochs': ['-1'],
    'optim.weight_decay': ['-1e-4'],
    'train.checkpoint_every_steps': ['0'],
    'train.cpu_devices': ['-1'],
    'train.cpu_ynnpack_convs': ['maybe'],
    'train.cpu_materialize_conv_inputs': ['maybe'],
    'train.cpu_strided_gradient_forms': ['maybe'],
    'train.cpu_border_forms': ['maybe'],
    'train.global_batch_size': ['0', '-16', '1.5'],
    'train.keep_checkpoints': ['-1'],
    'train.log_every_steps': ['0'],
    'train.num_devices': ['-1'],
    'train.num_epochs': ['-1', '0 --config.train.num_steps=0'],
    'train.num_steps': ['-3'],
    'train.online_probe': ['maybe'],
    'train.allow_config_change': ['whatever'],
}


def test_bad_value_table_covers_every_field():
  assert set(BAD_VALUES) == _flat_keys(default.get_config())


def _main_check(argv, capsys):
  """main.py's own parsing and validation, in-process: (exit code, stderr)."""
  import main  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  argv = ['main.py', *argv]
  fv = flags.FlagValues()
  main.define_flags(fv, sys_argv=argv)
  try:
    main.parse_flags(argv, fv)
    main.validate(fv)
  except SystemExit as e:
    return e.code, capsys.readouterr().err
  return 0, capsys.readouterr().err


@pytest.mark.parametrize('field,value', [
    (f, v) for f, values in BAD_VALUES.items() for v in values])
def test_every_bad_field_value_is_one_line_and_exit_2(field, value, capsys,
                                                      tmp_path):
  argv = ['--config=configs/demo.py', f'--workdir={tmp_path / "w"}',
          *f'--config.{field}={value}'.split(' ')]
  code, err = _main_check(argv, capsys)
  lines = err.strip().splitlines()
  assert code == 2, (argv, err)
  assert len(lines) == 1 and lines[0].startswith('error: '), err
  assert 'Traceback' not in err
  # The line names the field (or, for a missing value, the one it needs).
  name = field.split('.')[-1]
  assert (name in lines[0] or 'data.name' in lines[0] or
          (name == 'output_size' and 'image_size' in lines[0])), lines[0]


def test_proj_layers_zero_is_accepted(capsys, tmp_path):
  # The head supports no hidden layer (z = h projected by one dense layer).
  code, err = _main_check(['--config=configs/demo.py',
                           f'--workdir={tmp_path / "w"}',
                           '--config.model.num_proj_layers=0'], capsys)
  assert code == 0, err
