"""Linear-probe configs (`python -m mtssl.eval.linear_probe`).

    python -m mtssl.eval.linear_probe --config=configs/linear_probe.py --workdir=probes/local \\
        --config.checkpoint=runs/local
    python -m mtssl.eval.linear_probe --config=configs/linear_probe.py --workdir=probes/random
    python -m mtssl.eval.linear_probe --config=configs/linear_probe.py:imagenet --workdir=... \\
        --config.checkpoint=runs/paper

Default: the embedded "photos" task (which of scikit-image's 12 photographs a
crop comes from; train and test crops from disjoint halves of each photo), at
the checkpoint's training resolution. `:imagenet` is the paper's protocol on
TFDS imagenet2012 (prepared as ArrayRecord): conv1..conv5, ~9k pooled
features per layer, L2 chosen on a held-out part of the training split.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.checkpoint = ""           # pretraining workdir / checkpoint dir; "" = random init
    # Architecture of the random-init baseline (ignored with a checkpoint).
    c.model = ml_collections.ConfigDict(dict(encoder="alexnet", width=1.0, norm="batch"))
    c.dataset = "photos"        # photos | digits | imagefolder:<path> | tfds:<name>
    c.data_dir = ""             # TFDS data_dir ("" = default)
    c.train_split = "train"
    c.test_split = "test"
    c.val_fraction = 0.1        # of the training split, for choosing L2
    c.photos_per_split = 1200   # "photos" dataset size per split
    c.image_size = 0            # 0: the checkpoint's training crop size
    c.crop = "center_crop"      # center_crop | resize | random_crop
    c.layers = ("conv1", "conv2", "conv3", "conv4", "conv5")
    c.feature_dims = 9216       # pooled features per layer (Zhang et al.: ~9k)
    # The protocol (the standard one by default; see mtssl/eval/linear_probe.py):
    c.taps = "post_relu"        # post_relu | pre_relu
    c.bn_stats = "running"      # running | probe_images (AdaBN on the training images)
    c.grayscale = False         # True: probe luma images (encoders trained colour-blind)
    c.batch_size = 64
    c.epochs = 30
    c.learning_rate = 1e-3
    c.l2 = (1e-6, 1e-5, 1e-4, 1e-3)
    c.max_train_examples = -1   # > 0: probe on a prefix of the training split
    c.max_test_examples = -1
    c.cache_gb = 4.0            # keep features in memory when they fit
    c.seed = 0
    if arg == "imagenet":
        c.dataset = "tfds:imagenet2012"
        c.test_split = "validation"
        c.val_fraction = 0.02
        c.batch_size = 256
        c.epochs = 10
    elif arg:
        raise ValueError(f"unknown preset {arg!r}; valid: 'imagenet' (or none)")
    return c
