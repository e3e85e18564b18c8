r"""Throughput of the input pipeline on this host, printed as JSON.

  python bench/input_bench.py           # full: ~1-2 min on 2 cores
  python bench/input_bench.py --quick   # smoke check: a few seconds
  python bench/input_bench.py --photos_only --cores=4   # 224 px on 4 cores

Measures images per second delivered by a data source's `train_iterator`
(what the train step receives) for:

* the CIFAR-10 JPEG folder of /work/shared/data (cifar10_train_jpeg.tar.gz,
  unpacked to a temporary folder): host crop (the folder default), device
  crop decoded per batch, and device crop with `data.cache` (decoded once);
* a folder of generated 500x375 JPEGs, host crop to 224 px (ImageNet-like);
  beside it, the same crops from a plain tf.data map without the pipeline's
  bad-file protection, and with a full decode followed by two crops instead
  of two `decode_and_crop_jpeg` calls; and the CPU time of the JPEG decode
  alone, read down to the image's last row (what the host crop does, so
  that damaged files fail) against only the rectangle spanning the windows.
"""

import argparse
import json
import os
import sys
import tarfile
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top

from configs import default  # pylint: disable=g-import-not-at-top
from simclr_jax import data  # pylint: disable=g-import-not-at-top

CIFAR_TAR = '/work/shared/data/cifar10_train_jpeg.tar.gz'


def _config(data_dir, image_size, **fields):
  config = default.get_config()
  config.image_size = image_size
  config.data.source = 'folder'
  config.data.data_dir = data_dir
  config.data.eval_split = ''
  config.data.holdout_fraction = 0.0
  for k, v in fields.items():
    setattr(config.data, k, v)
  return config


def _rate(batches, batch_size, warmup, steps):
  """(images/s, CPU ms per image, seconds to the first batch).

  Images per second over `steps` batches after `warmup`: the steady state
  (the pipeline prefetches). CPU milliseconds per image (all threads of this
  process) over the same batches do not depend on what else the host runs,
  so they compare configurations fairly on a busy machine.
  """
  t0 = time.perf_counter()
  next(batches)
  first = time.perf_counter() - t0
  for _ in range(warmup - 1):
    next(batches)
  t0, c0 = time.perf_counter(), time.process_time()
  for _ in range(steps):
    next(batches)
  wall, cpu = time.perf_counter() - t0, time.process_time() - c0
  n = steps * batch_size
  return n / wall, 1000 * cpu / n, first


def _unpack_cifar(dest, limit):
  """Unpacks the CIFAR-10 JPEG folder (the first `limit` images if given)."""
  with tarfile.open(CIFAR_TAR) as tar:
    members = []
    for m in tar:
      if m.isfile() and m.name.lower().endswith('.jpg'):
        members.append(m)
        if limit and len(members) >= limit:
          break
    tar.extractall(dest, members=members, filter='data')
  roots = [os.path.join(dest, d) for d in os.listdir(dest)]
  return roots[0] if len(roots) == 1 else dest, len(members)


def _write_photos(dest, count):
  """`count` 500x375 JPEGs: smooth colour fields plus noise, like photos."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:375, 0:500] / 500.0
  for i in range(count):
    a, b, c = rng.uniform(0, 6, 3)
    base = np.stack([np.sin(a * xx + b * yy), np.cos(b * xx - c * yy),
                     np.sin(c * xx * yy + a)], -1)
    image = (base * 90 + 128 + rng.normal(0, 12, base.shape)).clip(0, 255)
    Image.fromarray(image.astype(np.uint8)).save(
        os.path.join(dest, f'{i:05d}.jpg'), quality=90)


def _flat_rate(paths, config, batch, warmup, steps, full_decode):
  """Host crops from a plain tf.data map (no spares), for comparison."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from simclr_jax.data import host_ops  # pylint: disable=g-import-not-at-top
  fns = host_ops.ElementFns(config)

  def load(path, key):
    contents = tf.io.read_file(path)
    if full_decode:
      return fns.host_views_decoded(host_ops.decode_full(contents), key)
    return fns.host_views(contents, key)

  ds = tf.data.Dataset.from_tensor_slices(
      (np.array(paths).astype(bytes), np.arange(len(paths), dtype=np.int64)))
  ds = ds.repeat().map(host_ops.plain(load),
                        num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch, drop_remainder=True).prefetch(2)
  rate, cpu_ms, _ = _rate(ds.as_numpy_iterator(), batch, warmup, steps)
  return {'images_per_sec': round(rate, 1), 'cpu_ms_per_image': round(cpu_ms, 3)}


