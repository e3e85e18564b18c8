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
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
# TensorFlow must not grab a GPU or compete with JAX for threads in tests.
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
