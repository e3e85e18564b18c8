"""Distillation (SimCLRv2's third step) on tiny models: the loss, the sharded
step, a student learning a fixed teacher, resuming, and the one-line errors."""

import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from simclr_jax import checkpoint
from simclr_jax import config_lib
from simclr_jax import data
from simclr_jax import losses
from simclr_jax import parallel
from simclr_jax import reporting
from simclr_jax.evaluate import distill as distill_lib
from simclr_jax.evaluate import finetune as finetune_lib
from simclr_jax.evaluate import linear
from simclr_jax.evaluate import modes
from tiny import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize('temperature', [0.1, 1.0, 3.0])
def test_loss_and_its_gradient_equal_numpy(temperature):
  rng = np.random.default_rng(0)
  s = rng.normal(size=(6, 5)).astype(np.float32) * 3
  t = rng.normal(size=(6, 5)).astype(np.float32) * 3
  p_t, p_s = _softmax(t / temperature), _softmax(s / temperature)
  # The paper's eq. 2, per example: -sum_y P^T(y) log P^S(y).
  want = -(p_t * np.log(p_s)).sum(-1)
  got = losses.distillation_loss(jnp.asarray(s), jnp.asarray(t), temperature)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # d mean / d student logits = (P^S - P^T) / (tau N); none to the teacher.
  mean = lambda a, b: jnp.mean(losses.distillation_loss(a, b, temperature))
  g_s, g_t = jax.grad(mean, argnums=(0, 1))(jnp.asarray(s), jnp.asarray(t))
  np.testing.assert_allclose(g_s, (p_s - p_t) / (temperature * 6), atol=1e-6)
  assert not np.any(np.asarray(g_t))
  # At the teacher's own logits the gradient vanishes.
  np.testing.assert_allclose(jax.grad(mean)(jnp.asarray(t), jnp.asarray(t)),
                             0, atol=1e-7)


# ------------------------------------------------------ the sharded step


def _step_run(num_devices, steps=2):
  """Two distillation steps (label weight 0.5) on a mesh of num_devices."""
  config = tiny_config()
  mesh = parallel.make_mesh(num_devices)
  student = finetune_lib.Classifier(config.model, 1, 10,
                                    axis_name=parallel.AXIS)
  teacher = finetune_lib.Classifier(config.model, 0, 10)
  shape = jnp.zeros((1, 8, 8, 3))
  t_vars = teacher.init(jax.random.key(3), shape, train=False)
  t_vars['params']['head']['kernel'] = jax.random.normal(
      jax.random.key(4), t_vars['params']['head']['kernel'].shape)
  t_vars = parallel.replicate(t_vars, mesh)
  section = config.distill
  section.batch_size, section.weight_decay = 16, 1e-4
  tx, _ = finetune_lib.create_optimizer(section, 10, warmup_steps=2)
  state = finetune_lib.init_state(student, tx, None, 8, mesh,
                                  jax.random.key(5))
  step = distill_lib.make_step(student, teacher, tx,
                               linear.crop_flip_spec(config), mesh,
                               temperature=0.5, label_weight=0.5)
  rng = np.random.default_rng(0)
  key = parallel.replicate(jax.random.key(0), mesh)
  metrics = []
  for i in range(steps):
    b = parallel.host_to_global({
        'image': rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8),
        'labelled': rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8),
        'label': rng.integers(0, 10, 16).astype(np.int32)}, mesh)
    state, m = step(state, t_vars, b['image'], b['labelled'], b['label'],
                    jax.random.fold_in(key, i))
    metrics.append(jax.device_get(m))
  return jax.device_get(state), metrics


