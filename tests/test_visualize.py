"""The figures of `python -m simclr_jax.visualize` on a tiny pretraining run,
and on a class folder sorted by class (every figure samples every class)."""

import json
import os
import subprocess
import sys

import jax
import matplotlib.text
from matplotlib.backends.backend_agg import FigureCanvasAgg
import numpy as np
import pytest
from PIL import Image

from simclr_jax import data
from simclr_jax import parallel
from simclr_jax import show_views
from simclr_jax import train
from simclr_jax import visualize
from simclr_jax.visualize import sample
from simclr_jax.visualize import tsne
from tiny import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def pretrained(tiny_pretrained):
  workdir, config, _ = tiny_pretrained
  return workdir, config


def _png(path):
  assert os.path.isfile(path), path
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n', path
  with Image.open(path) as image:
    image.verify()
  with Image.open(path) as image:
    return np.asarray(image.convert('RGB'))


def test_cli_writes_every_figure(pretrained, tmp_path, capsys):
  workdir, _ = pretrained
  out = str(tmp_path / 'figures')
  assert visualize.main(['--workdir', workdir, '--out', out, '--random_init',
                         '--num_points', '120', '--num_queries', '5']) == 0
  printed = capsys.readouterr().out
  for name in visualize.FIGURES:
    assert f'wrote {os.path.join(out, name)}.png' in printed
    image = _png(os.path.join(out, f'{name}.png'))
    assert image.shape[0] >= 100 and image.shape[1] >= 200, (name, image.shape)
    assert image.std() > 10, f'{name}.png is blank'
  # Two panels side by side: trained and random init.
  assert 'trained (step 4)' in printed and 'random init' in printed
  # Five queries of the 8x8 digits, 8 neighbours, two panels.
  layout = visualize.NeighborLayout(8, 5, 2, 48)
  assert _png(os.path.join(out, 'neighbors.png')).shape[:2] == (
      layout.size[1], layout.size[0])


def test_neighbors_equal_numpy_reference():
  rng = np.random.default_rng(0)
  bank = rng.normal(size=(50, 6)).astype(np.float32)
  queries = rng.normal(size=(7, 6)).astype(np.float32)
  bank[10] = 3 * queries[2]  # Same direction, other norm: cosine 1.
  idx, sims = visualize.nearest_neighbors(queries, bank, 5)
  for i, q in enumerate(queries):
    cos = [float(np.dot(q, b) / np.linalg.norm(q) / np.linalg.norm(b))
           for b in bank]
    ref = sorted(range(len(bank)), key=lambda j: -cos[j])[:5]
    assert list(idx[i]) == ref
    np.testing.assert_allclose(sims[i], [cos[j] for j in ref], rtol=1e-5)
  assert idx[2, 0] == 10 and sims[2, 0] == pytest.approx(1.0)
  with pytest.raises(ValueError, match='bank has 50 rows'):
    visualize.nearest_neighbors(queries, bank, 51)


