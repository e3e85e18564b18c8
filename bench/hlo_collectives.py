"""The collectives of a compiled XLA module: counted, sized and attributed.

Reads the optimised, partitioned per-device HLO text (`compiled.as_text()`)
and sums each all-gather / all-reduce / reduce-scatter / all-to-all /
collective-permute by the part of the SimCLR step that made it (from its
metadata op_name), with the bytes a ring moves per device for it. Used by
bench/scale_plan.py; tests/test_scale_plan.py checks the parsing.
"""

from __future__ import annotations

import math
import re
from typing import Any

# HLO element types -> bytes.
_ITEMSIZE = {'pred': 1, 's8': 1, 'u8': 1, 'bf16': 2, 'f16': 2, 's16': 2,
             'u16': 2, 'f32': 4, 's32': 4, 'u32': 4, 'f64': 8, 's64': 8,
             'u64': 8, 'c64': 8, 'c128': 16}
COLLECTIVES = ('all-gather', 'all-reduce', 'reduce-scatter', 'all-to-all',
               'collective-permute')
_INSTRUCTION = re.compile(
    r'^\s*(?:ROOT\s+)?%\S+\s*=\s*(?P<shape>.*?)\s'
    r'(?P<op>' + '|'.join(COLLECTIVES) + r')(?P<start>-start)?\((?P<rest>.*)$',
    re.M)
_ARRAY = re.compile(r'\b(' + '|'.join(_ITEMSIZE) + r')\[([\d,]*)\]')


def _shape_bytes(shape: str) -> tuple[int, dict[str, int]]:
  """Bytes of an HLO shape string (array or tuple) and bytes per dtype."""
  total, by_dtype = 0, {}
  for dtype, dims in _ARRAY.findall(shape):
    n = math.prod(int(d) for d in dims.split(',') if d) * _ITEMSIZE[dtype]
    total += n
    by_dtype[dtype] = by_dtype.get(dtype, 0) + n
  return total, by_dtype


def _top_level_elements(shape: str) -> list[str]:
  """'(a, (b, c))' -> ['a', '(b, c)']; an array shape -> [itself]."""
  shape = shape.strip()
  if not shape.startswith('('):
    return [shape]
  parts, depth, start = [], 0, 1
  for i, ch in enumerate(shape):
    if ch in '([{':
      depth += 1
    elif ch in ')]}':
      depth -= 1
    elif ch == ',' and depth == 1:
      parts.append(shape[start:i].strip())
      start = i + 1
  parts.append(shape[start:-1].strip())
  return parts


def collective_category(op: str, op_name: str) -> str:
  """Which part of the SimCLR step a collective belongs to, from its op_name."""
  if op == 'all-gather' and 'all_gather' in op_name:
    return 'z_all_gather'
  if not op_name:
    return 'unattributed'
  if 'transpose(' in op_name:
    return 'backward_gradients_and_bn'
  if 'SimCLRModel' in op_name:
    return 'bn_statistics_forward'
  return 'loss_and_metrics'


def count_collectives(hlo_text: str, num_devices: int) -> dict[str, Any]:
  """Counts the collectives of a compiled HLO module and the bytes they move.

  Args:
    hlo_text: `compiled.as_text()` (the optimised, partitioned per-device
      module).
    num_devices: devices in each replica group (the mesh size).

  Returns:
    {'by_category': {category: {'count', 'result_bytes', 'wire_bytes',
    'bytes_by_dtype', 'ops'}}, 'total': {...}}. result_bytes sums the
    result shapes (for an async `-start` whose result is an (operand,
    result) tuple, the last element); wire_bytes is what a ring moves per
    device: all-reduce 2 (P-1)/P S, all-gather (P-1)/P S (S its output),
    reduce-scatter (P-1) S (S its output), others S.
  """
  p = max(num_devices, 1)
  out: dict[str, Any] = {}
  for m in _INSTRUCTION.finditer(hlo_text):
    op, shape, rest = m.group('op'), m.group('shape'), m.group('rest')
    if m.group('start') and op != 'all-reduce':
      # (operands, results) of an async start: count the results only.
      shape = _top_level_elements(shape)[-1]
    size, by_dtype = _shape_bytes(shape)
    name = re.search(r'op_name="([^"]*)"', rest)
    category = collective_category(op, name.group(1) if name else '')
    if op == 'all-reduce':
      wire = 2 * (p - 1) / p * size
    elif op == 'all-gather':
      wire = (p - 1) / p * size
    elif op == 'reduce-scatter':
      wire = (p - 1) * size
    else:
      wire = size
    c = out.setdefault(category, {'count': 0, 'result_bytes': 0,
                                  'wire_bytes': 0.0, 'bytes_by_dtype': {},
                                  'ops': {}})
    c['count'] += 1
    c['result_bytes'] += size
    c['wire_bytes'] += wire
    c['ops'][op] = c['ops'].get(op, 0) + 1
    for k, v in by_dtype.items():
      c['bytes_by_dtype'][k] = c['bytes_by_dtype'].get(k, 0) + v
  total = {'count': sum(c['count'] for c in out.values()),
           'result_bytes': sum(c['result_bytes'] for c in out.values()),
           'wire_bytes': sum(c['wire_bytes'] for c in out.values())}
  return {'by_category': out, 'total': total}
