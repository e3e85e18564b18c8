"""Distillation (SimCLRv2's third step): a fine-tuned teacher teaches a student.

    python main.py --config=configs/cifar10.py --workdir=DISTILL_DIR \\
        --config.mode=distill --config.init_from=FINETUNE_DIR \\
        --config.distill.student_init=PRETRAIN_DIR

The teacher is the classifier of `config.init_from` (a fine-tuning workdir of
ours, or an imported google fine-tuned model: its supervised head; see
`distill.teacher_proj_layer`), fixed, with BatchNorm in inference mode. The
student is a `finetune.Classifier` of `config.model` (any depth and width:
the teacher's own architecture for self-distillation, or a smaller one),
started from the encoder of a pretraining workdir (`distill.student_init`)
or from random initialisation ('scratch'), its classifier zero-initialised.

Every step takes a batch of the unlabelled train split (the pretraining
stream: every image, labelled or not), makes one random-resized crop and
flip of each image on the device (fine-tuning's augmentation), and in the
same jitted `shard_map` computes the teacher's logits of that view and the
student's, and minimises the paper's loss (Chen et al. 2020b, eq. 2-3):

    L = (1 - w) * mean_x [ -sum_y P_T(y|x; tau) log P_S(y|x; tau) ]
        + w * mean_(x, y) in labelled subset [ -log P_S(y|x) ]

with P = softmax(logits / tau), tau = `distill.temperature` and w =
`distill.label_weight` (0: pure distillation; the paper writes the weight
alpha on the distillation term, alpha = 1 - w). The labelled subset is
fine-tuning's (`finetune.label_fraction` or `finetune.subset_file`, same
seed). The optimiser is SimCLRv2's LARS with momentum at base x sqrt(B),
warm-up and cosine decay, weight decay on kernels. The student is scored
top-1/top-5 on the eval split, beside the teacher and their agreement (the
share of eval images where their top classes are the same).

Like every mode: a lock, checkpoints, resuming after kill -9 or SIGTERM (the
batches and keys of step k are functions of (seed, k)), progress lines and
`metrics.jsonl`; a teacher of another class count than the data's, a missing
checkpoint or a student workdir of another model is one line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax import lax
from jax.sharding import PartitionSpec as P

from simclr_jax import augment
from simclr_jax import checkpoint
from simclr_jax import config_lib
from simclr_jax import losses
from simclr_jax import parallel
from simclr_jax import train
from simclr_jax.evaluate import finetune as finetune_lib
from simclr_jax.evaluate import linear
from simclr_jax.evaluate import runs as runs_lib

AXIS = parallel.AXIS
Classifier = finetune_lib.Classifier
State = finetune_lib.FinetuneState


@dataclasses.dataclass(frozen=True)
class Teacher:
  """The fixed teacher.

  Attributes:
    classifier: its network (no mesh axis: it only runs in inference mode).
    variables: {'params', 'batch_stats'} in `classifier`'s names, replicated.
    num_classes: its classes.
    step: the checkpoint step it was read from.
  """
  classifier: Classifier
  variables: dict
  num_classes: int
  step: int


def _teacher_model(source: str, dtype: str) -> ml_collections.ConfigDict:
  """The `model` section of `source/config.json`, computing in `dtype`."""
  path = os.path.join(source, 'config.json')
  try:
    with open(path) as f:
      model = ml_collections.ConfigDict(json.load(f)['model'])
  except (OSError, ValueError, KeyError) as e:
    raise config_lib.ConfigError(
        f'init_from {source!r}: cannot read the teacher\'s model from '
        f'{path} ({type(e).__name__}: {e}); distil from a fine-tuning workdir '
        'or one written by simclr_jax.import_tf') from e
  model.dtype = dtype  # This run's hardware decides, not the teacher's run.
  return model


def _head_layout(params: dict, source: str, wanted_layer: int
                 ) -> tuple[str, int]:
  """(name of the teacher's classifier in its checkpoint, the projection-head
  layers it reads), from the checkpoint's parameter names."""
  if 'head' in params:  # A fine-tuning workdir: the layers it kept.
    layers = sum(1 for k in params.get('projection_head', {})
                 if k.startswith('dense_'))
    if wanted_layer not in (-1, layers):
      raise config_lib.ConfigError(
          f'distill.teacher_proj_layer={wanted_layer}, but the fine-tuned '
          f'classifier of {source!r} reads projection-head layer {layers}; '
          'leave it at -1')
    return 'head', layers
  if 'probe' in params:  # google's supervised head (imported), or a probe.
    return 'probe', max(wanted_layer, 0)
  raise config_lib.ConfigError(
      f'init_from {source!r} holds no classifier to distil: use a fine-tuning '
      'workdir (--config.mode=finetune) or an imported fine-tuned model')


