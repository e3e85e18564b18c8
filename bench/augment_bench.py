"""Throughput of SimCLR two-view augmentation: our JAX path vs tf.data.

    python bench/augment_bench.py            # full sizes, 1 and 8 CPU devices
    python bench/augment_bench.py --quick    # tiny sizes, default strategy only

Prints one JSON object. Each measurement runs in its own subprocess, so the
JAX device count (XLA_FLAGS, set before JAX starts) can differ per run and
TensorFlow and JAX never share a process:

  * `jax`: jit of `augment.two_views` on a uint8 batch (after warm-up, with
    block_until_ready), per device count and strategy ('map': a sequential
    loop over views with real branches, the default on CPU; 'vmap': all views
    at once with selects, the default on GPU/TPU). With n > 1 devices the
    batch is sharded over a 1-D mesh and augmented under `jax.shard_map` with
    one key per example, as in the train step.
  * `tf`: a tf.data pipeline doing the same ops with tf.image (google's
    data_util recipe: sample_distorted_bounding_box crop, bicubic resize,
    flip, random-order colour jitter, grayscale, blur), `map` with AUTOTUNE
    over the examples, batched, prefetched.
  * `components` (1 device): the cost of each op inside the jitted batch
    (by turning it off), per strategy, the exact HSV hue vs a YIQ-rotation
    hue, the
    random-order jitter (all 4 ops computed per step, then a select) vs one
    fixed order, and the shift-and-add blur vs a per-image depthwise conv.

Cases: 'cifar32' (32x32 images, 32 px views, no blur, as the paper's CIFAR
recipe), 'crop224' (256x256 images cropped and resized on device to 224),
'host224' (host-cropped (N, 2, 224, 224, 3) input: flip, colour, blur only).
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (input shape after the batch dim, output size, blur)
CASES = {
    'cifar32': ((32, 32, 3), 32, False),
    'crop224': ((256, 256, 3), 224, True),
    'host224': ((2, 224, 224, 3), 224, True),
}
QUICK_CASES = {
    'cifar32': ((32, 32, 3), 32, False),
    'crop64': ((72, 72, 3), 64, True),
    'host64': ((2, 64, 64, 3), 64, True),
}


def batch_sizes(quick):
  if quick:
    return {'cifar32': 16, 'crop64': 8, 'host64': 8}
  return {'cifar32': 512, 'crop224': 64, 'host224': 64}


def make_images(shape, batch, seed=0):
  import numpy as np
  rng = np.random.default_rng(seed)
  # Smooth random images (noise would make every op look the same).
  small = rng.integers(0, 256, (batch,) + shape[:-3] + (8, 8, 3))
  reps = (1,) * (len(shape) - 2) + (shape[-3] // 8 + 1, shape[-2] // 8 + 1, 1)
  big = np.kron(small, np.ones(reps))[..., :shape[-3], :shape[-2], :]
  return big.astype(np.uint8)


def timed(fn, iters, warmup=2):
  """Seconds per call of fn() after `warmup` calls."""
  for _ in range(warmup):
    fn()
  start = time.perf_counter()
  for _ in range(iters):
    fn()
  return (time.perf_counter() - start) / iters


# --------------------------------------------------------------------- JAX


def jax_worker(args):
  os.environ['XLA_FLAGS'] = (
      os.environ.get('XLA_FLAGS', '') +
      f' --xla_force_host_platform_device_count={args.devices}').strip()
  sys.path.insert(0, ROOT)
  import jax
  import numpy as np
  from jax.sharding import NamedSharding, PartitionSpec as P
  from simclr_jax import augment

  n = args.devices
  if jax.device_count() < n:
    raise SystemExit(f'asked for {n} devices, JAX has {jax.device_count()}')
  cases = QUICK_CASES if args.quick else CASES
  sizes = batch_sizes(args.quick)
  iters = 1 if args.quick else args.iters
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:n]), ('batch',))
  out = {'platform': jax.devices()[0].platform, 'device_count': n,
         'device_kind': jax.devices()[0].device_kind, 'cases': {}}

  def build(spec, strategy):
    def per_device(keys, images):
      return augment.two_views(keys, images, spec, strategy=strategy)
    if n == 1:
      return jax.jit(per_device), lambda x: x
    fn = jax.jit(jax.shard_map(per_device, mesh=mesh,
                               in_specs=(P('batch'), P('batch')),
                               out_specs=P('batch')))
    return fn, lambda x: jax.device_put(x, NamedSharding(mesh, P('batch')))

  def measure(spec, shape, batch, strategy, iters=iters):
    fn, put = build(spec, strategy)
    images = put(make_images(shape, batch))
    keys = put(jax.random.split(jax.random.key(0), batch))
    t0 = time.perf_counter()
    jax.block_until_ready(fn(keys, images))
    compile_s = time.perf_counter() - t0
    seconds = timed(lambda: jax.block_until_ready(fn(keys, images)), iters)
    return {'batch': batch, 'images_per_s': round(batch / seconds, 1),
            'views_per_s': round(2 * batch / seconds, 1),
            'ms_per_batch': round(1e3 * seconds, 2),
            'first_call_s': round(compile_s, 2)}

  out['default_strategy'] = augment.resolve_strategy('auto')
  for name, (shape, size, blur) in cases.items():
    spec = augment.AugmentSpec(output_size=size, blur=blur)
    out['cases'][name] = {s: measure(spec, shape, sizes[name], s)
                          for s in args.strategies.split(',')}
  if n == 1 and not args.no_components:
    out['components'] = components(args, cases, sizes, measure, iters)
  print(json.dumps(out))


def components(args, cases, sizes, measure, iters):
  """Cost of the parts (1 device), on the host-cropped case."""
  import jax
  import jax.numpy as jnp
  from simclr_jax import augment

  name = [c for c in cases if c.startswith('host')][0]
  shape, size, _ = cases[name]
  batch = sizes[name]
  base = augment.AugmentSpec(output_size=size, blur=True)
  variants = {
      'all_ops': base,
      'no_blur': augment.AugmentSpec(output_size=size, blur=False),
      'no_jitter': augment.AugmentSpec(output_size=size, color_jitter_prob=0.0),
      'no_grayscale': augment.AugmentSpec(output_size=size, grayscale_prob=0.0),
      'no_flip': augment.AugmentSpec(output_size=size, flip_prob=0.0),
      'jitter_always_blur_always': augment.AugmentSpec(
          output_size=size, color_jitter_prob=1.0, blur_prob=1.0),
  }
  out = {'case': name, 'batch': batch, 'two_views_ms_per_batch': {}}
  for strategy in ('map', 'vmap'):
    out['two_views_ms_per_batch'][strategy] = {
        key: measure(spec, shape, batch, strategy,
                     iters=max(1, iters // 2))['ms_per_batch']
        for key, spec in variants.items()}

  # Per-op micro-benchmarks on (2 * batch) views, vmapped, one delta per view.
  views = 2 * batch
  x = jax.random.uniform(jax.random.key(1), (views, size, size, 3))
  delta = jax.random.uniform(jax.random.key(2), (views,), minval=-0.2,
                             maxval=0.2)
  params = jax.vmap(lambda k: augment.sample_jitter(k, 1.0))(
      jax.random.split(jax.random.key(3), views))

  def fixed_order_jitter(image, p):
    image = augment.clip_unit(image * p.brightness)
    image = augment.clip_unit(augment.adjust_contrast(image, p.contrast))
    image = augment.clip_unit(augment.adjust_saturation(image, p.saturation))
    return augment.clip_unit(augment.adjust_hue(image, p.hue))

  kernel = base.blur_kernel_size
  sigma = jnp.linspace(0.1, 2.0, views)
  micro = {
      'hue_hsv_exact': (jax.vmap(augment.adjust_hue), (x, delta)),
      'hue_yiq_rotation': (jax.vmap(yiq_hue), (x, delta)),
      'saturation': (jax.vmap(augment.adjust_saturation), (x, delta + 1)),
      'contrast': (jax.vmap(augment.adjust_contrast), (x, delta + 1)),
      'jitter_random_order': (jax.vmap(augment.apply_jitter), (x, params)),
      'jitter_fixed_order': (jax.vmap(fixed_order_jitter), (x, params)),
      'blur_shift_add': (jax.vmap(lambda im, s: augment.gaussian_blur(
          im, s, kernel)), (x, sigma)),
      'blur_depthwise_conv': (jax.vmap(lambda im, s: conv_blur(
          im, s, kernel)), (x, sigma)),
      'crop_and_resize_gather': (jax.vmap(lambda im, b: augment.crop_and_resize(
          im, b, size)), (x, jnp.tile(jnp.array([[8, 4, size // 2, size // 3]]),
                                      (views, 1)))),
      'grayscale': (jax.vmap(augment.to_grayscale), (x,)),
  }
  out['ms_per_op_on_%d_views_of_%dpx' % (views, size)] = {}
  for key, (fn, fn_args) in micro.items():
    jitted = jax.jit(fn)
    seconds = timed(lambda: jax.block_until_ready(jitted(*fn_args)), iters)
    out['ms_per_op_on_%d_views_of_%dpx' % (views, size)][key] = round(
        1e3 * seconds, 2)
  hsv = jax.jit(jax.vmap(augment.adjust_hue))(x, delta)
  yiq = jax.jit(jax.vmap(yiq_hue))(x, delta)
  out['yiq_vs_hsv_hue_max_abs_diff'] = round(float(jnp.abs(hsv - yiq).max()), 4)
  out['yiq_vs_hsv_hue_mean_abs_diff'] = round(float(jnp.abs(hsv - yiq).mean()), 4)
  return out


def yiq_hue(image, delta):
  """Hue rotation by 2 pi delta in YIQ space (cheap, not tf.image's HSV hue)."""
  import jax.numpy as jnp
  to_yiq = jnp.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                      [0.211, -0.523, 0.312]])
  from_yiq = jnp.linalg.inv(to_yiq)
  angle = 2 * jnp.pi * delta
  c, s = jnp.cos(angle), jnp.sin(angle)
  rotate = jnp.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
  return image @ (from_yiq @ rotate @ to_yiq).T


