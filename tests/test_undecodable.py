"""Images that do not decode where the data-integrity work left gaps: TFDS
records whose image bytes are junk (in memory and streamed, 'skip' and
'stop'), damaged JPEGs on the host-crop path, and the evaluation passes
(export through main.py) over folders with undecodable files."""

import io
import os
import shutil
import subprocess
import sys

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
from images import damaged_jpeg  # pylint: disable=g-bad-import-order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JUNK_TRAIN = (7, 23)  # Generated examples whose image is junk.
JUNK_TEST = (3,)


class TinyBad(tfds.core.GeneratorBasedBuilder):
  """40 + 10 8x8 images whose pixels encode their id; a few are junk JPEGs."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(8, 8, 3)),
        'label': tfds.features.ClassLabel(num_classes=2)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(40, 0, JUNK_TRAIN),
            'test': self._generate_examples(10, 100, JUNK_TEST)}

  def _generate_examples(self, n, first, junk):
    for i in range(n):
      if i in junk:
        image = io.BytesIO(damaged_jpeg(first + i))
      else:
        image = np.full((8, 8, 3), first + i, np.uint8)
      yield first + i, {'image': image, 'label': i % 2}


@pytest.fixture(scope='module')
def tiny_bad(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  TinyBad(data_dir=data_dir).download_and_prepare()
  return data_dir


def _junk_positions(data_dir, split):
  """Positions in the stored order of `split` of the junk records."""
  ds = TinyBad(data_dir=data_dir).as_dataset(
      split=split, shuffle_files=False,
      decoders={'image': tfds.decode.SkipDecoding()})
  return [i for i, ex in enumerate(ds.as_numpy_iterator())
          if ex['image'].startswith(b'\xff\xd8')]


def _config(data_dir, **fields):
  config = default.get_config()
  config.image_size = 8
  config.data.source = 'tfds'
  config.data.name = 'tiny_bad'
  config.data.data_dir = data_dir
  config.data.eval_split = 'test'
  config.data.crop = 'device'
  config.data.num_parallel_calls = 2
  for k, v in fields.items():
    setattr(config.data, k, v)
  return config


@pytest.mark.parametrize('streamed', [False, True])
def test_tfds_junk_records_are_skipped_listed_and_named(
    tiny_bad, streamed, monkeypatch, tmp_path):
  if streamed:
    monkeypatch.setattr(tfds_source, 'MAX_IN_MEMORY_BYTES', 0)
  listing = failures.list_in(str(tmp_path))
  try:
    config = _config(tiny_bad)
    source = ip.make_source(config)
    assert isinstance(source, tfds_source.TfdsStreamSource if streamed
                      else tfds_source.TfdsArraySource)
    kw = dict(local_batch_size=8, process_index=0, process_count=1)
    run = [next(it) for it in [source.train_iterator(**kw)] for _ in range(8)]
    for b in run:  # Full batches of real images (their pixels are ids < 40).
      assert b['image'].shape == (8, 8, 8, 3)
      assert (b['image'][:, 1, 1, 0] < 40).all()
    again = source.train_iterator(start_step=5, **kw)
    for b in run[5:]:  # Resuming reads the same batches.
      np.testing.assert_array_equal(next(again)['image'], b['image'])
    ev = list(source.eval_iterator('eval', 4))
    ids = sorted(int(i) for b in ev for i in b['image'][b['mask'], 1, 1, 0])
    assert ids == [100 + i for i in range(10) if i not in JUNK_TEST]
    junk = _junk_positions(tiny_bad, 'test')
    kept = source.kept_index('eval', 0, 1)
    assert sorted(set(range(10)) - set(kept.tolist())) == junk
  finally:
    failures.list_in(None)
  with open(listing) as f:
    listed = [l.split('\t')[0] for l in f.read().splitlines()]
  assert f"tfds tiny_bad split 'test' record {junk[0]}" in listed
  if not streamed:  # Decoded once: the junk train records by position.
    for p in _junk_positions(tiny_bad, 'train'):
      assert f"tfds tiny_bad split 'train' record {p}" in listed
  else:  # Streamed: named by their file and index in it.
    assert any('tiny_bad-train.tfrecord' in l for l in listed), listed


@pytest.mark.parametrize('streamed', [False, True])
def test_tfds_junk_record_stops_in_one_line_when_asked(tiny_bad, streamed,
                                                       monkeypatch):
  if streamed:
    monkeypatch.setattr(tfds_source, 'MAX_IN_MEMORY_BYTES', 0)
  config = _config(tiny_bad, on_undecodable='stop')
  source = ip.make_source(config)
  with pytest.raises(failures.DataError, match="on_undecodable = 'stop'") as e:
    it = source.train_iterator(local_batch_size=8, process_index=0,
                               process_count=1)
    for _ in range(5):  # An epoch holds every record.
      next(it)
  assert 'tfds tiny_bad' in str(e.value) and len(str(e.value).splitlines()) == 1


@pytest.mark.parametrize('streamed', [False, True])
def test_tfds_damaged_record_file_is_one_line_not_a_hang(tiny_bad, streamed,
                                                         monkeypatch,
                                                         tmp_path):
  """A byte flipped inside a TFRecord shard (its checksum fails): reading it
  raises DataError naming the dataset and split, at once. (tf.data's
  ignore_errors over a TFDS reader retries such a record forever.)"""
  if streamed:
    monkeypatch.setattr(tfds_source, 'MAX_IN_MEMORY_BYTES', 0)
  data_dir = tmp_path / 'tfds'
  shutil.copytree(tiny_bad, data_dir)
  for split in ('train', 'test'):
    shard, = (data_dir / 'tiny_bad' / '1.0.0').glob(f'*-{split}.tfrecord-*')
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
  source = ip.make_source(_config(str(data_dir)))
  with pytest.raises(failures.DataError, match='cannot be read') as e:
    it = source.train_iterator(local_batch_size=8, process_index=0,
                               process_count=1)
    for _ in range(5):  # An epoch reads every record.
      next(it)
  message = str(e.value)
  assert len(message.splitlines()) == 1
  assert "TFDS dataset 'tiny_bad'" in message
  assert 'corrupted record' in message and 'IteratorGetNext' not in message
  with pytest.raises(failures.DataError, match="split 'test'"):
    list(source.eval_iterator('eval', 4))


def test_tfds_junk_records_through_main_are_counted(tiny_bad, tmp_path):
  """main.py on the prepared dataset (read from its files): trains, lists
  the junk records and prints no traceback; 'stop' is one line, exit 2."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  args = [sys.executable, 'main.py', '--config=configs/demo.py',
          '--config.data.source=tfds', '--config.data.name=tiny_bad',
          f'--config.data.data_dir={tiny_bad}', '--config.data.eval_split=test',
          '--config.image_size=8', '--config.data.resize_to=8',
          '--config.model.base_width=4', '--config.model.proj_out_dim=8',
          '--config.train.global_batch_size=8', '--config.train.num_steps=2',
          '--config.eval.linear_probe=false',
          '--config.eval.compare_random_init=false']
  workdir = tmp_path / 'w'
  ok = subprocess.run(args + [f'--workdir={workdir}'], cwd=ROOT, env=env,
                      capture_output=True, text=True, timeout=300)
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert 'Traceback' not in ok.stderr
  listed = (workdir / 'undecodable.txt').read_text().splitlines()
  assert len(listed) == len(JUNK_TRAIN) + len(JUNK_TEST)
  assert 'undecodable file(s)' in ok.stderr
  # Export: the junk records are left out and the index skips them.
  out = tmp_path / 'export'
  export = subprocess.run(args + [f'--workdir={out}', '--config.mode=export',
                                  f'--config.init_from={workdir}'],
                          cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
  assert export.returncode == 0 and 'Traceback' not in export.stderr, (
      export.stderr[-3000:])
  index = np.load(out / 'export' / 'eval_index.npy')
  assert len(np.load(out / 'export' / 'eval_h.npy')) == len(index) == 9
  junk = _junk_positions(tiny_bad, 'test')
  assert sorted(set(range(10)) - set(index.tolist())) == junk
  stop = subprocess.run(args + [f'--workdir={tmp_path / "s"}',
                                '--config.data.on_undecodable=stop'],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300)
  errors = [l for l in stop.stderr.splitlines() if l.startswith('error: ')]
  assert stop.returncode == 2 and len(errors) == 1, stop.stderr[-3000:]
  assert "tfds tiny_bad split 'train" in errors[0]


def test_host_crop_fails_on_a_damaged_jpeg_as_a_full_decode_does():
  """A window above the last row used to decode junk data into grey."""
  contents = tf.constant(damaged_jpeg(0, size=64))
  with pytest.raises(tf.errors.InvalidArgumentError):
    tf.io.decode_jpeg(contents)  # The device path's decode fails.
  top_left = lambda h, w, i: tf.constant([0, 0, 16, 16])
  with pytest.raises(tf.errors.InvalidArgumentError):
    host_ops.decode_windows(contents, top_left, 2)
  config = default.get_config()
  config.image_size = 16
  with pytest.raises(tf.errors.InvalidArgumentError):
    host_ops.ElementFns(config).eval_view(contents)
  # An intact JPEG: the windows are those of a full decode. (Here the
  # windows span every column: libjpeg's horizontal crop upsamples chroma
  # at its right edge without the next column, so a narrower one differs
  # there by a few levels; reading on below the windows changes no pixel.)
  rng = np.random.default_rng(1)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (64, 48, 3), np.uint8)).save(
      buf, 'JPEG', quality=90)
  good = tf.constant(buf.getvalue())
  window = lambda h, w, i: tf.constant([[8, 4, 20, 44], [30, 0, 10, 10]][i])
  crops = host_ops.decode_windows(good, window, 2)
  full = tf.io.decode_jpeg(good).numpy()
  np.testing.assert_array_equal(crops[0].numpy(), full[8:28, 4:48])
  np.testing.assert_array_equal(crops[1].numpy(), full[30:40, 0:10])


