r"""SimCLR on CIFAR-10 (TFDS cifar10) with a CIFAR-stem ResNet, as in the paper's appendix.

  python main.py --config=configs/cifar10.py --workdir=/tmp/simclr_cifar10 \
      --config.data.data_dir=/path/to/tensorflow_datasets

With data.download=True TFDS downloads and prepares CIFAR-10 itself (160 MB).
To train on an image folder instead (for example ../shared/data's JPEG copy of
the training split), use configs/cifar10_folder.py.

The CIFAR stem (3x3 stride 1 conv, no max-pool) matters: with the ImageNet stem
a 32x32 image is 8x8 after the first two layers and accuracy drops by many
points. Blur is off and colour strength 0.5, as in the paper (appendix B.9).

Expected: the paper reports 94.0% linear evaluation for ResNet-50 after 1000
epochs at batch 1024 (Chen et al. 2020, appendix B.9). Not yet measured with
this code base.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.image_size = 32
  config.data.source = 'tfds'
  config.data.name = 'cifar10'
  config.data.train_split = 'train'
  config.data.eval_split = 'test'
  config.data.crop = 'device'
  config.data.cache = True
  config.augment.blur = False
  config.augment.color_jitter_strength = 0.5
  config.model.depth = 50
  config.model.stem = 'cifar'
  config.model.num_proj_layers = 2
  config.loss.temperature = 0.5
  config.optim.lr_scaling = 'linear'
  config.optim.base_learning_rate = 1.0
  config.optim.weight_decay = 1e-6
  config.train.global_batch_size = 1024
  config.train.num_epochs = 1000.0
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 1000
  config.eval.knn_k = 200
  return config
