"""Fine-tuning with few labels (SimCLRv2): the whole network, a few labels.

    python main.py --config=configs/cifar10.py --workdir=FT_DIR \\
        --config.mode=finetune --config.init_from=PRETRAIN_DIR \\
        --config.finetune.label_fraction=0.1

SimCLRv2's recipe: the encoder (and projection-head layers 1..k, k =
`finetune.from_proj_layer`, SimCLRv2's `ft_proj_selector`) start from the
checkpoint, a zero-initialised linear classifier sits on top, and everything
trains with global BatchNorm, LARS at 0.005 x sqrt(B), no weight decay, on
random-resized crops and flips (no colour distortion), 60 epochs of the 1%
subset or 30 of the 10% subset; scored top-1/top-5 on the eval split.

The labelled subset is class-balanced and chosen by seed: within each class
the examples are ordered by a permutation drawn from (seed, class), and the
first round(fraction x class size) are taken (at least one), so the 1% subset
lies inside the 10% subset. Or `finetune.subset_file` lists example indices
of the labelled train split, one per line. The subset's images are held in
host memory (uint8, image_size): 10% of CIFAR-10 is 15 MB; for 10% of
ImageNet at 224 px (19 GB) use a machine with that much host memory.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import PartitionSpec as P

from simclr_jax import augment
from simclr_jax import checkpoint
from simclr_jax import config_lib
from simclr_jax import models
from simclr_jax import optim
from simclr_jax import parallel
from simclr_jax.evaluate import linear
from simclr_jax.evaluate import runs as runs_lib
from simclr_jax.models import heads
from simclr_jax.models import resnet

AXIS = parallel.AXIS


def balanced_subset(labels: np.ndarray, fraction: float, seed: int
                    ) -> np.ndarray:
  """Sorted indices of a class-balanced `fraction` of the labelled examples.

  Args:
    labels: int (N,) labels; negative labels (unlabelled) are never chosen.
    fraction: in (0, 1].
    seed: the run seed.

  Returns:
    int64 sorted indices: of each class c with n_c examples, the first
    max(1, round(fraction * n_c)) of a permutation drawn from (seed, c). For
    a smaller fraction the subset is a subset (nested).
  """
  if not 0 < fraction <= 1:
    raise ValueError(f'finetune.label_fraction must be in (0, 1], got '
                     f'{fraction}')
  labels = np.asarray(labels)
  chosen = []
  for c in np.unique(labels[labels >= 0]):
    members = np.flatnonzero(labels == c)
    order = np.random.default_rng([seed, int(c)]).permutation(len(members))
    take = max(1, int(round(fraction * len(members))))
    chosen.append(members[order[:take]])
  if not chosen:
    raise ValueError('fine-tuning needs labelled examples: none found')
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def read_subset_file(path: str, num_examples: int) -> np.ndarray:
  """Sorted unique example indices listed in `path` (one per line)."""
  with open(path) as f:
    lines = [l.strip() for l in f if l.strip() and not l.startswith('#')]
  try:
    idx = np.array(sorted({int(l) for l in lines}), np.int64)
  except ValueError as e:
    raise ValueError(f'finetune.subset_file {path!r}: every line must be an '
                     f'example index of the labelled train split ({e})') from e
  if len(idx) == 0 or idx[0] < 0 or idx[-1] >= num_examples:
    raise ValueError(f'finetune.subset_file {path!r}: indices must be in '
                     f'[0, {num_examples}), got {len(idx)} indices')
  return idx


class Classifier(nn.Module):
  """Encoder (+ k projection-head layers) + a linear classifier.

  The submodules are named as in `SimCLRModel` ('encoder',
  'projection_head'), so a pretraining checkpoint's variables load as they
  are; the classifier is 'head'.
  """
  model_config: Any
  proj_layers: int
  num_classes: int
  axis_name: str | None = None
  conv_gradients: str = 'xla'  # As `resnet.ResNet`'s.

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """float32 (N, H, W, 3) in [0, 1] -> float32 (N, num_classes) logits."""
    c = self.model_config
    dtype = models.DTYPES[c.dtype]
    h = resnet.ResNet(
        depth=c.depth, width_multiplier=c.width_multiplier,
        base_width=c.base_width, stem=c.stem, sk_ratio=float(c.sk_ratio),
        zero_init_residual=bool(c.zero_init_residual),
        bn_momentum=float(c.bn_momentum), bn_epsilon=float(c.bn_epsilon),
        dtype=dtype, axis_name=self.axis_name,
        conv_gradients=self.conv_gradients,
        name='encoder')(x, train=train)
    if self.proj_layers > 0:
      h = heads.ProjectionHead(
          num_layers=self.proj_layers, out_dim=c.proj_out_dim,
          bn_momentum=float(c.bn_momentum), bn_epsilon=float(c.bn_epsilon),
          dtype=dtype, axis_name=self.axis_name,
          hidden_only=self.proj_layers < c.num_proj_layers,
          name='projection_head')(h, train=train)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                    param_dtype=jnp.float32, name='head')(
                        h.astype(jnp.float32))


@flax.struct.dataclass
class FinetuneState:
  """step int32, params, batch_stats and the optimiser state (replicated)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def init_state(classifier: Classifier, tx: optax.GradientTransformation,
               pretrained: dict | None, image_size: int,
               mesh: jax.sharding.Mesh,
               init_key: jax.Array | None = None) -> FinetuneState:
  """A classifier's first state, replicated: step 0, optimiser state fresh.

  Args:
    classifier: the network.
    tx: its optimiser.
    pretrained: {'params', 'batch_stats'} of a pretraining run: the encoder
      and projection-head layers are taken from it and only the classifier
      'head' keeps its zero initialisation; None: every variable is freshly
      initialised (random init, the 'head' zero).
    image_size: side of the images (for shapes only).
    mesh: where to replicate the state.
    init_key: the initialiser's key (default key 0).
  """
  key = jax.random.key(0) if init_key is None else init_key

  def init():
    fresh = classifier.init(key, jnp.zeros((1, image_size, image_size, 3)),
                            train=False)

    def take(collection):
      out = dict(fresh.get(collection, {}))
      if pretrained is None:
        return out
      for name, tree in out.items():
        if name == 'head':
          continue
        source = pretrained[collection][name]
        out[name] = {k: source[k] for k in tree}
      return out

    params = take('params')
    return FinetuneState(jnp.zeros((), jnp.int32), params,
                         take('batch_stats'), tx.init(params))
  return jax.jit(init, out_shardings=parallel.replicated(mesh))()


