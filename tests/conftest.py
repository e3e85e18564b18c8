"""Test set-up: every test sees 8 CPU devices, so sharded paths run for real."""

import os

# Must happen before JAX initialises its backends.
_flags = os.environ.get('XLA_FLAGS', '')
if '--xla_force_host_platform_device_count' not in _flags:
  os.environ['XLA_FLAGS'] = (
      _flags + ' --xla_force_host_platform_device_count=8').strip()
# Tests check values, not speed: XLA's backend optimisations roughly triple
# compile time on CPU for no benefit here.
if '--xla_backend_optimization_level' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' --xla_backend_optimization_level=0'
# SIMCLR_TEST_ACCELERATOR=1 (bench/gpu_check.py) leaves JAX's choice of
# platform alone: the default devices are then the GPU's (the 8 CPU devices
# are still there, as jax.devices('cpu')); by default tests see only the CPU.
ON_ACCELERATOR = os.environ.get('SIMCLR_TEST_ACCELERATOR') == '1'
if not ON_ACCELERATOR:
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  # TensorFlow must not grab a GPU or compete with JAX for threads in tests.
  os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
# The CPU convolution kernels that train_and_evaluate chooses by default
# (train.cpu_ynnpack_convs=False), so the tests run the default path.
from simclr_jax import parallel  # pylint: disable=g-import-not-at-top,wrong-import-position
os.environ['XLA_FLAGS'] = ' '.join(
    [os.environ['XLA_FLAGS'], *parallel.cpu_xla_flags()])


import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope='session')
def tiny_pretrained(tmp_path_factory):
  """(workdir, config, record) of 4 tiny pretraining steps, shared.

  The kNN monitor runs at step 2; the final kNN and probe scores are there
  for the pretrained and the randomly initialised encoder. Tests read the
  workdir and must not write to it.
  """
  from simclr_jax import train  # pylint: disable=g-import-not-at-top
  from tiny import tiny_config  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp('pretrain'))
  config = tiny_config()
  config.train.num_steps = 4
  config.train.log_every_steps = 1
  config.train.checkpoint_every_steps = 2
  config.eval.every_steps = 2
  config.eval.probe_epochs = 2.0
  config.eval.compare_random_init = True
  record = train.train_and_evaluate(config, workdir)
  return workdir, config, record
