"""Import/export of google-research/simclr TF2 checkpoints (simclr_jax.import_tf).

Independent of google's code: the synthetic checkpoints below are built here
from tf.Modules and tf.Variables arranged in the object paths google's TF2
`Model` has, and single layers are checked against TF computations of the
same layer (padding, BatchNorm, selective-kernel attention).
"""

import functools
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from configs import default
from simclr_jax import checkpoint
from simclr_jax import export_tf
from simclr_jax import import_tf
from simclr_jax import models
from simclr_jax import tf_layout
from simclr_jax.models import resnet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model_config(**overrides):
  config = default.get_config().model
  config.update(depth=18, base_width=4, stem='cifar', num_proj_layers=2,
                proj_out_dim=8)
  config.update(overrides)
  return config


@functools.lru_cache(maxsize=None)
def variable_shapes(depth, base_width, width, stem, sk_ratio, layers, out_dim,
                    num_classes):
  """Our model's variables as ShapeDtypeStructs (traced, never computed)."""
  config = model_config(depth=depth, base_width=base_width,
                        width_multiplier=width, stem=stem, sk_ratio=sk_ratio,
                        num_proj_layers=layers, proj_out_dim=out_dim)
  model = models.create_model(config, num_classes=num_classes)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  return jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), x)


def random_like(shapes, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)


def arch_of(depth, base_width, width, stem, sk_ratio, layers, out_dim,
            num_classes):
  return tf_layout.Architecture(
      depth=depth, base_width=base_width, width_multiplier=width, stem=stem,
      sk_ratio=sk_ratio, num_proj_layers=layers, proj_out_dim=out_dim,
      num_classes=num_classes)


# --------------------------------------------------------------- round trip

# (depth, base_width, width, stem, sk_ratio, proj layers, proj out, classes)
TINY = [
    (18, 4, 1, 'cifar', 0.0, 2, 8, 10),
    (18, 4, 1, 'imagenet', 0.0625, 3, 8, 0),
    (50, 4, 1, 'imagenet', 0.0, 3, 8, 10),
    (50, 4, 1, 'imagenet', 0.0625, 0, 128, 5),
    (50, 8, 1, 'cifar', 0.0625, 1, 8, 0),
]


@pytest.mark.parametrize('spec', TINY)
def test_round_trip_through_tf2_checkpoint_is_bit_exact(tmp_path, spec):
  variables = random_like(variable_shapes(*spec), seed=spec[0])
  arch = arch_of(*spec)
  prefix = export_tf.write_checkpoint(
      tf_layout.to_google(variables, arch), str(tmp_path), step=3)
  arrays, step = import_tf.read_variables(prefix)
  assert step == 3
  inferred = tf_layout.infer_architecture({k: v.shape for k, v in arrays.items()})
  assert inferred == arch
  back = tf_layout.to_flax(arrays, inferred)
  assert jax.tree.structure(back) == jax.tree.structure(variables)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(variables)):
    assert a.dtype == b.dtype and np.array_equal(a, b)


# Every depth, and widths/SK of the published models, from shapes alone.
@pytest.mark.parametrize('spec', [
    (34, 64, 4, 'imagenet', 0.0, 2, 128, 1000),
    (101, 64, 2, 'imagenet', 0.0, 3, 128, 1000),
    (152, 64, 3, 'imagenet', 0.0625, 3, 128, 1000),  # r152_3x_sk1
    (200, 64, 1, 'cifar', 0.0625, 2, 64, 0),
])
def test_every_depth_maps_one_to_one_and_is_inferred(spec):
  shapes = variable_shapes(*spec)
  arch = arch_of(*spec)
  google = tf_layout.to_google(shapes, arch)  # Raises unless a bijection.
  assert len(google) == len(jax.tree.leaves(shapes))
  assert tf_layout.infer_architecture(
      {k: v.shape for k, v in google.items()}) == arch


def test_sk_ratio_is_inferred_from_wide_attention_layers():
  # At 64 x 2 the SK attention of the last stages is wider than 32, which
  # pins the ratio; a ratio google never used is recovered too.
  spec = (50, 64, 2, 'imagenet', 0.125, 0, 128, 0)
  google = tf_layout.to_google(variable_shapes(*spec), arch_of(*spec))
  arch = tf_layout.infer_architecture({k: v.shape for k, v in google.items()})
  assert arch.sk_ratio == 0.125


