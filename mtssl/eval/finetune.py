"""Transfer by fine-tuning the whole encoder on a classification task.

    python -m mtssl.eval.finetune --config=configs/finetune.py --workdir=finetune/voc07 \\
        --config.checkpoint=runs/paper

The paper's transfer test is PASCAL VOC 2007 classification (TFDS
`voc/2007`, 20 classes, multi-label) under the protocol of Krähenbühl et
al. (see configs/finetune.py for the numbers): the pretrained encoder up to
its `head_input` layer (fc7 for AlexNet, conv5 for ResNets), then ReLU,
global average pooling, dropout and a new linear classifier; every layer is
trained (SGD with momentum, step decay, gradient clipping, the new layer at
`classifier_lr_multiplier` x the rate); BatchNorm layers use batch
statistics while training and their running averages at test time. Before
the first step the encoder convs are rescaled (`rescale`: to their norms at
random init by default, or Krähenbühl et al.'s change-rate calibration):
the training-mode function stays the same, the effective learning rates
change; running statistics are re-estimated by fine-tuning itself.

Training crops are random-scale square crops with random flips, drawn anew
every epoch (grain, `load_example` of the labelled source); test images are
resized to `test_scale` x the crop size and scored by the mean probability
over 10 crops (4 corners + centre and their mirrors). Multi-label sets use
sigmoid outputs and report mAP (VOC "difficult"-only labels ignored), single-
label sets softmax and top-1 accuracy.

With `val_split`, the same scores on that split are added as `val_accuracy`
(`val_map`): what a learning-rate sweep chooses by (experiments/
finetune_sweep.py), so the test split is only ever reported.

Output in `--workdir`: `finetune.json` ({"map" | "accuracy", "per_class_ap",
"step", "val_accuracy", ...}), `finetune.md`, metrics.jsonl + TensorBoard events, and
checkpoints every `save_every` steps: an interrupted run resumes from the
last one (model, optimizer and data position); a non-finite loss stops the
run and keeps the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from typing import Any

import flax
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from flax import nnx
from PIL import Image

from mtssl import checkpointing
from mtssl.eval.classification import (
    average_precision,
    classification_loss,
    mean_average_precision,
    multilabel_accuracy,
)
from mtssl.cli import run_config_command
from mtssl.data import real
from mtssl.data.labeled import make_labeled
from mtssl.data.pipeline import normalize_images
from mtssl.mesh import (
    batch_sharding,
    data_mesh,
    local_to_global,
    replicated,
    same_to_global,
)
from mtssl.loop import (
    SavingLoop,
    check_finite,
    itstime,
    mean_metrics,
    say,
)
from mtssl.metric_writers import MetricWriter
from mtssl.pretrained import checkpoint_or_random_encoder, random_encoder

NUM_TEST_CROPS = 10


class Classifier(nnx.Module):
    """encoder taps[tap] -> ReLU -> global average pool -> dropout -> linear."""

    def __init__(self, encoder: nnx.Module, tap: str, channels: int, num_classes: int,
                 *, rngs: nnx.Rngs):
        self.encoder, self.tap = encoder, tap
        self.classifier = nnx.Linear(channels, num_classes, rngs=rngs)

    def __call__(self, images: jax.Array, dropout_key: jax.Array | None = None,
                 rate: float = 0.0) -> jax.Array:
        x = jax.nn.relu(self.encoder(images, upto=self.tap)[self.tap]).mean((1, 2))
        if dropout_key is not None and rate > 0:
            keep = jax.random.bernoulli(dropout_key, 1.0 - rate, x.shape)
            x = jnp.where(keep, x / (1.0 - rate), 0.0)
        return self.classifier(x)


@flax.struct.dataclass
class FinetuneState:
    step: jax.Array
    rng: jax.Array
    params: Any
    stats: Any
    opt: optax.OptState


@dataclasses.dataclass(frozen=True)
class Static:
    graphdef: Any
    tx: optax.GradientTransformation
    multilabel: bool
    dropout: float


def make_optimizer(config) -> optax.GradientTransformation:
    """SGD + momentum, L2 weight decay, global-norm clipping, step decay;
    the new classifier at `classifier_lr_multiplier` x the rate."""
    schedule = optax.exponential_decay(config.learning_rate, config.lr_decay_every,
                                       config.lr_decay_factor, staircase=True)

    def sgd(multiplier):
        return optax.chain(
            optax.add_decayed_weights(config.weight_decay),
            optax.sgd(lambda step: multiplier * schedule(step), momentum=config.momentum))

    def label(params):
        def which(path, _):
            return "classifier" if getattr(path[0], "key", None) == "classifier" else "encoder"
        return jax.tree_util.tree_map_with_path(which, params)

    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.multi_transform({"encoder": sgd(1.0),
                               "classifier": sgd(config.classifier_lr_multiplier)}, label))


def create(config, encoder, num_classes: int, multilabel: bool, image_size: int):
    """(Static, FinetuneState) from a frozen `pretrained.Encoder`."""
    module = nnx.merge(encoder.graphdef, encoder.params, encoder.stats, copy=True)
    tap = module.head_input
    shape = jax.eval_shape(lambda x: encoder.apply(x, upto=tap)[tap],
                           jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))
    model = Classifier(module, tap, shape.shape[-1], num_classes,
                       rngs=nnx.Rngs(config.seed))
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    tx = make_optimizer(config)
    static = Static(graphdef, tx, multilabel, float(config.dropout))
    state = FinetuneState(jnp.zeros((), jnp.int32), jax.random.key(config.seed), params,
                          stats, tx.init(params))
    return static, state


def initial_encoder_params(encoder, config):
    """The parameters of a random init of `encoder`'s architecture, laid out
    as in the Classifier's parameters."""
    return {"encoder": random_encoder(encoder.config, seed=config.seed).params}


