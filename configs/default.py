"""Every configuration field of simclr_jax, with its default and meaning.

Other config files import this one and override fields; a field that is not
declared here does not exist (ml_collections rejects unknown overrides).
The defaults are the SimCLR v2 ImageNet recipe (ResNet-50, 3-layer projection
head, LARS at 0.075 * sqrt(batch), weight decay 1e-4, temperature 0.1);
configs/imagenet.py runs it.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the default configuration (SimCLR v2 recipe, ResNet-50, ImageNet)."""
  config = ml_collections.ConfigDict()

  # What main.py does: 'pretrain' (SimCLR), or evaluate the encoder of
  # another run's checkpoint (init_from): 'linear_eval', 'finetune', 'export';
  # or 'distill' a fine-tuned teacher (init_from) into a student.
  config.mode = 'pretrain'
  # Workdir of a pretraining (or imported) run; for 'distill', the teacher's:
  # a fine-tuning run's, or an imported fine-tuned google model's.
  config.init_from = ''
  config.init_step = -1  # Its checkpoint step; -1 = the latest.
  config.seed = 0  # Root PRNG seed; the run is a function of config and seed.
  # Side of the square images the encoder sees (after augmentation).
  config.image_size = 224

  # ----------------------------------------------------------------- data
  config.data = data = ml_collections.ConfigDict()
  # 'tfds' (a TFDS dataset by name), 'folder' (a folder of images) or
  # 'digits' (scikit-learn's 8x8 handwritten digits, shipped with the package).
  data.source = 'tfds'
  data.name = 'imagenet2012'  # TFDS name when source == 'tfds'.
  data.data_dir = ''  # TFDS data_dir, or the image folder for 'folder'.
  data.download = False  # Let TFDS download and prepare the dataset.
  data.train_split = 'train'  # Split used for pretraining.
  # Split used for evaluation; '' holds out `holdout_fraction` of the train
  # split instead (datasets without a test split). Digits and folders have
  # one split: set ''.
  data.eval_split = 'validation'
  data.holdout_fraction = 0.1
  # Folders: a second folder with the same class subfolders (e.g. a test
  # split beside data_dir) to evaluate on instead of a held-out part; then
  # all of data_dir is trained on and holdout_fraction is not used.
  data.eval_dir = ''
  # Where the random-resized crop happens: 'device' (fixed-size images; the
  # host only batches uint8) or 'host' (large variable-size images; the host
  # decodes only the two crop windows and resizes them to image_size).
  # 'auto' picks 'host' for imagenet2012, imagenette and folders.
  data.crop = 'auto'
  data.eval_crop_fraction = 0.875  # Centre crop for evaluation (1.0 = none).
  # Side images are resized to before the device crop for 'device' sources
  # (0 = keep the stored size). The digits are upsampled from 8x8 this way.
  data.resize_to = 0
  # Streamed TFDS only; other sources use a full permutation per epoch.
  data.shuffle_buffer = 16_384
  # Folders: keep decoded images (device crop) or file bytes (host crop) in
  # memory. Fixed-size TFDS splits up to 4 GiB per process always are.
  data.cache = False
  # An image that fails to decode (a damaged file or TFDS record): 'skip'
  # lists it in WORKDIR/undecodable.txt and leaves it out (replaced in its
  # training batch); 'stop' ends the run with one line naming it.
  data.on_undecodable = 'skip'
  data.prefetch = 2  # Batches prefetched to the device.
  data.num_parallel_calls = -1  # tf.data parallelism (-1 = AUTOTUNE).

  # ---------------------------------------------------------- augmentation
  # Device-side SimCLR augmentation (simclr_jax.augment.two_views).
  config.augment = aug = ml_collections.ConfigDict()
  # Side of each training view. It follows image_size until it is set
  # (`* 1` makes a derived reference: setting output_size then breaks the
  # link and leaves image_size alone). A smaller side trains faster, and the
  # encoder (convolutional, global pooling) is still evaluated, probed and
  # fine-tuned at image_size: random-resized crops show objects larger than
  # evaluation's centre crops do, so training below the evaluation's side
  # costs little (Touvron et al. 2019, "FixRes"). configs/cifar10_cpu.py
  # trains at 20 px and scores at 32.
  aug.output_size = config.get_ref('image_size') * 1
  # The random-resized crop is tf.image.sample_distorted_bounding_box's
  # (google's): area_range, aspect_ratio_range (uniform), and never less than
  # 10% of the image (min_object_covered=0.1), 100 attempts.
  aug.crop_scale = (0.08, 1.0)  # Area fraction range of the crop.
  aug.crop_ratio = (3 / 4, 4 / 3)  # Aspect-ratio (width / height) range.
  aug.flip_prob = 0.5
  aug.color_jitter_prob = 0.8
  aug.color_jitter_strength = 1.0  # s: brightness/contrast/saturation 0.8s, hue 0.2s.
  aug.brightness_mode = 'v2'  # 'v1' additive or 'v2' multiplicative brightness.
  aug.grayscale_prob = 0.2
  aug.blur = True  # Gaussian blur (the paper turns it off for CIFAR).
  aug.blur_prob = 0.5
  aug.blur_sigma = (0.1, 2.0)
  aug.blur_kernel_fraction = 0.1  # Kernel side as a fraction of image side.
  # How augment.two_views runs over the batch: 'map' (loop over views with
  # real branches; fastest on CPU), 'vmap' (data-parallel selects; GPU/TPU)
  # or 'auto' ('map' on CPU, else 'vmap').
  aug.strategy = 'auto'

  # ---------------------------------------------------------------- model
  config.model = model = ml_collections.ConfigDict()
  model.depth = 50  # ResNet depth: 18, 34, 50, 101, 152 or 200.
  model.width_multiplier = 1  # 1, 2, 3 or 4 (3: SimCLRv2's r152_3x_sk1).
  model.base_width = 64  # Channels of the first stage (64 in the paper).
  model.stem = 'imagenet'  # 'imagenet' (7x7/2 + max-pool) or 'cifar' (3x3/1).
  model.sk_ratio = 0.0  # Selective kernels (SimCLRv2: 0.0625); 0 disables.
  # Zero-init the last BN scale of each residual block (google-research/simclr
  # always does).
  model.zero_init_residual = True
  model.num_proj_layers = 3  # 2 (SimCLR v1) or 3 (SimCLR v2).
  model.proj_out_dim = 128
  model.bn_momentum = 0.9
  model.bn_epsilon = 1e-5
  model.dtype = 'float32'  # Compute dtype: 'float32' or 'bfloat16'.
  # Rematerialise every ResNet block (nn.remat): less activation memory for
  # about one more forward pass; same results. See README "Scale plan".
  model.remat = False

  # ----------------------------------------------------------------- loss
  config.loss = loss = ml_collections.ConfigDict()
  loss.temperature = 0.1

  # ------------------------------------------------------------ optimizer
  config.optim = optim = ml_collections.ConfigDict()
  optim.name = 'lars'  # 'lars', 'sgd', 'adam' or 'adamw'.
  # Learning rate: base_learning_rate scaled by the global batch B.
  # 'linear': base * B / 256; 'sqrt': base * sqrt(B); 'none': base.
  optim.lr_scaling = 'sqrt'
  optim.base_learning_rate = 0.075
  optim.warmup_epochs = 10.0
  optim.momentum = 0.9
  optim.weight_decay = 1e-4
  optim.eeta = 1e-3  # LARS trust coefficient.
  # Exclude BatchNorm parameters and biases from weight decay and the LARS
  # trust ratio (google-research/simclr does).
  optim.exclude_bn_and_bias = True
  # The online probe trains with this schedule and momentum, with L2 of
  # weight_decay on its kernel and no trust ratio (google's supervised head).

  # ------------------------------------------------------------- training
  config.train = train = ml_collections.ConfigDict()
  train.global_batch_size = 4096
  train.num_epochs = 100.0  # Used when num_steps is 0.
  train.num_steps = 0  # Total steps; 0 derives it from num_epochs.
  train.log_every_steps = 100
  train.checkpoint_every_steps = 1000
  train.keep_checkpoints = 3
  # Online linear probe on stop_gradient(h) when the data has labels.
  train.online_probe = True
  # Shard over this many devices; 0 means every device of every process.
  train.num_devices = 0
  # On CPU without a device count in XLA_FLAGS, split the host into this
  # many XLA devices; 0 leaves XLA alone. 1 was fastest on a 2-core machine
  # (bench/cpu_speed.py: dev1 against dev2, dev4, dev8): each device's
  # convolutions and fusions already use every core. More devices run the
  # sharded step (global BatchNorm, all-gathered negatives) on one host.
  train.cpu_devices = 1
  # On CPU, keep jaxlib's YNNPACK convolutions (its default in 0.10 to 0.12);
  # False (the default) uses XLA's own multi-threaded ones: 1.3x faster train
  # steps on jaxlib 0.10, 1.7x on 0.12 (parallel.cpu_xla_flags).
  train.cpu_ynnpack_convs = False
  # On CPU, convolution gradients in the forms of simclr_jax/models/conv.py:
  # weight gradients read stored copies of their inputs and output gradients
  # instead of recomputing BatchNorm and ReLU inside XLA's transposing copies
  # (same values), and strided convs' input gradients skip the zeros XLA
  # dilates into them (equal to float rounding): a faster step
  # (bench/cpu_speed.py: dev1 against dev1_no_strided_forms and
  # dev1_no_materialize).
  train.cpu_materialize_conv_inputs = True
  # With the above on: strided convs' input gradients as s*s stride-1 convs
  # and strided 1x1 weight gradients as one matmul (models/conv.py item 2;
  # equal to float rounding; bench/cpu_speed.py dev1_no_strided_forms).
  train.cpu_strided_gradient_forms = True
  # With both of the above on: 3x3 stride-1 convs of 8 px and less skip the
  # multiply-adds XLA spends on their padding (models/conv.py item 3; forward
  # pass and both gradients, equal to float rounding; bench/cpu_speed.py
  # dev1_no_border_forms).
  train.cpu_border_forms = True
  # Resume even when the config changes what the run computes (batch,
  # schedule, data, augmentation, model, loss, seed); normally refused.
  train.allow_config_change = False

  # ----------------------------------------------------------- evaluation
  config.eval = ev = ml_collections.ConfigDict()
  # The quick final score at the end of pretraining (when the data has
  # labels): weighted kNN and a fast linear probe on centre-crop features
  # computed once. For numbers comparable with papers use mode linear_eval.
  ev.linear_probe = True  # The fast linear probe.
  ev.compare_random_init = False  # Also score the encoder at initialisation.
  ev.probe_epochs = 30.0  # Epochs of the fast probe over the train features.
  ev.probe_learning_rate = 0.1  # Times eval.batch_size / 256 (Nesterov SGD).
  ev.probe_l2 = 0.0  # Weight decay of the fast probe's kernel.
  # Weighted kNN on h (votes exp(sim / T)) against the labelled train split;
  # 0 turns it off.
  ev.knn_k = 200
  ev.knn_temperature = 0.1
  # kNN monitor during pretraining: every this many steps (0 = only at the
  # end), logged as knn_accuracy.
  ev.every_steps = 0
  ev.batch_size = 512  # Batch for feature extraction and evaluation.

  # ------------------------------------ linear evaluation (mode linear_eval)
  # google-research/simclr's protocol: frozen encoder (BatchNorm in inference
  # mode), zero-initialised linear layer on h, Nesterov momentum SGD,
  # learning rate base * B / 256 with cosine decay and no warm-up.
  config.linear_eval = le = ml_collections.ConfigDict()
  le.epochs = 90.0  # 90 for ImageNet, 100 for CIFAR.
  le.batch_size = 1024
  le.base_learning_rate = 0.1  # Times batch_size / 256.
  le.momentum = 0.9
  le.weight_decay = 1e-6  # On the kernel; 0 for CIFAR.
  # Train on random-resized crops and flips made on the device (the
  # protocol); False: the fast variant on centre-crop features computed once
  # (kept in workdir/features, read from disk batch by batch).
  le.augment = True
  le.checkpoint_every_steps = 1000

  # -------------------------------------- few-label fine-tuning (finetune)
  # SimCLRv2's recipe: the whole network from the checkpoint with global
  # BatchNorm, LARS at base * sqrt(B), no weight decay.
  config.finetune = ft = ml_collections.ConfigDict()
  ft.label_fraction = 0.1  # Of the labelled training split: 0.01, 0.1, 1.0.
  # A file of the labelled examples to use instead: one example index of the
  # labelled train split per line.
  ft.subset_file = ''
  # Where the classifier sits: 0 = on h; k = after projection-head layer k
  # (SimCLRv2's ft_proj_selector; it keeps layers 1..k).
  ft.from_proj_layer = 0
  ft.epochs = 30.0  # 60 for 1% of the labels, 30 for 10%.
  ft.batch_size = 1024
  ft.base_learning_rate = 0.005  # Times sqrt(batch_size).
  ft.momentum = 0.9
  ft.weight_decay = 0.0
  ft.checkpoint_every_steps = 1000

  # ------------------------------------------ self-distillation (distill)
  # SimCLRv2's third step: the fine-tuned teacher (init_from, BatchNorm in
  # inference mode) labels the unlabelled train split on the fly and a
  # student of config.model learns its softened predictions, on the crops and
  # flips of fine-tuning, with LARS at base * sqrt(B) (see
  # simclr_jax/evaluate/distill.py and configs/imagenet_distill.py).
  config.distill = di = ml_collections.ConfigDict()
  # tau of both softmaxes: loss = -sum_y P_teacher(y|x; tau) log P_student.
  di.temperature = 1.0
  # w in (1 - w) * distillation + w * cross-entropy on the labelled subset
  # (finetune.label_fraction or finetune.subset_file, chosen as fine-tuning
  # chose it); 0 = pure distillation on unlabelled images.
  di.label_weight = 0.0
  # 'scratch' (random initialisation) or the workdir of a pretraining run of
  # config.model whose latest checkpoint starts the student's encoder.
  di.student_init = 'scratch'
  # Where the student's classifier sits: 0 = on h; k = after
  # projection-head layer k (as finetune.from_proj_layer).
  di.from_proj_layer = 0
  # Where the teacher's classifier sits: -1 = as its checkpoint says (a
  # fine-tuning run's layers; google's imported head: on h); k = after its
  # projection-head layer k (google's ft_proj_selector, for imported
  # fine-tuned models whose head reads a projection-head layer).
  di.teacher_proj_layer = -1
  di.epochs = 100.0  # Passes over the unlabelled train split.
  di.batch_size = 1024  # Unlabelled images a step (and labelled ones if w > 0).
  di.base_learning_rate = 0.075  # Times sqrt(batch_size).
  di.warmup_epochs = 5.0  # Linear warm-up, then cosine decay.
  di.momentum = 0.9
  di.weight_decay = 1e-4  # On kernels (not BatchNorm, not biases).
  di.checkpoint_every_steps = 1000

  # ------------------------------------------------------ export (export)
  config.export = ex = ml_collections.ConfigDict()
  ex.split = 'both'  # 'train', 'eval' or 'both'.
  ex.include_z = False  # Also the projection z.

  # ----------------------------------------------------------- multi-host
  config.distributed = dist = ml_collections.ConfigDict()
  dist.initialize = False  # Call jax.distributed.initialize() first.
  dist.coordinator_address = ''  # host:port; '' lets JAX find it (TPU, SLURM).
  dist.num_processes = 0  # 0 = from the environment.
  dist.process_id = -1  # -1 = from the environment.

  return config
