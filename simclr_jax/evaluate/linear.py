"""Linear evaluation: a linear classifier on a frozen encoder's `h`, sharded.

The protocol of google-research/simclr ("finetuning the linear head"): the
encoder is frozen with BatchNorm in inference mode; a linear layer on `h`,
zero-initialised, is trained with Nesterov momentum SGD, learning rate
0.1 x B/256 with cosine decay and no warm-up, weight decay 0 (CIFAR) or 1e-6
(ImageNet) on the kernel, on random-resized crops and flips made on the
device; it is scored top-1 and top-5 on centre-cropped evaluation images.

Every step is one jitted `shard_map` over the mesh: images sharded over
'batch', the head and the encoder replicated; the loss is the global mean over
labelled examples (`lax.psum`), so with shard_map's replication checks
`jax.grad` gives the global gradient. Nothing grows with the dataset: batches
stream through. The same steps take precomputed features instead of images
(`inputs='features'`: the fast variant on features computed once).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import PartitionSpec as P

from simclr_jax import augment
from simclr_jax import parallel

AXIS = parallel.AXIS
INPUTS = ('images', 'features')


@flax.struct.dataclass
class HeadState:
  """The trained part of linear evaluation (replicated).

  Attributes:
    step: int32 scalar, steps done.
    params: {'kernel': float32 (C, K), 'bias': float32 (K,)}.
    opt_state: the optimiser's state.
    stats: {'mean', 'std'} float32 (C,), fixed: the head sees
      (h - mean) / std. Zeros and ones (h as it is, the protocol) unless the
      fast variant standardises its precomputed features.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  stats: Any