def training_loss(params, stats, batch: dict[str, jax.Array], key: jax.Array, *,
                  static: Static):
    """(loss, updated BatchNorm statistics) of one training batch."""
    model = nnx.merge(static.graphdef, params, stats, copy=True)
    model.train()
    logits = model(batch["image"], dropout_key=key, rate=static.dropout)
    loss = classification_loss(logits, batch["label"], static.multilabel)
    return loss, nnx.state(model, nnx.BatchStat)


def train_step(state: FinetuneState, batch: dict[str, jax.Array], *, static: Static):
    key = jax.random.fold_in(state.rng, state.step)
    (loss, stats), grads = jax.value_and_grad(training_loss, has_aux=True)(
        state.params, state.stats, batch, key, static=static)
    updates, opt = static.tx.update(grads, state.opt, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
    return state.replace(step=state.step + 1, params=params, stats=stats, opt=opt), metrics


def _conv_group(path) -> str | None:
    """The encoder convolution a parameter belongs to (its kernel and, before
    a GroupNorm, its bias), or None for norm parameters and the classifier."""
    keys = [k for k in jax.tree_util.keystr(path, simple=True, separator="/").split("/")
            if k != "value"]
    if keys[0] != "encoder" or keys[-1] not in ("kernel", "bias") or any(
            "norm" in k for k in keys):
        return None
    return "/".join(keys[1:-1])


def conv_squared_norms(tree) -> dict[str, jax.Array]:
    """Per encoder convolution: the squared norm of its parameters in `tree`
    (parameters or their gradients)."""
    total: dict[str, jax.Array] = {}
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if (group := _conv_group(path)) is not None:
            total[group] = total.get(group, 0.0) + jnp.sum(jnp.square(x.astype(jnp.float32)))
    return total


def squared_gradient_norms(state: FinetuneState, batch: dict[str, jax.Array], *,
                           static: Static) -> dict[str, jax.Array]:
    """Per encoder convolution: ||dL/dW||^2 on one batch (training mode)."""
    grads = jax.grad(lambda p: training_loss(p, state.stats, batch, state.rng,
                                             static=static)[0])(state.params)
    return conv_squared_norms(grads)


def scale_convs(params, factors: dict[str, float]):
    """`params` with each encoder convolution's parameters times its factor.
    Every one is followed by a norm layer, so the network computes the same
    function (up to the norm's epsilon); what changes is its effective
    learning rate, about lr / ||W||^2 under SGD (van Laarhoven 2017)."""
    def scale(path, w):
        group = _conv_group(path)
        return w if group is None else w * jnp.asarray(factors[group], w.dtype)
    return jax.tree_util.tree_map_with_path(scale, params)


def init_norm_factors(params, initial_params) -> dict[str, float]:
    """Factors that give each convolution the norm it has at random
    initialisation (`initial_params`: the same architecture's), so a trained
    encoder starts fine-tuning at the effective learning rate of a random
    one; for a random encoder they are 1."""
    now, then = conv_squared_norms(params), conv_squared_norms(initial_params)
    return {g: float(np.sqrt(float(then[g]) / float(now[g]))) for g in now}


def change_rate_factors(params, gradient_sq: dict[str, float]) -> dict[str, float]:
    """Krähenbühl et al. (ICLR 2016), between-layer scale adjustment, for
    normalised networks: scaling a convolution by a scales its gradient by
    1/a and its change rate C = E||dL/dW||^2 / ||W||^2 by 1/a^4, and leaves
    the other layers' gradients as they are, so one pass suffices: each is
    scaled to the geometric mean of C over all of them."""
    weights_sq = {g: float(v) for g, v in conv_squared_norms(params).items()}
    rates = {g: gradient_sq[g] / weights_sq[g] for g in weights_sq}
    target = float(np.exp(np.mean(np.log(list(rates.values())))))
    return {g: (rate / target) ** 0.25 for g, rate in rates.items()}


def predict_probabilities(state: FinetuneState, images: jax.Array, *, static: Static):
    """(N * NUM_TEST_CROPS, H, W, 3) crops -> (N, C) mean probabilities."""
    model = nnx.merge(static.graphdef, state.params, state.stats, copy=True)
    model.eval()
    logits = model(images)
    probs = jax.nn.sigmoid(logits) if static.multilabel else jax.nn.softmax(logits)
    return probs.reshape(-1, NUM_TEST_CROPS, probs.shape[-1]).mean(1)


@dataclasses.dataclass(frozen=True)
class RandomScaleCrop(grain.transforms.RandomMap):
    """index -> a random-scale square crop (with a random flip) and the label."""

    source: Any
    size: int
    min_scale: float

    def random_map(self, index, rng: np.random.Generator):
        image, label = self.source.load_example(int(index))
        return {"image": real.crop_and_resize(image, self.size, "random_crop", rng,
                                              self.min_scale), "label": label}


def ten_crops(image: np.ndarray, size: int, scale: float) -> np.ndarray:
    """uint8 (H, W, 3) -> (10, size, size, 3): resized to round(scale * size)
    square, its 4 corners and centre, then their mirrors."""
    side = max(size, round(scale * size))
    im = np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR))
    far, mid = side - size, (side - size) // 2
    crops = [im[t:t + size, l:l + size]
             for t, l in ((0, 0), (0, far), (far, 0), (far, far), (mid, mid))]
    return np.stack(crops + [c[:, ::-1] for c in crops])


