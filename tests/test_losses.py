"""Tests of simclr_jax.losses: NT-Xent against float64 references, on 1-8 devices."""

import functools

import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from simclr_jax import losses

N_GLOBAL = 16  # Pairs in the global batch of the sharded tests.
DIM = 8


# --------------------------------------------------------------- references


def _np_normalize(z: np.ndarray) -> np.ndarray:
  """Float64 rows over max(|z|, 1e-6), the same floor as the library."""
  sq = np.sum(z * z, axis=1, keepdims=True)
  return z / np.sqrt(np.maximum(sq, 1e-12))


def ref_nt_xent(z_a, z_b, temperature):
  """Float64 NT-Xent as a loop over the 2N anchors: (loss, accuracy, entropy)."""
  z_a = np.asarray(z_a, np.float64)
  z_b = np.asarray(z_b, np.float64)
  n = z_a.shape[0]
  u = np.concatenate([_np_normalize(z_a), _np_normalize(z_b)])
  loss, correct, entropy = [], [], []
  for i in range(2 * n):
    positive = (i + n) % (2 * n)
    others = [k for k in range(2 * n) if k != i]
    logits = np.array([u[i] @ u[k] for k in others]) / temperature
    top = logits.max()
    lse = top + np.log(np.sum(np.exp(logits - top)))
    loss.append(lse - (u[i] @ u[positive]) / temperature)
    correct.append(others[int(np.argmax(logits))] == positive)
    log_p = logits - lse
    entropy.append(-np.sum(np.exp(log_p) * log_p))
  return np.mean(loss), np.mean(correct), np.mean(entropy)


def google_add_contrastive_loss(h_a, h_b, temperature):
  """Float64 re-statement of google-research/simclr's add_contrastive_loss.

  Logits [ab, aa - mask] for the a anchors and [ba, bb - mask] for the b
  anchors, a softmax cross-entropy (mean over anchors) for each, summed.
  """
  large_num = 1e9
  h_a = _np_normalize(np.asarray(h_a, np.float64))
  h_b = _np_normalize(np.asarray(h_b, np.float64))
  n = h_a.shape[0]
  labels = np.eye(n, 2 * n)
  masks = np.eye(n)
  logits_aa = h_a @ h_a.T / temperature - masks * large_num
  logits_bb = h_b @ h_b.T / temperature - masks * large_num
  logits_ab = h_a @ h_b.T / temperature
  logits_ba = h_b @ h_a.T / temperature

  def softmax_cross_entropy(onehot, logits):
    top = logits.max(axis=1, keepdims=True)
    log_p = logits - top - np.log(
        np.sum(np.exp(logits - top), axis=1, keepdims=True))
    return np.mean(-np.sum(onehot * log_p, axis=1))

  loss_a = softmax_cross_entropy(
      labels, np.concatenate([logits_ab, logits_aa], axis=1))
  loss_b = softmax_cross_entropy(
      labels, np.concatenate([logits_ba, logits_bb], axis=1))
  return loss_a + loss_b


def _pairs(seed, n=N_GLOBAL, d=DIM, scale=1.0):
  rng = np.random.default_rng(seed)
  z_a = rng.normal(size=(n, d)) * scale
  # Correlated views, so the accuracy is neither 0 nor 1.
  z_b = z_a + rng.normal(size=(n, d)) * 1.5 * scale
  return z_a.astype(np.float32), z_b.astype(np.float32)


@functools.lru_cache(maxsize=None)
def _loss_and_grads(temperature):
  """Jitted single-device (loss, metrics), (dz_a, dz_b)."""
  fn = functools.partial(losses.nt_xent_with_metrics, temperature=temperature)
  return jax.jit(jax.value_and_grad(fn, argnums=(0, 1), has_aux=True))


def _devices(k):
  """The first k devices; skips the test on a host with fewer (one GPU)."""
  if k > jax.device_count():
    pytest.skip(f'needs {k} devices, {jax.device_count()} here')
  return jax.devices()[:k]


def _mesh(k):
  _devices(k)
  return jax.make_mesh((k,), ('batch',),
                       axis_types=(jax.sharding.AxisType.Explicit,),
                       devices=jax.devices()[:k])


def _rel_close(actual, expected, rtol):
  """Asserts |actual - expected| <= rtol * max|expected| elementwise."""
  expected = np.asarray(expected, np.float64)
  scale = max(float(np.max(np.abs(expected))), 1e-30)
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected,
                             rtol=0, atol=rtol * scale)


# ----------------------------------------------------- single-device values