def _trust_ratio_mask(params: Any) -> Any:
  """`optim.kernel_mask` less the classifier 'head': google's LARS leaves its
  supervised head ('head_supervised') out of the trust ratio."""
  mask = optim.kernel_mask(params)
  return {k: jax.tree.map(lambda _: False, v) if k == 'head' else v
          for k, v in mask.items()}


def create_optimizer(section: Any, total_steps: int, warmup_steps: int = 0
                     ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """SimCLRv2's LARS for the supervised steps (fine-tuning, distillation).

  Peak learning rate `section.base_learning_rate` x sqrt(section.batch_size),
  linear warm-up over `warmup_steps`, cosine decay to 0 at `total_steps`;
  classic momentum `section.momentum`. As google-research/simclr's
  `build_optimizer`: weight decay `section.weight_decay` on kernels (not on
  BatchNorm or biases; on the classifier's kernel too, where google adds it
  as an L2 loss), and the trust ratio on the kernels but the classifier's,
  which takes plain momentum steps (so a zero-initialised head learns at the
  learning rate, not at eeta x its own norm).
  """
  peak = float(section.base_learning_rate) * math.sqrt(section.batch_size)
  schedule = optim.create_schedule(peak, warmup_steps, total_steps)
  tx = optax.lars(learning_rate=schedule,
                  weight_decay=float(section.weight_decay),
                  weight_decay_mask=optim.kernel_mask, trust_coefficient=1e-3,
                  eps=0.0, trust_ratio_mask=_trust_ratio_mask,
                  momentum=float(section.momentum), nesterov=False)
  return tx, schedule


def _make_step(classifier: Classifier, tx: optax.GradientTransformation,
               spec: augment.AugmentSpec, mesh: jax.sharding.Mesh):
  """Jitted (state, images uint8 (B, H, W, 3), labels, key) -> (state, metrics)."""
  # 'auto' from the mesh's devices, not the host's.
  spec = dataclasses.replace(spec, strategy=augment.resolve_strategy(
      spec.strategy, parallel.platform(mesh)))

  def per_device(state, images, labels, key):
    n = images.shape[0]
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
        key, lax.axis_index(AXIS) * n + jnp.arange(n))
    x, _ = augment.two_views(keys, images, spec)

    def loss_fn(params):
      logits, mutated = classifier.apply(
          {'params': params, 'batch_stats': state.batch_stats}, x,
          train=True, mutable=['batch_stats'])
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      loss = lax.pmean(jnp.mean(ce), AXIS)
      return loss, (logits, mutated['batch_stats'])

    (loss, (logits, stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    accuracy = lax.pmean(jnp.mean(jnp.argmax(logits, -1) == labels), AXIS)
    return (FinetuneState(state.step + 1, params, stats, opt_state),
            {'loss': loss, 'accuracy': accuracy})

  return jax.jit(jax.shard_map(per_device, mesh=mesh,
                               in_specs=(P(), P(AXIS), P(AXIS), P()),
                               out_specs=(P(), P())), donate_argnums=(0,))


def _make_eval(classifier: Classifier, mesh: jax.sharding.Mesh):
  """Jitted (state, images, labels, mask) -> {'top1', 'top5', 'count'}."""
  def per_device(state, images, labels, mask):
    logits = classifier.apply(
        {'params': state.params, 'batch_stats': state.batch_stats},
        images.astype(jnp.float32) / 255.0, train=False)
    return linear.topk_counts(logits, labels, mask)
  return jax.jit(jax.shard_map(per_device, mesh=mesh,
                               in_specs=(P(), P(AXIS), P(AXIS), P(AXIS)),
                               out_specs=P()))


def labelled_subset(run: Any, config: Any, local: int
                     ) -> tuple[np.ndarray, np.ndarray, int]:
  """This process's subset images uint8 (n, S, S, 3) and labels, and the
  global subset size. Two passes over the labelled train split: labels,
  then the chosen images."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  p, n_proc = jax.process_index(), jax.process_count()
  labels = [b['label'][b['mask']] for b in
            run.source.eval_iterator('train', local)]
  local_labels = np.concatenate(labels).astype(np.int32)
  counts = run.source.counts('train', n_proc)
  if n_proc > 1:
    width = max(counts)
    padded = np.full(width, -1, np.int32)
    padded[:len(local_labels)] = local_labels
    every = np.asarray(multihost_utils.process_allgather(padded))
  else:
    every = local_labels[None]
  total = sum(counts)
  all_labels = np.full(total, -1, np.int32)
  for q in range(n_proc):
    all_labels[q::n_proc] = every[q][:counts[q]]
  section = config.finetune
  if section.subset_file:
    subset = read_subset_file(section.subset_file, total)
  else:
    subset = balanced_subset(all_labels, float(section.label_fraction),
                             int(config.seed))
  mine = set(int(i) for i in subset if i % n_proc == p)
  images, ys, row = [], [], 0
  for b in run.source.eval_iterator('train', local):
    for image, label, valid in zip(b['image'], b['label'], b['mask']):
      if not valid:
        continue
      if p + n_proc * row in mine:
        images.append(image)
        ys.append(label)
      row += 1
  s = int(config.image_size)
  images = np.stack(images) if images else np.zeros((0, s, s, 3), np.uint8)
  return images, np.asarray(ys, np.int32), len(subset)


class LabelledSubset:
  """The labelled subset in host memory and the batch of each step.

  `labelled_subset`'s images and labels of this process; step k's batch is
  a function of (config.seed, k): one seeded permutation of the subset per
  epoch (`data.order.EpochOrder`), so a resumed run takes the same batches.

  Attributes:
    num_labelled: examples of the subset over every process.
    steps_per_epoch: steps of one pass over it (the fewest of any process).
  """

  def __init__(self, run: Any, config: Any, global_batch: int, field: str):
    """Reads the subset; `field` names the batch size in errors."""
    from simclr_jax.data import order  # pylint: disable=g-import-not-at-top
    self.mesh = run.mesh
    local = run.local_batch(global_batch)
    with config_lib.user_errors():
      self.images, self.labels, self.num_labelled = labelled_subset(
          run, config, runs_lib.eval_local_batch(config, run.mesh))
    if self.num_labelled < global_batch:
      raise config_lib.ConfigError(
          f'{field}={global_batch} is larger than the labelled subset '
          f'({self.num_labelled} examples); lower it')
    self.steps_per_epoch = parallel.min_over_processes(
        max(len(self.labels) // local, 1))
    self.order = order.EpochOrder(int(config.seed), jax.process_index(),
                                  len(self.labels), local,
                                  self.steps_per_epoch)

  def batch(self, step: int) -> dict[str, jax.Array]:
    """Step `step`'s global batch: {'image': uint8 (B, S, S, 3), 'label':
    int32 (B,)}, sharded over the mesh."""
    idx = self.order.step_indices(step)
    return parallel.host_to_global(
        {'image': self.images[idx], 'label': self.labels[idx]}, self.mesh)


def finetune(config: Any, workdir: str) -> dict[str, Any]:
  """Fine-tunes `config.init_from`'s network on a labelled subset.

  Returns the final record {'finetune_top1', 'finetune_top5',
  'label_fraction', 'num_labelled', ...}, or one with 'preempted': True.
  """
  run = runs_lib.Run(config, workdir)
  try:
    if run.info.num_classes == 0:
      raise config_lib.ConfigError('fine-tuning needs labels: this data has '
                                   'none')
    _, pretrained, init_step = runs_lib.load_encoder(config, run.mesh)
    section = config.finetune
    gbs = int(section.batch_size)
    subset = LabelledSubset(run, config, gbs, 'finetune.batch_size')
    num_labelled = subset.num_labelled
    total = max(int(math.ceil(float(section.epochs) * subset.steps_per_epoch)),
                1)
    tx, schedule = create_optimizer(section, total)
    classifier = Classifier(
        config.model, int(section.from_proj_layer), run.info.num_classes,
        axis_name=AXIS,
        conv_gradients=parallel.conv_gradients(config, run.mesh))
    state = init_state(classifier, tx, pretrained, int(config.image_size),
                       run.mesh)
    manager, state = checkpoint.resume_or_start(
        config, workdir, state, keep=2,
        save_every_steps=int(section.checkpoint_every_steps),
        total_steps=total)
    start = int(state.step)
    if run.is_chief:
      print(f'simclr_jax: fine-tuning on {num_labelled} labelled examples '
            f'({section.subset_file or f"{section.label_fraction:g} of the labels"}), '
            f'{total} steps of {gbs}', flush=True)
    step_fn = _make_step(classifier, tx, linear.crop_flip_spec(config),
                         run.mesh)
    key = parallel.replicate(jax.random.key(config.seed), run.mesh)
    writer, progress = run.reporters(total, start, gbs, 'fine-tuning')
    t0 = time.perf_counter()

    def one_step(state, step):
      batch = subset.batch(step)
      return step_fn(state, batch['image'], batch['label'],
                     jax.random.fold_in(key, step))

    state, stopped = runs_lib.run_steps(
        config, state, manager, one_step, total=total, schedule=schedule,
        writer=writer, progress=progress,
        checkpoint_every=int(section.checkpoint_every_steps))
    if stopped:
      return stopped
    eval_fn = _make_eval(classifier, run.mesh)
    totals = runs_lib.count_eval_split(
        run, lambda *batch: eval_fn(state, *batch))
    count = max(totals['count'], 1)
    record = writer.write(
        total, {'finetune_top1': totals['top1'] / count,
                'finetune_top5': totals['top5'] / count},
        eval_examples=totals['count'], num_labelled=num_labelled,
        label_fraction=float(section.label_fraction),
        init_from=config.init_from, init_step=init_step,
        seconds=round(time.perf_counter() - t0, 1), final=True)
    writer.close()
    if run.is_chief:
      print(f'simclr_jax: fine-tuning: top-1 {record["finetune_top1"]:.4f}, '
            f'top-5 {record["finetune_top5"]:.4f} on {totals["count"]} '
            'examples', flush=True)
    return record
  finally:
    run.close()

