"""The data sources: digits, image folders and TFDS (mocked or built locally).

Every test checks a property (pixels equal a reference decoder, splits are
disjoint and cover the data, batches are a function of seed and step), not
only that the pipeline runs. Nothing here touches the network.
"""

import itertools
import logging
import os
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from configs import default
from simclr_jax import data as ip
from simclr_jax.data import failures
from simclr_jax.data import host_ops
from simclr_jax.data import tfds as tfds_source

tf.config.set_visible_devices([], 'GPU')


def _config(**data):
  config = default.get_config()
  config.seed = 0
  config.data.eval_split = ''
  config.data.holdout_fraction = 0.0
  config.data.num_parallel_calls = 2
  config.data.prefetch = 1
  for k, v in data.items():
    setattr(config.data, k, v)
  return config


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


# ------------------------------------------------------------------ digits


def test_digits_pixels_info_and_holdout():
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  raw = load_digits()
  config = _config(source='digits', resize_to=0, holdout_fraction=0.2)
  config.image_size = 8
  info = ip.get_info(config)
  assert info == ip.DatasetInfo(num_train_examples=1438, num_eval_examples=359,
                                num_classes=10, train_image_shape=(8, 8, 3),
                                crop_on_host=False)
  train_idx, eval_idx = ip.holdout_split(1797, 0.2)
  assert not set(train_idx) & set(eval_idx)
  assert len(train_idx) + len(eval_idx) == 1797
  # The eval split is the holdout, in order, with 0..255 pixels on 3 channels.
  batches = list(ip.create_eval_iterator(config, 'eval', local_batch_size=100,
                                         process_index=0, process_count=1))
  assert len(batches) == 4 and [b['mask'].sum() for b in batches] == [
      100, 100, 100, 59]
  images = np.concatenate([b['image'][b['mask']] for b in batches])
  labels = np.concatenate([b['label'][b['mask']] for b in batches])
  expected = np.round(raw.images[eval_idx] * 255 / 16).astype(np.uint8)
  np.testing.assert_array_equal(images, np.repeat(expected[..., None], 3, -1))
  np.testing.assert_array_equal(labels, raw.target[eval_idx])
  assert batches[-1]['image'][59:].max() == 0 and not batches[-1]['mask'][59:].any()


def test_bilinear_resize_matches_tensorflow():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
  for size in (16, 32, 12):
    ours = ip.resize_bilinear_uint8(images, size).astype(int)
    ref = tf.image.resize(images, [size, size], method='bilinear').numpy()
    ref = np.clip(np.round(ref), 0, 255).astype(int)
    assert np.abs(ours - ref).max() <= 1


def test_digits_batches_are_a_function_of_seed_and_step():
  config = _config(source='digits', resize_to=16, holdout_fraction=0.2)
  kw = dict(local_batch_size=256, process_index=0, process_count=1)
  info = ip.get_info(config)
  assert info.train_image_shape == (16, 16, 3)
  run = _take(ip.create_train_iterator(config, **kw), 8)  # Crosses an epoch.
  resumed = _take(ip.create_train_iterator(config, start_step=5, **kw), 3)
  _assert_batches_equal(run[5:], resumed)
  for b in run:
    assert b['image'].shape == (256, 16, 16, 3) and b['image'].dtype == np.uint8
    assert b['label'].dtype == np.int32 and b['label'].min() >= 0
  config.seed = 1
  other = _take(ip.create_train_iterator(config, **kw), 1)[0]
  assert not np.array_equal(other['label'], run[0]['label'])


def test_epoch_order_is_a_permutation_per_epoch():
  order = ip.EpochOrder(seed=3, process_index=1, num_local=50,
                        local_batch_size=8, steps_per_epoch=6)
  for epoch in range(2):
    seen = np.concatenate([order.step_indices(epoch * 6 + j) for j in range(6)])
    assert len(set(seen)) == 48 and seen.max() < 50
  assert not np.array_equal(order.step_indices(0), order.step_indices(6))
  # Spares continue the same permutation.
  np.testing.assert_array_equal(order.step_indices(2, spares=3)[:8],
                                order.step_indices(2))


def test_digits_eval_parts_cover_every_example_once():
  config = _config(source='digits', resize_to=0, holdout_fraction=0.2)
  config.image_size = 8
  n_proc = 3
  parts = [list(ip.create_eval_iterator(config, 'train', local_batch_size=128,
                                        process_index=p, process_count=n_proc))
           for p in range(n_proc)]
  assert len({len(p) for p in parts}) == 1  # Same number of batches everywhere.
  got = sorted(np.concatenate([b['label'][b['mask']] for p in parts for b in p]))
  train_idx, _ = ip.holdout_split(1797, 0.2)
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  np.testing.assert_array_equal(got, sorted(load_digits().target[train_idx]))
  idx = np.arange(100)
  split = [ip.process_part(idx, p, 3) for p in range(3)]
  np.testing.assert_array_equal(np.sort(np.concatenate(split)), idx)


