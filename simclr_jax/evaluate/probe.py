"""The quick linear probe: logistic regression on features computed once.

The paper's protocol in small: a multinomial logistic regression on frozen,
standardised features `h`, fitted full-batch with an L2 penalty, and scored
by top-1 accuracy on held-out data.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax


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
