"""curves.png: every metric of a run's `metrics.jsonl` against the step,
final scores as horizontal lines."""

from __future__ import annotations

import math
from typing import Any, Sequence

# (key, panel title) of the metrics with a panel of their own, in order.
_CURVES = (
    ('loss', 'loss'),
    ('contrastive_accuracy', 'contrastive accuracy (positive ranked first)'),
    ('learning_rate', 'learning rate'),
    ('contrastive_entropy', 'contrastive entropy'),
    ('probe_loss', 'online probe loss'),
    ('grad_norm', 'gradient norm'),
)
# Classification accuracies, drawn together in one panel.
_ACCURACIES = (
    ('probe_accuracy', 'online probe (train batches)'),
    ('knn_accuracy', 'kNN monitor (eval split)'),
    ('accuracy', 'head (train batches)'),
)
# 'nt_xent' is half of the pretraining 'loss' (its own panel would repeat it).
_SKIPPED = ('step', 'images_per_sec', 'final', 'preempted', 'train_seconds',
            'seconds', 'eval_examples', 'init_step', 'nt_xent')


def _final_scores(records: Sequence[dict]) -> dict[str, float]:
  out = {}
  for r in records:
    if r.get('final'):
      out.update({k: float(v) for k, v in r.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)
                  and (k.endswith('accuracy') or 'top1' in k
                       or 'accuracy_' in k)})
  return out


def curves_figure(records: Sequence[dict], title: str = '',
                  mode: str = 'pretrain') -> Any | None:
  """A Figure of every logged metric against the step; None when nothing
  was logged. Final scores (final records) are dashed lines in the
  accuracy panel."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  steps = [r for r in records if 'step' in r and not r.get('final')
           and not r.get('preempted')]
  keys = []
  for r in steps:
    for k, v in r.items():
      if (k not in keys and k not in _SKIPPED and isinstance(v, (int, float))
          and not isinstance(v, bool)):
        keys.append(k)
  finals = _final_scores(records)
  acc_keys = [k for k, _ in _ACCURACIES if k in keys]
  own = [k for k, _ in _CURVES if k in keys]
  own += [k for k in keys if k not in own and k not in acc_keys]
  titles = dict(_CURVES)
  if mode == 'pretrain':
    titles['loss'] = "contrastive loss (google's: 2 x NT-Xent)"
  elif mode in ('linear_eval', 'finetune'):
    titles['loss'] = 'cross-entropy loss (train batches)'
  panels = own[:3] + (['accuracy'] if acc_keys or finals else []) + own[3:]
  if not panels or not steps:
    return None
  ncols = min(3, len(panels))
  nrows = math.ceil(len(panels) / ncols)
  fig = Figure(figsize=(4.6 * ncols, 3.2 * nrows), layout='constrained')
  axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
  for ax, name in zip(axes, panels):
    if name == 'accuracy':
      for k, label in _ACCURACIES:
        if k in acc_keys:
          xs = [r['step'] for r in steps if k in r]
          ax.plot(xs, [r[k] for r in steps if k in r],
                  marker='o' if len(xs) < 12 else None, ms=3, label=label)
      for i, (k, v) in enumerate(sorted(finals.items())):
        ax.axhline(v, ls='--' if 'random_init' not in k else ':', lw=1,
                   color=f'C{3 + i % 7}', label=f'{k} = {v:.3f}')
      ax.set_title('classification accuracy')
      ax.set_ylim(0, 1.02)
      ax.legend(fontsize=7, loc='lower right')
    else:
      xs = [r['step'] for r in steps if name in r]
      ax.plot(xs, [r[name] for r in steps if name in r])
      ax.set_title(titles.get(name, name.replace('_', ' ')))
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
  for ax in axes[len(panels):]:
    ax.set_axis_off()
  if title:
    fig.suptitle(title)
  return fig


def summary(records: Sequence[dict]) -> str:
  """'final: kNN 0.952 (random init 0.312), probe ...' of a run's records
  ('' when it has no final scores)."""
  finals = _final_scores(records)
  parts = []
  for name, key in (('kNN', 'final_knn_accuracy'),
                    ('probe', 'final_probe_accuracy')):
    if key in finals:
      text = f'{name} {finals[key]:.3f}'
      if key + '_random_init' in finals:
        text += f' (random init {finals[key + "_random_init"]:.3f})'
      parts.append(text)
  for key in ('linear_eval_top1', 'finetune_top1'):
    if key in finals:
      parts.append(f'{key} {finals[key]:.3f}')
  return ('final: ' + ', '.join(parts)) if parts else ''
