"""The demo config shrunk to seconds, shared by the tests that train."""

from configs import demo


def tiny_config():
  """8 px digits, ResNet-18 of width 4, global batch 16, no warm-up."""
  config = demo.get_config()
  config.image_size = 8
  config.data.resize_to = 8
  config.model.base_width = 4
  config.model.proj_out_dim = 8
  config.train.global_batch_size = 16
  config.optim.warmup_epochs = 0.0
  return config
