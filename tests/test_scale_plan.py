"""bench/scale_plan.py: the plan's arithmetic, its reading of the compiled
step (collective bytes, memory), and the real step compiled for a TPU
topology when libtpu is installed (`pip install -e ".[tpu]"`)."""

import importlib.util
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simclr_jax import augment
from simclr_jax import parallel
from tiny import tiny_config

_PATH = os.path.join(os.path.dirname(__file__), '..', 'bench', 'scale_plan.py')
_spec = importlib.util.spec_from_file_location('scale_plan', _PATH)
scale_plan = importlib.util.module_from_spec(_spec)
sys.modules['scale_plan'] = scale_plan  # Its dataclasses look it up.
_spec.loader.exec_module(scale_plan)
import hlo_collectives  # pylint: disable=g-import-not-at-top,wrong-import-position  (bench/, on the path scale_plan set)


def _plan_config():
  """The tiny config in bfloat16, host-cropped like ImageNet's."""
  config = tiny_config()
  config.model.dtype = 'bfloat16'
  config.data.crop = 'host'
  return config


def _check_collectives(plan):
  """The collective bytes read from the HLO agree with the shapes'."""
  cats = plan['collectives']['by_category']
  shapes = plan['collectives_from_shapes']
  # Every device receives z of both views for the whole batch, float32.
  assert cats['z_all_gather']['result_bytes'] == shapes['z_all_gather_bytes']
  # Forward BatchNorm: two float32 all-reduces (mean, then variance) of C.
  assert (cats['bn_statistics_forward']['result_bytes'] ==
          shapes['bn_statistics_forward_bytes'])
  # Backward: every parameter's gradient, float32 although the model
  # computes in bfloat16, plus the BatchNorm statistics' cotangents (at most
  # three all-reduces of C each) and the transpose of the z all-gather.
  back = cats['backward_gradients_and_bn']
  assert set(back['bytes_by_dtype']) == {'f32'}
  extra = back['result_bytes'] - shapes['gradient_all_reduce_bytes']
  assert 0 < extra <= (1.5 * shapes['bn_statistics_forward_bytes'] +
                       shapes['z_all_gather_bytes'])
  assert back['ops'].get('all-reduce', 0) / back['count'] > 0.9
  assert plan['collectives']['total']['wire_bytes'] > 0


def test_plan_of_the_real_step_on_cpu_devices():
  """The tiny real step on 8 CPU devices: what the plan reads from the
  compiled program agrees with the model's shapes, and its predictions are
  the stated arithmetic."""
  config = _plan_config()
  mesh = parallel.make_mesh(devices=jax.devices()[:8])
  target = scale_plan.TARGETS['h100x8']
  compiled, info = scale_plan.compile_step(
      config, mesh, global_batch=16, num_classes=10, num_train_examples=1000)
  assert info['steps_per_epoch'] == 1000 // 16
  assert info['images_shape'] == [16, 2, 8, 8, 3]
  plan = scale_plan.analyse(
      compiled, info, target=target, num_devices=8, global_batch=16,
      utilization=0.5, collective_latency_s=1e-5, host_images_per_core=340.0)

  from simclr_jax import train  # pylint: disable=g-import-not-at-top
  setup = train.build(config, mesh, num_classes=10, total_steps=10,
                      steps_per_epoch=5)
  state = setup.abstract_state()
  assert info['num_params'] == sum(
      math.prod(x.shape) for x in jax.tree.leaves(state.params))
  assert plan['collectives_from_shapes'] == {
      'z_all_gather_bytes': 2 * 16 * config.model.proj_out_dim * 4,
      'gradient_all_reduce_bytes': 4 * info['num_params'],
      'bn_statistics_forward_bytes': 8 * info['bn_channels']}
  _check_collectives(plan)

  # Memory: the donated state aliases its update; the arguments hold at
  # least the replicated state and this device's uint8 batch.
  m = plan['memory']
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)
                    if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key))
  assert m['argument_bytes'] >= state_bytes + 2 * 2 * 8 * 8 * 3
  assert m['alias_bytes'] >= 0.9 * state_bytes
  assert m['peak_bytes'] == (m['argument_bytes'] + m['output_bytes'] -
                             m['alias_bytes'] + m['temp_bytes'] +
                             m['generated_code_bytes'])
  assert m['fits'] and m['hbm_bytes'] == 80e9

  # Predictions: the stated formulas.
  pred = plan['prediction']
  flops = plan['flops_per_step_per_device']
  assert flops > 0
  assert pred['compute_s'] == pytest.approx(flops / (989e12 * 0.5))
  coll = plan['collectives']['total']
  assert pred['communication_s'] == pytest.approx(
      coll['wire_bytes'] / 450e9 + coll['count'] * 1e-5)
  assert pred['step_s'] == pytest.approx(pred['compute_s'] +
                                         pred['communication_s'])
  assert pred['epoch_s'] == pytest.approx(62 * pred['step_s'])
  host = pred['host_input']
  assert host['images_per_s'] == pytest.approx(16 / pred['step_s'])
  assert host['host_cores_total'] == pytest.approx(host['images_per_s'] / 340)
  assert host['hosts'] == 1.0


