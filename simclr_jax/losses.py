"""NT-Xent, the normalised temperature-scaled cross-entropy loss of SimCLR.

For a batch of N positive pairs (z_a[i], z_b[i]) there are 2N anchors. Each
anchor's positive is the other view of the same example and its negatives are
the 2N - 2 other examples of both views (itself excluded). With u = z / |z|,

    l(i) = -log( exp(u_i . u_p(i) / T) / sum_{k != i} exp(u_i . u_k / T) )
    loss = mean of l over all 2N anchors (a -> b and b -> a).

This is the loss of Chen et al. (2020), eq. 1, averaged as in the paper.
google-research/simclr's `add_contrastive_loss` returns twice this value (it
adds the mean over the a -> b anchors to the mean over the b -> a anchors);
lightly's `NTXentLoss` returns the same value as `nt_xent`.

Across devices, pass `axis_name`: each device holds n pairs of the global
batch of N = n * axis_size, gathers every device's projections as negatives,
computes only its own 2n rows of the 2n x 2N logits (never the 2N x 2N
matrix) and returns the global mean. Gradients flow back to the device that
owns each projection, so the value and the gradient equal those of the
single-device loss on the concatenated global batch.
"""

from typing import Any

import chex
import jax
from jax import lax
import jax.numpy as jnp
import optax

__all__ = ['GOOGLE_OBJECTIVE_SCALE', 'distillation_loss', 'nt_xent',
           'nt_xent_with_metrics']

# google-research/simclr's `add_contrastive_loss` adds the mean cross-entropy
# of the a -> b anchors to that of the b -> a anchors: GOOGLE_OBJECTIVE_SCALE
# times `nt_xent`. simclr_jax's train step minimises that scaled value, so its
# gradient (and with LARS the balance of gradient and weight decay) is
# google's; `nt_xent` itself stays the per-anchor mean.
GOOGLE_OBJECTIVE_SCALE = 2.0

# Stands in for -inf on masked logits: exp() of it minus any finite max is
# exactly 0, and unlike -inf it never makes inf - inf = NaN. Chosen far below
# any logit |u.v| / T can reach for T >= 1e-30.
_MASK_VALUE = -0.5 * float(jnp.finfo(jnp.float32).max)
# Floor on the squared norm in the L2 normalisation (as tf.math.l2_normalize):
# zero vectors stay zero instead of becoming NaN.
_NORM_EPS_SQ = 1e-12

# A mesh axis name, or a tuple of them (all-gathered over their product).
AxisName = str | tuple[str, ...]


def _check_inputs(z_a: jax.Array, z_b: jax.Array, temperature: Any) -> None:
  """Raises ValueError for inputs NT-Xent cannot take (static checks only)."""
  for name, z in (('z_a', z_a), ('z_b', z_b)):
    if not hasattr(z, 'shape') or not hasattr(z, 'dtype'):
      raise ValueError(f'nt_xent: {name} must be an array, got {type(z)}.')
    if z.ndim != 2:
      raise ValueError(
          f'nt_xent: {name} must be 2-D (n, d), got shape {tuple(z.shape)}.')
    if not jnp.issubdtype(z.dtype, jnp.floating):
      raise ValueError(
          f'nt_xent: {name} must be a floating-point array, got dtype '
          f'{z.dtype}.')
  if z_a.shape != z_b.shape:
    raise ValueError(
        'nt_xent: z_a and z_b must have the same shape (row i of each is a '
        f'positive pair), got {tuple(z_a.shape)} and {tuple(z_b.shape)}.')
  n, d = z_a.shape
  if n == 0 or d == 0:
    raise ValueError(
        f'nt_xent: z_a and z_b must be non-empty, got shape {(n, d)}.')
  try:
    t = float(temperature)
  except jax.errors.ConcretizationTypeError:
    return  # A traced temperature (e.g. a schedule): not checkable here.
  except (TypeError, ValueError) as e:
    raise ValueError(
        f'nt_xent: temperature must be a positive number, got '
        f'{temperature!r}.') from e
  if not 0.0 < t < float('inf'):
    raise ValueError(
        f'nt_xent: temperature must be positive and finite, got {t}.')