def test_step_on_eight_devices_equals_one_device():
  state8, metrics8 = _step_run(8)
  state1, metrics1 = _step_run(1)
  assert int(state8.step) == int(state1.step) == 2
  for a, b in ((state8.params, state1.params),
               (state8.batch_stats, state1.batch_stats),
               (state8.opt_state, state1.opt_state)):
    for (path, x), (_, y) in zip(jax.tree.flatten_with_path(a)[0],
                                 jax.tree.flatten_with_path(b)[0]):
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5,
                                 err_msg=jax.tree_util.keystr(path))
  assert set(metrics1[0]) == {'loss', 'distill_loss', 'label_loss',
                              'label_accuracy', 'agreement'}
  for m8, m1 in zip(metrics8, metrics1):
    for k in m1:
      np.testing.assert_allclose(m8[k], m1[k], rtol=1e-4, atol=1e-6,
                                 err_msg=k)
  np.testing.assert_allclose(
      metrics1[0]['loss'],
      0.5 * metrics1[0]['distill_loss'] + 0.5 * metrics1[0]['label_loss'],
      rtol=1e-6)


# --------------------------------------------------- a teacher, end to end


def _train_teacher(workdir):
  """A tiny fixed teacher: the tiny config's classifier on h, trained with
  Adam on the labelled digits (about 95% on the held-out ones), saved as a
  fine-tuning workdir (checkpoint and config.json)."""
  config = tiny_config()
  source = data.make_source(config)
  xs, ys = [], []
  for b in source.eval_iterator('train', 512):
    xs.append(b['image'][b['mask']])
    ys.append(b['label'][b['mask']])
  x = np.concatenate(xs).astype(np.float32) / 255
  y = np.concatenate(ys)
  net = finetune_lib.Classifier(config.model, 0, 10)
  v = net.init(jax.random.key(7), x[:1], train=False)
  tx = optax.adam(0.01)

  @jax.jit
  def step(params, stats, opt, xb, yb):
    def loss_fn(p):
      logits, m = net.apply({'params': p, 'batch_stats': stats}, xb,
                            train=True, mutable=['batch_stats'])
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
      return jnp.mean(ce), m['batch_stats']
    (_, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, updates), stats, opt

  params, stats = v['params'], v['batch_stats']
  opt = tx.init(params)
  rng = np.random.default_rng(0)
  for _ in range(100):
    idx = rng.integers(0, len(y), 64)
    params, stats, opt = step(params, stats, opt, x[idx], y[idx])
  manager = checkpoint.create_manager(workdir, keep=0)
  checkpoint.save(manager, 100, {'step': np.int32(100), 'params': params,
                                 'batch_stats': stats}, force=True)
  manager.wait_until_finished()
  manager.close()
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort())
  return workdir


def _distill_config(teacher):
  config = tiny_config()
  config.mode = 'distill'
  config.init_from = teacher
  config.augment.crop_scale = (0.8, 1.0)  # 8 px digits: mild crops.
  config.train.log_every_steps = 11
  d = config.distill
  d.temperature, d.batch_size, d.epochs = 1.0, 32, 3.0
  d.base_learning_rate, d.warmup_epochs, d.weight_decay = 0.1, 0.25, 0.0
  d.checkpoint_every_steps = 50
  return config


@pytest.fixture(scope='module')
def distilled(tmp_path_factory):
  """(teacher workdir, config, workdir, record) of a student distilled from
  scratch (3 epochs of the unlabelled digits, 132 steps)."""
  teacher = _train_teacher(str(tmp_path_factory.mktemp('teacher')))
  config = _distill_config(teacher)
  workdir = str(tmp_path_factory.mktemp('distill'))
  return teacher, config, workdir, modes.run_mode(config, workdir)