def test_mesh_from_given_devices():
  """make_mesh(devices=...) keeps the given devices, in order, and the
  mesh's platform is theirs."""
  devices = jax.devices()[:8][::-1]
  mesh = parallel.make_mesh(devices=devices)
  assert list(mesh.devices.flat) == devices
  assert mesh.axis_names == ('batch',) and parallel.platform(mesh) == 'cpu'
  assert parallel.make_mesh(2, devices=devices).devices.tolist() == devices[:2]
  with pytest.raises(ValueError, match='only 8 devices'):
    parallel.make_mesh(9, devices=devices)


def test_google_reference_and_v3_arithmetic():
  """v3: 2 devices per chip share its peak, HBM and bandwidth; google's 6 h
  for 100 epochs of 312 steps is 0.69 s a step."""
  v3 = scale_plan.TARGETS['v3-32']
  ref = scale_plan.google_reference(6.19e12, v3, 312)
  assert ref['step_s'] == pytest.approx(6 * 3600 / 31200)
  assert ref['implied_utilization_of_bf16_peak'] == pytest.approx(
      6.19e12 / (ref['step_s'] * 61.5e12))
  pred = scale_plan.predict(
      flops_per_device=6.15e12, wire_bytes_per_device=0.0, num_collectives=0,
      target=v3, num_devices=32, global_batch=4096, steps_per_epoch=312,
      utilization=0.5, collective_latency_s=0.0, host_images_per_core=340.0)
  assert pred['compute_s'] == pytest.approx(0.2)
  assert pred['host_input']['hosts'] == 4.0
  mem = scale_plan.memory_summary(
      type('Stats', (), dict(argument_size_in_bytes=10 * 2**30,
                             output_size_in_bytes=9 * 2**30,
                             alias_size_in_bytes=9 * 2**30,
                             temp_size_in_bytes=7 * 2**30,
                             generated_code_size_in_bytes=2**20))(),
      v3.hbm_bytes_per_chip / v3.devices_per_chip)
  assert mem['hbm_gib'] == 16.0 and not mem['fits']


def test_count_collectives_reads_tuples_and_async_starts():
  hlo = '\n'.join([
      '  %ar = (f32[8]{0}, bf16[4,2]{1,0}) all-reduce(%a, %b), channel_id=1, '
      'metadata={op_name="jit(f)/transpose(jvp(SimCLRModel))/conv/x"}',
      '  %ag = ((f32[2,4]{1,0}), f32[16,4]{1,0}) all-gather-start(%z), '
      'metadata={op_name="jit(f)/jvp()/all_gather"}',
      '  %agd = f32[16,4]{1,0} all-gather-done(%ag)',
      '  ROOT %rs = f32[2]{0} reduce-scatter(%g)',
  ])
  got = hlo_collectives.count_collectives(hlo, num_devices=8)['by_category']
  back = got['backward_gradients_and_bn']
  assert back['result_bytes'] == 8 * 4 + 8 * 2
  assert back['bytes_by_dtype'] == {'f32': 32, 'bf16': 16}
  assert back['wire_bytes'] == pytest.approx(2 * 7 / 8 * 48)
  assert got['z_all_gather']['result_bytes'] == 16 * 4 * 4
  assert got['unattributed']['wire_bytes'] == 7 * 8


def _libtpu_available():
  try:
    return importlib.util.find_spec('libtpu') is not None
  except (ImportError, ValueError):
    return False


@pytest.mark.skipif(not _libtpu_available(),
                    reason='libtpu not installed (pip install -e ".[tpu]")')
def test_real_step_compiles_for_a_tpu_topology():
  """The real step, compiled by libtpu for a 2x2 TPU v5e (4 chips) on this
  CPU host: TPU memory and FLOPs, the collectives of the shapes, and the
  augmentation strategy of a TPU ('vmap': no while loop), not the host's."""
  target = scale_plan.TARGETS['v5e-64']
  devices = scale_plan.make_devices(target, topology='v5e:2x2')
  assert len(devices) == 4 and devices[0].platform == 'tpu'
  mesh = parallel.make_mesh(devices=devices)
  assert parallel.platform(mesh) == 'tpu'
  assert augment.resolve_strategy('auto', parallel.platform(mesh)) == 'vmap'
  config = _plan_config()
  compiled, info = scale_plan.compile_step(
      config, mesh, global_batch=16, num_classes=10, num_train_examples=1000)
  plan = scale_plan.analyse(
      compiled, info, target=target, num_devices=4, global_batch=16,
      utilization=0.5, collective_latency_s=1e-5, host_images_per_core=340.0)
  assert plan['memory']['fits'] and plan['flops_per_step_per_device'] > 0
  assert 'while(' not in compiled.as_text()
  _check_collectives(plan)