def test_inference_rejects_other_variables():
  with pytest.raises(tf_layout.UnrecognisedCheckpoint, match='no ResNet'):
    tf_layout.infer_architecture({'model/dense/kernel': (3, 4)})
  spec = TINY[0]
  google = {k: v.shape for k, v in tf_layout.to_google(
      variable_shapes(*spec), arch_of(*spec)).items()}
  extra = dict(google, **{'model/resnet_model/se_layer/kernel': (1, 1, 4, 4)})
  with pytest.raises(tf_layout.UnrecognisedCheckpoint, match='1 unexpected'):
    tf_layout.infer_architecture(extra)
  missing = {k: v for k, v in google.items() if 'linear_layers/0/bn' not in k}
  with pytest.raises(tf_layout.UnrecognisedCheckpoint, match='missing'):
    tf_layout.infer_architecture(missing)


# ------------------------------------------------- synthetic google checkpoint


class Synthetic:
  """google's TF2 object layout from tf.Modules, with random values.

  Written from the structure of google's `resnet.py` and `model.py`: lists of
  layers (identity, pooling and DropBlock layers hold no variables), a
  `Conv2dFixedPadding` holds `conv2d/kernel`, a `BatchNormRelu` holds
  `bn/{gamma,beta,moving_mean,moving_variance}`.
  """

  def __init__(self, seed):
    self.rng = np.random.default_rng(seed)
    self.values = {}  # object path -> array, filled as variables are made

  def obj(self, **attrs):
    m = tf.Module()
    for k, v in attrs.items():
      setattr(m, k, v)
    return m

  def var(self, shape, positive=False):
    x = self.rng.normal(size=shape).astype(np.float32)
    return tf.Variable(np.abs(x) + 0.5 if positive else x)

  def conv(self, k, cin, cout):
    return self.obj(conv2d=self.obj(kernel=self.var((k, k, cin, cout))))

  def bn(self, c, center=True):
    leaves = dict(gamma=self.var((c,)), moving_mean=self.var((c,)),
                  moving_variance=self.var((c,), positive=True))
    if center:
      leaves['beta'] = self.var((c,))
    return self.obj(bn=self.obj(**leaves))

  def empty(self):
    return tf.Module()

  def stem(self, w, cifar, sk):
    if cifar:
      return [self.conv(3, 3, w), self.empty(), self.bn(w), self.empty()]
    if sk:
      return [self.conv(3, 3, w // 2), self.bn(w // 2),
              self.conv(3, w // 2, w // 2), self.bn(w // 2),
              self.conv(3, w // 2, w), self.empty(), self.bn(w),
              self.empty(), self.empty()]
    return [self.conv(7, 3, w), self.empty(), self.bn(w), self.empty(),
            self.empty()]

  def projection(self, cin, cout, strides, sk):
    if not sk:
      return [self.conv(1, cin, cout), self.bn(cout)]
    pad = [self.empty()] if strides > 1 else []
    return pad + [self.empty(), self.conv(1, cin, cout), self.bn(cout)]

  def sk_conv(self, f, ratio):
    mid = max(int(f * ratio), 32)
    return self.obj(
        conv2d_fixed_padding=self.conv(3, f, 2 * f),
        batch_norm_relu=self.bn(2 * f),
        conv2d_0=self.obj(kernel=self.var((1, 1, f, mid))),
        batch_norm_relu_1=self.bn(mid),
        conv2d_1=self.obj(kernel=self.var((1, 1, mid, 2 * f))))

  def resnet(self, stages, bottleneck, w, cifar, sk_ratio):
    groups, cin = [], w
    for g, n in enumerate(stages):
      f = w * 2**g
      out = 4 * f if bottleneck else f
      blocks = []
      for b in range(n):
        proj = (self.projection(cin, out, 2 if g else 1, sk_ratio > 0)
                if b == 0 else [])
        if bottleneck:
          middle = ([self.sk_conv(f, sk_ratio)] if sk_ratio > 0 else
                    [self.conv(3, f, f), self.bn(f)])
          layers = ([self.conv(1, cin, f), self.bn(f), self.empty()] + middle
                    + [self.empty(), self.conv(1, f, out), self.bn(out),
                       self.empty()])
          blocks.append(self.obj(projection_layers=proj,
                                 shortcut_dropblock=self.empty(),
                                 conv_relu_dropblock_layers=layers))
        else:
          blocks.append(self.obj(
              shortcut_layers=proj,
              conv2d_bn_layers=[self.conv(3, cin, f), self.bn(f),
                                self.conv(3, f, f), self.bn(f)]))
        cin = out
      groups.append(self.obj(layers=blocks))
    return self.obj(initial_conv_relu_max_pool=self.stem(w, cifar, sk_ratio > 0),
                    block_groups=groups), cin

  def model(self, stages, bottleneck, w, cifar, sk_ratio, proj_layers,
            out_dim, classes):
    net, c = self.resnet(stages, bottleneck, w, cifar, sk_ratio)
    head = [self.obj(dense=self.obj(kernel=self.var(
        (c, out_dim if j == proj_layers - 1 else c))),
                     bn_relu=self.bn(out_dim if j == proj_layers - 1 else c,
                                     center=j < proj_layers - 1))
            for j in range(proj_layers)]
    attrs = dict(resnet_model=net, _projection_head=self.obj(linear_layers=head))
    if classes:
      attrs['supervised_head'] = self.obj(linear_layer=self.obj(
          dense=self.obj(kernel=self.var((c, classes)),
                         bias=self.var((classes,)))))
    return self.obj(**attrs)


def synthetic_checkpoint(path, seed=0, **kwargs):
  """A tf.train.Checkpoint(model=..., global_step=..., optimizer=...)."""
  model = Synthetic(seed).model(**kwargs)
  optimizer = tf.Module()  # Stands in for the optimizer's own variables.
  optimizer.iterations = tf.Variable(11, dtype=tf.int64)
  optimizer.momentum = [tf.Variable(np.zeros(3, np.float32))]
  ckpt = tf.train.Checkpoint(model=model,
                             global_step=tf.Variable(11, dtype=tf.int64),
                             optimizer=optimizer)
  return tf.train.CheckpointManager(ckpt, path, max_to_keep=1).save(
      checkpoint_number=11), model


def _value(module, path):
  for part in path.split('/'):
    module = module[int(part)] if part.isdigit() else getattr(module, part)
  return module.numpy()


def test_synthetic_google_checkpoint_imports_with_inferred_config(tmp_path):
  src = str(tmp_path / 'google')
  _, model = synthetic_checkpoint(
      src, stages=(2, 2, 2, 2), bottleneck=False, w=4, cifar=True,
      sk_ratio=0.0, proj_layers=2, out_dim=8, classes=10)
  config = import_tf.import_checkpoint(src, str(tmp_path / 'work'))
  m = config.model
  assert (m.depth, m.base_width, m.width_multiplier, m.stem, m.sk_ratio,
          m.num_proj_layers, m.proj_out_dim) == (18, 4, 1, 'cifar', 0.0, 2, 8)
  assert config.image_size == 32 and config.train.online_probe
  assert (m.bn_momentum, m.bn_epsilon) == (0.9, 1e-5)
  variables, step = checkpoint.restore_variables(str(tmp_path / 'work'))
  assert step == 11
  p, s = variables['params'], variables['batch_stats']
  # google's first block of ResNet-18 has a projection shortcut.
  np.testing.assert_array_equal(
      p['encoder']['stage1_block0']['shortcut']['conv']['kernel'],
      _value(model, 'resnet_model/block_groups/0/layers/0/shortcut_layers/0/'
             'conv2d/kernel'))
  np.testing.assert_array_equal(
      s['encoder']['stem_bn']['var'],
      _value(model, 'resnet_model/initial_conv_relu_max_pool/2/bn/'
             'moving_variance'))
  np.testing.assert_array_equal(
      p['encoder']['stage3_block1']['bn2']['bias'],
      _value(model, 'resnet_model/block_groups/2/layers/1/conv2d_bn_layers/3/'
             'bn/beta'))
  np.testing.assert_array_equal(
      p['projection_head']['bn_0']['bias'],
      _value(model, '_projection_head/linear_layers/0/bn_relu/bn/beta'))
  assert 'bias' not in p['projection_head']['bn_1']
  np.testing.assert_array_equal(
      p['probe']['bias'],
      _value(model, 'supervised_head/linear_layer/dense/bias'))
  assert p['probe']['kernel'].shape == (32, 10)
  # Every array has the shape our model's init gives.
  want = variable_shapes(18, 4, 1, 'cifar', 0.0, 2, 8, 10)
  jax.tree.map(lambda a, b: (a.shape, a.dtype) == (b.shape, b.dtype) or
               pytest.fail(f'{a.shape} != {b.shape}'), variables, want)
  # The imported workdir is accepted as init_from by the evaluation modes,
  # with the imported config's model, and yields the same encoder arrays.
  from simclr_jax import parallel  # pylint: disable=g-import-not-at-top
  from simclr_jax.evaluate import runs  # pylint: disable=g-import-not-at-top
  config.init_from = str(tmp_path / 'work')
  _, loaded, step = runs.load_encoder(config, parallel.make_mesh(1))
  assert step == 11
  np.testing.assert_array_equal(
      loaded['params']['encoder']['stem_conv']['kernel'],
      p['encoder']['stem_conv']['kernel'])


def test_synthetic_saved_model_with_index_keys_imports(tmp_path):
  """SavedModels key variables by aggregate lists (`variables/17`); the
  object graph gives their paths. Keras also lists sublayers as `layers`."""
  syn = Synthetic(1)
  model = syn.model(stages=(3, 4, 6, 3), bottleneck=True, w=4, cifar=False,
                    sk_ratio=0.0625, proj_layers=3, out_dim=8, classes=0)
  root = tf.Module()
  # Reached first (breadth first), these name every variable by index.
  root.trainable_variables_list = list(model.trainable_variables)
  root.model = model
  model.resnet_model.layers = list(model.resnet_model.block_groups)
  model.resnet_model.variables_list = list(model.resnet_model.variables)
  folder = tmp_path / 'run' / 'saved_model' / '250'
  tf.saved_model.save(root, str(folder))
  keys = tf.train.list_variables(str(folder / 'variables' / 'variables'))
  assert not any('block_groups' in k for k, _ in keys)  # keyed by index
  config = import_tf.import_checkpoint(str(tmp_path / 'run'),
                                       str(tmp_path / 'work'))
  m = config.model
  assert (m.depth, m.base_width, m.stem, m.sk_ratio, m.num_proj_layers,
          m.proj_out_dim) == (50, 4, 'imagenet', 0.0625, 3, 8)
  assert not config.train.online_probe
  variables, step = checkpoint.restore_variables(str(tmp_path / 'work'))
  assert step == 250  # from the SavedModel's folder name
  sk = variables['params']['encoder']['stage4_block2']['sk_conv']
  np.testing.assert_array_equal(
      sk['attention_conv2']['kernel'],
      _value(model, 'resnet_model/block_groups/3/layers/2/'
             'conv_relu_dropblock_layers/3/conv2d_1/kernel'))
  np.testing.assert_array_equal(
      variables['params']['encoder']['stage2_block0']['shortcut']['conv'][
          'kernel'],
      _value(model, 'resnet_model/block_groups/1/layers/0/projection_layers/'
             '2/conv2d/kernel'))


def test_workdir_export_then_import_is_exact(tmp_path):
  src = str(tmp_path / 'google')
  prefix, _ = synthetic_checkpoint(
      src, seed=2, stages=(2, 2, 2, 2), bottleneck=False, w=4, cifar=False,
      sk_ratio=0.0625, proj_layers=1, out_dim=8, classes=3)
  import_tf.import_checkpoint(src, str(tmp_path / 'work'))
  out = export_tf.export_checkpoint(str(tmp_path / 'work'),
                                    str(tmp_path / 'export'))
  assert out.endswith('ckpt-11')
  original = tf.train.load_checkpoint(prefix)
  exported = tf.train.load_checkpoint(out)
  model_keys = sorted(k for k, _ in tf.train.list_variables(prefix)
                      if k.startswith('model/'))
  assert model_keys == sorted(k for k, _ in tf.train.list_variables(out)
                              if k.startswith('model/'))
  for k in model_keys:
    np.testing.assert_array_equal(exported.get_tensor(k),
                                  original.get_tensor(k))
  assert exported.get_tensor('global_step/.ATTRIBUTES/VARIABLE_VALUE') == 11
  with pytest.raises(export_tf.ExportTFError, match='already holds'):
    export_tf.export_checkpoint(str(tmp_path / 'work'),
                                str(tmp_path / 'export'))
  with pytest.raises(import_tf.ImportTFError, match='already has'):
    import_tf.import_checkpoint(src, str(tmp_path / 'work'))


def test_training_workdir_exports_without_its_optimiser_state(tmp_path):
  spec = TINY[2]
  variables = random_like(variable_shapes(*spec), seed=5)
  config = default.get_config()
  config.model.update(arch_of(*spec).model_fields())
  (tmp_path / 'config.json').write_text(config.to_json_best_effort())
  manager = checkpoint.create_manager(str(tmp_path))
  state = {'step': np.int32(40), **variables,
           'opt_state': ({'trace': variables['params']},)}
  checkpoint.save(manager, 40, state, force=True)
  manager.wait_until_finished()
  manager.close()
  prefix = export_tf.export_checkpoint(str(tmp_path), str(tmp_path / 'tf'))
  arrays, step = import_tf.read_variables(prefix)
  assert step == 40
  back = tf_layout.to_flax(arrays, tf_layout.infer_architecture(
      {k: v.shape for k, v in arrays.items()}))
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)


def test_bad_sources_are_one_line_errors(tmp_path):
  other = tf.train.Checkpoint(net=tf.Module())
  other.net.w = tf.Variable(np.ones((2, 2), np.float32))
  prefix = other.write(str(tmp_path / 'other' / 'ckpt-1'))
  with pytest.raises(import_tf.ImportTFError, match='not a SimCLR model'):
    import_tf.import_checkpoint(prefix, str(tmp_path / 'w1'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(import_tf.ImportTFError, match='no TF2 checkpoint'):
    import_tf.import_checkpoint(str(tmp_path / 'empty'), str(tmp_path / 'w2'))
  proc = subprocess.run(
      [sys.executable, '-m', 'simclr_jax.import_tf',
       f'--source={tmp_path / "missing"}', f'--workdir={tmp_path / "w3"}'],
      cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert lines == [f'error: --source={tmp_path / "missing"}: no such '
                   'checkpoint or folder'], proc.stderr


# -------------------------------------------------------- layer conventions


def _google_conv(x, kernel, strides):
  """google's Conv2dFixedPadding in plain TF: explicit pad, then VALID."""
  k = kernel.shape[0]
  if strides == 1:
    return tf.nn.conv2d(x, kernel, 1, 'SAME')
  beg = (k - 1) // 2
  x = tf.pad(x, [[0, 0], [beg, k - 1 - beg], [beg, k - 1 - beg], [0, 0]])
  return tf.nn.conv2d(x, kernel, strides, 'VALID')


@pytest.mark.parametrize('k,strides,size', [
    (7, 2, 16), (3, 2, 16), (3, 2, 15), (1, 2, 16), (3, 1, 16)])
def test_strided_convs_pad_as_google(k, strides, size):
  rng = np.random.default_rng(k + size)
  x = rng.normal(size=(2, size, size, 3)).astype(np.float32)
  kernel = rng.normal(size=(k, k, 3, 4)).astype(np.float32)
  conv = resnet._conv(4, k, strides, jnp.float32, 'conv')  # pylint: disable=protected-access
  ours = conv.apply({'params': {'kernel': kernel}}, x)
  want = _google_conv(x, kernel, strides).numpy()
  np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-5)
  if strides == 2 and k > 1 and size % 2 == 0:
    # XLA's 'SAME' pads (k - 2) // 2 before, one less than google: not equal.
    same = tf.nn.conv2d(x, kernel, 2, 'SAME').numpy()
    assert np.max(np.abs(same - want)) > 1e-2


@pytest.mark.parametrize('strides,size', [(2, 8), (2, 7), (1, 8)])
def test_resnet_d_shortcut_and_max_pool_match_tf(strides, size):
  rng = np.random.default_rng(size)
  x = rng.normal(size=(2, size, size, 4)).astype(np.float32)
  kernel = rng.normal(size=(1, 1, 4, 6)).astype(np.float32)
  norm = functools.partial(nn.BatchNorm, use_running_average=True)
  short = resnet.Shortcut(6, strides, norm, resnet_d=True)
  variables = short.init(jax.random.key(0), x)
  variables['params']['conv']['kernel'] = kernel
  ours = short.apply(variables, x)
  # google: FixedPadding(2) + 2x2 average pool VALID when strided, else a
  # 2x2 average pool 'SAME' (TF leaves padding out of the average).
  if strides > 1:
    y = tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]])
    y = tf.nn.avg_pool2d(y, 2, strides, 'VALID')
  else:
    y = tf.nn.avg_pool2d(x, 2, 1, 'SAME')
  y = tf.nn.conv2d(y, kernel, 1, 'SAME')
  want = tf.nn.batch_normalization(y, 0.0, 1.0, 0.0, 1.0, 1e-5).numpy()
  np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-5)
  # The stem's 3x3/2 max-pool: tf 'SAME'.
  np.testing.assert_array_equal(
      nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME'),
      tf.nn.max_pool2d(x, 3, 2, 'SAME').numpy())


