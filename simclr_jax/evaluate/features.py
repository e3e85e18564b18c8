"""Features of a frozen encoder, batch by batch, sharded over the mesh."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from simclr_jax import parallel


def make_feature_fn(model: Any, mesh: jax.sharding.Mesh,
                    method: str | None = 'encode') -> Callable:
  """A jitted, batch-sharded function (variables, uint8 images) -> features.

  Images are uint8 (B, S, S, 3), B divisible by the mesh size; the model runs
  in inference mode (BatchNorm running averages), so no collectives are
  needed. With `method='encode'` the result is float32 h (B, C); with
  `method=None` it is the model's dict {'h', 'z'} (float32).
  """
  def per_device(variables, images):
    x = images.astype(jnp.float32) / 255.0
    if method is None:
      out = model.apply(variables, x, train=False)
      return {'h': out['h'], 'z': out['z']}
    return model.apply(variables, x, train=False, method=method)

  return jax.jit(jax.shard_map(
      per_device, mesh=mesh, in_specs=(P(), P(parallel.AXIS)),
      out_specs=P(parallel.AXIS)))


def local_rows(feature_fn: Callable, variables: Any,
               batch: dict[str, np.ndarray],
               mesh: jax.sharding.Mesh) -> dict[str, np.ndarray]:
  """Features of one local eval batch, this process's unpadded rows only.

  Args:
    feature_fn: from `make_feature_fn`.
    variables: replicated encoder variables.
    batch: {'image': uint8 (b, S, S, 3), 'label': int32 (b,), 'mask': bool
      (b,)}, this process's part of the global batch.
    mesh: the mesh.

  Returns:
    {'h': float32 (n, C), 'label': int32 (n,)} (+ 'z' when the function
    gives it) for the n rows of `batch` whose mask is True, in order.
  """
  images = parallel.host_to_global(batch['image'], mesh)
  out = feature_fn(variables, images)
  if not isinstance(out, dict):
    out = {'h': out}
  mask = np.asarray(batch['mask'], bool)
  rows = {}
  for name, value in out.items():
    shards = sorted(value.addressable_shards, key=lambda s: s.index[0].start
                    or 0)
    local = np.concatenate([np.asarray(s.data) for s in shards])
    rows[name] = local[mask].astype(np.float32)
  rows['label'] = np.asarray(batch['label'], np.int32)[mask]
  return rows
