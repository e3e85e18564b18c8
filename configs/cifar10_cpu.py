r"""CIFAR-10 on 2 CPU cores in about an hour: a quarter-width ResNet-18 at 32 px.

  python main.py --config=configs/cifar10_cpu.py --workdir=/tmp/simclr_c10_cpu \
      --config.data.data_dir=/path/to/cifar10/train

Hardware: sized for 2 CPU cores (split into train.cpu_devices XLA devices). The data
is a folder of CIFAR-10's training images, one subfolder per class (see
configs/cifar10_folder.py for how to write one); 10% of them are held out
and score the encoder at the end: weighted kNN (final_knn_accuracy) and a
linear probe on frozen features (final_probe_accuracy), beside the same
encoder at random initialisation (*_random_init).

google's CIFAR-10 recipe (configs/cifar10.py: LARS at 1.0 x B/256, weight
decay 1e-4, temperature 0.5, colour strength 0.5, no blur, 3-layer head)
shrunk to the hour: ResNet-18 at a quarter of the width (base_width 16,
0.7M parameters), batch 256, 2,000 steps (11.4 epochs of the 45,000
training images), one warm-up epoch.

To score on CIFAR-10's test split instead, add
--config.data.eval_dir=/path/to/cifar10/test (a folder of the same layout;
then all 50,000 training images are trained on, nothing is held out).

Measured (the command above, with data_dir the CIFAR-10 training split of
../shared/data unpacked; 2 virtual cores of an Intel Xeon with AVX-512,
24 GiB, no accelerator; commit 78e8b14, when the CPU default was 8 XLA
devices with YNNPACK convolutions; today's CPU defaults ran the train step
of bench/cpu_speed.py 2.2x as fast on a 2-core AMD EPYC, dev1 against
dev8_ynnpack, so expect well under the hour), on the 5,000 held-out images:
  final_knn_accuracy 0.5006     final_knn_accuracy_random_init 0.3092
  final_probe_accuracy 0.5456   final_probe_accuracy_random_init 0.3538
  train_seconds 3759 (first loss 11.86, last 10.19; the whole command 66 min,
  with other jobs on the machine for part of it: 163 images/s alone, about
  145 shared).
For scale: 400 steps of the same model gave 41% kNN and 47% linear.
"""

from configs import cifar10_folder


def get_config():
  config = cifar10_folder.get_config()
  config.model.base_width = 16
  config.train.global_batch_size = 256
  config.train.num_steps = 2000
  config.optim.warmup_epochs = 1.0
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 250
  config.eval.compare_random_init = True
  config.eval.batch_size = 1024
  return config
