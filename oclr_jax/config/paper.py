"""The paper's settings (NeurIPS 2022 OCLR and the official code): 128x224, T=30, batch 2.

These are the defaults the package itself needs at run time: loading an official `.pth` (a
state dict records only the architecture), evaluating without a config file, the eval and TTA
settings a checkpoint lacks.  The experiment files in the repository's `configs/` build on
`get_config()`.  Usage: `--config configs/oclr_paper.py` (or `--config paper`, no checkout
needed); any field can be overridden on the command line with `--config.train.learning_rate=1e-4`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    # Network (DESIGN.md §2). Defaults reproduce the official OCLR(4, 3) exactly.
    config.model = ml_collections.ConfigDict()
    config.model.num_queries = 3            # K object layers.
    config.model.unet_features = 32         # f; transformer width c = 16 f.
    config.model.num_layers = 3             # transformer encoder and decoder layers each.
    config.model.num_heads = 8
    config.model.ff_dim = 512               # official dim_feedforward.
    config.model.dropout_rate = 0.1
    config.model.same_frame_mask = True     # tokens attend only to other frames.
    config.model.dtype = "float32"          # compute dtype: float32 | bfloat16 (params stay float32).
    config.model.remat = False              # rematerialise U-Net and transformer blocks.
    config.model.attention = "dense"        # dense | chunked (same outputs; blocks of query rows
                                            # recomputed in the backward pass: less memory).
    config.model.attention_chunk = 0        # max query rows per chunked block (0: 256).

    # Data (DESIGN.md §1, §4).
    config.data = ml_collections.ConfigDict()
    config.data.gaps = (1, -1)              # flow gaps; input channels = 2 * len(gaps).
    config.data.num_frames = 30
    config.data.resolution = (128, 224)     # (H, W) at the model.
    config.data.train_dir = ""              # official-layout folder of Syn-Train (or a tfds name).
    config.data.val_dir = ""                # official-layout folder of Syn-Val.
    config.data.tfds_name = ""              # e.g. "oclr_synthetic/syn_train"; used when set.
    config.data.tfds_data_dir = ""
    config.data.val_tfds_name = ""          # e.g. "oclr_synthetic/syn_val"; used when set.
    config.data.shuffle_buffer = 256        # 0: no shuffling; > 0: a full seeded permutation
                                            # per epoch (random access, no buffer needed).
    config.data.augment_reverse = False     # temporal reversal (flow gaps swapped), p=1/2.
    config.data.augment_flip = False        # horizontal flip (u negated), p=1/2.
    config.data.augment_temporal_crop = False  # random start of the num_frames window.

    # Losses (DESIGN.md §3, official weights).
    config.loss = ml_collections.ConfigDict()
    config.loss.amodal_weight = 1.0
    config.loss.boundary_weight = 0.2
    config.loss.order_weight = 0.05
    config.loss.modal_weight = 0.1
    config.loss.boundary_width = 3
    config.loss.matcher = "permutations"    # permutations (exact, on device) | scipy (host callback).

    # Optimisation (DESIGN.md §3).
    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 2             # global batch.
    config.train.num_steps = 600_000
    config.train.learning_rate = 5e-5
    config.train.warmup_steps = 40_000
    config.train.decay_steps = 80_000       # lr halves every decay_steps after warm-up...
    config.train.max_decays = 9             # ...at most this many times.
    config.train.clip_value = 5.0           # gradient clipping by value.
    config.train.grad_accum_steps = 1       # sequential microbatches per step (same batch).
    config.train.init_params_from = ""      # a model checkpoint: start from its params only
                                            # (fresh optimizer, warm-up again); ignored on resume.
    config.train.skip_nonfinite_updates = True  # keep params when loss/grads are NaN/inf.
    config.train.dropout_rng = "threefry"  # threefry (masks independent of the device count)
                                            # | rbg (XLA RngBitGenerator: faster).
    config.train.log_every = 100
    config.train.checkpoint_every = 5_000
    config.train.keep_checkpoints = 3
    config.train.async_checkpointing = True
    config.train.cpu_ynn_fusion = False     # XLA CPU's YNNPACK fusions: slow conv gradients.
    config.train.eval_every = 20_000
    config.train.eval_num_sequences = 384

    # Evaluation (DESIGN.md §5).
    config.eval = ml_collections.ConfigDict()
    config.eval.window = 30
    config.eval.batch_size = 2
    config.eval.threshold = 0.5
    config.eval.upsample = "bilinear"       # masks to annotation size: bilinear (official saved
                                            # masks, what the paper scored) | nearest.
    config.eval.unpad_flow = False          # crop RAFT's padding to a multiple of 8 before
                                            # resizing (the official numbers keep it).

    # RGB test-time adaptation with DINO ViT-S/8 (paper App. C, DESIGN.md §6; docs/tta.md).
    config.tta = ml_collections.ConfigDict()
    config.tta.patch_size = 8               # DINO ViT-S/8.
    config.tta.embed_dim = 384
    config.tta.depth = 12
    config.tta.num_heads = 6
    config.tta.mlp_ratio = 4
    config.tta.pretrain_image_size = 224    # pos_embed learned on a 28x28 patch grid.
    config.tta.checkpoint_key = "teacher"   # taken from a nested DINO training checkpoint.
    config.tta.dtype = "float32"
    config.tta.short_side = 480             # frames resized: short side 480, long side floored
    config.tta.size_multiple = 64           # to a multiple of 64 (480x854 -> 480x832, 60x104).
    config.tta.pixel_mean = (0.485, 0.456, 0.406)
    config.tta.pixel_std = (0.228, 0.224, 0.225)  # the official dino/data.py values (0.228).
    config.tta.feature_batch_size = 4       # frames per ViT forward.
    config.tta.finetune = True              # per-sequence fine-tuning before propagation.
    config.tta.trainable_blocks = 2         # the last two blocks (DINO blocks.10, blocks.11).
    config.tta.learning_rate = 1e-5
    config.tta.num_iterations = 1000
    config.tta.lr_schedule = "linear_decay"  # linear_decay (paper) | warmup_constant (code).
    config.tta.warmup_iterations = 100      # only for warmup_constant.
    config.tta.max_pair_gap = 4             # frame pairs (t, t+n), n in [1, 4] (code: 5).
    config.tta.loss_temperature = 0.07
    config.tta.loss_clip = 0.65             # per-anchor loss upper bound (official).
    config.tta.trimap_inner = 1             # positive = mask eroded by 1 patch.
    config.tta.trimap_outer = 5             # negative = outside the mask dilated by 5 patches.
    config.tta.window = 7                   # propagation context: key frame + 7 previous.
    config.tta.consistency_window = 3       # key-frame search context: frame 0 + 3 previous.
    config.tta.topk = 5
    config.tta.neighborhood = 12            # source patches within +-12 rows/cols of a target.
    config.tta.propagation_temperature = 0.1
    config.tta.keyframe_rule = "lowest"     # lowest (paper) | longest_run (official code).
    config.tta.min_channel_peak = 0.0       # output: stretch a layer to [0,1] if its peak > this
                                            # (official 0; 0.05 stops vanished-layer leaks).
    config.tta.seed = 0                     # order of the fine-tuning frame pairs.
    return config