def _l2_normalize(z: jax.Array) -> jax.Array:
  """Rows of `z` (n, d) float32 scaled to unit norm; zero rows stay zero."""
  sq = jnp.sum(z * z, axis=-1, keepdims=True)
  return z * lax.rsqrt(jnp.maximum(sq, _NORM_EPS_SQ))


def nt_xent_with_metrics(
    z_a: jax.Array,
    z_b: jax.Array,
    *,
    temperature: float = 0.1,
    axis_name: AxisName | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """NT-Xent loss of SimCLR and two contrastive metrics.

  Args:
    z_a: projections of the first view, (n, d), any float dtype (bfloat16 is
      upcast; all arithmetic is float32). Need not be normalised.
    z_b: projections of the second view, (n, d), same dtype; row i of z_a and
      row i of z_b are a positive pair.
    temperature: softmax temperature T > 0 (0.1 in SimCLR v2, 0.5 for CIFAR
      in v1). May be a traced scalar, in which case it is not validated.
    axis_name: None for a single device. Inside `jax.shard_map` (or
      `jax.pmap`) over a mesh axis, the name of that axis (or a tuple of
      names): z_a and z_b are then this device's shard of the global batch
      (N = n * axis_size pairs, device k holding global rows k*n .. k*n+n-1)
      and the negatives come from every device.

  Returns:
    (loss, metrics). `loss` is a float32 scalar, the mean of the 2N
    cross-entropies as in the paper (google-research/simclr's
    `add_contrastive_loss` returns 2 * loss; lightly's `NTXentLoss` returns
    loss). `metrics` holds float32 scalars:
      'contrastive_accuracy': fraction of the 2N anchors whose positive has
        the largest logit among the anchor's 2N - 1 candidates;
      'contrastive_entropy': mean over the 2N anchors of the entropy (nats)
        of the softmax over the anchor's 2N - 1 candidates.
    With `axis_name`, all three are global (over every device's anchors) and
    identical on every device (invariant over the axis under shard_map's
    check_vma). Under `jax.shard_map` (default check_vma=True) `jax.grad` of
    the loss equals the gradient of the single-device loss on the global
    batch; see the README for `jax.pmap`.

  Raises:
    ValueError: if z_a or z_b is not a 2-D float array, the shapes differ or
      are empty, the global batch has fewer than 2 pairs (no negatives), or a
      concrete temperature is not a positive finite number.
  """
  _check_inputs(z_a, z_b, temperature)
  n = z_a.shape[0]
  u_a = _l2_normalize(z_a.astype(jnp.float32))
  u_b = _l2_normalize(z_b.astype(jnp.float32))

  if axis_name is None:
    all_a, all_b = u_a, u_b
    offset = 0
  else:
    # The transpose of all_gather (varying output) is a reduce-scatter, so
    # the gradients of every device's logits w.r.t. a row are summed on the
    # row's owner.
    all_a = lax.all_gather(u_a, axis_name, tiled=True)
    all_b = lax.all_gather(u_b, axis_name, tiled=True)
    offset = lax.axis_index(axis_name) * n
  big_n = all_a.shape[0]  # Global number of pairs N.
  chex.assert_shape([all_a, all_b], (big_n, z_a.shape[1]))
  if big_n < 2:
    # One pair has no negatives: the loss would be 0 with a zero gradient.
    raise ValueError(
        'nt_xent: needs at least 2 positive pairs in the (global) batch, so '
        f'that every anchor has negatives; got N = {big_n}.')

  # Local anchors (2n, d): the n a-rows then the n b-rows; candidates (2N, d):
  # every a-row then every b-row of the global batch.
  anchors = jnp.concatenate([u_a, u_b], axis=0)
  candidates = jnp.concatenate([all_a, all_b], axis=0)
  logits = jnp.matmul(anchors, candidates.T,
                      precision=lax.Precision.HIGHEST) / temperature
  logits = logits.astype(jnp.float32)  # (2n, 2N)

  # Global column of each local anchor itself (masked) and of its positive.
  rows = jnp.arange(n) + offset
  self_col = jnp.concatenate([rows, rows + big_n])
  pos_col = jnp.concatenate([rows + big_n, rows])
  cols = jnp.arange(2 * big_n)
  self_mask = cols[None, :] == self_col[:, None]  # (2n, 2N) bool
  pos_mask = cols[None, :] == pos_col[:, None]  # (2n, 2N) bool
  logits = jnp.where(self_mask, _MASK_VALUE, logits)

  lse = jax.nn.logsumexp(logits, axis=-1)  # (2n,)
  # A masked sum rather than a gather: one fused pass on every backend.
  pos_logit = jnp.sum(jnp.where(pos_mask, logits, 0.0), axis=-1)  # (2n,)
  local_loss = jnp.mean(lse - pos_logit)

  # Metrics carry no gradient.
  sg_logits = lax.stop_gradient(logits)
  sg_lse = lax.stop_gradient(lse)
  correct = (jnp.argmax(sg_logits, axis=-1) == pos_col).astype(jnp.float32)
  # H = -sum_k p_k log p_k over the 2N - 1 candidates (p = 0 on the mask).
  # log p is formed per entry, so no large lse - E[logit] cancels at small T.
  log_p = sg_logits - sg_lse[:, None]
  entropy = -jnp.sum(jnp.where(self_mask, 0.0, jnp.exp(log_p) * log_p),
                     axis=-1)
  entropy = jnp.maximum(entropy, 0.0)
  local = {
      'loss': local_loss,
      'contrastive_accuracy': jnp.mean(correct),
      'contrastive_entropy': jnp.mean(entropy),
  }
  if axis_name is not None:
    # Every device has the same number of anchors, so the mean of the local
    # means is the global mean. Its transpose (under check_vma) hands each
    # device 1 / axis_size of the cotangent: no extra factor of axis_size.
    local = lax.pmean(local, axis_name)
  loss = local.pop('loss')
  chex.assert_shape(loss, ())
  return loss, local


def nt_xent(
    z_a: jax.Array,
    z_b: jax.Array,
    *,
    temperature: float = 0.1,
    axis_name: AxisName | None = None,
) -> jax.Array:
  """NT-Xent loss of SimCLR (Chen et al. 2020), a float32 scalar.

  Args:
    z_a: projections of the first view, (n, d), any float dtype.
    z_b: projections of the second view, (n, d); row i of z_a and of z_b are
      a positive pair.
    temperature: softmax temperature T > 0.
    axis_name: None on one device; inside `jax.shard_map`/`jax.pmap`, the
      batch axis name, with z_a, z_b this device's shard.

  Returns:
    The mean over all 2N anchors (both directions) of the cross-entropy of
    the positive against the 2N - 1 other examples, float32 (). This is half
    of google-research/simclr's `add_contrastive_loss` and equal to lightly's
    `NTXentLoss`. See `nt_xent_with_metrics` for the details.
  """
  loss, _ = nt_xent_with_metrics(
      z_a, z_b, temperature=temperature, axis_name=axis_name)
  return loss


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array,
                      temperature: float) -> jax.Array:
  """SimCLRv2's distillation loss of each example (Chen et al. 2020b, eq. 2).

      loss(x) = -sum_y P^T(y|x; tau) log P^S(y|x; tau),
      P(y|x; tau) = softmax(logits(x) / tau)[y].

  The teacher is fixed: no gradient reaches `teacher_logits`. The gradient
  with respect to the student's logits is (P^S - P^T) / tau. google's
  distillation colab multiplies this by tau^2 (Hinton et al.'s convention);
  the paper's equation, followed here, does not.

  Args:
    student_logits: float (N, K).
    teacher_logits: float (N, K).
    temperature: tau > 0, the same for both softmaxes.

  Returns:
    float32 (N,): the cross-entropy of each example (mean it for the batch).
  """
  chex.assert_rank([student_logits, teacher_logits], 2)
  chex.assert_equal_shape([student_logits, teacher_logits])
  if not temperature > 0:
    raise ValueError(f'distillation temperature must be > 0, got {temperature}')
  targets = jax.nn.softmax(
      lax.stop_gradient(teacher_logits.astype(jnp.float32)) / temperature)
  return optax.softmax_cross_entropy(
      student_logits.astype(jnp.float32) / temperature, targets)