@pytest.mark.parametrize('temperature', [0.1, 0.5])
def test_matches_float64_loop_reference(temperature):
  z_a, z_b = _pairs(0)
  (loss, metrics), _ = _loss_and_grads(temperature)(z_a, z_b)
  ref_loss, ref_acc, ref_ent = ref_nt_xent(z_a, z_b, temperature)
  assert loss.dtype == jnp.float32 and loss.shape == ()
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  assert 0.0 < ref_acc < 1.0  # The accuracy check is not vacuous.
  np.testing.assert_allclose(metrics['contrastive_accuracy'], ref_acc,
                             rtol=1e-6)
  np.testing.assert_allclose(metrics['contrastive_entropy'], ref_ent,
                             rtol=1e-5)
  for v in metrics.values():
    assert v.dtype == jnp.float32 and v.shape == ()
  # nt_xent is the loss of nt_xent_with_metrics, and is exported.
  from simclr_jax import nt_xent  # pylint: disable=g-import-not-at-top
  np.testing.assert_allclose(nt_xent(z_a, z_b, temperature=temperature), loss,
                             rtol=1e-6)


def test_gradient_matches_float64_finite_differences():
  z_a, z_b = _pairs(1, n=4, d=3)
  temperature = 0.3
  _, (g_a, g_b) = _loss_and_grads(temperature)(z_a, z_b)
  z = np.concatenate([z_a, z_b]).astype(np.float64)
  fd = np.zeros_like(z)
  h = 1e-6
  for idx in np.ndindex(*z.shape):
    plus, minus = z.copy(), z.copy()
    plus[idx] += h
    minus[idx] -= h
    fd[idx] = (ref_nt_xent(plus[:4], plus[4:], temperature)[0] -
               ref_nt_xent(minus[:4], minus[4:], temperature)[0]) / (2 * h)
  _rel_close(np.concatenate([g_a, g_b]), fd, 1e-5)


def test_is_half_of_google_research_add_contrastive_loss():
  z_a, z_b = _pairs(2, n=12, d=5)
  for temperature in (0.1, 0.5):
    (loss, _), _ = _loss_and_grads(temperature)(z_a, z_b)
    theirs = google_add_contrastive_loss(z_a, z_b, temperature)
    np.testing.assert_allclose(loss, theirs / 2, rtol=1e-5)


# ------------------------------------------------------ sharded invariance


@pytest.mark.parametrize('num_devices', [1, 2, 4, 8])
def test_shard_map_equals_single_device(num_devices):
  """Loss, metrics and gradients on k devices equal the global single-device ones."""
  temperature = 0.2
  z_a, z_b = _pairs(3)
  (loss, metrics), (g_a, g_b) = _loss_and_grads(temperature)(z_a, z_b)

  mesh = _mesh(num_devices)
  per_device = jax.value_and_grad(
      functools.partial(losses.nt_xent_with_metrics, temperature=temperature,
                        axis_name='batch'),
      argnums=(0, 1), has_aux=True)
  sharded = jax.jit(jax.shard_map(
      per_device, mesh=mesh, in_specs=(P('batch'), P('batch')),
      out_specs=((P(), P()), (P('batch'), P('batch')))))
  put = lambda x: jax.device_put(x, NamedSharding(mesh, P('batch')))
  (s_loss, s_metrics), (s_g_a, s_g_b) = sharded(put(z_a), put(z_b))

  np.testing.assert_allclose(s_loss, loss, rtol=1e-5)
  for k in metrics:
    np.testing.assert_allclose(s_metrics[k], metrics[k], rtol=1e-5)
  # Each device's gradient is the global gradient of its own rows: no factor
  # of num_devices, and nothing lost for rows used as negatives elsewhere.
  _rel_close(s_g_a, g_a, 1e-5)
  _rel_close(s_g_b, g_b, 1e-5)


def _projection_problem(seed):
  rng = np.random.default_rng(seed)
  x_a = rng.normal(size=(N_GLOBAL, 6)).astype(np.float32)
  x_b = (x_a + rng.normal(size=x_a.shape)).astype(np.float32)
  w = rng.normal(size=(6, DIM)).astype(np.float32)
  loss_of_w = lambda w, x_a, x_b, **kw: losses.nt_xent(
      x_a @ w, x_b @ w, temperature=0.2, **kw)
  return w, x_a, x_b, loss_of_w


