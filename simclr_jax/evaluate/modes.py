"""The modes of `main.py`: linear evaluation, fine-tuning, export, distillation.

    python main.py --config=configs/cifar10.py --workdir=EVAL_DIR \\
        --config.mode=linear_eval --config.init_from=PRETRAIN_DIR

Each mode reads the encoder from a checkpoint of another workdir
(`config.init_from`; `config.init_step`, -1 for the latest), works in its own
`--workdir`, and behaves like pretraining there: a lock against a second run,
every config kept, checkpoints, resuming after kill -9 or SIGTERM, progress
and `metrics.jsonl`. A checkpoint of another model (other `config.model`) is
refused in one line.

`distill` (SimCLRv2's third step) reads a fine-tuned teacher instead
(evaluate/distill.py). The top of the imports: modes -> train, finetune,
distill -> probe, runs -> the building blocks (tests/test_layout.py keeps
them one way).
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import numpy as np

from simclr_jax import config_lib
from simclr_jax import reporting
from simclr_jax import train
from simclr_jax import workdir as workdir_lib
from simclr_jax.evaluate import distill as distill_lib
from simclr_jax.evaluate import features as features_lib
from simclr_jax.evaluate import finetune as finetune_lib
from simclr_jax.evaluate import probe
from simclr_jax.evaluate import runs as runs_lib

MODES = config_lib.MODES


# ------------------------------------------------------------------ export


def _write_npy(path: str, array: np.ndarray) -> None:
  tmp = f'{path}.tmp.{os.getpid()}.npy'
  np.save(tmp, array)
  os.replace(tmp, path)


def export(config: Any, workdir: str) -> dict[str, Any]:
  """Writes `h` (and `z` with export.include_z) of every image of the splits.

  Files in `workdir/export/` (one set per process, suffix `.pN` when there
  are several): `{split}_h.npy` float32 (N, C), `{split}_z.npy`,
  `{split}_labels.npy` int32 (N,), `{split}_index.npy` int64 (N,) (the
  example's position in the split's order: a folder's sorted file list
  after the holdout, a TFDS split's stored order, records that fail to
  decode skipped), and for folders
  `{split}_paths.txt` (the file of each row, one per line). Files that cannot
  be decoded are left out of every array and of the paths (counted and
  listed like training's). Each file is written atomically; a split already
  exported is skipped, so a killed export resumes.
  """
  run = runs_lib.Run(config, workdir)
  try:
    model, variables, step = runs_lib.load_encoder(config, run.mesh)
    splits = (('train', 'eval') if config.export.split == 'both'
              else (config.export.split,))
    out_dir = os.path.join(workdir, 'export')
    os.makedirs(out_dir, exist_ok=True)
    suffix = (f'.p{jax.process_index()}' if jax.process_count() > 1 else '')
    method = 'encode' if not config.export.include_z else None
    fn = features_lib.make_feature_fn(model, run.mesh, method=method)
    batch = runs_lib.eval_batch(config, run.mesh) // jax.process_count()
    counts = {}
    if run.is_chief:
      workdir_lib.record_config(workdir, config, 0)
    for split in splits:
      h_path = os.path.join(out_dir, f'{split}_h{suffix}.npy')
      if os.path.exists(h_path):
        counts[split] = len(features_lib.RowFile(h_path))
        continue
      n_proc, p = jax.process_count(), jax.process_index()
      rows = run.source.counts(split, n_proc)[p]
      dim = runs_lib.feature_dim(config)
      # `rows` is an upper bound: images that fail to decode are left out.
      writers = {'labels': features_lib.RowWriter(
          os.path.join(out_dir, f'{split}_labels{suffix}.npy'), (rows,),
          np.int32, fewer_ok=True)}
      if config.export.include_z:
        writers['z'] = features_lib.RowWriter(
            os.path.join(out_dir, f'{split}_z{suffix}.npy'),
            (rows, int(config.model.proj_out_dim)
             if config.model.num_proj_layers else dim), np.float32,
            fewer_ok=True)
      writers['h'] = features_lib.RowWriter(h_path, (rows, dim), np.float32,
                                            fewer_ok=True)
      progress = reporting.Progress(
          -(-rows // batch), enabled=run.is_chief,
          label=f'export: {split} split, batch')
      for i, b in enumerate(run.source.eval_iterator(split, batch)):
        out = features_lib.local_rows(fn, variables, b, run.mesh)
        out['labels'] = out.pop('label')
        for name, writer in writers.items():
          writer.append(out[name])
        progress.update(i + 1)
      progress.close()
      written = writers['h'].written
      kept_rows = getattr(run.source, 'kept_rows', None)
      if kept_rows is not None:  # Files: positions and paths of the rows.
        index, paths = kept_rows(split, p, n_proc)
        if len(index) != written:
          raise RuntimeError(f'export: {written} rows of {split!r} written, '
                             f'{len(index)} files decoded')
        text = ''.join(f'{x}\n' for x in paths)
        tmp = os.path.join(out_dir, f'.{split}_paths.{os.getpid()}')
        with open(tmp, 'w') as f:
          f.write(text)
        os.replace(tmp, os.path.join(out_dir, f'{split}_paths{suffix}.txt'))
      else:  # TFDS: the positions of the records kept, in the split.
        kept_index = getattr(run.source, 'kept_index', None)
        index = (kept_index(split, p, n_proc) if kept_index is not None
                 else p + n_proc * np.arange(written, dtype=np.int64))
        if len(index) != written:
          raise RuntimeError(f'export: {written} rows of {split!r} written, '
                             f'{len(index)} records decoded')
      _write_npy(os.path.join(out_dir, f'{split}_index{suffix}.npy'), index)
      for name in [n for n in writers if n != 'h'] + ['h']:
        writers[name].close()  # h last: its presence marks the split done.
      counts[split] = written
    writer = reporting.MetricsWriter(workdir)
    record = writer.write(step, {}, mode='export', init_from=config.init_from,
                          exported=counts, final=True)
    writer.close()
    if run.is_chief:
      print(f'simclr_jax: exported {", ".join(f"{n} {s}" for s, n in counts.items())}'
            f' examples to {out_dir}', flush=True)
    return record
  finally:
    run.close()


# ------------------------------------------------------------ linear eval


def linear_eval(config: Any, workdir: str) -> dict[str, Any]:
  """Linear evaluation of `config.init_from`'s encoder (see module `linear`).

  Returns the final record (also the last line of `workdir/metrics.jsonl`):
  {'step': the last step trained, 'linear_eval_top1', 'linear_eval_top5',
  'eval_examples', 'epochs', ...}, or a record with 'preempted': True.
  """
  run = runs_lib.Run(config, workdir)
  try:
    model, variables, step = runs_lib.load_encoder(config, run.mesh)
    t0 = time.perf_counter()
    result = probe.train_linear_head(
        run, model, variables, section=config.linear_eval, workdir=workdir,
        features_folder=os.path.join(workdir, 'features'))
    writer = reporting.MetricsWriter(workdir)
    if result.get('preempted'):
      if run.is_chief:
        print('simclr_jax: stopped by a signal; saved. Run the same command '
              'to resume.', flush=True)
      return writer.write(0, {}, preempted=True)
    record = writer.write(
        result['steps'],
        {'linear_eval_top1': result['top1'],
         'linear_eval_top5': result['top5']},
        eval_examples=result['count'], epochs=float(config.linear_eval.epochs),
        init_from=config.init_from,
        init_step=step, seconds=round(time.perf_counter() - t0, 1),
        final=True)
    writer.close()
    if run.is_chief:
      print(f'simclr_jax: linear evaluation: top-1 {result["top1"]:.4f}, '
            f'top-5 {result["top5"]:.4f} on {result["count"]} examples',
            flush=True)
    return record
  finally:
    run.close()


def run_mode(config: Any, workdir: str) -> dict[str, Any]:
  """Runs `config.mode` (one of MODES)."""
  mode = config.mode
  if mode == 'pretrain':
    return train.train_and_evaluate(config, workdir)
  if mode == 'linear_eval':
    return linear_eval(config, workdir)
  if mode == 'export':
    return export(config, workdir)
  if mode == 'finetune':
    return finetune_lib.finetune(config, workdir)
  if mode == 'distill':
    return distill_lib.distill(config, workdir)
  raise config_lib.ConfigError(f'mode must be one of {MODES}, got {mode!r}')

