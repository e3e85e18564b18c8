"""A plain PyTorch SimCLR step shaped like train_bench's r18_32 case.

`python bench/train_bench.py --compare_torch` times it beside ours in the same
process; it has no augmentation (random float views) and local BatchNorm.
"""

import argparse
import statistics
import time
from typing import Any


def torch_step_record(args: argparse.Namespace) -> dict[str, Any]:
  """Times a plain PyTorch SimCLR step like r18_32 (no augmentation)."""
  import torch  # pylint: disable=import-outside-toplevel
  from torch import nn  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel

  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  torch.manual_seed(0)

  class Block(nn.Module):

    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.short = None
      if stride != 1 or cin != cout:
        self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                   nn.BatchNorm2d(cout))

    def forward(self, x):
      y = F.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      return F.relu(y + (x if self.short is None else self.short(x)))

  class Net(nn.Module):
    """ResNet-18 with the CIFAR stem, 2-layer projection head, linear probe."""

    def __init__(self, width, num_classes, proj_dim=128):
      super().__init__()
      layers = [nn.Conv2d(3, width, 3, 1, 1, bias=False),
                nn.BatchNorm2d(width), nn.ReLU()]
      cin = width
      for stage in range(4):
        for b in range(2):
          cout = width * 2**stage
          layers.append(Block(cin, cout, 2 if stage and not b else 1))
          cin = cout
      self.encoder = nn.Sequential(*layers)
      self.head = nn.Sequential(
          nn.Linear(cin, cin, bias=False), nn.BatchNorm1d(cin), nn.ReLU(),
          nn.Linear(cin, proj_dim, bias=False), nn.BatchNorm1d(proj_dim))
      self.probe = nn.Linear(cin, num_classes)

    def forward(self, x):
      h = self.encoder(x).mean(dim=(2, 3))
      return self.head(h), self.probe(h.detach())

  def nt_xent(z, temperature=0.1):
    z = F.normalize(z, dim=1)
    n = z.shape[0] // 2
    logits = z @ z.t() / temperature
    logits.fill_diagonal_(float('-inf'))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, target)

  batch = args.batch_r18
  model = Net(args.base_width, 10).to(dev)
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                        weight_decay=1e-6)
  views = torch.rand(2 * batch, 3, 32, 32, device=dev)
  labels = torch.randint(0, 10, (batch,), device=dev)

  def step():
    opt.zero_grad(set_to_none=True)
    z, logits = model(views)
    loss = nt_xent(z) + F.cross_entropy(logits, torch.cat([labels, labels]))
    loss.backward()
    opt.step()
    return loss

  def sync():
    if dev.type == 'cuda':
      torch.cuda.synchronize()

  for _ in range(args.warmup):
    step()
  sync()
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    loss = step()
    sync()
    times.append(time.perf_counter() - t0)
  median_s = statistics.median(times)
  return {
      'case': 'torch_r18_32',
      'torch_version': torch.__version__,
      'device': str(dev),
      'num_threads': torch.get_num_threads(),
      'dtype': 'float32',
      'global_batch': batch,
      'base_width': args.base_width,
      'what': ('ResNet-18 (CIFAR stem) + 2-layer projection head + probe, '
               'NT-Xent, SGD; random float views (no augmentation), one '
               'process, local BatchNorm'),
      'images_per_sec': batch / median_s,
      'views_per_sec': 2 * batch / median_s,
      'step_time_mean_ms': 1e3 * statistics.fmean(times),
      'step_time_median_ms': 1e3 * median_s,
      'final_loss': float(loss.detach()),
  }