def test_replicated_parameter_gradients_under_shard_map_and_pmap():
  """A replicated projection's gradient, in each framework's idiom, is exact.

  shard_map (check_vma=True): grad of the returned (global) loss, nothing
  else. shard_map(check_vma=False) and pmap: pmean the per-device gradients.
  """
  w, x_a, x_b, loss_of_w = _projection_problem(4)
  ref_loss, ref_grad = jax.value_and_grad(loss_of_w)(w, x_a, x_b)
  k = 4
  mesh = _mesh(k)
  put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
  args = (put(w, P()), put(x_a, P('batch')), put(x_b, P('batch')))
  grad_fn = jax.value_and_grad(
      functools.partial(loss_of_w, axis_name='batch'))

  vma = jax.jit(jax.shard_map(grad_fn, mesh=mesh,
                              in_specs=(P(), P('batch'), P('batch')),
                              out_specs=(P(), P())))
  loss, grad = vma(*args)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  _rel_close(grad, ref_grad, 1e-5)

  def pmean_grads(*a):
    loss, grad = grad_fn(*a)
    return loss, lax.pmean(grad, 'batch')

  no_vma = jax.jit(jax.shard_map(pmean_grads, mesh=mesh,
                                 in_specs=(P(), P('batch'), P('batch')),
                                 out_specs=(P(), P()), check_vma=False))
  loss, grad = no_vma(*args)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  _rel_close(grad, ref_grad, 1e-5)

  rows = lambda x: x.reshape(k, N_GLOBAL // k, *x.shape[1:])
  pmapped = jax.pmap(pmean_grads, axis_name='batch', in_axes=(None, 0, 0),
                     devices=_devices(k))
  loss, grad = pmapped(w, rows(x_a), rows(x_b))
  np.testing.assert_allclose(loss, np.full(k, ref_loss), rtol=1e-5)
  for g in grad:
    _rel_close(g, ref_grad, 1e-5)


def test_pmap_input_gradient_is_axis_size_times_global():
  """Documented pmap semantics: d/dz of the loss is axis_size x the global one.

  pmap transposes psum to psum, so each device's pmean-ed loss sends a full
  cotangent back; the usual pmean of parameter gradients divides it out.
  """
  z_a, z_b = _pairs(5)
  _, (g_a, _) = _loss_and_grads(0.2)(z_a, z_b)
  k = 4
  grad_fn = jax.pmap(
      jax.grad(functools.partial(losses.nt_xent, temperature=0.2,
                                 axis_name='i')),
      axis_name='i', devices=_devices(k))
  p_g_a = grad_fn(z_a.reshape(k, -1, DIM), z_b.reshape(k, -1, DIM))
  _rel_close(np.asarray(p_g_a).reshape(N_GLOBAL, DIM), k * g_a, 1e-5)


def test_sharded_loss_never_builds_the_global_logit_matrix():
  """Per device the largest array is the 2n x 2N block of logits, not 2N x 2N."""
  k, n = 8, 2
  big_n = k * n
  z_a, z_b = _pairs(6, n=n)
  fn = jax.value_and_grad(
      functools.partial(losses.nt_xent, axis_name='batch'), argnums=(0, 1))
  closed = jax.make_jaxpr(fn, axis_env=[('batch', k)])(z_a, z_b)

  shapes = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      shapes.extend(tuple(v.aval.shape) for v in eqn.outvars
                    if hasattr(v.aval, 'shape'))
      for param in eqn.params.values():
        for sub in param if isinstance(param, (tuple, list)) else (param,):
          inner = getattr(sub, 'jaxpr', sub)
          if hasattr(inner, 'eqns'):
            walk(inner)

  walk(closed.jaxpr)
  assert (2 * n, 2 * big_n) in shapes  # The local block of logits.
  assert (2 * big_n, DIM) in shapes  # The gathered candidates.
  assert max(int(np.prod(s)) for s in shapes) < (2 * big_n) ** 2


# ------------------------------------------------------ numerics and edges


def test_bfloat16_inputs_give_float32_close_to_float32():
  z_a, z_b = _pairs(7)
  (loss32, metrics32), _ = _loss_and_grads(0.1)(z_a, z_b)
  a16, b16 = jnp.asarray(z_a, jnp.bfloat16), jnp.asarray(z_b, jnp.bfloat16)
  (loss16, metrics16), (g_a, g_b) = _loss_and_grads(0.1)(a16, b16)
  assert loss16.dtype == jnp.float32
  assert all(v.dtype == jnp.float32 for v in metrics16.values())
  assert g_a.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(g_b)))
  np.testing.assert_allclose(loss16, loss32, rtol=1e-2)
  np.testing.assert_allclose(metrics16['contrastive_entropy'],
                             metrics32['contrastive_entropy'], rtol=1e-2)
  # The arithmetic is float32: exactly the loss of the upcast inputs.
  upcast = losses.nt_xent(a16.astype(jnp.float32), b16.astype(jnp.float32),
                          temperature=0.1)
  np.testing.assert_allclose(loss16, upcast, rtol=1e-6)