def create_optimizer(peak_learning_rate: float, total_steps: int, *,
                     momentum: float = 0.9, weight_decay: float = 0.0
                     ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Nesterov SGD with cosine decay from the peak, no warm-up; decay on the kernel."""
  schedule = optax.cosine_decay_schedule(peak_learning_rate,
                                         max(int(total_steps), 1))
  mask = lambda p: {'kernel': True, 'bias': False}
  tx = optax.chain(optax.add_decayed_weights(weight_decay, mask),
                   optax.sgd(schedule, momentum=momentum, nesterov=True))
  return tx, schedule


def create_state(tx: optax.GradientTransformation, feature_dim: int,
                 num_classes: int, mesh: jax.sharding.Mesh,
                 stats: dict[str, Any] | None = None) -> HeadState:
  """A zero-initialised head (google's zero_init_logits_layer), replicated.

  `stats`: {'mean', 'std'} (C,) to standardise h with; None: none.
  """
  def init(stats):
    params = {'kernel': jnp.zeros((feature_dim, num_classes), jnp.float32),
              'bias': jnp.zeros((num_classes,), jnp.float32)}
    return HeadState(jnp.zeros((), jnp.int32), params, tx.init(params), stats)
  if stats is None:
    stats = {'mean': np.zeros(feature_dim, np.float32),
             'std': np.ones(feature_dim, np.float32)}
  stats = {k: np.asarray(v, np.float32) for k, v in stats.items()}
  return jax.jit(init, out_shardings=parallel.replicated(mesh))(stats)


def logits_of(params: Any, stats: Any, h: jax.Array) -> jax.Array:
  """float32 (n, K) logits of the head on features h (n, C)."""
  return ((h - stats['mean']) / stats['std']) @ params['kernel'] + params['bias']


def crop_flip_spec(config: Any) -> augment.AugmentSpec:
  """The evaluation-training augmentation: random-resized crop and flip only.

  Its views have the evaluation's side, image_size (which augment.output_size,
  the pretraining views' side, may undercut).
  """
  spec = augment.AugmentSpec.from_config(config.augment)
  return augment.AugmentSpec(
      output_size=int(config.image_size), crop_scale=spec.crop_scale,
      crop_ratio=spec.crop_ratio, flip_prob=0.5, color_jitter_prob=0.0,
      grayscale_prob=0.0, blur=False, strategy=spec.strategy)


def _features(model: Any, variables: Any, x: jax.Array, inputs: str,
              spec: augment.AugmentSpec | None, key: jax.Array | None):
  """float32 (n, C) features of this device's inputs."""
  if inputs == 'features':
    return x.astype(jnp.float32)
  if spec is None:
    images = x.astype(jnp.float32) / 255.0
  else:
    n = x.shape[0]
    first = lax.axis_index(AXIS) * n
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
        key, first + jnp.arange(n))
    images, _ = augment.two_views(keys, x, spec)
  h = model.apply(variables, images, train=False, method='encode')
  return lax.stop_gradient(h)


def _masked_ce(params, stats, h, labels):
  """Global mean cross-entropy over labelled rows, and the logits."""
  logits = logits_of(params, stats, h)
  valid = (labels >= 0).astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(
      logits, jnp.maximum(labels, 0))
  count = jnp.maximum(lax.psum(valid.sum(), AXIS), 1.0)
  return lax.psum(jnp.sum(ce * valid), AXIS) / count, logits


def make_train_step(model: Any, tx: optax.GradientTransformation,
                    mesh: jax.sharding.Mesh, *, inputs: str = 'images',
                    spec: augment.AugmentSpec | None = None) -> Callable:
  """Jitted (state, variables, x, labels, key) -> (state, metrics).

  Args (of the returned function):
    state: `HeadState`, replicated (donated).
    variables: the frozen encoder's {'params', 'batch_stats'}, replicated.
    x: uint8 images (B, H, W, 3) or host-cropped (B, 2, S, S, 3) when
      `inputs='images'` (augmented with `spec` if given), or float32
      features (B, C) when `inputs='features'`; sharded over 'batch'.
    labels: int32 (B,), -1 for unlabelled rows (ignored), sharded.
    key: the augmentation key of this step (replicated).

  Returns metrics {'loss', 'accuracy', 'learning_rate'}: global, replicated.
  """
  if inputs not in INPUTS:
    raise ValueError(f'inputs must be one of {INPUTS}, got {inputs!r}')
  if spec is not None:  # 'auto' from the mesh's devices, not the host's.
    spec = dataclasses.replace(spec, strategy=augment.resolve_strategy(
        spec.strategy, parallel.platform(mesh)))

  def per_device(state, variables, x, labels, key):
    h = _features(model, variables, x, inputs, spec, key)

    def loss_fn(params):
      return _masked_ce(params, state.stats, h, labels)

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    valid = labels >= 0
    correct = lax.psum(jnp.sum((jnp.argmax(logits, -1) == labels) & valid),
                       AXIS)
    count = jnp.maximum(lax.psum(jnp.sum(valid), AXIS), 1)
    metrics = {'loss': loss, 'accuracy': correct / count}
    return HeadState(state.step + 1, params, opt_state, state.stats), metrics

  step = jax.shard_map(per_device, mesh=mesh,
                       in_specs=(P(), P(), P(AXIS), P(AXIS), P()),
                       out_specs=(P(), P()))
  return jax.jit(step, donate_argnums=(0,))


def topk_counts(logits: jax.Array, labels: jax.Array, mask: jax.Array
                ) -> dict[str, jax.Array]:
  """Top-1 and top-5 hits of this device's rows, summed over the mesh.

  Inside `shard_map` over AXIS. Args: logits float (n, K); labels int32
  (n,), -1 unlabelled; mask bool (n,), False on padding. Rows with mask False
  or label -1 are not counted. Returns int32 scalars {'top1', 'top5',
  'count'} (top-5 is top-K when K < 5).
  """
  valid = mask & (labels >= 0)
  _, top = lax.top_k(logits, min(5, logits.shape[-1]))
  hit5 = jnp.any(top == labels[:, None], axis=-1) & valid
  hit1 = (top[:, 0] == labels) & valid
  return {'top1': lax.psum(jnp.sum(hit1), AXIS),
          'top5': lax.psum(jnp.sum(hit5), AXIS),
          'count': lax.psum(jnp.sum(valid), AXIS)}


def make_eval_step(model: Any, mesh: jax.sharding.Mesh, *,
                   inputs: str = 'images') -> Callable:
  """Jitted (state, variables, x, labels, mask) -> global counts.

  `x` are centre-cropped uint8 images (B, S, S, 3) or features (B, C);
  rows with mask False or label -1 are not counted. Returns
  {'top1': int32, 'top5': int32, 'count': int32} summed over the mesh.
  """
  def per_device(state, variables, x, labels, mask):
    h = _features(model, variables, x, inputs, None, None)
    return topk_counts(logits_of(state.params, state.stats, h), labels, mask)

  return jax.jit(jax.shard_map(
      per_device, mesh=mesh,
      in_specs=(P(), P(), P(AXIS), P(AXIS), P(AXIS)), out_specs=P()))
