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
  assert {'default', 'demo', 'imagenet', 'cifar10'} <= set(CONFIG_NAMES)


@pytest.mark.parametrize('name', CONFIG_NAMES)
def test_config_declares_only_default_fields_and_validates(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  assert _flat_keys(config) == _flat_keys(default.get_config())
  if config.data.source == 'folder' and not config.data.data_dir:
    config.data.data_dir = os.path.dirname(__file__)  # Any existing folder.
  config_lib.validate(config)


def test_config_docstrings_open_with_the_command():
  for name in CONFIG_NAMES:
    if name == 'default':
      continue
    doc = importlib.import_module(f'configs.{name}').__doc__
    assert f'--config=configs/{name}.py' in doc, name


def test_image_size_reference_follows_overrides():
  config = default.get_config()
  config.image_size = 48
  assert config.augment.output_size == 48


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