def test_student_learns_the_teacher_on_unlabelled_images(distilled):
  _, _, workdir, record = distilled
  assert record['final'] and record['step'] == 3 * (1438 // 32)
  assert record['eval_examples'] == 359
  assert record['final_teacher_top1'] > 0.85
  # Chance: a student that ignores the image agrees with the teacher on at
  # most its most frequent class's share (about 0.1: the teacher is right on
  # the balanced digits); the zero-initialised student starts there (equal
  # logits). Measured on 359 held-out images: 0.63 after 132 steps.
  logged = [r['agreement'] for r in reporting.read_metrics(workdir)
            if 'agreement' in r]
  assert logged[0] < 0.4 and np.mean(logged[-2:]) > np.mean(logged[:2]), logged
  assert record['final_agreement'] > 0.45
  assert record['final_distill_top1'] > 0.4


def test_resume_after_preemption_equals_uninterrupted(distilled, tmp_path,
                                                      monkeypatch):
  _, config, straight, record = distilled
  workdir = str(tmp_path / 'broken')
  calls = []
  real = parallel.host_to_global

  def preempt_at_step_60(batch, mesh):
    calls.append(1)
    if len(calls) == 60:
      os.kill(os.getpid(), signal.SIGTERM)  # As a preemption would.
    return real(batch, mesh)

  monkeypatch.setattr(parallel, 'host_to_global', preempt_at_step_60)
  stopped = modes.run_mode(config, workdir)
  monkeypatch.setattr(parallel, 'host_to_global', real)
  assert stopped['preempted'] and stopped['step'] == 60
  resumed = modes.run_mode(config, workdir)
  for key in ('final_distill_top1', 'final_agreement', 'step'):
    assert resumed[key] == record[key]
  mesh = parallel.make_mesh(1)
  a, _ = checkpoint.restore_variables(straight, mesh)
  b, _ = checkpoint.restore_variables(workdir, mesh)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_imported_model_teacher_reads_the_head_layer_asked_for(tmp_path):
  """An imported google model keeps its supervised head as 'probe' and its
  whole projection head: the teacher takes the layers up to
  distill.teacher_proj_layer and the probe as its classifier."""
  from simclr_jax import models  # pylint: disable=g-import-not-at-top
  config = tiny_config()  # A 2-layer projection head.
  model = models.create_model(config.model, num_classes=10)
  v = model.init(jax.random.key(1), jnp.zeros((1, 8, 8, 3)), train=False)
  manager = checkpoint.create_manager(str(tmp_path), keep=0)
  checkpoint.save(manager, 7, {'step': np.int32(7), **v}, force=True)
  manager.wait_until_finished()
  manager.close()
  with open(tmp_path / 'config.json', 'w') as f:
    f.write(config.to_json_best_effort())
  config.init_from = str(tmp_path)
  mesh = parallel.make_mesh(1)
  for layer, want in ((-1, 0), (1, 1)):
    config.distill.teacher_proj_layer = layer
    teacher = distill_lib.load_teacher(config, mesh)
    assert (teacher.num_classes, teacher.step) == (10, 7)
    assert teacher.classifier.proj_layers == want
    params = teacher.variables['params']
    np.testing.assert_array_equal(params['head']['kernel'],
                                  v['params']['probe']['kernel'])
    assert sorted(params.get('projection_head', {})) == (
        ['bn_0', 'dense_0'] if want else [])
    logits = teacher.classifier.apply(teacher.variables,
                                      jnp.ones((2, 8, 8, 3)), train=False)
    assert logits.shape == (2, 10)
  config.distill.teacher_proj_layer = 3
  with pytest.raises(config_lib.ConfigError, match='beyond the 2'):
    distill_lib.load_teacher(config, mesh)


# ------------------------------------------------------ one-line errors


def test_missing_teacher_checkpoint_is_one_line(tmp_path):
  config = _distill_config(str(tmp_path))  # A folder, no checkpoint.
  with pytest.raises(config_lib.ConfigError, match='no checkpoint') as e:
    modes.run_mode(config, str(tmp_path / 'w'))
  assert '\n' not in str(e.value)


def test_teacher_of_other_classes_is_one_line_exit_2(distilled, tmp_path):
  """Through main.py: a 10-class teacher on a 3-class image folder."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for name in ('cat', 'dog', 'emu'):
    (tmp_path / 'photos' / name).mkdir(parents=True)
    for i in range(6):
      Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
          tmp_path / 'photos' / name / f'{i}.png')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/demo.py',
       f'--workdir={tmp_path / "w"}', '--config.image_size=8',
       '--config.data.resize_to=8', '--config.model.base_width=4',
       '--config.model.proj_out_dim=8', '--config.data.source=folder',
       f'--config.data.data_dir={tmp_path / "photos"}',
       '--config.mode=distill', f'--config.init_from={distilled[0]}',
       '--config.distill.batch_size=8'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2, result.stderr[-2000:]
  assert len(lines) == 1 and 'has 10 classes' in lines[0], lines
  assert 'the data (folder' in lines[0] and 'has 3' in lines[0]
