"""Accelerator arithmetic shared by the benches: peak rates, MFU, XLA's analyses.

Functions of plain values or of a compiled step (JAX is imported only by
`matmul_tflops`): `bench/train_bench.py` applies them to a
compiled step, `bench/gpu_check.py` to train_bench's JSON, and
`tests/test_gpu_check.py` checks them on any CPU.
"""

import re
import time
from typing import Any

# Peak dense TFLOP/s of ONE device: (bfloat16, float32 as TF32 on NVIDIA
# GPUs; None where unknown). NVIDIA's datasheet figures WITHOUT sparsity
# (the datasheets' headline numbers are often the 2:4-sparse ones, twice
# these); Google's per-chip figures for TPUs. Matched against jax's
# `device.device_kind` (for a GPU the CUDA device name, e.g. 'NVIDIA H100
# 80GB HBM3') in order, case-insensitively: the first substring that occurs
# wins, so the longer names come before the names they contain ('H100 PCIe'
# before 'H100', 'GH200' before 'H200', 'L40S' and 'L40' before 'L4').
PEAK_TFLOPS = (
    ('GH200', (989.0, 494.7)),
    ('H200 NVL', (835.0, 418.0)),
    ('H200', (989.0, 494.7)),        # SXM.
    ('H100 PCIe', (756.0, 378.0)),
    ('H100 NVL', (835.0, 418.0)),
    ('H100', (989.0, 494.7)),        # SXM, e.g. 'NVIDIA H100 80GB HBM3'.
    ('A100', (312.0, 156.0)),        # SXM and PCIe.
    ('L40S', (362.0, 183.0)),
    ('L40', (181.0, 90.5)),
    ('L4', (121.0, 60.0)),
    ('A10G', (None, None)),        # Not the A10's rates.
    ('A10', (125.0, 62.5)),
    ('TPU v6 lite', (918.0, None)),
    ('TPU v5 lite', (197.0, None)),
    ('TPU v4', (275.0, None)),
)
PEAK_SOURCE = ("the vendor's peak dense rate (NVIDIA: no sparsity) of one "
               'device for the compute dtype (bfloat16; TF32 for float32)')


def peak_entry(device_kind: str) -> tuple[str, tuple] | None:
  """The (name, (bf16, tf32)) row of PEAK_TFLOPS that `device_kind` matches."""
  for name, rates in PEAK_TFLOPS:
    if name.lower() in device_kind.lower():
      return name, rates
  return None


def peak_tflops(device_kind: str, dtype: str = 'bfloat16') -> float | None:
  """Built-in peak dense TFLOP/s of one device of `device_kind`, or None."""
  entry = peak_entry(device_kind)
  if entry is None:
    return None
  bf16, tf32 = entry[1]
  return bf16 if dtype == 'bfloat16' else tf32


def mfu(flops_per_step: float | None, step_seconds: float,
        peak_tflops_per_device: float | None, num_devices: int = 1
        ) -> float | None:
  """Model FLOPs utilisation: the step's FLOP rate over the devices' peak.

  mfu = flops_per_step / step_seconds / (peak_tflops_per_device * 1e12 *
  num_devices), where flops_per_step counts every device (XLA's per-device
  cost analysis x devices). None when the FLOPs or the peak are unknown.
  """
  if flops_per_step is None or peak_tflops_per_device is None:
    return None
  if step_seconds <= 0 or num_devices < 1 or peak_tflops_per_device <= 0:
    raise ValueError(f'step_seconds {step_seconds}, num_devices {num_devices}'
                     f' and peak {peak_tflops_per_device} must be positive')
  return (flops_per_step / step_seconds /
          (peak_tflops_per_device * 1e12 * num_devices))


def is_out_of_memory(message: str) -> bool:
  """Whether an XLA error message says the device ran out of memory."""
  text = message.lower()
  return 'resource_exhausted' in text or 'out of memory' in text


def xla_flops(compiled: Any) -> float | None:
  """FLOPs of a compiled executable from XLA's cost analysis, or None.

  `cost_analysis()` is a dict on JAX 0.10 (a list with one dict per program
  on older versions); for a shard_map program it describes one device.
  """
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis or analysis.get('flops') is None:
    return None
  flops = float(analysis['flops'])
  return flops if flops > 0 else None


def device_memory_bytes(compiled: Any) -> int | None:
  """Per-device bytes of arguments + outputs + temporaries (no aliasing)."""
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes +
               m.temp_size_in_bytes - m.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    return None


def device_bytes_limit(device: Any) -> int | None:
  """The memory an accelerator lets this process use (None on CPU/unknown)."""
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  return int(stats['bytes_limit']) if stats and 'bytes_limit' in stats else None


def hlo_stats(compiled: Any) -> dict[str, int] | None:
  """Counts of a few op kinds in the compiled (optimised) HLO text."""
  try:
    text = compiled.as_text()
  except Exception:  # pylint: disable=broad-except
    return None
  return {
      'convolution': len(re.findall(r'= \S+ convolution\(', text)),
      'custom_call': text.count(' custom-call('),
      'onednn': text.count('__onednn'),
      'xnn_fusion': text.count('__xnn_fusion'),
      'fusion': len(re.findall(r'= \S+ fusion\(', text)),
      'hlo_chars': len(text),
  }


def matmul_tflops(device: Any, n: int = 4096, reps: int = 5) -> float:
  """TFLOP/s of a float32 (n, n) x (n, n) matmul on `device`, best of reps."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  a = jax.device_put(np.ones((n, n), np.float32), device)
  mm = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(mm(a, a))
  best = float('inf')
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(mm(a, a))
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 / best / 1e12
