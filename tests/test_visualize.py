"""The figures of `python -m simclr_jax.visualize` on a tiny pretraining run."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from simclr_jax import data
from simclr_jax import parallel
from simclr_jax import show_views
from simclr_jax import train
from simclr_jax import visualize
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


def test_module_runs_as_a_command(tmp_path):
  """`python -m simclr_jax.visualize --views` on the digits of the demo."""
  env = dict(os.environ, MPLBACKEND='Agg')
  got = subprocess.run(
      [sys.executable, '-m', 'simclr_jax.visualize', '--views', '--config',
       'configs/demo.py', '--out', str(tmp_path)], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=300, check=False)
  assert got.returncode == 0, got.stderr[-2000:]
  image = _png(str(tmp_path / 'views.png'))
  assert image.shape[0] == 18 + 4 * (64 + 16) + 16
