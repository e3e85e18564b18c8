r"""SimCLRv2's third step on ImageNet: distil a fine-tuned teacher into a ResNet-50.

  python main.py --config=configs/imagenet_distill.py --workdir=gs://bucket/distill_r50 \
      --config.init_from=gs://bucket/finetune_1pct \
      --config.data.data_dir=/path/to/tensorflow_datasets

init_from is the teacher: a fine-tuning workdir (--config.mode=finetune, e.g.
of configs/imagenet.py's run with --config.finetune.label_fraction=0.01) or an
imported google fine-tuned model (python -m simclr_jax.import_tf; then set
--config.distill.teacher_proj_layer to the projection-head layer its head
reads, google's ft_proj_selector). The student is this config's ResNet-50,
from random initialisation (distill.student_init='scratch'). For
self-distillation (student of the teacher's own architecture) start it from
the pretraining run and soften less:

  python main.py --config=configs/imagenet_distill.py --workdir=gs://bucket/self_distill_r50 \
      --config.init_from=gs://bucket/finetune_1pct \
      --config.distill.student_init=gs://bucket/simclr_r50 \
      --config.distill.temperature=0.1 \
      --config.data.data_dir=/path/to/tensorflow_datasets

Hardware: as configs/imagenet.py (32 TPU v3 cores or more for batch 4096),
plus the teacher's forward pass in every step: a ResNet-152 (3x+SK) teacher
costs several times the student's step. The images the student learns from
are the unlabelled train split (1.28M), each step one random-resized crop and
flip (fine-tuning's augmentation) that teacher and student both see.

What the settings rest on:
* verified here: the SimCLRv2 paper's abstract (Chen et al. 2020b, arXiv
  2006.10029v1) reports a ResNet-50 trained by pretraining, fine-tuning and
  distillation (from a bigger teacher) at 73.9% ImageNet top-1 with 1% of the
  labels and 77.5% with 10%. In google-research/simclr (commit 383d414) the
  README lists the distilled checkpoints (distill_1pct, distill_10pct), and
  the distillation colab
  (tf2/colabs/distillation_self_training.ipynb) uses temperature 1, LARS
  with momentum 0.9, weight decay 1e-4 (not on BatchNorm or biases), cosine
  decay, and its loss is the cross-entropy of softmax(teacher / T) and
  softmax(student / T) times T^2 (we follow the paper's eq. 2, without T^2);
  google's maintainer (google-research/simclr issue #81) says the colab's
  augmentation is crop and flip only and that LARS or SGD "should perform
  the same" at the distillation stage.
* recalled from the paper's appendix but NOT verified against its text here:
  temperature 0.1 for self-distillation and 1.0 for big-to-small
  distillation, batch 4096 and LARS for both, 400 epochs.
* this library's choice where we found nothing to check: the learning rate
  0.075 x sqrt(B), 5 warm-up epochs (configs/default.py's distill section).
Not yet run with this code base.
"""

from configs import imagenet


def get_config():
  config = imagenet.get_config()
  config.mode = 'distill'
  config.model.depth = 50
  config.model.width_multiplier = 1
  config.model.dtype = 'bfloat16'
  d = config.distill
  d.temperature = 1.0  # Big-to-small; 0.1 for self-distillation.
  d.label_weight = 0.0  # Unlabelled images only, as the paper's main results.
  d.student_init = 'scratch'
  d.from_proj_layer = 0
  d.epochs = 400.0
  d.batch_size = 4096
  d.base_learning_rate = 0.075  # Times sqrt(4096): 4.8.
  d.warmup_epochs = 5.0
  d.momentum = 0.9
  d.weight_decay = 1e-4
  d.checkpoint_every_steps = 2000
  # The labelled subset of a label_weight > 0 run: the 1% one.
  config.finetune.label_fraction = 0.01
  return config