def test_batchnorm_epsilon_and_momentum_match_keras():
  """The model's BatchNorm (settings of configs/default.py) vs Keras'
  BatchNormalization with google's BATCH_NORM_EPSILON 1e-5 and
  batch_norm_decay 0.9."""
  config = default.get_config().model
  rng = np.random.default_rng(0)
  # Small variances make epsilon matter; offsets test the variance's
  # numerics (two passes, as Keras).
  x = (rng.normal(size=(8, 3, 3, 5)) * [1e-3, 1e-2, 0.1, 1, 10]
       + 2).astype(np.float32)
  gamma, beta = rng.normal(size=(2, 5)).astype(np.float32)
  mean0, var0 = rng.normal(size=5).astype(np.float32), np.full(5, 2, np.float32)

  def keras_bn(epsilon):
    layer = tf.keras.layers.BatchNormalization(momentum=0.9, epsilon=epsilon)
    layer.build(x.shape)
    layer.set_weights([gamma, beta, mean0, var0])
    return layer

  variables = {'params': {'scale': gamma, 'bias': beta},
               'batch_stats': {'mean': mean0, 'var': var0}}

  def ours(train):
    bn = resnet.batch_norm(train, config.bn_momentum, config.bn_epsilon,
                           jnp.float32, None)(name='bn')
    return bn.apply(variables, x, mutable=['batch_stats'])

  google = keras_bn(1e-5)
  # Inference: moving statistics.
  np.testing.assert_allclose(ours(False)[0], google(x, training=False).numpy(),
                             rtol=1e-5, atol=1e-5)
  # Training: batch statistics, and the moving-average update.
  y, updates = ours(True)
  np.testing.assert_allclose(y, google(x, training=True).numpy(), rtol=1e-4,
                             atol=1e-4)
  moving_mean, moving_var = google.get_weights()[2:]
  np.testing.assert_allclose(updates['batch_stats']['mean'], moving_mean,
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(updates['batch_stats']['var'], moving_var,
                             rtol=1e-5)
  # Epsilon matters for these inputs: Keras with 1e-3 differs.
  assert not np.allclose(y, keras_bn(1e-3)(x, training=True).numpy(),
                         rtol=1e-2, atol=1e-2)


def test_sk_conv_matches_tf_computation():
  rng = np.random.default_rng(0)
  f, x = 8, rng.normal(size=(3, 8, 8, 6)).astype(np.float32)
  norm = functools.partial(nn.BatchNorm, use_running_average=True,
                           epsilon=1e-5)
  sk = resnet.SKConv(features=f, strides=2, sk_ratio=0.0625, norm=norm)
  variables = jax.tree.map(
      lambda a: rng.normal(size=a.shape).astype(np.float32),
      sk.init(jax.random.key(0), x))
  variables['batch_stats'] = jax.tree.map(lambda a: np.abs(a) + 0.5,
                                          variables['batch_stats'])
  ours = sk.apply(variables, x)

  p, s = variables['params'], variables['batch_stats']

  def bn_relu(y, name):
    y = tf.nn.batch_normalization(y, s[name]['mean'], s[name]['var'],
                                  p[name]['bias'], p[name]['scale'], 1e-5)
    return tf.nn.relu(y)

  # google's SK_Conv2D: a 3x3 conv to 2f channels, BN+ReLU, split in two
  # streams; the streams' sum is averaged over space, squeezed (1x1 conv to
  # max(f * ratio, 32), BN+ReLU), expanded to 2f; softmax over the streams.
  y = bn_relu(_google_conv(x, p['conv']['kernel'], 2), 'bn')
  streams = tf.stack(tf.split(y, 2, axis=3))
  g = tf.reduce_mean(tf.reduce_sum(streams, 0), [1, 2], keepdims=True)
  assert p['attention_conv1']['kernel'].shape == (1, 1, f, 32)
  g = bn_relu(tf.nn.conv2d(g, p['attention_conv1']['kernel'], 1, 'VALID'),
              'attention_bn')
  mix = tf.nn.conv2d(g, p['attention_conv2']['kernel'], 1, 'VALID')
  mix = tf.nn.softmax(tf.stack(tf.split(mix, 2, axis=3)), axis=0)
  want = tf.reduce_sum(streams * mix, 0).numpy()
  np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-5)