def test_neighbor_frames_red_exactly_where_classes_differ():
  rng = np.random.default_rng(1)
  bank_labels = rng.integers(0, 3, 40)
  query_labels = np.array([0, 1, 2, -1])
  idx = rng.integers(0, 40, (4, 6))
  mismatch = visualize.neighbor_mismatch(query_labels, bank_labels, idx)
  expected = np.array([[query_labels[i] != bank_labels[idx[i, j]]
                        and query_labels[i] >= 0 for j in range(6)]
                       for i in range(4)])
  np.testing.assert_array_equal(mismatch, expected)
  assert mismatch.any() and not mismatch.all()
  # Grey tiles, so only frames can be red.
  images = np.full((40, 8, 8, 3), 128, np.uint8)
  grid = np.asarray(visualize.neighbor_grid(images[:4], images, [
      ('a', idx, mismatch), ('b', idx, ~mismatch)]))
  layout = visualize.NeighborLayout(6, 4, 2, 48)
  assert grid.shape[:2] == (layout.size[1], layout.size[0])
  for panel, frames in enumerate((mismatch, ~mismatch)):
    for row in range(4):
      for col in range(-1, 6):
        x0, y0, x1, y1 = layout.slot_box(panel, row, col)
        ring = [grid[y0, x0], grid[y1 - 1, x1 - 1], grid[y0 + 1, (x0 + x1) // 2]]
        red = col >= 0 and frames[row, col]
        for pixel in ring:
          assert tuple(pixel) == (visualize.MISMATCH_RGB if red else
                                  (255, 255, 255)), (panel, row, col)
        # The tile itself, inside the frame.
        centre = grid[(y0 + y1) // 2, (x0 + x1) // 2]
        assert tuple(centre) == (128, 128, 128)


def test_pick_queries_one_per_class_first():
  labels = np.array([3, 3, 1, 3, 1, 0, 0])
  np.testing.assert_array_equal(visualize.pick_queries(labels, 5),
                                [0, 2, 5, 1, 4])
  assert len(visualize.pick_queries(labels, 50)) == 7


def test_random_init_encoder_is_step_zero_of_pretraining():
  config = tiny_config()
  mesh = parallel.make_mesh(0)
  setup = train.build(config, mesh, num_classes=10, total_steps=1,
                      steps_per_epoch=1)
  start = setup.init_state()
  _, variables = visualize.random_init_encoder(config, mesh)
  expected = {'params': {'encoder': start.params['encoder']},
              'batch_stats': {'encoder': start.batch_stats['encoder']}}
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(variables),
               jax.device_get(expected))


def test_curves_from_any_records():
  records = [{'step': s, 'loss': 5.0 - s, 'learning_rate': 0.1 * s,
              'accuracy': 0.1 * s, 'images_per_sec': 100.0}
             for s in range(1, 5)]
  records.append({'step': 4, 'linear_eval_top1': 0.9, 'final': True})
  fig = visualize.curves_figure(records, mode='linear_eval')
  titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
  assert titles == ['cross-entropy loss (train batches)', 'learning rate',
                    'classification accuracy']
  assert visualize.curves_figure([{'step': 0, 'final': True}]) is None


def test_errors_are_one_line_exit_2(pretrained, tmp_path, capsys):
  workdir, _ = pretrained
  empty = tmp_path / 'empty'
  empty.mkdir()
  no_ckpt = tmp_path / 'no_ckpt'
  no_ckpt.mkdir()
  with open(os.path.join(workdir, 'config.json')) as f:
    (no_ckpt / 'config.json').write_text(f.read())
  (no_ckpt / 'metrics.jsonl').write_text(json.dumps({'step': 1, 'loss': 1.0})
                                         + '\n')
  cases = [
      (['--workdir', str(tmp_path / 'nope')], 'is not a directory'),
      (['--workdir', str(empty)], 'no config.json'),
      (['--workdir', str(no_ckpt), '--out', str(tmp_path / 'o')],
       'no checkpoint'),
      (['--workdir', workdir, '--figures', 'curves,maps'], 'maps not among'),
      ([], 'give --workdir'),
  ]
  for argv, message in cases:
    assert visualize.main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and message in err, (argv, err)
  # Curves alone need no checkpoint.
  assert visualize.main(['--workdir', str(no_ckpt), '--figures', 'curves',
                         '--out', str(tmp_path / 'c')]) == 0
  _png(str(tmp_path / 'c' / 'curves.png'))
  no_metrics = tmp_path / 'no_metrics'
  no_metrics.mkdir()
  (no_metrics / 'config.json').write_text((no_ckpt / 'config.json').read_text())
  assert visualize.main(['--workdir', str(no_metrics)]) == 2
  assert 'no metrics.jsonl' in capsys.readouterr().err


def test_views_command_line_on_a_folder_and_the_config_data(tmp_path):
  folder = tmp_path / 'photos'
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(2):
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), np.uint8)).save(
        folder / f'p{i}.png')
  (folder / 'notes.txt').write_text('not an image')
  out = tmp_path / 'v'
  assert visualize.main(['--views', '--images', str(folder), '--out', str(out),
                         '--config', os.path.join(ROOT, 'configs', 'demo.py'),
                         '--num_pairs', '2']) == 0
  image = _png(str(out / 'views.png'))
  # Two photo rows of 64 px cells (16 px views scaled up), two pairs each.
  assert image.shape[0] == 18 + 2 * (64 + 16) + 16
  assert image.shape[1] == 16 + 64 + 2 * (16 + 2 * 64 + 4) + 16
  assert show_views.IMAGE_EXTENSIONS is data.IMAGE_EXTENSIONS