@pytest.mark.parametrize('temperature', [1e-4, 100.0])
def test_extreme_temperatures_are_finite_and_exact(temperature):
  z_a, z_b = _pairs(8, n=8)
  (loss, metrics), grads = _loss_and_grads(temperature)(z_a, z_b)
  ref_loss, ref_acc, ref_ent = ref_nt_xent(z_a, z_b, temperature)
  for x in (loss, *metrics.values(), *grads):
    assert bool(jnp.all(jnp.isfinite(x)))
  # Logits reach 1/T = 1e4: float32 cosines (error ~1e-7) allow rtol ~1e-4.
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-4)
  np.testing.assert_allclose(metrics['contrastive_accuracy'], ref_acc)
  np.testing.assert_allclose(metrics['contrastive_entropy'], ref_ent,
                             rtol=1e-4, atol=1e-6)


def test_self_similarity_is_excluded_at_tiny_temperature():
  """With z_b == z_a, a self logit would tie the positive (loss log 2)."""
  z_a, _ = _pairs(9, n=8)
  (loss, metrics), grads = _loss_and_grads(1e-4)(z_a, z_a)
  assert float(loss) < 1e-6
  assert float(metrics['contrastive_accuracy']) == 1.0
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


def test_zero_vectors():
  n = 6
  zeros = np.zeros((n, DIM), np.float32)
  (loss, metrics), (g_a, g_b) = _loss_and_grads(0.1)(zeros, zeros)
  # Every logit is 0: uniform over the 2N - 1 candidates.
  np.testing.assert_allclose(loss, np.log(2 * n - 1), rtol=1e-6)
  np.testing.assert_allclose(metrics['contrastive_entropy'],
                             np.log(2 * n - 1), rtol=1e-6)
  np.testing.assert_array_equal(g_a, 0.0)
  np.testing.assert_array_equal(g_b, 0.0)
  # Some zero rows among random ones: finite and equal to the reference.
  z_a, z_b = _pairs(10, n=n)
  z_a[1] = 0.0
  z_b[4] = 0.0
  (loss, metrics), grads = _loss_and_grads(0.1)(z_a, z_b)
  np.testing.assert_allclose(loss, ref_nt_xent(z_a, z_b, 0.1)[0], rtol=1e-5)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


def test_single_pair_raises():
  """With N = 1 there are no negatives: an error, not a silent zero loss."""
  z_a, z_b = _pairs(11, n=1)
  with pytest.raises(ValueError, match='at least 2 positive pairs'):
    losses.nt_xent(z_a, z_b)
  # Also across devices: one pair on one device of a 1-device mesh.
  mesh = jax.make_mesh((1,), ('batch',),
                       axis_types=(jax.sharding.AxisType.Explicit,))
  fn = jax.shard_map(functools.partial(losses.nt_xent, axis_name='batch'),
                     mesh=mesh, in_specs=(P('batch'), P('batch')),
                     out_specs=P())
  with pytest.raises(ValueError, match='at least 2 positive pairs'):
    fn(jax.device_put(z_a, NamedSharding(mesh, P('batch'))),
       jax.device_put(z_b, NamedSharding(mesh, P('batch'))))


def test_traced_temperature():
  z_a, z_b = _pairs(12, n=4)
  fn = jax.jit(lambda a, b, t: losses.nt_xent(a, b, temperature=t))
  np.testing.assert_allclose(fn(z_a, z_b, 0.25),
                             ref_nt_xent(z_a, z_b, 0.25)[0], rtol=1e-5)


def test_bad_inputs_raise_value_error():
  z = jnp.ones((4, 3))
  cases = [
      (dict(z_a=z, z_b=jnp.ones((5, 3))), 'same shape'),
      (dict(z_a=z, z_b=jnp.ones((4, 2))), 'same shape'),
      (dict(z_a=jnp.ones(4), z_b=jnp.ones(4)), '2-D'),
      (dict(z_a=jnp.ones((2, 2, 3)), z_b=jnp.ones((2, 2, 3))), '2-D'),
      (dict(z_a=jnp.ones((4, 3), jnp.int32), z_b=z), 'floating'),
      (dict(z_a=z, z_b=np.ones((4, 3), bool)), 'floating'),
      (dict(z_a=jnp.ones((0, 3)), z_b=jnp.ones((0, 3))), 'non-empty'),
      (dict(z_a=z, z_b=z, temperature=0.0), 'positive'),
      (dict(z_a=z, z_b=z, temperature=-0.5), 'positive'),
      (dict(z_a=z, z_b=z, temperature=float('nan')), 'positive'),
      (dict(z_a=z, z_b=z, temperature='warm'), 'positive'),
      (dict(z_a=[[1.0]], z_b=[[1.0]]), 'array'),
  ]
  for kwargs, message in cases:
    z_a, z_b = kwargs.pop('z_a'), kwargs.pop('z_b')
    with pytest.raises(ValueError, match=message):
      losses.nt_xent_with_metrics(z_a, z_b, **kwargs)
  # Raised at trace time, from static shapes.
  with pytest.raises(ValueError, match='same shape'):
    jax.jit(losses.nt_xent).lower(jnp.ones((4, 3)), jnp.ones((4, 2)))
