"""Weighted kNN classification of frozen features (the kNN monitor).

The classifier of Wu et al. (2018), used to monitor SimCLR-style training:
cosine similarity between L2-normalised features, the k most similar bank
examples vote for their class with weight exp(sim / T); k = 200, T = 0.1.

Memory stays bounded however large the bank is:

* the bank (the labelled training split's features) stays where the encoder
  computed it, sharded over the mesh's devices: device d holds 1/D of it,
  float32 (num_batches, B / D, C); nothing is gathered to a host;
* queries come one evaluation batch (Bq rows) at a time; each device scores
  them against its own part of the bank, (Bq, N / D) similarities, keeps its
  k best, and only those (Bq, D * k) candidates are all-gathered to pick the
  global k best.

So a device needs N * C / D floats for the bank plus Bq * N / D for one
chunk's similarities: for a 50,000-image CIFAR bank of 512-d features on 8
CPU devices, 12.8 MB and 3.2 MB (Bq = 512); for ImageNet's 1.28M x 2048 on 8
accelerators, 1.3 GB and 0.33 GB (Bq = 512).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from simclr_jax import parallel

AXIS = parallel.AXIS
# Similarity given to padding rows of the bank: never among the k best
# unless the bank has fewer than k real rows, and then with weight 0.
_PAD_SIM = -1e4


def _normalise(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x * lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), 1e-24))


@flax.struct.dataclass
class FeatureBank:
  """Labelled features sharded over the mesh (axis 1 over 'batch').

  Attributes:
    features: float32 (num_batches, B, C), L2-normalised rows.
    labels: int32 (num_batches, B).
    mask: bool (num_batches, B); False on padding rows.
  """
  features: jax.Array
  labels: jax.Array
  mask: jax.Array

  @property
  def size(self) -> int:
    """Number of real (unpadded) examples."""
    return int(jnp.sum(self.mask))


def build_bank(feature_fn: Callable, variables: Any,
               batches: Iterable[dict[str, np.ndarray]],
               mesh: jax.sharding.Mesh) -> FeatureBank:
  """Features of every batch, kept sharded on the devices.

  Args:
    feature_fn: from `features.make_feature_fn` (sharded over 'batch').
    variables: the encoder's variables, replicated.
    batches: local eval batches {'image', 'label', 'mask'} (every process
      the same number, as the data sources give them).
    mesh: the mesh.

  Returns:
    A `FeatureBank`.

  Raises:
    ValueError: no batches, or no labelled example among them.
  """
  feats, labels, masks = [], [], []
  for batch in batches:
    images = parallel.host_to_global(batch['image'], mesh)
    rest = parallel.host_to_global(
        {'label': batch['label'], 'mask': batch['mask'] & (batch['label'] >= 0)},
        mesh)
    feats.append(_normalise(feature_fn(variables, images)))
    labels.append(rest['label'])
    masks.append(rest['mask'])
  if not feats:
    raise ValueError('kNN: the feature bank is empty (no evaluation batches)')
  stack = jax.jit(lambda *xs: jnp.stack(xs),
                  out_shardings=jax.sharding.NamedSharding(mesh, P(None, AXIS)))
  bank = FeatureBank(stack(*feats), stack(*labels), stack(*masks))
  if bank.size == 0:
    raise ValueError('kNN: no labelled example in the feature bank')
  return bank


def make_predict_fn(mesh: jax.sharding.Mesh, *, k: int, temperature: float,
                    num_classes: int) -> Callable:
  """A jitted (bank, queries (Bq, C) sharded over 'batch') -> int32 (Bq,) classes.

  Queries need not be normalised. See the module doc for memory.
  """
  chex.assert_scalar_positive(k)
  chex.assert_scalar_positive(temperature)

  def per_device(features, labels, mask, queries):
    q = _normalise(lax.all_gather(queries, AXIS, tiled=True))  # (Bq, C)
    f = features.reshape(-1, features.shape[-1])
    y = labels.reshape(-1)
    sims = jnp.where(mask.reshape(-1)[None, :], q @ f.T, _PAD_SIM)
    local_k = min(k, f.shape[0])
    v, i = lax.top_k(sims, local_k)  # (Bq, local_k)
    v = lax.all_gather(v, AXIS, axis=1, tiled=True)  # (Bq, D * local_k)
    c = lax.all_gather(y[i], AXIS, axis=1, tiled=True)
    v, j = lax.top_k(v, min(k, v.shape[1]))
    c = jnp.take_along_axis(c, j, axis=1)
    weight = jnp.where(v > _PAD_SIM / 2, jnp.exp(v / temperature), 0.0)
    votes = jnp.sum(jax.nn.one_hot(c, num_classes) * weight[..., None], 1)
    pred = jnp.argmax(votes, -1).astype(jnp.int32)
    n = queries.shape[0]
    return lax.dynamic_slice_in_dim(pred, lax.axis_index(AXIS) * n, n)

  fn = jax.shard_map(per_device, mesh=mesh,
                     in_specs=(P(None, AXIS), P(None, AXIS), P(None, AXIS),
                               P(AXIS)),
                     out_specs=P(AXIS))
  return jax.jit(lambda bank, q: fn(bank.features, bank.labels, bank.mask, q))


def bank_accuracy(predict_fn: Callable, bank: FeatureBank,
                  feature_fn: Callable, variables: Any,
                  batches: Iterable[dict[str, np.ndarray]],
                  mesh: jax.sharding.Mesh) -> float:
  """kNN top-1 accuracy of the labelled examples of `batches` against `bank`."""
  correct = total = 0.0
  for batch in batches:
    images = parallel.host_to_global(batch['image'], mesh)
    rest = parallel.host_to_global(
        {'label': batch['label'], 'mask': batch['mask'] & (batch['label'] >= 0)},
        mesh)
    pred = predict_fn(bank, feature_fn(variables, images))
    hit = jnp.sum((pred == rest['label']) & rest['mask'])
    correct += float(hit)
    total += float(jnp.sum(rest['mask']))
  if total == 0:
    raise ValueError('kNN: no labelled evaluation example')
  return correct / total


def knn_accuracy(train_x: np.ndarray, train_y: np.ndarray,
                 test_x: np.ndarray, test_y: np.ndarray, *, k: int,
                 num_classes: int, temperature: float = 0.1,
                 chunk: int = 1024) -> float:
  """Weighted kNN accuracy of features held on the host (a reference and a
  convenience for small data).

  Args:
    train_x, test_x: float (N, C) and (M, C) features (normalised here).
    train_y, test_y: int (N,) and (M,) labels in [0, num_classes).
    k: neighbours (capped at N); temperature: vote weight exp(sim / T).
    num_classes: number of classes.
    chunk: test rows scored at once (memory chunk x N).

  Returns:
    Top-1 accuracy in [0, 1].
  """
  chex.assert_rank([train_x, test_x], 2)
  train = _normalise(jnp.asarray(train_x))
  labels = jnp.asarray(train_y)
  k = min(k, train.shape[0])

  @jax.jit
  def predict(q):
    sims, idx = lax.top_k(_normalise(q) @ train.T, k)
    votes = jax.nn.one_hot(labels[idx], num_classes) * jnp.exp(
        sims / temperature)[..., None]
    return jnp.argmax(votes.sum(1), axis=-1)

  correct = 0
  for i in range(0, len(test_x), chunk):
    correct += int(jnp.sum(predict(jnp.asarray(test_x[i:i + chunk])) ==
                           jnp.asarray(test_y[i:i + chunk])))
  return correct / max(len(test_x), 1)