# A class folder as CIFAR-10's: sorted by class, every image of a class of
# one colour (so an image shows its class), with some noise (all distinct).
CLASSES = ('cat', 'dog', 'eel', 'fox', 'gnu')
COLOURS = np.array([(200, 30, 30), (30, 200, 30), (30, 30, 200),
                    (200, 200, 30), (30, 200, 200)])


def _class_folder(root, per_class, seed):
  rng = np.random.default_rng(seed)
  for c, name in enumerate(CLASSES):
    os.makedirs(os.path.join(root, name))
    for j in range(per_class):
      x = COLOURS[c] + rng.integers(0, 20, (8, 8, 3))
      Image.fromarray(x.astype(np.uint8)).save(
          os.path.join(root, name, f'{j:03d}.png'))


def _colour_class(images):
  """The class each uint8 (n, 8, 8, 3) image's colour belongs to."""
  mean = np.asarray(images, np.float64).mean(axis=(1, 2))
  return np.argmin(((mean[:, None] - COLOURS[None]) ** 2).sum(-1), axis=1)


@pytest.fixture(scope='module')
def folder_workdir(tiny_pretrained, tmp_path_factory):
  """A linear-evaluation workdir of the tiny encoder on a sorted folder:
  12 training and 8 test images per class."""
  pretrain_dir, _, _ = tiny_pretrained
  root = tmp_path_factory.mktemp('classes')
  _class_folder(str(root / 'train'), 12, 0)
  _class_folder(str(root / 'test'), 8, 1)
  with open(os.path.join(pretrain_dir, 'config.json')) as f:
    config = json.load(f)
  config['mode'] = 'linear_eval'
  config['init_from'] = pretrain_dir
  config['data'].update(source='folder', data_dir=str(root / 'train'),
                        eval_dir=str(root / 'test'))
  workdir = root / 'linear'
  workdir.mkdir()
  (workdir / 'config.json').write_text(json.dumps(config))
  (workdir / 'metrics.jsonl').write_text(''.join(
      json.dumps({'step': s, 'loss': 2.0 / s}) + '\n' for s in (1, 2, 3)))
  return str(workdir)


def test_balanced_positions_share_the_limit_between_classes():
  labels = np.repeat(np.arange(4), [30, 30, 30, 2])  # Sorted by class.
  pos = visualize.balanced_positions(labels, 20, 0)
  assert list(np.bincount(labels[pos])) == [6, 6, 6, 2]
  assert len(set(pos)) == 20 and list(pos) == sorted(pos)
  np.testing.assert_array_equal(pos,
                                visualize.balanced_positions(labels, 20, 0))
  assert not np.array_equal(pos, visualize.balanced_positions(labels, 20, 1))
  # Fewer rows than classes: as many classes as rows, one row each.
  few = labels[visualize.balanced_positions(labels, 3, 5)]
  assert len(set(few)) == 3
  assert len(visualize.balanced_positions(labels, 500, 0)) == len(labels)
  # A stream's reservoir: the same share of each class, its own rows.
  batch = {'image': np.repeat(np.arange(92, dtype=np.uint8), 3)
                    .reshape(92, 1, 1, 3), 'label': labels.astype(np.int32),
           'mask': np.ones(92, bool)}
  got = sample.reservoir([batch], 20, 4, 0)
  assert list(np.bincount(got['label'])) == [6, 6, 6, 2]
  np.testing.assert_array_equal(labels[got['image'][:, 0, 0, 0]], got['label'])


