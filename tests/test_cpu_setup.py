"""The CPU backend set-up of train_and_evaluate: device count and the XLA
convolution kernels (parallel.setup_cpu_devices, parallel.cpu_xla_flags)."""

import json
import os
import subprocess
import sys

import jaxlib
import numpy as np

from simclr_jax import parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KNOWN = parallel.jaxlib_knows_ynn_flag()


def test_flag_only_where_known_and_not_chosen(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
  assert parallel.cpu_xla_flags() == ([parallel.YNN_CONVS_OFF] if KNOWN
                                      else [])
  assert parallel.cpu_xla_flags(ynnpack_convs=True) == []
  # A user's own choice of YNN fusions is left alone.
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=')
  assert parallel.cpu_xla_flags() == []
  # XLA aborts on a flag value it does not know: never set for other jaxlibs.
  monkeypatch.setenv('XLA_FLAGS', '')
  monkeypatch.setattr(jaxlib, '__version__', '99.1.0')
  assert parallel.cpu_xla_flags() == []


# A fresh process: set up as train_and_evaluate does, then a ResNet-like
# convolution forward and backward; prints the set-up and the results.
_CHILD = r'''
import json, sys
import numpy as np
from simclr_jax import parallel
parallel.setup_cpu_devices(int(sys.argv[1]), sys.argv[2] == 'ynnpack')
import os, jax, jax.numpy as jnp
from jax import lax

def f(x, w):
  y = lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)),
                               dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return jnp.sum(jnp.tanh(y))

rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=(4, 16, 16, 8)), jnp.float32)
w = jnp.asarray(rng.normal(size=(3, 3, 8, 16)) * 0.1, jnp.float32)
loss, (gx, gw) = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(x, w)
print(json.dumps({'devices': jax.device_count(),
                  'xla_flags': os.environ.get('XLA_FLAGS', ''),
                  'loss': float(loss), 'gx': np.asarray(gx).ravel().tolist(),
                  'gw': np.asarray(gw).ravel().tolist()}))
'''


def _child(devices, kernels):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env['JAX_PLATFORMS'] = 'cpu'
  out = subprocess.run([sys.executable, '-c', _CHILD, str(devices), kernels],
                       cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300, check=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def test_fresh_process_gets_devices_and_kernels_same_values():
  ours = _child(2, 'xla')
  assert ours['devices'] == 2
  assert (parallel.YNN_CONVS_OFF in ours['xla_flags']) == KNOWN
  ynn = _child(3, 'ynnpack')
  assert ynn['devices'] == 3
  assert 'ynn_fusion_type' not in ynn['xla_flags']
  # Other kernels, the same convolution: equal to float32 rounding.
  np.testing.assert_allclose(ours['loss'], ynn['loss'], rtol=1e-5)
  np.testing.assert_allclose(ours['gx'], ynn['gx'], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ours['gw'], ynn['gw'], rtol=1e-4, atol=1e-5)