def load_teacher(config: Any, mesh: jax.sharding.Mesh) -> Teacher:
  """The classifier of `config.init_from` (at `config.init_step`), replicated.

  Its architecture is that of `init_from/config.json`; the checkpoint's
  arrays must be exactly those of that classifier.

  Raises:
    config_lib.ConfigError: no such checkpoint, no classifier in it, or
      arrays that do not fit (one line).
  """
  source = config.init_from
  step = None if config.init_step < 0 else int(config.init_step)
  variables, step = runs_lib.read_checkpoint(source, mesh, step)
  name, layers = _head_layout(variables['params'], source,
                              int(config.distill.teacher_proj_layer))
  num_classes = int(variables['params'][name]['kernel'].shape[-1])
  model = _teacher_model(source, config.model.dtype)
  if layers > model.num_proj_layers:
    raise config_lib.ConfigError(
        f'distill.teacher_proj_layer={layers} is beyond the '
        f'{model.num_proj_layers} projection-head layers of {source!r}')
  classifier = Classifier(model, layers, num_classes)
  size = int(config.image_size)
  wanted = jax.eval_shape(lambda: classifier.init(
      jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
  picked = {}
  for collection in ('params', 'batch_stats'):
    have = variables.get(collection, {})
    picked[collection] = {
        module: {k: v for k, v in have.get(
            name if module == 'head' else module, {}).items() if k in tree}
        for module, tree in wanted.get(collection, {}).items()}
  runs_lib.check_shapes(picked, wanted, source, 'its config.json',
                        'its config.json does not describe its checkpoint')
  return Teacher(classifier, picked, num_classes, step)


def make_step(student: Classifier, teacher: Classifier,
              tx: optax.GradientTransformation, spec: augment.AugmentSpec,
              mesh: jax.sharding.Mesh, *, temperature: float,
              label_weight: float) -> Callable:
  """The jitted distillation step.

  (state, teacher_variables, images, labelled, labels, key) -> (state,
  metrics), where state is the student's `FinetuneState` (replicated,
  donated); teacher_variables {'params', 'batch_stats'} (replicated); images
  uint8 unlabelled (B, H, W, 3), or host-cropped (B, 2, S, S, 3) (the first
  crop is used); labelled uint8 (B, S, S, 3) and labels int32 (B,) of the
  labelled subset, or None when label_weight is 0; key the step's key. Each
  device augments its rows (keys from the example's global index, so the
  step does not depend on the device count), runs the teacher in inference
  mode and the student with global BatchNorm on the same views; the loss is
  the global mean, so `jax.grad` under shard_map is the global gradient.

  Metrics (global): 'loss', 'distill_loss', 'agreement' (share of the
  unlabelled batch where student and teacher pick the same class), and with
  labels 'label_loss', 'label_accuracy'.
  """
  spec = dataclasses.replace(spec, strategy=augment.resolve_strategy(
      spec.strategy, parallel.platform(mesh)))
  w = float(label_weight)

  def view(key, images):
    """float32 (n, S, S, 3): one crop-and-flip view of each image."""
    return augment.two_views(train.example_keys(key, images.shape[0]),
                             images, spec)[0]

  def per_device(state, teacher_variables, images, labelled, labels, key):
    chex.assert_rank(images, {4, 5})
    chex.assert_type(images, jnp.uint8)
    if w > 0:
      chex.assert_rank([labelled, labels], [4, 1])
      chex.assert_equal_shape_prefix([labelled, labels], 1)
    x = view(jax.random.fold_in(key, 0), images)
    n = x.shape[0]
    teacher_logits = lax.stop_gradient(
        teacher.apply(teacher_variables, x, train=False))
    if w > 0:
      x = jnp.concatenate([x, view(jax.random.fold_in(key, 1), labelled)])

    def loss_fn(params):
      # Per-device float32 copies: the gradient's sum over devices is a
      # float32 all-reduce whatever model.dtype (as train.make_train_step).
      params = lax.pcast(params, AXIS, to='varying')
      logits, mutated = student.apply(
          {'params': params, 'batch_stats': state.batch_stats}, x,
          train=True, mutable=['batch_stats'])
      distill = losses.distillation_loss(logits[:n], teacher_logits,
                                         temperature)
      metrics = {'distill_loss': lax.pmean(jnp.mean(distill), AXIS)}
      loss = metrics['distill_loss']
      if w > 0:
        ce = optax.softmax_cross_entropy_with_integer_labels(logits[n:],
                                                             labels)
        hit = jnp.argmax(logits[n:], -1) == labels
        metrics['label_loss'] = lax.pmean(jnp.mean(ce), AXIS)
        metrics['label_accuracy'] = lax.pmean(jnp.mean(hit), AXIS)
        loss = (1 - w) * loss + w * metrics['label_loss']
      metrics['loss'] = loss
      return loss, (metrics, logits[:n], mutated['batch_stats'])

    grads, (metrics, logits, stats) = jax.grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    same = jnp.argmax(logits, -1) == jnp.argmax(teacher_logits, -1)
    metrics['agreement'] = lax.pmean(jnp.mean(same), AXIS)
    return State(state.step + 1, params, stats, opt_state), metrics

  labelled_spec = P(AXIS) if w > 0 else P()
  step = jax.shard_map(
      per_device, mesh=mesh,
      in_specs=(P(), P(), P(AXIS), labelled_spec, labelled_spec, P()),
      out_specs=(P(), P()))
  return jax.jit(step, donate_argnums=(0,))


def make_eval(student: Classifier, teacher: Classifier,
              mesh: jax.sharding.Mesh) -> Callable:
  """Jitted (state, teacher_variables, images, labels, mask) -> counts.

  On centre-cropped uint8 images (B, S, S, 3): the student's 'top1', 'top5'
  and 'count' (labelled rows), the teacher's 'teacher_top1',
  'teacher_top5', and 'agree' of the 'rows' (every real row) where their
  top classes are the same; int32, summed over the mesh.
  """
  def per_device(state, teacher_variables, images, labels, mask):
    x = images.astype(jnp.float32) / 255.0
    s = student.apply({'params': state.params,
                       'batch_stats': state.batch_stats}, x, train=False)
    t = teacher.apply(teacher_variables, x, train=False)
    out = linear.topk_counts(s, labels, mask)
    ours = linear.topk_counts(t, labels, mask)
    out['teacher_top1'], out['teacher_top5'] = ours['top1'], ours['top5']
    same = (jnp.argmax(s, -1) == jnp.argmax(t, -1)) & mask
    out['agree'] = lax.psum(jnp.sum(same), AXIS)
    out['rows'] = lax.psum(jnp.sum(mask), AXIS)
    return out

  return jax.jit(jax.shard_map(
      per_device, mesh=mesh,
      in_specs=(P(), P(), P(AXIS), P(AXIS), P(AXIS)), out_specs=P()))


def _scores(totals: dict[str, int]) -> dict[str, float]:
  """The final record's scores from `make_eval`'s summed counts."""
  out = {'final_agreement': totals['agree'] / max(totals['rows'], 1)}
  if totals['count']:
    for k in ('top1', 'top5'):
      out[f'final_distill_{k}'] = totals[k] / totals['count']
      out[f'final_teacher_{k}'] = totals[f'teacher_{k}'] / totals['count']
  return out


def _check_data(config: Any, run: Any, teacher: Teacher) -> None:
  """The data fits the teacher (classes) and the batch (size); one line."""
  classes = run.info.num_classes
  if classes and teacher.num_classes != classes:
    raise config_lib.ConfigError(
        f'the teacher in {config.init_from!r} has {teacher.num_classes} '
        f'classes, the data ({config.data.source} {config.data.name}) has '
        f'{classes}: distil on the data it was fine-tuned for')
  if config.distill.label_weight > 0 and not classes:
    raise config_lib.ConfigError('distill.label_weight > 0 needs labels: '
                                 'this data has none')
  gbs = int(config.distill.batch_size)
  if run.info.num_train_examples < gbs:
    raise config_lib.ConfigError(
        f'distill.batch_size={gbs} is larger than the training data '
        f'({run.info.num_train_examples} examples)')


def distill(config: Any, workdir: str) -> dict[str, Any]:
  """Distils `config.init_from`'s classifier into a student of config.model.

  Returns the final record (also the last line of `workdir/metrics.jsonl`):
  {'final_distill_top1', 'final_distill_top5' (the student on the eval
  split), 'final_teacher_top1', 'final_teacher_top5', 'final_agreement',
  'eval_examples', ...}, or a record with 'preempted': True.
  """
  run = runs_lib.Run(config, workdir)
  try:
    section = config.distill
    teacher = load_teacher(config, run.mesh)
    _check_data(config, run, teacher)
    pretrained, student_step = None, None
    if section.student_init != 'scratch':
      _, pretrained, student_step = runs_lib.load_encoder(
          config, run.mesh, source=section.student_init)
    gbs = int(section.batch_size)
    local = run.local_batch(gbs)
    spe = max(run.info.num_train_examples // gbs, 1)
    total = max(int(math.ceil(float(section.epochs) * spe)), 1)
    tx, schedule = finetune_lib.create_optimizer(
        section, total, int(round(float(section.warmup_epochs) * spe)))
    student = Classifier(
        config.model, int(section.from_proj_layer), teacher.num_classes,
        axis_name=AXIS,
        conv_gradients=parallel.conv_gradients(config, run.mesh))
    state = finetune_lib.init_state(
        student, tx, pretrained, int(config.image_size), run.mesh,
        init_key=jax.random.key(config.seed))
    manager, state = checkpoint.resume_or_start(
        config, workdir, state, keep=2,
        save_every_steps=int(section.checkpoint_every_steps),
        total_steps=total)
    start = int(state.step)
    weight = float(section.label_weight)
    subset = (finetune_lib.LabelledSubset(run, config, gbs,
                                          'distill.batch_size')
              if weight > 0 else None)
    if run.is_chief:
      print(f'simclr_jax: distilling {config.init_from} (step {teacher.step},'
            f' {teacher.num_classes} classes) into a student from '
            f'{section.student_init} on {run.info.num_train_examples} images, '
            f'{total} steps of {gbs}'
            + (f', label weight {weight:g} on {subset.num_labelled} labelled'
               if subset else ''), flush=True)
    step_fn = make_step(student, teacher.classifier, tx,
                        linear.crop_flip_spec(config), run.mesh,
                        temperature=float(section.temperature),
                        label_weight=weight)
    host = run.source.train_iterator(local, start)
    key = parallel.replicate(jax.random.key(config.seed), run.mesh)
    writer, progress = run.reporters(total, start, gbs, 'distillation')
    t0 = time.perf_counter()

    def one_step(state, step):
      batch = parallel.host_to_global(next(host), run.mesh)
      extra = subset.batch(step) if subset else {'image': None, 'label': None}
      return step_fn(state, teacher.variables, batch['image'], extra['image'],
                     extra['label'], jax.random.fold_in(key, step))

    state, stopped = runs_lib.run_steps(
        config, state, manager, one_step, total=total, schedule=schedule,
        writer=writer, progress=progress,
        checkpoint_every=int(section.checkpoint_every_steps))
    if stopped:
      return stopped
    eval_fn = make_eval(student, teacher.classifier, run.mesh)
    totals = runs_lib.count_eval_split(
        run, lambda *batch: eval_fn(state, teacher.variables, *batch))
    record = writer.write(
        total, _scores(totals), eval_examples=totals['count'],
        temperature=float(section.temperature), label_weight=weight,
        init_from=config.init_from, init_step=teacher.step,
        student_init=section.student_init, student_init_step=student_step,
        seconds=round(time.perf_counter() - t0, 1), final=True)
    writer.close()
    if run.is_chief:
      print('simclr_jax: distillation: ' + ', '.join(
          f'{k} {v:.4f}' for k, v in _scores(totals).items())
            + f' on {totals["rows"]} examples', flush=True)
    return record
  finally:
    run.close()