@dataclasses.dataclass(frozen=True)
class TenCrops(grain.transforms.Map):
    source: Any
    size: int
    scale: float

    def map(self, index):
        image, label = self.source.load_example(int(index))
        return {"image": ten_crops(image, self.size, self.scale), "label": label}


def _limit(n: int, limit: int) -> int:
    return n if limit <= 0 else min(n, limit)


def train_dataset(source, config, image_size: int, local_batch: int,
                  seed: int | None = None) -> grain.MapDataset:
    """This process's endless stream of augmented training batches."""
    seed = config.seed if seed is None else seed
    n = _limit(len(source), config.max_train_examples)
    indices = grain.MapDataset.range(n)[jax.process_index()::jax.process_count()]
    return (indices.shuffle(seed=seed).repeat()
            .random_map(RandomScaleCrop(source, image_size, config.min_scale),
                        seed=seed + 1)
            .batch(local_batch, drop_remainder=True))


def global_batch(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
    return local_to_global({"image": normalize_images(batch["image"]),
                            "label": batch["label"]}, sharding)


def evaluate(predict, state, source, config, image_size: int, sharding) -> dict[str, Any]:
    """10-crop scores on the test split (every process scores every image)."""
    n = _limit(len(source), config.max_test_examples)
    batch = config.batch_size
    dataset = grain.MapDataset.range(n).map(TenCrops(source, image_size, config.test_scale))
    loader = dataset.to_iter_dataset(grain.ReadOptions(num_threads=config.num_threads))
    scores, labels, pending = [], [], []

    def flush():
        images = np.concatenate([p["image"] for p in pending])
        count = len(pending)
        pad = (batch - count) * NUM_TEST_CROPS          # one compiled shape
        if pad:
            images = np.concatenate([images, np.repeat(images[-1:], pad, 0)])
        x = same_to_global(normalize_images(images), sharding)
        scores.append(np.asarray(jax.device_get(predict(state, x)))[:count])
        labels.extend(p["label"] for p in pending)
        pending.clear()

    for example in loader:
        pending.append(example)
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    scores, labels = np.concatenate(scores), np.stack(labels)
    if source.multilabel:
        aps = [average_precision(scores[:, c], labels[:, c]) for c in range(labels.shape[1])]
        return {"map": mean_average_precision(scores, labels),
                "accuracy": multilabel_accuracy(scores - 0.5, labels),
                "per_class_ap": dict(zip(source.class_names, aps)), "test_examples": n}
    return {"accuracy": float((scores.argmax(-1) == labels).mean()), "test_examples": n}


def rescaled(state: FinetuneState, static: Static, encoder, source, config,
             image_size: int, local_batch: int, sharding) -> FinetuneState:
    """`state` with its encoder convolutions rescaled as `config.rescale`
    says: "init_norm" to the norms of a random init of `encoder`'s
    architecture; "change_rate" by Krähenbühl's calibration, the
    gradients measured on `config.rescale_batches` training batches of their
    own random stream."""
    if config.rescale == "init_norm":
        factors = init_norm_factors(state.params, initial_encoder_params(encoder, config))
    else:
        measure = jax.jit(lambda s, b: squared_gradient_norms(s, b, static=static))
        batches = iter(train_dataset(source, config, image_size, local_batch,
                                     seed=config.seed + 7))
        total: dict[str, float] = {}
        for _ in range(config.rescale_batches):
            sq = jax.device_get(measure(state, global_batch(next(batches), sharding)))
            total = {g: total.get(g, 0.0) + float(v) for g, v in sq.items()}
        factors = change_rate_factors(state.params, total)
    say(f"{config.rescale} rescaling: "
        + ", ".join(f"{g} x{a:.3f}" for g, a in factors.items()))
    return jax.device_put(state.replace(params=scale_convs(state.params, factors)),
                          jax.tree.map(lambda x: x.sharding, state))


RESCALINGS = ("init_norm", "change_rate", "none")


def validate(config: ml_collections.ConfigDict) -> None:
    """Stops a bad fine-tuning config before any encoder is loaded or
    compiled, naming the valid values."""
    if config.rescale not in RESCALINGS:
        raise ValueError(f"rescale={config.rescale!r}; valid: {', '.join(RESCALINGS)}")
    for field in ("log_every", "save_every", "rescale_batches", "batch_size", "num_steps",
                  "lr_decay_every"):
        if config[field] < 1:
            raise ValueError(f"{field}={config[field]}; it must be >= 1")
    if not 0 < config.min_scale <= 1:
        raise ValueError(f"min_scale={config.min_scale}; it must be in (0, 1]")
    if not 0 <= config.dropout < 1:
        raise ValueError(f"dropout={config.dropout}; it must be in [0, 1)")
    if config.test_scale < 1:
        raise ValueError(f"test_scale={config.test_scale}; it must be >= 1")
    if config.dataset == "photos":       # its splits are regions of the same photographs
        for field in ("val_split", "test_split"):
            if config[field] and real.photo_parts_overlap(config.train_split, config[field]):
                raise ValueError(
                    f"{field}={config[field]!r} shares pixels with train_split="
                    f"{config.train_split!r} on photos: train on 'fit' to score 'val', on "
                    "'train' to score 'test'")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Fine-tunes (or resumes), evaluates, writes finetune.json / .md."""
    validate(config)
    workdir = epath.Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    encoder = checkpoint_or_random_encoder(config.checkpoint, config.model, config.seed)
    image_size = config.image_size or encoder.config.image_size
    devices = jax.device_count()
    if config.batch_size % devices:
        raise ValueError(f"batch_size={config.batch_size} does not divide over {devices} "
                         "devices")
    common = {"resolution": image_size, "seed": config.seed,
              "data_dir": config.data_dir or None, "num_records": config.photos_per_split}
    train_source = make_labeled(config.dataset, config.train_split, **common)
    test_source = make_labeled(config.dataset, config.test_split, **common)
    val_source = (make_labeled(config.dataset, config.val_split, **common)
                  if config.val_split else None)
    for name, source in (("train", train_source), ("test", test_source),
                         ("val", val_source)):
        if source is None:
            continue
        if not hasattr(source, "load_example"):
            raise ValueError(f"{config.dataset} ({name}) cannot give uncropped examples")
    num_classes, multilabel = len(train_source.class_names), train_source.multilabel

    mesh = data_mesh()
    data_sharding, everywhere = batch_sharding(mesh), replicated(mesh)
    static, initial = create(config, encoder, num_classes, multilabel, image_size)
    state_sharding = jax.tree.map(lambda _: everywhere, initial)
    step_fn = jax.jit(lambda s, b: train_step(s, b, static=static),
                      in_shardings=(state_sharding, data_sharding),
                      out_shardings=(state_sharding, everywhere), donate_argnums=(0,))
    predict = jax.jit(lambda s, x: predict_probabilities(s, x, static=static),
                      out_shardings=everywhere)

    local_batch = config.batch_size // jax.process_count()
    data_iter = iter(train_dataset(train_source, config, image_size, local_batch)
                     .to_iter_dataset(grain.ReadOptions(num_threads=config.num_threads,
                                                        prefetch_buffer_size=4)))
    checkpoints = checkpointing.RunCheckpoints(workdir / "checkpoints", keep=config.keep)
    abstract = jax.eval_shape(lambda: initial)
    state = checkpoints.restore(
        checkpointing.abstract_with_sharding(abstract, state_sharding), data_iter)
    if state is None:
        state = jax.device_put(initial, state_sharding)
        # A random encoder already has its init norms: nothing to rescale.
        if config.rescale == "change_rate" or (config.rescale == "init_norm"
                                               and encoder.step is not None):
            state = rescaled(state, static, encoder, train_source, config, image_size,
                             local_batch, data_sharding)
    start = int(jax.device_get(state.step))
    say(f"fine-tuning {config.checkpoint or 'random init'} on {config.dataset}: "
        f"{_limit(len(train_source), config.max_train_examples)} train / "
        f"{_limit(len(test_source), config.max_test_examples)} test, {num_classes} classes, "
        f"{'multi-label' if multilabel else 'single-label'}, steps {start}..{config.num_steps}")

    writer = MetricWriter(workdir, resume_step=start)
    history, window = [], time.perf_counter()
    with SavingLoop(checkpoints) as saving, contextlib.closing(writer):
        for step in range(start + 1, config.num_steps + 1):
            batch = next(data_iter)
            batch = global_batch(batch, data_sharding)
            state, metrics = step_fn(state, batch)
            history.append(metrics)
            stop = saving.stop_requested(step)
            save_now = itstime(step, config.save_every, config.num_steps) or stop
            if itstime(step, config.log_every, config.num_steps) or save_now:
                logged = mean_metrics(history)
                check_finite(logged, step, saving.last_good)
                elapsed = time.perf_counter() - window
                logged["images_per_s"] = len(history) * config.batch_size / elapsed
                writer.write_scalars(step, logged)
                say(f"step {step}/{config.num_steps}: loss {logged['loss']:.4f}, "
                    f"{logged['images_per_s']:.1f} img/s")
                history, window = [], time.perf_counter()
            if save_now:
                saving.save(step, state, data_iter, config)
            if stop:
                break
        saving.finish()
        start_eval = time.perf_counter()
        result = evaluate(predict, state, test_source, config, image_size, data_sharding)
        if val_source is not None:
            val = evaluate(predict, state, val_source, config, image_size, data_sharding)
            result.update({f"val_{k}": v for k, v in val.items()
                           if k in ("map", "accuracy")})
        result.update(step=int(jax.device_get(state.step)), checkpoint=config.checkpoint,
                      checkpoint_step=encoder.step, dataset=config.dataset,
                      image_size=image_size, eval_seconds=time.perf_counter() - start_eval)
        writer.write_scalars(result["step"], {f"test/{k}": v for k, v in result.items()
                                              if k in ("map", "accuracy")})
    if jax.process_index() == 0:
        (workdir / "finetune.json").write_text(json.dumps(
            {**result, "config": config.to_dict()}, indent=1, default=str))
        (workdir / "finetune.md").write_text(markdown(result))
        print(markdown(result), flush=True)
    return result


def markdown(result: dict[str, Any]) -> str:
    what = result["checkpoint"] or "random init"
    lines = [f"Fine-tuning {what} on {result['dataset']} ({result['step']} steps, "
             f"{result['image_size']} px, 10-crop test on {result['test_examples']} images)",
             ""]
    if "map" in result:
        lines += [f"mAP {100 * result['map']:.1f}", "", "| class | AP |", "|---|---|"]
        lines += [f"| {k} | {100 * v:.1f} |" for k, v in result["per_class_ap"].items()]
    else:
        lines += [f"top-1 accuracy {100 * result['accuracy']:.1f}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_config_command(run, "Fine-tuning config (configs/finetune.py).",
                       "Output directory (checkpoints, results).")