def _read_to_last_row_cost(paths, config, rounds):
  """CPU ms per image of the host crop's JPEG decode, to the last row or not.

  host_ops.decode_windows decodes from the windows' top row down to the
  image's last row, so that a damaged file fails as a full decode does;
  before, it stopped at the windows' bottom row. Both rectangles of the
  same two windows per image are decoded alternately, `rounds` times; the
  median of each is kept (paired, so a shared machine's load hits both).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from simclr_jax.data import host_ops  # pylint: disable=g-import-not-at-top
  fns = host_ops.ElementFns(config)
  jobs = []
  for i, path in enumerate(paths):
    contents = tf.io.read_file(path)
    h, w = (int(v) for v in tf.image.extract_jpeg_shape(contents)[:2])
    seeds = host_ops.view_seeds(fns.seed, tf.constant(i, tf.int64))
    win = np.array([host_ops.sample_window(tf.constant(h), tf.constant(w),
                                           seeds[k], fns.scale, fns.ratio)
                    for k in range(2)])
    top, left = win[:, 0].min(), win[:, 1].min()
    right = (win[:, 1] + win[:, 3]).max()
    bottom = (win[:, 0] + win[:, 2]).max()
    jobs.append((contents, [top, left, bottom - top, right - left],
                 [top, left, h - top, right - left]))
  times = {'spanning_windows_only': [], 'to_last_row': []}
  for _ in range(rounds):
    for name, k in (('spanning_windows_only', 1), ('to_last_row', 2)):
      c0 = time.process_time()
      for job in jobs:
        tf.image.decode_and_crop_jpeg(job[0], job[k], channels=3)
      times[name].append(1000 * (time.process_time() - c0) / len(jobs))
  out = {k: round(float(np.median(v)), 3) for k, v in times.items()}
  out['ratio'] = round(out['to_last_row'] / out['spanning_windows_only'], 3)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true',
                      help='tiny sizes, to check that the script runs')
  parser.add_argument('--photos_only', action='store_true',
                      help='only the pipeline on 500x375 JPEGs at 224 px (no '
                           'CIFAR-10, no plain-map comparisons)')
  parser.add_argument('--cores', type=int, default=0,
                      help='run on the first N cores this process may use '
                           '(CPU affinity, set before TensorFlow starts its '
                           'thread pools); 0: all of them')
  parser.add_argument('--steps', type=int, default=20,
                      help='timed batches per measurement (3 with --quick)')
  args = parser.parse_args()
  if args.cores < 0 or args.steps < 1:
    parser.error(f'--cores must be >= 0 and --steps >= 1, got {args.cores} '
                 f'and {args.steps}')
  if args.cores:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cores])
  quick = args.quick
  warmup, steps = (2, 3) if quick else (3, args.steps)
  results = {'quick': quick, 'cpu_count': os.cpu_count(),
             'cores_used': len(os.sched_getaffinity(0))}
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  results['tensorflow'] = tf.__version__

  with tempfile.TemporaryDirectory() as tmp:
    # ------------------------------------------------ CIFAR-10 JPEG folder
    if args.photos_only:
      results['cifar10_folder_32px'] = 'skipped: --photos_only'
    elif os.path.exists(CIFAR_TAR):
      t0 = time.perf_counter()
      root, n = _unpack_cifar(os.path.join(tmp, 'cifar'),
                              2000 if quick else None)
      cifar = {'images': n, 'unpack_s': round(time.perf_counter() - t0, 2)}
      t0 = time.perf_counter()
      info = data.get_info(_config(root, 32))
      cifar['scan_s'] = round(time.perf_counter() - t0, 2)
      cifar['num_classes'] = info.num_classes
      batch = 256
      for name, kw in (('host_crop', {}),
                       ('device_crop', {'crop': 'device'}),
                       ('device_crop_cached', {'crop': 'device',
                                               'cache': True})):
        t0 = time.perf_counter()
        it = data.make_source(_config(root, 32, **kw)).train_iterator(
            batch, process_index=0, process_count=1)
        start = time.perf_counter() - t0
        rate, cpu_ms, first = _rate(it, batch, warmup, steps)
        cifar[name] = {'images_per_sec': round(rate, 1),
                       'cpu_ms_per_image': round(cpu_ms, 4),
                       'first_batch_s': round(first + start, 2)}
      results['cifar10_folder_32px'] = cifar
    else:
      results['cifar10_folder_32px'] = f'skipped: {CIFAR_TAR} not found'

    # ------------------------------------------ 500x375 JPEGs, host crop
    photos = os.path.join(tmp, 'photos')
    os.makedirs(photos)
    count = 48 if quick else 512
    _write_photos(photos, count)
    batch = 16 if quick else 64
    config = _config(photos, 224)
    it = data.make_source(config).train_iterator(batch, process_index=0,
                                                 process_count=1)
    rate, cpu_ms, first = _rate(it, batch, warmup, steps)
    paths = sorted(os.path.join(photos, f) for f in os.listdir(photos))
    record = {'images': count,
              'pipeline': {'images_per_sec': round(rate, 1),
                           'cpu_ms_per_image': round(cpu_ms, 3),
                           'first_batch_s': round(first, 2)}}
    if not args.photos_only:
      record['plain_map_decode_and_crop'] = _flat_rate(
          paths, config, batch, warmup, steps, False)
      record['plain_map_full_decode'] = _flat_rate(paths, config, batch,
                                                   warmup, steps, True)
      record['decode_cpu_ms_per_image'] = _read_to_last_row_cost(
          paths[:64 if quick else 256], config, 3 if quick else 7)
    results['jpeg_500x375_host_crop_224'] = record
  print(json.dumps(results, indent=2))


if __name__ == '__main__':
  main()
