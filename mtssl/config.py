"""The pretraining configuration: every field, its default, and validation.

`defaults()` is the paper's recipe (Ren & Lee 2018 with the reference code's
hyper-parameters) and the single list of fields: `configs/pretrain.py` starts
from it, and `validate` rejects any config whose keys differ from it or whose
values are outside the valid choices, naming those choices, before any
compute starts. Every field is overridable on the command line, e.g.
`--config.model.tasks=depth,normals --config.da.enabled=False`.

Data sources are strings:
  synthetic.source  "render"              the procedural scene engine
                    "folder:<path>"       an on-disk synthetic dataset
                                          (mtssl.data.on_disk layout)
  real.source       "package"             scikit-image's bundled photos
                    "imagefolder:<path>"  every image below a folder
                    "tfds:<name>"         tfds.data_source(<name>), e.g.
                                          tfds:places365_small
                    "target"              the scene engine with a different
                                          appearance (TARGET_APPEARANCE): a
                                          procedural target domain whose
                                          labels are only used for evaluation
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from mtssl import losses
from mtssl.data import on_disk
from mtssl.data import real as real_data
from mtssl.data.scenes import SceneConfig
from mtssl.models import ENCODERS, PAPER_TASKS, TASKS, encoder_taps
from mtssl.models.layers import NORMS

SYNTHETIC_SOURCES = ("render", "folder:<path>")
REAL_SOURCES = ("package", "imagefolder:<path>", "tfds:<name>", "target")
REAL_CROPS = ("auto",) + real_data.CROPS
COMPUTE_DTYPES = ("float32", "bfloat16")
D_OPTIMIZERS = ("sgd", "adam")
DISC_BATCHES = ("per_domain", "joint")


def load_config_file(spec: str | pathlib.Path):
    """`path/to/config.py[:arg]` -> that file's get_config(arg) (as --config does)."""
    path, _, arg = str(spec).partition(":")
    module_spec = importlib.util.spec_from_file_location("_mtssl_config_file", path)
    if module_spec is None or not pathlib.Path(path).is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def defaults() -> ml_collections.ConfigDict:
    """The paper's recipe: 227 px crops of 256 px renders, batch 224 + 224,
    30 epochs of 1.5M synthetic images, the reference's losses and optimizers."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.image_size = 227            # training crop side (both domains)
    c.batch_size = 224            # global, per domain: 224 synthetic + 224 real
    c.num_epochs = 30.0           # an epoch is one pass over the synthetic source
    c.num_steps = -1              # > 0 overrides num_epochs

    c.synthetic = ml_collections.ConfigDict()
    c.synthetic.source = "render"
    # Folder source (mtssl/data/on_disk.py): how its maps are stored.
    c.synthetic.depth_scale = 0.001     # metres per depth PNG unit
    c.synthetic.depth_kind = "planar"   # planar (z-depth) | ray (distance along the ray)
    c.synthetic.max_depth = 0.0         # > 0: depth >= it is background (invalid)
    c.synthetic.normal_axes = "opencv"  # opencv (y down, z forward) | opengl (y up, z back)
    c.synthetic.on_device = False   # render inside the train step (scene engine only;
                                    # same images as the host pipeline for the same seeds)
    # Batches each synthetic record is trained in, with a new crop each time
    # (mtssl/data/pipeline.py): the host renders batch_size / reuse records a
    # step. The paper's 30 epochs show every render 30 times; 1 = every
    # sample a new record.
    c.synthetic.reuse = 1
    c.synthetic.render = ml_collections.ConfigDict()
    c.synthetic.render.resolution = 256  # renders, randomly cropped to image_size
    c.synthetic.render.seed = 0
    c.synthetic.render.num_records = 1_500_000   # the paper's ~1.5M renders
    c.synthetic.render.aa_samples = 4
    c.synthetic.render.aa_fraction = 0.25
    c.synthetic.render.shadows = True
    c.synthetic.render.sensor_effects = True
    # A folder where each record is rendered once and read back bit-identically
    # by later runs, seeds and ablation variants (mtssl/data/render_cache.py;
    # about 250 kB a record at 104 px; host rendering only, synthetic.on_device
    # renders in the step); "" = render every time.
    c.synthetic.render.cache_dir = ""
    c.synthetic.render.scene = dataclasses.asdict(SceneConfig())

    c.real = ml_collections.ConfigDict()
    # package: the training parts of scikit-image's photos (never the photos
    # probe's test parts).
    c.real.source = "package"     # package | imagefolder:<path> | tfds:<name> | target
    c.real.split = "train"        # tfds split
    c.real.data_dir = ""          # tfds data_dir ("" = TFDS default)
    # auto: random crops for the 12 package photos, else the reference's resize
    c.real.crop = "auto"
    c.real.min_scale = 0.35       # random_crop: smallest crop, share of short side

    c.data = ml_collections.ConfigDict()
    c.data.grayscale = True       # one random RGB channel per batch, both domains
    c.data.prefetch = 2           # batches prepared ahead of the step
    c.data.threads = 2            # host threads preparing them (order is deterministic)

    c.model = ml_collections.ConfigDict()
    c.model.encoder = "alexnet"
    c.model.width = 1.0           # channel multiplier of encoder
    c.model.norm = "batch"
    c.model.tasks = PAPER_TASKS   # any non-empty subset of TASKS (+ semantics)
    c.model.head_channels = 64
    c.model.disc_width = 1.0      # channel multiplier of the discriminator (512)
    c.model.adapt_layer = "conv5"
    c.model.dtype = "float32"     # compute dtype: float32 | bfloat16 (mixed precision:
                                  # params, BN statistics, losses stay float32)

    c.loss = ml_collections.ConfigDict()
    c.loss.depth_variant = "reference"
    c.loss.contour_weighting = "reference"
    c.loss.gan = "bce"
    c.loss.weights = ml_collections.ConfigDict(
        dict(depth=5.0, normals=10.0, contours=1.0, semantics=1.0, adversarial=0.05))

    c.optim = ml_collections.ConfigDict()
    c.optim.g_lr = 1e-3           # encoder + heads: Adam
    c.optim.g_b1 = 0.5
    c.optim.g_b2 = 0.999
    c.optim.d_optimizer = "sgd"   # discriminator: sgd (momentum, the reference) | adam
    c.optim.d_lr = 1e-3           # (with weight decay added to the gradient)
    c.optim.d_momentum = 0.9      # sgd momentum; adam uses g_b1 / g_b2
    c.optim.d_weight_decay = 5e-4
    c.optim.lr_decay_epochs = (18.0, 27.0)   # x lr_decay_factor at each
    # ...and at each of these fractions of the run's steps, for runs counted
    # in steps (e.g. (0.6, 0.9): the paper's epochs 18 and 27 of 30).
    c.optim.lr_decay_fractions = ()
    c.optim.lr_decay_factor = 0.1

    c.da = ml_collections.ConfigDict()
    c.da.enabled = True
    c.da.pool_size = 128          # feature maps kept per domain
    # How D's BatchNorm sees the two domains. joint: one pass over both pools,
    # so per-channel differences between the domains stay visible to D (G's
    # adversarial pass normalises its fresh synthetic features together with
    # the real pool). per_domain (the reference): D runs on each pool alone,
    # so its BatchNorm removes every per-channel mean and scale difference
    # before D's first non-linearity; measured on runlocal, D then stays at
    # chance (accuracy 0.51 after 300 steps, against 0.80 joint), i.e. the
    # domain adaptation does nothing, a defect like the reference's detached
    # adversarial term.
    c.da.disc_batch = "joint"

    c.log = ml_collections.ConfigDict()
    c.log.every_steps = 50        # console line, JSONL, TensorBoard
    c.log.images_every_steps = 1000   # PNG grid of predictions (0: never)
    c.log.num_images = 4
    c.eval = ml_collections.ConfigDict()
    c.eval.every_steps = 5000     # dense metrics on held-out scenes (0: never)
    c.eval.num_images = 256
    c.eval.nyu = False            # also NYU Depth v2 depth/normals (TFDS nyu_depth_v2)
    c.eval.nyu_split = "validation"
    c.eval.nyu_median_scaling = True
    c.eval.data_dir = ""          # TFDS data_dir for NYU ("" = default)
    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 2000
    c.checkpoint.keep = 3
    return c


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, (Mapping, ml_collections.ConfigDict)):
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _choice(name: str, value: Any, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose one of: "
                         f"{', '.join(map(str, valid))}")


def _prefixed(name: str, value: str, valid: Sequence[str]) -> tuple[str, str]:
    kind, _, arg = value.partition(":")
    known = {v.partition(":")[0]: bool(v.partition(":")[2]) for v in valid}
    if kind not in known or known[kind] != bool(arg):
        raise ValueError(f"{name}={value!r} is not valid; choose one of: "
                         f"{', '.join(valid)}")
    return kind, arg


def validate(config: ml_collections.ConfigDict,
             device_count: int | None = None) -> ml_collections.ConfigDict:
    """Checks keys and values; returns the config. Raises ValueError naming
    the valid keys or choices. With `device_count`, also checks the batch
    divides over the devices."""
    given, known = _flatten(config), _flatten(defaults())
    # A --config.x=y typo already fails in the locked ConfigDict ("Did you
    # mean ..."); this catches keys a config file or a notebook adds or drops,
    # which the lock never sees. The scene section is a dict of SceneConfig
    # fields: compare one level up.
    unknown = sorted(k for k in given if k not in known)
    if unknown:
        section = unknown[0].rpartition(".")[0]
        siblings = sorted(k.rpartition(".")[2] for k in known
                          if k.rpartition(".")[0] == section)
        raise ValueError(f"unknown config key(s) {unknown}; valid keys"
                         f"{' in ' + section if section else ''}: {', '.join(siblings)}")
    missing = sorted(k for k in known if k not in given)
    if missing:
        raise ValueError(f"config is missing key(s) {missing}")

    m = config.model
    _choice("model.encoder", m.encoder, ENCODERS)
    _choice("model.norm", m.norm, NORMS)
    _choice("model.dtype", m.dtype, COMPUTE_DTYPES)
    tasks = tasks_of(config)
    if not tasks or len(set(tasks)) != len(tasks) or any(t not in TASKS for t in tasks):
        raise ValueError(f"model.tasks={tasks!r} must be a non-empty subset of "
                         f"{', '.join(TASKS)}")
    _choice("model.adapt_layer", m.adapt_layer, encoder_taps(m.encoder))
    _choice("loss.depth_variant", config.loss.depth_variant, losses.DEPTH_VARIANTS)
    _choice("loss.contour_weighting", config.loss.contour_weighting,
            losses.CONTOUR_WEIGHTINGS)
    _choice("loss.gan", config.loss.gan, losses.GAN_LOSSES)
    _choice("real.crop", config.real.crop, REAL_CROPS)
    _choice("synthetic.depth_kind", config.synthetic.depth_kind, on_disk.DEPTH_KINDS)
    _choice("synthetic.normal_axes", config.synthetic.normal_axes, on_disk.NORMAL_AXES)
    _choice("optim.d_optimizer", config.optim.d_optimizer, D_OPTIMIZERS)
    _choice("da.disc_batch", config.da.disc_batch, DISC_BATCHES)
    _prefixed("synthetic.source", config.synthetic.source, SYNTHETIC_SOURCES)
    _prefixed("real.source", config.real.source, REAL_SOURCES)
    for name, value in config.loss.weights.items():
        if value < 0:
            raise ValueError(f"loss.weights.{name}={value} must be >= 0")
    for name in ("width", "disc_width"):
        if m[name] <= 0:
            raise ValueError(f"model.{name}={m[name]} must be > 0")
    if any(not 0 < f < 1 for f in config.optim.lr_decay_fractions):
        raise ValueError(f"optim.lr_decay_fractions={config.optim.lr_decay_fractions} "
                         "must each be in (0, 1)")
    if config.batch_size < 1:
        raise ValueError(f"batch_size={config.batch_size} must be >= 1")
    if device_count and config.batch_size % device_count:
        raise ValueError(f"batch_size={config.batch_size} does not divide over "
                         f"{device_count} devices; use a multiple of {device_count}")
    if config.num_steps <= 0 and config.num_epochs <= 0:
        raise ValueError("set num_epochs > 0 or num_steps > 0")
    if (config.synthetic.source == "render"
            and config.image_size > config.synthetic.render.resolution):
        raise ValueError(f"image_size={config.image_size} is larger than the renders "
                         f"(synthetic.render.resolution="
                         f"{config.synthetic.render.resolution})")
    if config.synthetic.reuse < 1 or config.batch_size % config.synthetic.reuse:
        raise ValueError(f"synthetic.reuse={config.synthetic.reuse} must be >= 1 and divide "
                         f"batch_size={config.batch_size}")
    if config.synthetic.on_device and config.synthetic.source != "render":
        raise ValueError("synthetic.on_device=True renders with the scene engine; it needs "
                         f"synthetic.source='render', not {config.synthetic.source!r}")
    if config.data.threads < 1 or config.data.prefetch < 0:
        raise ValueError(f"data.threads={config.data.threads} must be >= 1 and "
                         f"data.prefetch={config.data.prefetch} >= 0")
    if config.da.enabled and config.da.pool_size < 1:
        raise ValueError(f"da.pool_size={config.da.pool_size} must be >= 1")
    for name in ("every_steps",):
        if config.log[name] < 1:
            raise ValueError(f"log.{name} must be >= 1")
    if config.eval.every_steps < 0 or config.eval.num_images < 1:
        raise ValueError("eval.every_steps must be >= 0 and eval.num_images >= 1")
    if config.checkpoint.every_steps < 1 or config.checkpoint.keep < 1:
        raise ValueError("checkpoint.every_steps and checkpoint.keep must be >= 1")
    return config


def tasks_of(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """model.tasks as a tuple. The command line may give "depth,normals",
    which arrives as that string or, over the tuple default, as a 1-tuple of it."""
    t = config.model.tasks
    return tuple(name.strip() for part in ([t] if isinstance(t, str) else t)
                 for name in str(part).split(",") if name.strip())