def test_digits_needs_empty_eval_split():
  config = _config(source='digits', eval_split='validation')
  with pytest.raises(ValueError, match='eval_split'):
    ip.get_info(config)


# ------------------------------------------------------------ image folders


def _rgb(seed, h=24, w=20):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def _write_mixed_folder(root):
  """A labelled folder of every format; returns {relative path: RGB array}."""
  expected = {}
  cat, dog = os.path.join(root, 'cat'), os.path.join(root, 'dog', 'sub')
  os.makedirs(cat)
  os.makedirs(dog)

  def save(rel, pil_image, rgb, **kw):
    pil_image.save(os.path.join(root, rel), **kw)
    expected[rel] = rgb

  x = _rgb(1)
  save('cat/a.png', Image.fromarray(x), x)
  gray = _rgb(2)[..., 0]
  save('cat/b_gray.png', Image.fromarray(gray), np.repeat(gray[..., None], 3, -1))
  pal = Image.fromarray(_rgb(3)).quantize(16)
  save('cat/c_palette.png', pal, np.asarray(pal.convert('RGB')))
  x = _rgb(4)
  rgba = np.concatenate([x, _rgb(5)[..., :1]], -1)
  save('cat/d_rgba.PNG', Image.fromarray(rgba), x)
  g16 = np.random.default_rng(6).integers(0, 65536, (24, 20)).astype(np.uint16)
  save('cat/e_16bit.png', Image.fromarray(g16),
       np.repeat((g16 >> 8).astype(np.uint8)[..., None], 3, -1))  # TF's rule.
  x = _rgb(7)
  save('cat/f.bmp', Image.fromarray(x), x)
  pal = Image.fromarray(_rgb(8)).quantize(32)
  save('dog/sub/g.gif', pal, np.asarray(pal.convert('RGB')))
  x = _rgb(9)
  save('dog/sub/h.webp', Image.fromarray(x), x, lossless=True)
  yy, xx = np.mgrid[0:24, 0:20]
  x = np.stack([yy * 10, xx * 12, 255 - yy * 10], -1).astype(np.uint8)
  save('dog/i.jpg', Image.fromarray(x), x, quality=95)  # Smooth: JPEG-safe.
  # 16-bit RGB PNG (PIL cannot write it).
  x16 = _rgb(11).astype(np.uint16) * 257
  tf.io.write_file(os.path.join(root, 'dog/j_rgb16.png'), tf.io.encode_png(x16))
  expected['dog/j_rgb16.png'] = _rgb(11)
  with open(os.path.join(root, 'dog', 'corrupt.jpg'), 'wb') as f:
    f.write(os.urandom(500))
  with open(os.path.join(root, 'cat', 'notes.txt'), 'w') as f:
    f.write('not an image')
  return expected


@pytest.fixture(scope='module')
def mixed_folder(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('mixed'))
  return root, _write_mixed_folder(root)


def test_folder_reads_every_format_as_rgb(mixed_folder, caplog):
  root, expected = mixed_folder
  with caplog.at_level(logging.WARNING):
    scan = ip.scan_folder(root)
  assert [os.path.relpath(p, root) for p in scan.skipped] == ['dog/corrupt.jpg']
  warnings = [r.getMessage() for r in caplog.records if 'Skipping' in r.getMessage()]
  assert len(warnings) == 1 and 'Skipping 1 ' in warnings[0]
  assert 'corrupt.jpg' in warnings[0]
  rel = [os.path.relpath(p, root) for p in scan.paths]
  assert sorted(rel) == sorted(expected)  # notes.txt ignored, corrupt skipped.
  assert scan.class_names == ('cat', 'dog')

  config = _config(source='folder', data_dir=root)
  config.image_size = 20  # Images are 24x20: <= 32 px, so no centre crop.
  config.data.eval_crop_fraction = 1.0
  info = ip.get_info(config)
  assert (info.num_classes, info.num_train_examples, info.crop_on_host) == (
      2, 10, True)
  batches = list(ip.create_eval_iterator(config, 'train', local_batch_size=4,
                                         process_index=0, process_count=1))
  assert len(batches) == 3 and sum(b['mask'].sum() for b in batches) == 10
  images = np.concatenate([b['image'] for b in batches])[:10]
  labels = np.concatenate([b['label'] for b in batches])[:10]
  for r, image, label in zip(rel, images, labels):
    assert label == (0 if r.startswith('cat/') else 1), r
    # image_size 20 squashes 24x20 to 20x20; compare with the same resize.
    ref = tf.image.resize(expected[r], [20, 20], method='bicubic').numpy()
    ref = np.clip(np.round(ref), 0, 255)
    tol = 3 if r.endswith('.jpg') else 1
    err = np.abs(image.astype(float) - ref).mean()
    assert err <= tol, (r, err)