def test_every_sample_of_a_sorted_folder_covers_every_class(folder_workdir):
  config = visualize.load_run_config(folder_workdir)
  source = visualize.load.make_source(config)
  assert visualize.class_names(source) == CLASSES
  for split, limit, per_class in (('eval', 10, 2), ('train', 15, 3)):
    got = visualize.sample_split(source, split, 16, limit, 0)
    # Equal counts of every class, images of their label, all distinct.
    assert list(np.bincount(got['label'], minlength=5)) == [per_class] * 5
    np.testing.assert_array_equal(_colour_class(got['image']), got['label'])
    assert len({x.tobytes() for x in got['image']}) == limit
    again = visualize.sample_split(source, split, 16, limit, 0)
    np.testing.assert_array_equal(again['image'], got['image'])
  # views.png: four images of four classes.
  photos = visualize.eval_images(config, 4)
  assert len(set(_colour_class(np.stack(photos)))) == 4


def test_folder_figures_cover_every_class_and_name_it(folder_workdir):
  config = visualize.load_run_config(folder_workdir)
  lines = []
  enc = visualize.Encoders(config, folder_workdir, random_init=False,
                           num_points=10, bank_size=15, log=lines.append)
  assert list(np.bincount(enc.queries['label'])) == [2] * 5
  assert list(np.bincount(enc.bank['label'])) == [3] * 5
  assert enc.num_eval == 10
  assert ('10 evaluation images, 5 classes; a bank of 15 training images, '
          '5 classes') in lines[0], lines
  # The neighbour grid: one query per class.
  queries = visualize.pick_queries(enc.queries['label'], 5)
  assert sorted(enc.queries['label'][queries]) == [0, 1, 2, 3, 4]
  fig = tsne.tsne_panels_figure(enc, title='final: kNN 0.123 (random init '
                                '0.045), probe 0.234 (random init 0.056), '
                                'linear_eval_top1 0.345')
  legend = fig.axes[0].get_legend()
  assert [t.get_text() for t in legend.get_texts()] == list(CLASSES)
  assert 't-SNE of h: 10 images, 5 classes' in fig.get_suptitle()
  # No text runs off the figure at its default size.
  canvas = FigureCanvasAgg(fig)  # As savefig: layout done, text placed.
  canvas.draw()
  renderer = canvas.get_renderer()
  box = fig.bbox
  texts = [t for t in fig.findobj(matplotlib.text.Text)
           if t.get_visible() and t.get_text()]
  assert len(texts) >= 2 + 1 + len(CLASSES)  # Titles, legend title, names.
  for text in texts:
    extent = text.get_window_extent(renderer)
    assert (extent.x0 >= box.x0 - 1 and extent.x1 <= box.x1 + 1
            and extent.y0 >= box.y0 - 1 and extent.y1 <= box.y1 + 1), (
                text.get_text(), extent, box)


def test_module_runs_as_a_command_without_tf_notices(folder_workdir,
                                                     tmp_path):
  """`python -m simclr_jax.visualize` on the folder: every figure, the
  classes and images each covers, and no TensorFlow start-up notices."""
  env = {k: v for k, v in os.environ.items()
         if k not in ('TF_CPP_MIN_LOG_LEVEL', 'TF_ENABLE_ONEDNN_OPTS')}
  env['MPLBACKEND'] = 'Agg'
  got = subprocess.run(
      [sys.executable, '-m', 'simclr_jax.visualize', '--workdir',
       folder_workdir, '--out', str(tmp_path), '--num_points', '10',
       '--bank_size', '15', '--num_queries', '5', '--k', '3'], cwd=ROOT,
      env=env, capture_output=True, text=True, timeout=300, check=False)
  assert got.returncode == 0, got.stderr[-2000:]
  for name in visualize.FIGURES:
    _png(str(tmp_path / f'{name}.png'))
  out = got.stdout
  assert 'views of 4 evaluation images, 4 classes' in out, out
  assert 't-SNE of 10 images, 5 classes' in out, out
  assert ('(10 queries, 5 classes; k=3 of a bank of 15 training images, 5 '
          'classes)') in out, out
  notices = [l for l in got.stderr.splitlines()
             if any(w in l for w in ('oneDNN', 'tensorflow', 'TensorFlow',
                                     'cpu_feature_guard', 'TF_ENABLE'))]
  assert not notices, got.stderr
