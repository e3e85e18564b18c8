"""Evaluating a representation: feature extraction, linear probe and kNN.

The linear probe is the paper's protocol in small: a multinomial logistic
regression on frozen, standardised features `h`, fitted full-batch with an
L2 penalty, and scored by top-1 accuracy on held-out data.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from simclr_jax import parallel


def make_feature_fn(model: Any, mesh: jax.sharding.Mesh) -> Callable:
  """A jitted, batch-sharded function (variables, uint8 images) -> float32 h.

  Images are uint8 (B, S, S, 3), B divisible by the mesh size; the model runs
  in inference mode (BatchNorm running averages), so no collectives are needed.
  """
  def per_device(variables, images):
    x = images.astype(jnp.float32) / 255.0
    return model.apply(variables, x, train=False, method='encode')

  return jax.jit(jax.shard_map(
      per_device, mesh=mesh, in_specs=(P(), P(parallel.AXIS)),
      out_specs=P(parallel.AXIS)))


def extract_features(feature_fn: Callable, variables: Any,
                     batches: Iterable[dict[str, np.ndarray]],
                     mesh: jax.sharding.Mesh) -> tuple[np.ndarray, np.ndarray]:
  """Runs `feature_fn` over eval batches; returns (features, labels) on every host.

  Args:
    feature_fn: from `make_feature_fn`.
    variables: {'params', 'batch_stats'} replicated on the mesh.
    batches: local batches {'image': uint8 (b, S, S, 3), 'label': int32 (b,),
      'mask': bool (b,)} as made by `input_pipeline.create_eval_iterator`.
    mesh: the mesh.

  Returns:
    float32 (N, C) features and int32 (N,) labels of the unpadded examples.
  """
  feats, labels = [], []
  for batch in batches:
    images = parallel.host_to_global(batch['image'], mesh)
    h = feature_fn(variables, images)
    rest = parallel.host_to_global(
        {'label': batch['label'], 'mask': batch['mask']}, mesh)
    if jax.process_count() > 1:
      h, rest = multihost_utils.process_allgather((h, rest), tiled=True)
    h, rest = np.asarray(h), jax.tree.map(np.asarray, rest)
    feats.append(h[rest['mask']])
    labels.append(rest['label'][rest['mask']])
  if not feats:
    raise ValueError('no evaluation examples')
  return (np.concatenate(feats).astype(np.float32),
          np.concatenate(labels).astype(np.int32))


def linear_probe_accuracy(train_x: np.ndarray, train_y: np.ndarray,
                          test_x: np.ndarray, test_y: np.ndarray, *,
                          num_classes: int, l2: float = 1e-4,
                          steps: int = 500, learning_rate: float = 1e-2) -> float:
  """Top-1 accuracy of a logistic-regression probe on frozen features.

  Args:
    train_x: float32 (N, C) features; train_y: int32 (N,) labels in
      [0, num_classes).
    test_x, test_y: the same for the held-out examples.
    num_classes: number of classes.
    l2: L2 penalty on the weights (features are standardised first).
    steps: full-batch Adam steps (cosine-decayed learning rate).
    learning_rate: peak Adam learning rate.

  Returns:
    Accuracy in [0, 1] on the test examples.
  """
  chex.assert_rank([train_x, test_x], 2)
  chex.assert_equal_shape_prefix([train_x, train_y], 1)
  chex.assert_equal_shape_prefix([test_x, test_y], 1)
  mean = train_x.mean(0)
  std = train_x.std(0) + 1e-6
  tx_train = jnp.asarray((train_x - mean) / std)
  tx_test = jnp.asarray((test_x - mean) / std)
  y_train = jnp.asarray(train_y)
  params = {'w': jnp.zeros((train_x.shape[1], num_classes), jnp.float32),
            'b': jnp.zeros((num_classes,), jnp.float32)}
  opt = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))

  def loss_fn(p):
    logits = tx_train @ p['w'] + p['b']
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y_train).mean()
    return ce + 0.5 * l2 * jnp.sum(p['w'] ** 2)

  @jax.jit
  def fit(p):
    def body(_, carry):
      p, s = carry
      g = jax.grad(loss_fn)(p)
      u, s = opt.update(g, s, p)
      return optax.apply_updates(p, u), s
    return jax.lax.fori_loop(0, steps, body, (p, opt.init(p)))[0]

  params = fit(params)
  pred = jnp.argmax(tx_test @ params['w'] + params['b'], axis=-1)
  return float(jnp.mean(pred == jnp.asarray(test_y)))


def knn_accuracy(train_x: np.ndarray, train_y: np.ndarray,
                 test_x: np.ndarray, test_y: np.ndarray, *, k: int,
                 num_classes: int, temperature: float = 0.07,
                 chunk: int = 1024) -> float:
  """Weighted kNN accuracy (cosine similarity, votes exp(sim / T)), as in InstDisc."""
  def normalise(x):
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)
  train = jnp.asarray(normalise(train_x))
  train_y = jnp.asarray(train_y)
  k = min(k, train.shape[0])

  @jax.jit
  def predict(q):
    sims, idx = jax.lax.top_k(q @ train.T, k)
    votes = jax.nn.one_hot(train_y[idx], num_classes) * jnp.exp(sims / temperature)[..., None]
    return jnp.argmax(votes.sum(1), axis=-1)

  test = normalise(test_x)
  correct = 0
  for i in range(0, len(test), chunk):
    correct += int(jnp.sum(predict(jnp.asarray(test[i:i + chunk])) ==
                           jnp.asarray(test_y[i:i + chunk])))
  return correct / max(len(test), 1)