def test_folder_device_crop_reads_exact_pixels(mixed_folder):
  root, expected = mixed_folder
  config = _config(source='folder', data_dir=root, crop='device')
  info = ip.get_info(config)
  assert info.train_image_shape == (24, 20, 3) and not info.crop_on_host
  rel = [os.path.relpath(p, root) for p in ip.scan_folder(root).paths]
  lossless = np.array([not r.endswith('.jpg') for r in rel])
  by_bytes = {expected[r].tobytes(): r for r, ok in zip(rel, lossless) if ok}
  batch = next(ip.create_train_iterator(config, local_batch_size=10,
                                        process_index=0, process_count=1))
  # Every lossless image of the epoch appears with its exact pixels and label.
  found = [by_bytes.get(im.tobytes()) for im in batch['image']]
  assert sorted(f for f in found if f) == sorted(by_bytes.values())
  for name, label in zip(found, batch['label']):
    if name:
      assert label == (0 if name.startswith('cat/') else 1)


def test_folder_bad_file_at_decode_time_is_replaced(tmp_path, caplog):
  root = str(tmp_path)
  for i in range(12):
    Image.fromarray(_rgb(i, 40, 48)).save(f'{root}/{i:02d}.jpg', quality=90)
  good = open(f'{root}/00.jpg', 'rb').read()
  with open(f'{root}/98_truncated.jpg', 'wb') as f:  # Caught by the scan.
    f.write(good[:len(good) // 3])
  with open(f'{root}/99_corrupt.jpg', 'wb') as f:  # Looks whole, cannot decode.
    f.write(good[:len(good) // 3] + b'\xff\xd9')
  with open(f'{root}/readme.md', 'w') as f:
    f.write('# not an image')
  config = _config(source='folder', data_dir=root)
  config.image_size = 16
  info = ip.get_info(config)
  assert info == ip.DatasetInfo(13, 0, 0, (2, 16, 16, 3), True)
  kw = dict(local_batch_size=6, process_index=0, process_count=1)
  run = _take(ip.create_train_iterator(config, **kw), 6)  # Three epochs.
  for b in run:
    assert b['image'].shape == (6, 2, 16, 16, 3) and b['image'].dtype == np.uint8
    np.testing.assert_array_equal(b['label'], -1)
    assert not np.array_equal(b['image'][:, 0], b['image'][:, 1])
  _assert_batches_equal(
      run[3:], _take(ip.create_train_iterator(config, start_step=3, **kw), 3))
  config.seed = 5
  other = next(ip.create_train_iterator(config, **kw))
  assert not np.array_equal(other['image'], run[0]['image'])


def test_folder_whole_image_crop_equals_resize(tmp_path):
  root = str(tmp_path)
  x = _rgb(0, 30, 45)
  Image.fromarray(x).save(f'{root}/a.jpg', quality=95)
  Image.fromarray(x).save(f'{root}/b.png')
  config = _config(source='folder', data_dir=root, crop='host')
  config.image_size = 12
  config.augment.crop_scale = (1.0, 1.0)
  config.augment.crop_ratio = (1.5, 1.5)  # The aspect ratio of the images.
  config.data.eval_crop_fraction = 1.0
  batch = next(ip.create_train_iterator(config, local_batch_size=2,
                                        process_index=0, process_count=1))
  ev = next(ip.create_eval_iterator(config, 'train', local_batch_size=2,
                                    process_index=0, process_count=1))
  for view in (0, 1):
    got = sorted(im.tobytes() for im in batch['image'][:, view])
    assert got == sorted(im.tobytes() for im in ev['image'])


def test_host_crop_area_statistics(tmp_path):
  root = str(tmp_path)
  # A horizontal ramp: the mean column of a view tells where it was cut from.
  ramp = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, :, None],
                         (256, 256, 3)).copy()
  for i in range(16):
    Image.fromarray(ramp).save(f'{root}/ramp{i}.png')
  config = _config(source='folder', data_dir=root, crop='host')
  config.image_size = 8
  config.augment.crop_scale = (0.25, 0.25)
  config.augment.crop_ratio = (1.0, 1.0)
  batches = _take(ip.create_train_iterator(
      config, local_batch_size=16, process_index=0, process_count=1), 3)
  views = np.concatenate([b['image'] for b in batches]).reshape(-1, 8, 8, 3)
  views = views.astype(float)
  # A square window of area 1/4 is 128 px wide: each view spans ~128 levels.
  spans = views[:, :, -1, 0].mean(1) - views[:, :, 0, 0].mean(1)
  assert np.all(np.abs(spans - 128 * 7 / 8) < 6)
  lefts = views[:, :, 0, 0].mean(1)
  assert lefts.min() < 30 and lefts.max() > 100  # Offsets spread over [0, 128].


def _google_center_window(height, width, fraction):
  """google-research/simclr's center_crop window for a square output
  (_compute_crop_shape with aspect ratio 1, then its offsets), in TF ops."""
  h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  if 1.0 > width / height:  # The output is wider than the image.
    ch, cw = tf.math.rint(fraction / 1.0 * w), tf.math.rint(fraction * w)
  else:
    ch, cw = tf.math.rint(fraction * h), tf.math.rint(fraction * 1.0 * h)
  ch, cw = int(ch), int(cw)
  return [(height - ch + 1) // 2, (width - cw + 1) // 2, ch, cw]


def test_eval_centre_window_rounds_like_google():
  rng = np.random.default_rng(0)
  shapes = [(100, 100), (36, 200), (44, 44), (375, 500), (500, 333)]
  shapes += [tuple(rng.integers(33, 600, size=2)) for _ in range(200)]
  differs_from_floor = 0
  for height, width in shapes:
    for fraction in (0.875, 0.5, 0.9):
      got = host_ops.center_window(tf.constant(int(height)),
                                   tf.constant(int(width)), fraction).numpy()
      want = _google_center_window(int(height), int(width), fraction)
      assert list(got) == want, (height, width, fraction)
      side = min(height, width)
      differs_from_floor += int(got[2] != int(np.floor(fraction * side)))
  assert differs_from_floor > 50  # The cases where rint and floor disagree.
  # Images of 32 px or less are not cropped (google's CIFAR evaluation).
  assert list(host_ops.center_window(tf.constant(32), tf.constant(40),
                                     0.875).numpy()) == [0, 0, 32, 40]


def test_folder_cache_gives_the_same_batches(tmp_path):
  root = str(tmp_path)
  for c in ('a', 'b'):
    os.makedirs(f'{root}/{c}')
    for i in range(7):
      x = _rgb(i + (c == 'b') * 100, 10, 12)
      x[0, -1] = 0  # A BMP's last byte is then NUL: cached bytes keep it.
      Image.fromarray(x).save(f'{root}/{c}/{i}_\u00e9t\u00e9.' +
                              ('bmp' if c == 'b' else 'png'))
  config = _config(source='folder', data_dir=root, crop='device')
  kw = dict(local_batch_size=4, process_index=1, process_count=2)
  streamed = _take(ip.create_train_iterator(config, **kw), 4)
  config.data.cache = True
  cached = _take(ip.create_train_iterator(config, **kw), 4)
  _assert_batches_equal(streamed, cached)
  config.data.crop = 'host'
  config.image_size = 8
  hosted = _take(ip.create_train_iterator(config, start_step=2, **kw), 1)
  config.data.cache = False
  _assert_batches_equal(
      hosted, _take(ip.create_train_iterator(config, start_step=2, **kw), 1))


def test_unlabelled_and_bad_folders(tmp_path):
  flat = tmp_path / 'flat'
  (flat / 'nested').mkdir(parents=True)
  Image.fromarray(_rgb(0)).save(flat / 'x.png')
  Image.fromarray(_rgb(1)).save(flat / 'nested' / 'y.png')
  config = _config(source='folder', data_dir=str(flat))
  info = ip.get_info(config)
  assert (info.num_classes, info.num_train_examples) == (0, 2)
  batch = next(ip.create_eval_iterator(config, 'train', local_batch_size=2,
                                       process_index=0, process_count=1))
  np.testing.assert_array_equal(batch['label'], [-1, -1])
  empty = tmp_path / 'empty'
  (empty / 'cls').mkdir(parents=True)
  (empty / 'cls' / 'a.txt').write_text('hello')
  for path, match in ((empty, 'no images'), (tmp_path / 'missing', 'not a directory')):
    config = _config(source='folder', data_dir=str(path))
    with pytest.raises(ValueError, match=match):
      ip.get_info(config)
  broken = tmp_path / 'broken'
  broken.mkdir()
  (broken / 'a.png').write_bytes(b'garbage')
  with pytest.raises(ValueError, match='readable'):
    ip.get_info(_config(source='folder', data_dir=str(broken)))


# ------------------------------------------- links, decode failures, eval_dir


def _undecodable_jpeg(seed):
  """A real 8x8 JPEG whose entropy-coded body is junk (SOI..SOS and EOI kept).

  It passes the scan's header and end-marker check; decoding it fails.
  """
  from images import damaged_jpeg  # pylint: disable=g-import-not-at-top
  return damaged_jpeg(seed)


def _write_folder(root, n_good, n_bad, classes=('a', 'b'), seed=0):
  """Class folders of distinct 8x8 PNGs and undecodable JPEGs.

  Returns {path: pixels} of the good images and the list of bad paths.
  """
  good, bad = {}, []
  for c in classes:
    os.makedirs(os.path.join(root, c), exist_ok=True)
  for i in range(n_good):
    path = os.path.join(root, classes[i % len(classes)], f'g{i:03d}.png')
    x = _rgb(seed + i, 8, 8)
    Image.fromarray(x).save(path)
    good[path] = x
  for i in range(n_bad):
    path = os.path.join(root, classes[i % len(classes)], f'x{i:03d}.jpg')
    with open(path, 'wb') as f:
      f.write(_undecodable_jpeg(seed + 1000 + i))
    bad.append(path)
  return good, bad


def _decode_warnings(caplog):
  return [r.getMessage() for r in caplog.records
          if r.getMessage().startswith('cannot decode ')
          or 'undecodable file(s) so far' in r.getMessage()]


def test_symlink_loop_scans_each_real_file_once(tmp_path):
  root = str(tmp_path / 'data')
  good, _ = _write_folder(root, 12, 0, classes=('cat', 'horse'))
  os.symlink('..', os.path.join(root, 'horse', 'loop'))  # A cycle.
  os.symlink(os.path.join(root, 'cat', 'g000.png'),
             os.path.join(root, 'horse', 'same_file.png'))  # A duplicate.
  os.mkfifo(os.path.join(root, 'cat', 'pipe.jpg'))  # Reading it would block.
  scan = ip.scan_folder(root)
  assert sorted(scan.paths) == sorted(good)
  assert scan.class_names == ('cat', 'horse')
  np.testing.assert_array_equal(
      scan.labels, [p.split(os.sep)[-2] == 'horse' for p in scan.paths])
  # The holdout and the training split share no image.
  config = _config(source='folder', data_dir=root, crop='device',
                   holdout_fraction=0.25)
  config.image_size = 8
  info = ip.get_info(config)
  assert (info.num_train_examples, info.num_eval_examples) == (9, 3)
  seen = {}
  for split in ('train', 'eval'):
    batch = next(ip.create_eval_iterator(config, split, local_batch_size=12,
                                         process_index=0, process_count=1))
    seen[split] = {im.tobytes() for im in batch['image'][batch['mask']]}
  assert len(seen['train']) == 9 and len(seen['eval']) == 3
  assert not seen['train'] & seen['eval']
  assert seen['train'] | seen['eval'] == {x.tobytes() for x in good.values()}


def test_uncached_decode_failures_are_replaced_deterministically(tmp_path,
                                                                 caplog):
  root = str(tmp_path)
  good, bad = _write_folder(root, 24, 6)
  config = _config(source='folder', data_dir=root, crop='device')
  config.image_size = 8
  kw = dict(local_batch_size=6, process_index=0, process_count=1)
  listing = failures.list_in(str(tmp_path / 'w'))
  os.makedirs(tmp_path / 'w')
  with caplog.at_level(logging.WARNING):
    source = ip.make_source(config)
    assert source.info().num_train_examples == 30  # Files found.
    run = _take(source.train_iterator(**kw), 10)  # Two epochs.
  # The batch of step k: the first 6 files that decode in the order of
  # step k's candidates (its examples, then the rest of its epoch's order).
  paths = list(source.paths)
  order = ip.EpochOrder(0, 0, 30, 6, 5)
  for step, batch in enumerate(run):
    chosen = [paths[i] for i in order.step_indices(step, 24)
              if paths[i] in good][:6]
    np.testing.assert_array_equal(batch['image'],
                                  np.stack([good[p] for p in chosen]))
    np.testing.assert_array_equal(
        batch['label'], [p.split(os.sep)[-2] == 'b' for p in chosen])
  # Each bad file is listed once in the workdir; the console names the
  # first and then counts (not a line a file).
  with open(listing) as f:
    lines = f.read().splitlines()
  assert sorted(l.split('\t')[0] for l in lines) == sorted(bad)
  assert all(l.endswith('\treplaced in its batch') for l in lines)
  warnings = _decode_warnings(caplog)
  assert len(warnings) == 1 and warnings[0].split()[2].rstrip(':') in bad
  assert listing in warnings[0]
  # Evaluation leaves them out, without listing them again.
  with caplog.at_level(logging.WARNING):
    batches = list(source.eval_iterator('train', 16, 0, 1))
  assert sum(b['mask'].sum() for b in batches) == 24
  assert len(_decode_warnings(caplog)) == 1
  with open(listing) as f:
    assert len(f.read().splitlines()) == 6
  failures.list_in(None)
  # A resumed run (a new source, nothing known yet) reads the same batches.
  resumed = _take(ip.make_source(config).train_iterator(start_step=7, **kw), 3)
  _assert_batches_equal(run[7:], resumed)


def test_input_ends_when_a_stop_is_requested(tmp_path):
  from simclr_jax import signals  # pylint: disable=g-import-not-at-top
  root = str(tmp_path)
  _write_folder(root, 12, 2)
  config = _config(source='folder', data_dir=root, crop='device')
  config.image_size = 8
  it = ip.make_source(config).train_iterator(4, process_index=0,
                                             process_count=1)
  next(it)
  with signals.StopRequests() as stop:
    stop.requested = True
    assert signals.stop_requested()
    rest = list(itertools.islice(it, 100))  # Ends after what is in flight.
  assert len(rest) < 20
  assert not signals.stop_requested()


def test_cached_folder_counts_what_decodes(tmp_path, caplog):
  root = str(tmp_path / 'mixed')
  good, bad = _write_folder(root, 20, 12)
  config = _config(source='folder', data_dir=root, crop='device', cache=True,
                   holdout_fraction=0.25)
  config.image_size = 8
  with caplog.at_level(logging.WARNING):
    info = ip.get_info(config)
  assert (info.num_train_examples, info.num_eval_examples) == (15, 5)
  summary = [r.getMessage() for r in caplog.records
             if 'cannot be decoded' in r.getMessage()]
  assert len(summary) == 1, summary
  assert summary[0].startswith('12 of the 32 images of ') and 'and 9 more' in summary[0]
  assert sum(p in summary[0] for p in bad) == 3
  pixels = {x.tobytes() for x in good.values()}
  seen = set()
  for batch in _take(ip.create_train_iterator(
      config, local_batch_size=5, process_index=0, process_count=1), 6):
    images = [im.tobytes() for im in batch['image']]
    assert len(set(images)) == 5 and set(images) <= pixels  # No duplicates.
    seen |= set(images)
  assert len(seen) == 15
  allbad = str(tmp_path / 'junk')
  _write_folder(allbad, 0, 6)
  for cache in (True, False):
    config = _config(source='folder', data_dir=allbad, crop='device',
                     cache=cache, resize_to=8)
    with pytest.raises(ip.DataError, match='none of the 6 images'):
      ip.get_info(config)


def test_eval_dir_is_the_eval_split(tmp_path):
  train_dir, test_dir = str(tmp_path / 'train'), str(tmp_path / 'test')
  train, _ = _write_folder(train_dir, 10, 0)
  test, _ = _write_folder(test_dir, 6, 0, seed=500)
  config = _config(source='folder', data_dir=train_dir, crop='device',
                   holdout_fraction=0.3, eval_dir=test_dir)
  config.image_size = 8
  info = ip.get_info(config)
  # Nothing is held out of data_dir; eval_dir is the eval split, exactly.
  assert (info.num_train_examples, info.num_eval_examples) == (10, 6)
  for split, expected in (('train', train), ('eval', test)):
    batch = next(ip.create_eval_iterator(config, split, local_batch_size=16,
                                         process_index=0, process_count=1))
    m = batch['mask']
    assert m.sum() == len(expected)
    got = sorted((im.tobytes(), int(y)) for im, y in
                 zip(batch['image'][m], batch['label'][m]))
    want = sorted((x.tobytes(), int(p.split(os.sep)[-2] == 'b'))
                  for p, x in expected.items())
    assert got == want
  os.makedirs(os.path.join(test_dir, 'c'))
  Image.fromarray(_rgb(9, 8, 8)).save(os.path.join(test_dir, 'c', 'z.png'))
  with pytest.raises(ValueError, match='same class subfolders'):
    ip.get_info(config)
  config.data.eval_dir = os.path.join(train_dir, 'a')
  with pytest.raises(ValueError, match='separate folders'):
    ip.get_info(config)


# -------------------------------------------------------------------- TFDS


class TinyFixed(tfds.core.GeneratorBasedBuilder):
  """50 + 10 8x8 images whose pixels encode their id (train: 0.., test: 1000..)."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(8, 8, 3)),
        'label': tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(50, 0),
            'test': self._generate_examples(10, 1000)}

  def _generate_examples(self, n, first):
    for i in range(first, first + n):
      image = np.full((8, 8, 3), i % 256, np.uint8)
      image[0, 0] = i // 256
      yield i, {'image': image, 'label': i % 3}


def _ids(images):
  return images[:, 1, 1, 0].astype(int) + 256 * images[:, 0, 0, 0].astype(int)


@pytest.fixture(scope='module')
def tiny_tfds(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  TinyFixed(data_dir=data_dir).download_and_prepare()
  return data_dir


def _tfds_config(data_dir, **data):
  data = {'eval_split': 'test', **data}
  return _config(source='tfds', name='tiny_fixed', data_dir=data_dir, **data)


@pytest.mark.parametrize('streamed', [False, True])
def test_tfds_processes_are_disjoint_and_resumable(tiny_tfds, streamed,
                                                   monkeypatch):
  if streamed:  # Force the streaming reader for this fixed-size dataset.
    monkeypatch.setattr(tfds_source, 'MAX_IN_MEMORY_BYTES', 0)
  config = _tfds_config(tiny_tfds)
  config.image_size = 8
  info = ip.get_info(config)
  assert (info.num_train_examples, info.num_eval_examples, info.num_classes,
          info.train_image_shape) == (50, 10, 3, (8, 8, 3))
  assert isinstance(ip.make_source(config),
                    tfds_source.TfdsStreamSource if streamed
                    else tfds_source.TfdsArraySource)
  seen = []
  for p in range(2):
    kw = dict(local_batch_size=5, process_index=p, process_count=2)
    run = _take(ip.create_train_iterator(config, **kw), 7)  # Epoch: 5 steps.
    epoch = np.concatenate([_ids(b['image']) for b in run[:5]])
    assert len(set(epoch)) == 25
    for b in run:
      np.testing.assert_array_equal(b['label'], _ids(b['image']) % 3)
    seen.append(set(epoch))
    _assert_batches_equal(
        run[4:], _take(ip.create_train_iterator(config, start_step=4, **kw), 3))
  assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(50))
  for split, ids in (('train', range(50)), ('eval', range(1000, 1010))):
    got = []
    for p in range(3):
      batches = list(ip.create_eval_iterator(
          config, split, local_batch_size=4, process_index=p, process_count=3))
      assert len(batches) == (5 if split == 'train' else 1)
      got += [i for b in batches for i in _ids(b['image'])[b['mask']]]
    assert sorted(got) == list(ids)


def test_tfds_holdout_and_split_errors(tiny_tfds):
  config = _tfds_config(tiny_tfds, eval_split='', holdout_fraction=0.2)
  config.image_size = 8
  info = ip.get_info(config)
  assert (info.num_train_examples, info.num_eval_examples) == (40, 10)
  ev = list(ip.create_eval_iterator(config, 'eval', local_batch_size=10,
                                    process_index=0, process_count=1))
  train_ids = set()
  for b in _take(ip.create_train_iterator(
      config, local_batch_size=10, process_index=0, process_count=1), 4):
    train_ids |= set(_ids(b['image']))
  eval_ids = set(_ids(ev[0]['image']))
  assert len(train_ids) == 40 and len(eval_ids) == 10
  assert train_ids | eval_ids == set(range(50))
  with pytest.raises(ValueError, match="no split 'validation'"):
    ip.get_info(_tfds_config(tiny_tfds, eval_split='validation'))


def test_tfds_not_prepared_fails_fast(tmp_path):
  start = time.perf_counter()
  for name, match in (('cifar10', 'not prepared'), ('imagenette', 'not prepared'),
                      ('no_such_dataset_xyz', 'cannot be loaded')):
    config = _config(source='tfds', name=name, data_dir=str(tmp_path),
                     download=False)
    with pytest.raises(ValueError, match=match):
      ip.get_info(config)
  assert time.perf_counter() - start < 10


def test_tfds_mock_cifar10_in_memory():
  config = _config(source='tfds', name='cifar10', eval_split='test',
                   download=True)
  config.image_size = 32
  with tfds.testing.mock_data(num_examples=24):
    info = ip.get_info(config)
    assert (info.num_classes, info.train_image_shape, info.crop_on_host) == (
        10, (32, 32, 3), False)
    kw = dict(local_batch_size=8, process_index=0, process_count=1)
    run = _take(ip.create_train_iterator(config, **kw), 4)
    _assert_batches_equal(
        run[2:], _take(ip.create_train_iterator(config, start_step=2, **kw), 2))
    epoch = np.concatenate([b['image'] for b in run[:3]])
    assert len({im.tobytes() for im in epoch}) == 24  # Each example once.
    ev = list(ip.create_eval_iterator(config, 'eval', local_batch_size=16,
                                      process_index=0, process_count=1))
    assert [b['mask'].sum() for b in ev] == [16, 8]
    assert all(0 <= y < 10 for b in ev for y in b['label'][b['mask']])


def test_tfds_mock_stl10_pretrains_on_unlabelled():
  """configs/stl10.py's splits: pretrain on 'unlabelled', the labelled
  'train' split for the probe and kNN bank, 'test' for evaluation."""
  from configs import stl10  # pylint: disable=g-import-not-at-top
  config = stl10.get_config()
  config.data.download = True
  config.data.num_parallel_calls = 2
  with tfds.testing.mock_data(num_examples=24):
    source = ip.make_source(config)
    assert source.splits.splits == {'pretrain': 'unlabelled', 'eval': 'test',
                                    'train': 'train'}
    info = source.info()
    assert (info.num_classes, info.train_image_shape, info.crop_on_host) == (
        10, (96, 96, 3), False)
    bank = list(source.eval_iterator('train', 16))
    assert all(0 <= y < 10 for b in bank for y in b['label'][b['mask']])


def test_tfds_mock_imagenette_host_crop():
  config = _config(source='tfds', name='imagenette', eval_split='validation',
                   download=True)
  config.image_size = 24
  with tfds.testing.mock_data(num_examples=12):
    info = ip.get_info(config)
    assert info.crop_on_host and info.train_image_shape == (2, 24, 24, 3)
    kw = dict(local_batch_size=4, process_index=0, process_count=1)
    run = _take(ip.create_train_iterator(config, **kw), 4)
    for b in run:
      assert b['image'].shape == (4, 2, 24, 24, 3) and b['image'].dtype == np.uint8
      assert b['label'].dtype == np.int32
    _assert_batches_equal(
        run[2:], _take(ip.create_train_iterator(config, start_step=2, **kw), 2))
    ev = list(ip.create_eval_iterator(config, 'eval', local_batch_size=8,
                                      process_index=0, process_count=1))
    assert [b['image'].shape for b in ev] == [(8, 24, 24, 3)] * 2
    assert [b['mask'].sum() for b in ev] == [8, 4]


def test_tfds_split_arithmetic_and_labelled_part(tiny_tfds):
  config = _tfds_config(tiny_tfds, train_split='train+test')
  assert ip.get_info(config).num_train_examples == 60
  labelled_part = tfds_source.labelled_part
  assert labelled_part('train+unlabelled', ['train', 'unlabelled']) == 'train'
  assert labelled_part('unlabelled', ['train', 'unlabelled', 'test']) == 'train'
  assert labelled_part('train[:50%]+test', []) == 'train[:50%]+test'


def test_digits_host_crop():
  config = _config(source='digits', resize_to=16, crop='host')
  config.image_size = 12
  info = ip.get_info(config)
  assert info.crop_on_host and info.train_image_shape == (2, 12, 12, 3)
  kw = dict(local_batch_size=64, process_index=1, process_count=2)
  run = _take(ip.create_train_iterator(config, **kw), 3)
  assert run[0]['image'].shape == (64, 2, 12, 12, 3)
  assert run[0]['image'].dtype == np.uint8
  assert not np.array_equal(run[0]['image'][:, 0], run[0]['image'][:, 1])
  _assert_batches_equal(
      run[1:], _take(ip.create_train_iterator(config, start_step=1, **kw), 2))


@pytest.mark.parametrize('source', ['digits', 'folder'])
def test_host_crops_have_the_view_side_and_eval_the_image_side(source,
                                                               mixed_folder):
  """augment.output_size below image_size: the host's training crops have the
  views' side (decoded digits and encoded files alike); evaluation batches
  keep image_size and do not change at all."""
  def config(view_size):
    if source == 'digits':
      c = _config(source='digits', resize_to=16, crop='host', holdout_fraction=0.2)
    else:
      c = _config(source='folder', data_dir=mixed_folder[0], crop='host')
    c.image_size = 12
    c.augment.output_size = view_size
    return c
  info = ip.get_info(config(8))
  assert info.crop_on_host and info.train_image_shape == (2, 8, 8, 3)
  kw = dict(local_batch_size=4, process_index=0, process_count=1)
  batch = next(ip.create_train_iterator(config(8), **kw))
  assert batch['image'].shape == (4, 2, 8, 8, 3)
  split = 'eval' if source == 'digits' else 'train'
  evals = [list(ip.create_eval_iterator(config(s), split, **kw))
           for s in (8, 12)]
  assert evals[0][0]['image'].shape == (4, 12, 12, 3)
  _assert_batches_equal(evals[0], evals[1])


def test_host_crop_windows_follow_the_device_sampler():
  """Host- and device-cropped runs draw crop boxes from one distribution."""
  import jax  # pylint: disable=g-import-not-at-top
  import scipy.stats  # pylint: disable=g-import-not-at-top
  from simclr_jax import augment  # pylint: disable=g-import-not-at-top
  height, width, n = 375, 500, 3000
  scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
  sample = tf.function(lambda seed: host_ops.sample_window(
      tf.constant(height), tf.constant(width), seed, scale, ratio))
  host = np.stack([sample(tf.constant([7, i])).numpy() for i in range(n)])
  draws = jax.vmap(lambda k: augment.sample_crop(k, height, width, scale, ratio))(
      jax.random.split(jax.random.key(0), n))
  device = np.asarray(draws.box)
  for col in range(4):  # y, x, h, w
    p = scipy.stats.ks_2samp(host[:, col], device[:, col]).pvalue
    assert p > 1e-3, (col, p)
  assert (host[:, 0] + host[:, 2] <= height).all()
  assert (host[:, 1] + host[:, 3] <= width).all()
  # google's min_object_covered: every window is at least 10% of the image.
  assert (host[:, 2] * host[:, 3] >= 0.1 * height * width).all()