def _folder(root, good, bad):
  """Class folders c0, c1 of 48x48 JPEGs (host crop) and damaged ones."""
  rng = np.random.default_rng(0)
  for i in range(good + bad):
    folder = os.path.join(root, f'c{i % 2}')
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f'{i:03d}.jpg')
    if i < bad:
      with open(path, 'wb') as f:
        f.write(damaged_jpeg(i, size=48))
    else:
      Image.fromarray(rng.integers(0, 256, (48, 48, 3), np.uint8)).save(
          path, quality=90)


def test_export_of_a_folder_with_undecodable_files_through_main(tmp_path):
  """Pretrain on a folder (host crop), then export both splits: the damaged
  files are counted and listed, left out of every array and of the paths,
  and nothing prints a traceback or a line a file."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  data = str(tmp_path / 'photos')
  _folder(data, good=40, bad=8)
  common = ['--config=configs/cifar10_folder.py', f'--config.data.data_dir={data}',
            '--config.data.crop=host', '--config.model.depth=18',
            '--config.model.base_width=4', '--config.image_size=8',
            '--config.train.global_batch_size=16', '--config.eval.batch_size=16',
            '--config.train.num_steps=2', '--config.eval.linear_probe=false',
            '--config.eval.compare_random_init=false']
  pre = str(tmp_path / 'pre')
  run = lambda *a: subprocess.run([sys.executable, 'main.py', *common, *a],
                                  cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=300)
  first = run(f'--workdir={pre}')
  assert first.returncode == 0, first.stderr[-3000:]
  out = tmp_path / 'export'
  result = run(f'--workdir={out}', '--config.mode=export',
               f'--config.init_from={pre}', '--config.export.split=both')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  noise = [l for l in result.stderr.splitlines() if l.strip()
           and not l.startswith(('export:', '[', 'step'))]
  assert len(noise) <= 5, noise
  listed = [l.split('\t')[0] for l in
            (out / 'undecodable.txt').read_text().splitlines()]
  damaged = sorted(os.path.join(data, f'c{i % 2}', f'{i:03d}.jpg')
                   for i in range(8))
  assert sorted(listed) == damaged
  rows = 0
  for split in ('train', 'eval'):
    folder = out / 'export'
    h = np.load(folder / f'{split}_h.npy')
    paths = (folder / f'{split}_paths.txt').read_text().splitlines()
    index = np.load(folder / f'{split}_index.npy')
    assert len(h) == len(paths) == len(index)
    assert not set(paths) & set(damaged)
    rows += len(paths)
  assert rows == 40
