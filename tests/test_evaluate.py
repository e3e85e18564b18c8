"""Evaluation: the kNN monitor, the quick probe and label subsets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simclr_jax import parallel
from simclr_jax.evaluate import knn


def _clusters(n, num_classes, dim, seed, noise=0.05):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_classes, dim))
  y = rng.integers(0, num_classes, n).astype(np.int32)
  x = centres[y] + noise * rng.normal(size=(n, dim))
  return x.astype(np.float32), y


def _identity_fn(mesh):
  """A 'feature function' that passes features through (images = features)."""
  return jax.jit(lambda variables, x: x.astype(jnp.float32))


def _batches(x, y, batch):
  for i in range(0, len(y), batch):
    xb, yb = x[i:i + batch], y[i:i + batch]
    pad = batch - len(yb)
    yield {'image': np.concatenate([xb, np.zeros((pad,) + x.shape[1:],
                                                 x.dtype)]),
           'label': np.concatenate([yb, np.zeros(pad, np.int32)]),
           'mask': np.arange(batch) < len(yb)}


def _sharded_accuracy(train, test, k, num_classes, num_devices, batch=32):
  mesh = parallel.make_mesh(num_devices)
  fn = _identity_fn(mesh)
  bank = knn.build_bank(fn, None, _batches(*train, batch), mesh)
  predict = knn.make_predict_fn(mesh, k=k, temperature=0.1,
                                num_classes=num_classes)
  return knn.bank_accuracy(predict, bank, fn, None, _batches(*test, batch),
                           mesh)


def test_knn_separable_is_perfect_and_shuffled_is_chance():
  train = _clusters(300, 5, 16, seed=0)
  test = _clusters(200, 5, 16, seed=0)  # Same centres.
  test = (test[0][:100], test[1][:100])
  assert _sharded_accuracy(train, test, k=20, num_classes=5,
                           num_devices=8) == 1.0
  rng = np.random.default_rng(1)
  shuffled = (train[0], rng.permutation(train[1]))
  accs = [_sharded_accuracy(shuffled, _clusters(400, 5, 16, seed=s), k=20,
                            num_classes=5, num_devices=8)
          for s in (2,)]
  # 5 classes: chance is 0.2; 400 test examples give a s.d. of 0.02.
  assert abs(np.mean(accs) - 0.2) < 0.1


@pytest.mark.parametrize('num_devices', [1, 8])
def test_knn_sharded_chunked_equals_unchunked_reference(num_devices):
  rng = np.random.default_rng(3)
  train = (rng.normal(size=(203, 8)).astype(np.float32),
           rng.integers(0, 4, 203).astype(np.int32))
  test = (rng.normal(size=(77, 8)).astype(np.float32),
          rng.integers(0, 4, 77).astype(np.int32))
  # Unchunked reference in NumPy: every similarity at once.
  def unit(v):
    return v / np.linalg.norm(v, axis=1, keepdims=True)
  sims = unit(test[0]) @ unit(train[0]).T
  idx = np.argsort(-sims, axis=1)[:, :10]
  w = np.exp(np.take_along_axis(sims, idx, 1) / 0.1)
  votes = np.zeros((77, 4))
  for c in range(4):
    votes[:, c] = (w * (train[1][idx] == c)).sum(1)
  expected = np.mean(votes.argmax(1) == test[1])
  got = _sharded_accuracy(train, test, k=10, num_classes=4,
                          num_devices=num_devices, batch=16)
  assert got == pytest.approx(expected, abs=1e-9)
  host = knn.knn_accuracy(*train, *test, k=10, num_classes=4, chunk=7)
  assert host == pytest.approx(expected, abs=1e-9)


# ------------------------------------------------- end to end (slow-ish)

import os  # pylint: disable=g-import-not-at-top,wrong-import-position
import signal  # pylint: disable=g-import-not-at-top,wrong-import-position
import subprocess  # pylint: disable=g-import-not-at-top,wrong-import-position
import sys  # pylint: disable=g-import-not-at-top,wrong-import-position
import time  # pylint: disable=g-import-not-at-top,wrong-import-position

from simclr_jax import checkpoint  # pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax import reporting  # pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax.evaluate import modes  # pylint: disable=g-import-not-at-top,wrong-import-position
from tiny import tiny_config  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FLAGS = ['--config=configs/demo.py', '--config.image_size=8',
              '--config.data.resize_to=8', '--config.model.base_width=4',
              '--config.model.proj_out_dim=8']


@pytest.fixture
def pretrained(tiny_pretrained):
  return tiny_pretrained


def test_pretraining_scores_equal_those_of_exported_features(pretrained,
                                                             tmp_path):
  workdir, config, record = pretrained
  assert 0 <= record['final_probe_accuracy'] <= 1
  monitor = [r for r in reporting.read_metrics(workdir) if 'knn_accuracy' in r]
  assert [r['step'] for r in monitor] == [2]
  # The exported features, scored by a plain host-side kNN, give the same
  # final kNN accuracy: the export is what the encoder computes.
  config = tiny_config()
  config.mode = 'export'
  config.init_from = workdir
  out = str(tmp_path / 'export')
  got = modes.export(config, out)
  assert got['exported'] == {'train': 1438, 'eval': 359}
  load = lambda name: np.load(os.path.join(out, 'export', name))
  assert load('train_h.npy').shape == (1438, 32)
  np.testing.assert_array_equal(load('eval_index.npy'), np.arange(359))
  host = knn.knn_accuracy(load('train_h.npy'), load('train_labels.npy'),
                          load('eval_h.npy'), load('eval_labels.npy'),
                          k=config.eval.knn_k, num_classes=10,
                          temperature=config.eval.knn_temperature)
  # Equal up to near-ties: the sharded and the host matmul sum in different
  # orders, so a query whose two leading classes' votes are within float32
  # rounding, or whose k-th and (k+1)-th neighbours are and would move the
  # vote past its margin, may go either way.
  fragile = _near_tied_queries(load('train_h.npy'), load('train_labels.npy'),
                               load('eval_h.npy'), config.eval.knn_k,
                               config.eval.knn_temperature)
  # The 4-step encoder's features are close to collapse (about 80 of the
  # 359 votes are that close); most are still decided clearly.
  assert fragile < 359 // 2
  assert abs(host - record['final_knn_accuracy']) <= fragile / 359 + 1e-9


def _near_tied_queries(train_h, train_y, eval_h, k, temperature, tol=1e-6):
  """Eval queries whose weighted kNN vote float32 rounding could flip."""
  unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
  sims = unit(eval_h.astype(np.float64)) @ unit(train_h.astype(np.float64)).T
  order = np.argsort(-sims, axis=1)
  ranked = np.take_along_axis(sims, order, axis=1)
  k = min(k, sims.shape[1])
  votes = np.zeros((len(sims), int(train_y.max()) + 1))
  for j in range(k):
    np.add.at(votes, (np.arange(len(sims)), train_y[order[:, j]]),
              np.exp(ranked[:, j] / temperature))
  top2 = np.sort(votes, axis=1)[:, -2:]
  margin = top2[:, 1] - top2[:, 0]
  # Rounding of the similarities (relative tol, times 1 / T in the weights).
  fragile = margin < 10 * tol / temperature * top2[:, 1]
  if k < sims.shape[1]:
    # The k-th neighbour may swap with the next: that moves one weight.
    weight = np.exp(ranked[:, k - 1] / temperature)
    fragile |= (ranked[:, k - 1] - ranked[:, k] < tol) & (margin < 2 * weight)
  return int(fragile.sum())


def _env(cache):
  env = dict(os.environ)
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  env['JAX_COMPILATION_CACHE_DIR'] = cache
  env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  env['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
  return env


def _linear_eval_cmd(workdir, init_from):
  return [sys.executable, 'main.py', f'--workdir={workdir}', *TINY_FLAGS,
          '--config.mode=linear_eval', f'--config.init_from={init_from}',
          '--config.linear_eval.epochs=4', '--config.linear_eval.batch_size=64',
          '--config.linear_eval.checkpoint_every_steps=5',
          '--config.train.log_every_steps=5']


def test_linear_eval_frozen_encoder_and_exact_resume_after_sigkill(
    pretrained, tmp_path):
  init_from = pretrained[0]
  mesh = parallel.make_mesh(1)
  before, step = checkpoint.restore_variables(init_from, mesh)
  env = _env(str(tmp_path / 'cache'))
  straight = str(tmp_path / 'straight')
  result = subprocess.run(_linear_eval_cmd(straight, init_from), cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  records = reporting.read_metrics(straight)
  final = records[-1]
  assert final['final'] and final['init_step'] == step
  assert final['eval_examples'] == 359
  # The final record lands on the last step trained (4 epochs of 1438 // 64
  # = 22 steps), after every progress record; the epochs are a field.
  assert final['step'] == 4 * (1438 // 64)
  assert final['step'] == max(r['step'] for r in records)
  assert final['epochs'] == 4.0

  broken = str(tmp_path / 'broken')
  proc = subprocess.Popen(_linear_eval_cmd(broken, init_from), cwd=ROOT,
                          env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  ckpts = os.path.join(broken, 'checkpoints')
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(ckpts) and any(d.isdigit() for d in os.listdir(ckpts)):
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.05)
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  result = subprocess.run(_linear_eval_cmd(broken, init_from), cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  resumed = reporting.read_metrics(broken)[-1]
  for key in ('linear_eval_top1', 'linear_eval_top5'):
    assert resumed[key] == final[key]
  # The two heads are bit-identical, and the encoder was never changed.
  heads = [checkpoint.restore_variables(w, mesh)[0] for w in (straight, broken)]
  for a, b in zip(jax.tree.leaves(heads[0]), jax.tree.leaves(heads[1])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  after, _ = checkpoint.restore_variables(init_from, mesh)
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------- fine-tuning

from simclr_jax.evaluate import finetune as finetune_lib  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_label_subsets_balanced_reproducible_nested():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(10), [100, 120, 80, 100, 90, 110, 100, 95,
                                     105, 100])
  labels = rng.permutation(labels)
  labels[::37] = -1  # Unlabelled examples are never chosen.
  small = finetune_lib.balanced_subset(labels, 0.01, seed=3)
  large = finetune_lib.balanced_subset(labels, 0.1, seed=3)
  assert set(small) <= set(large)
  assert np.array_equal(large, finetune_lib.balanced_subset(labels, 0.1, 3))
  assert not np.array_equal(large, finetune_lib.balanced_subset(labels, 0.1, 4))
  assert (labels[large] >= 0).all()
  for c in range(10):
    n_c = int(np.sum(labels == c))
    assert np.sum(labels[large] == c) == max(1, round(0.1 * n_c))
    assert np.sum(labels[small] == c) == max(1, round(0.01 * n_c))
  every = finetune_lib.balanced_subset(labels, 1.0, 0)
  assert np.array_equal(every, np.flatnonzero(labels >= 0))


def test_finetune_starts_from_the_pretrained_network(pretrained, tmp_path):
  workdir, _, _ = pretrained
  config = tiny_config()
  config.mode = 'finetune'
  config.init_from = workdir
  config.finetune.label_fraction = 0.1
  config.finetune.batch_size = 32
  config.finetune.epochs = 1.0
  config.finetune.from_proj_layer = 1
  record = finetune_lib.finetune(config, str(tmp_path / 'ft'))
  # 10% of each digit class of the 1,438 training images.
  train_labels = []
  from simclr_jax import data  # pylint: disable=g-import-not-at-top
  for b in data.make_source(config).eval_iterator('train', 512):
    train_labels.append(b['label'][b['mask']])
  counts = np.bincount(np.concatenate(train_labels))
  assert record['num_labelled'] == sum(max(1, round(0.1 * n)) for n in counts)
  assert record['eval_examples'] == 359 and 0 <= record['finetune_top1'] <= 1
  # Step 0 is the pretrained encoder and first head layer, a zero classifier.
  mesh = parallel.make_mesh(1)
  pre, _ = checkpoint.restore_variables(workdir, mesh)
  classifier = finetune_lib.Classifier(config.model, 1, 10)
  tx, _ = finetune_lib.create_optimizer(config.finetune, 10)
  state = finetune_lib.init_state(classifier, tx, pre, 8, mesh)
  np.testing.assert_array_equal(
      state.params['encoder']['stem_conv']['kernel'],
      pre['params']['encoder']['stem_conv']['kernel'])
  np.testing.assert_array_equal(
      state.params['projection_head']['dense_0']['kernel'],
      pre['params']['projection_head']['dense_0']['kernel'])
  assert not np.any(np.asarray(state.params['head']['kernel']))


def test_row_writer_keeps_fewer_rows_when_allowed(tmp_path):
  # Images that fail to decode are left out of a feature pass: the cache
  # holds the rows written (and a strict writer still refuses).
  from simclr_jax.evaluate import features as features_lib  # pylint: disable=g-import-not-at-top
  rows = np.arange(30, dtype=np.float32).reshape(10, 3)
  path = str(tmp_path / 'h.npy')
  writer = features_lib.RowWriter(path, (1000, 3), np.float32, fewer_ok=True)
  writer.append(rows[:4])
  writer.append(rows[4:])
  writer.close()
  np.testing.assert_array_equal(np.load(path), rows)
  assert len(features_lib.RowFile(path)) == 10
  strict = features_lib.RowWriter(str(tmp_path / 'y.npy'), (11,), np.float32)
  strict.append(rows[:, 0])
  with pytest.raises(RuntimeError, match='wrote 10 rows, expected 11'):
    strict.close()
  assert not os.path.exists(tmp_path / 'y.npy')


def test_export_writes_paths_row_aligned_with_the_arrays(pretrained,
                                                         tmp_path):
  """A folder sorted by class, with one undecodable file: every row of the
  arrays has its file on the same line of {split}_paths.txt, its label is
  that file's class, and the broken file is left out of all of them."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  data = tmp_path / 'photos'
  rng = np.random.default_rng(0)
  for c, name in enumerate(['cat', 'dog', 'emu']):
    (data / name).mkdir(parents=True)
    for i in range(10):
      pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(data / name / f'{i:02d}.png')
  broken = data / 'dog' / '05b.jpg'
  broken.write_bytes(b'\xff\xd8\xff\xe0' + rng.bytes(300) + b'\xff\xd9')
  config = tiny_config()
  config.mode = 'export'
  config.init_from = pretrained[0]
  config.data.source = 'folder'
  config.data.data_dir = str(data)
  config.data.eval_split = ''
  config.data.holdout_fraction = 0.2
  config.data.cache = False
  config.export.split = 'both'
  out = str(tmp_path / 'export')
  got = modes.export(config, out)
  names = ['cat', 'dog', 'emu']
  total = 0
  for split in ('train', 'eval'):
    folder = os.path.join(out, 'export')
    h = np.load(os.path.join(folder, f'{split}_h.npy'))
    labels = np.load(os.path.join(folder, f'{split}_labels.npy'))
    index = np.load(os.path.join(folder, f'{split}_index.npy'))
    with open(os.path.join(folder, f'{split}_paths.txt')) as f:
      paths = f.read().splitlines()
    assert len(paths) == len(h) == len(labels) == len(index) == got[
        'exported'][split]
    assert str(broken) not in paths
    assert [names[y] for y in labels] == [
        os.path.basename(os.path.dirname(p)) for p in paths]
    assert len(set(paths)) == len(paths)
    assert np.all(np.diff(index) > 0)
    total += len(paths)
  assert total == 30  # 31 files, the broken one left out.