def conv_blur(image, sigma, kernel_size):
  """The same blur as two depthwise convolutions (google's formulation)."""
  import jax.numpy as jnp
  from jax import lax
  from simclr_jax import augment
  radius = augment.blur_radius(kernel_size)
  taps = augment.gaussian_kernel(sigma, radius)
  x = image[None]
  dn = ('NHWC', 'HWIO', 'NHWC')
  horizontal = jnp.tile(taps.reshape(1, -1, 1, 1), (1, 1, 1, 3))
  vertical = jnp.tile(taps.reshape(-1, 1, 1, 1), (1, 1, 1, 3))
  x = lax.conv_general_dilated(x, horizontal, (1, 1), 'SAME',
                               dimension_numbers=dn, feature_group_count=3)
  x = lax.conv_general_dilated(x, vertical, (1, 1), 'SAME',
                               dimension_numbers=dn, feature_group_count=3)
  return x[0]


# ---------------------------------------------------------------------- TF


def tf_worker(args):
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
  import tensorflow as tf

  cases = QUICK_CASES if args.quick else CASES
  sizes = batch_sizes(args.quick)
  iters = 1 if args.quick else args.iters
  out = {'tensorflow': tf.__version__, 'cpu_count': os.cpu_count(), 'cases': {}}

  def uniform(lo=0.0, hi=1.0):
    return tf.random.uniform([], lo, hi)

  def random_apply(fn, p, x):
    return tf.cond(uniform() < p, lambda: fn(x), lambda: x)

  def jitter(x, s=1.0):
    def op(i, y):
      return tf.switch_case(i, [
          lambda: y * uniform(max(0.0, 1 - 0.8 * s), 1 + 0.8 * s),
          lambda: tf.image.random_contrast(y, 1 - 0.8 * s, 1 + 0.8 * s),
          lambda: tf.image.random_saturation(y, 1 - 0.8 * s, 1 + 0.8 * s),
          lambda: tf.image.random_hue(y, 0.2 * s)])
    order = tf.random.shuffle(tf.range(4))
    for i in range(4):
      x = tf.clip_by_value(op(order[i], x), 0.0, 1.0)
    return x

  def blur(x, size):
    radius = (size // 10) // 2
    if radius == 0:
      return x
    sigma = uniform(0.1, 2.0)
    t = tf.range(-radius, radius + 1, dtype=tf.float32)
    taps = tf.exp(-t * t / (2 * sigma * sigma))
    taps /= tf.reduce_sum(taps)
    side = 2 * radius + 1
    h = tf.tile(tf.reshape(taps, [1, side, 1, 1]), [1, 1, 3, 1])
    v = tf.tile(tf.reshape(taps, [side, 1, 1, 1]), [1, 1, 3, 1])
    y = tf.nn.depthwise_conv2d(x[None], h, [1, 1, 1, 1], 'SAME')
    return tf.nn.depthwise_conv2d(y, v, [1, 1, 1, 1], 'SAME')[0]

  def view(image, size, crop, use_blur):
    x = tf.image.convert_image_dtype(image, tf.float32)
    if crop:
      begin, extent, _ = tf.image.sample_distorted_bounding_box(
          tf.shape(x), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
          min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3),
          area_range=(0.08, 1.0), max_attempts=100,
          use_image_if_no_bounding_boxes=True)
      x = tf.slice(x, begin, extent)
      x = tf.image.resize(x[None], [size, size], method='bicubic')[0]
    x = tf.image.random_flip_left_right(x)
    x = random_apply(jitter, 0.8, x)
    x = random_apply(lambda y: tf.tile(tf.image.rgb_to_grayscale(y), [1, 1, 3]),
                     0.2, x)
    x = tf.clip_by_value(x, 0.0, 1.0)
    if use_blur:
      x = tf.clip_by_value(random_apply(lambda y: blur(y, size), 0.5, x), 0., 1.)
    return x

  for name, (shape, size, use_blur) in cases.items():
    batch = sizes[name]
    images = make_images(shape, batch)
    host_cropped = len(shape) == 4

    def two(image, size=size, host_cropped=host_cropped, use_blur=use_blur):
      if host_cropped:
        return (view(image[0], size, False, use_blur),
                view(image[1], size, False, use_blur))
      return (view(image, size, True, use_blur),
              view(image, size, True, use_blur))

    ds = (tf.data.Dataset.from_tensor_slices(images).repeat()
          .map(two, num_parallel_calls=tf.data.AUTOTUNE)
          .batch(batch).prefetch(tf.data.AUTOTUNE))
    it = iter(ds)
    t0 = time.perf_counter()
    next(it)
    first = time.perf_counter() - t0
    seconds = timed(lambda: next(it), iters)
    out['cases'][name] = {'batch': batch,
                          'images_per_s': round(batch / seconds, 1),
                          'views_per_s': round(2 * batch / seconds, 1),
                          'ms_per_batch': round(1e3 * seconds, 2),
                          'first_call_s': round(first, 2)}
  print(json.dumps(out))


