r"""SimCLR v2 pretraining of a ResNet-50 on ImageNet (TFDS imagenet2012).

  python main.py --config=configs/imagenet.py --workdir=gs://bucket/simclr_r50 \
      --config.data.data_dir=/path/to/tensorflow_datasets

Needs ImageNet prepared for TFDS in data.data_dir (TFDS cannot download it).
The host decodes only the two random crops of each JPEG; the accelerator does
flip, colour distortion, grayscale and blur. bfloat16 compute.

Expected: the paper's SimCLR v2 ResNet-50 (1x) reaches 71.7% linear-evaluation
top-1 after 800 epochs at batch 4096 (Chen et al. 2020b, Table 1); this
100-epoch config is the usual shorter schedule. Not yet measured with this
code base.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.image_size = 224
  config.data.source = 'tfds'
  config.data.name = 'imagenet2012'
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  config.data.crop = 'host'
  config.model.depth = 50
  config.model.dtype = 'bfloat16'
  config.train.global_batch_size = 4096
  config.train.num_epochs = 100.0
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 2000
  config.eval.batch_size = 1024
  return config