# -------------------------------------------------------------------- main


def run_worker(kind, args, devices=1):
  cmd = [sys.executable, os.path.abspath(__file__), '--worker', kind,
         '--devices', str(devices), '--iters', str(args.iters),
         '--strategies', args.strategies]
  if args.quick:
    cmd.append('--quick')
  if args.no_components:
    cmd.append('--no_components')
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  result = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          check=False)
  if result.returncode != 0:
    return {'error': result.stderr[-2000:]}
  return json.loads(result.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true', help='tiny sizes')
  parser.add_argument('--devices', default='1,8',
                      help='JAX CPU device counts to run (comma-separated)')
  parser.add_argument('--iters', type=int, default=5,
                      help='timed batches per measurement')
  parser.add_argument('--no_tf', action='store_true', help='skip tf.data')
  parser.add_argument('--no_components', action='store_true',
                      help='skip the per-op measurements (default with --quick)')
  parser.add_argument('--strategies', default=None,
                      help="two_views strategies to time, comma-separated "
                      "(default 'map,vmap'; 'auto' with --quick)")
  parser.add_argument('--worker', choices=('jax', 'tf'), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.strategies is None:
    args.strategies = 'auto' if args.quick else 'map,vmap'
  if args.quick and args.worker is None:
    args.no_components = True
  if args.worker == 'jax':
    args.devices = int(args.devices)
    return jax_worker(args)
  if args.worker == 'tf':
    return tf_worker(args)
  result = {'bench': 'augment', 'quick': args.quick, 'cpu_count': os.cpu_count(),
            'jax': {}}
  for n in [int(d) for d in args.devices.split(',')]:
    result['jax'][f'{n}_devices'] = run_worker('jax', args, n)
  if not args.no_tf:
    result['tf_data'] = run_worker('tf', args)
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  main()
