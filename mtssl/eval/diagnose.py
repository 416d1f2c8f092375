"""What a pretraining checkpoint learned, in numbers: the first thing to look at
when a probe disappoints.

    python -m mtssl.eval.diagnose --config=configs/diagnose.py --workdir=runs/local \
        [--config.num_images=64] [--config.step=N]

Prints a report and writes `<workdir>/diagnose_<step>.json` with:
  weights      per layer (encoder, heads, discriminator): weight norm now, at
               initialisation (the run's own seed) and their ratio;
  activations  per encoder tap, on held-out synthetic scenes and on the run's
               real images: the share of dead units (channels whose ReLU
               output is zero for every image and position) and how far the
               BatchNorm running statistics are from the statistics of that
               domain's features (mean |running mean - batch mean| in units
               of the running standard deviation, and the mean of
               log(batch var / running var));
  conv1_colour_share   the share of conv1's filter energy outside the
               grey (channel-mean) component: 0 for a colour-blind filter bank
               (an encoder trained with the grayscale trick drifts there);
  discriminator the D accuracy and adversarial loss logged over the run
               (first, max, last): at 0.5 D has learned nothing;
  tasks        per task, the loss of the network's predictions on held-out
               scenes against a trivial predictor's (the best constant log
               depth, the mean normal, a constant 0.5 contour probability,
               which is the optimum of the class-balanced loss, the batch's
               class shares as semantic probabilities): a ratio near
               1 means the head learned no more than the constant; for
               contours also the loss of an oracle that knows the share of
               contour pixels in every 16x16 cell (the encoder's output
               stride) and predicts its loss-optimal probability there, which
               is about what a head that cannot place edges within a cell can
               reach (`contours_coarse_oracle_loss`);
  input_dependence  per task map, the variance across images of the
               predictions (mean over pixels) against that of the targets on
               held-out scenes, and the predictions' variance on real images:
               near 0 means the prediction is the same layout whatever the
               image.
  features     per encoder tap, the probe's view of it (post-ReLU, inference
               mode) on the photos probe's training crops (`num_photo_crops`),
               for the checkpoint and for its initial weights (the random
               baseline's encoder): `photo_share`, the share of the
               standardised, spatially averaged features' variance that lies
               between the 12 photographs rather than between crops of one
               (the linear probe needs it high), and `effective_rank`, exp of
               the entropy of the channel correlation spectrum over image
               positions (Roy & Vetterli 2007): how many directions the
               features use.
BatchNorm gaps are reported for AlexNet encoders (one norm per tap).
All of it is computed in inference mode (BatchNorm running statistics) on
images centre-cropped to the training size, as the evaluation does.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from mtssl import losses, steps
from mtssl.cli import run_config_command
from mtssl.data import labeled
from mtssl.data.pipeline import normalize_images
from mtssl.data.real import PHOTOS
from mtssl.data.scenes import SEMANTIC_CLASSES
from mtssl.data.sources import held_out_source, real_source, synthetic_batch
from mtssl.pretrained import load_run

NUM_CLASSES = len(SEMANTIC_CLASSES)


def weight_norms(params, initial) -> dict[str, dict[str, float]]:
    """{"path/to/layer": {"norm", "initial", "ratio"}} over every kernel."""
    out = {}
    flat_now = nnx.to_flat_state(params)
    flat_init = dict(nnx.to_flat_state(initial))
    for path, value in flat_now:
        if path[-1] != "kernel":
            continue
        now = float(np.linalg.norm(_array(value)))
        init = float(np.linalg.norm(_array(flat_init[path])))
        out["/".join(map(str, path[:-1]))] = {
            "norm": now, "initial": init, "ratio": now / init if init else math.nan}
    return out


def colour_share(kernel: np.ndarray) -> float:
    """Share of an (h, w, 3, c) filter bank's energy outside its grey part."""
    kernel = _array(kernel)
    grey = kernel.mean(axis=2, keepdims=True)
    return float(np.sum((kernel - grey) ** 2) / max(np.sum(kernel ** 2), 1e-30))


def tap_statistics(taps: dict[str, jax.Array], stats) -> dict[str, dict[str, float]]:
    """Dead units and the BN running statistics' distance to a domain's own."""
    out = {}
    for name, x in taps.items():
        x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
        norm = stats["norms"][name] if "norms" in stats else None
        out[name] = {"dead_share": float(np.mean((x > 0).sum(0) == 0))}
        if norm is not None and "mean" in norm:
            # The tap is BatchNorm's output: undo its affine to reach its input.
            out[name].update(_bn_gap(x, norm))
    return out


def _array(x) -> np.ndarray:
    return np.asarray(x[...] if isinstance(x, nnx.Variable) else x, np.float64)


def _bn_gap(normalised: np.ndarray, norm) -> dict[str, float]:
    """The BN input's batch statistics against the running ones, from the
    output y = (x - m) / s * scale + bias in inference mode: (x - m) / s =
    (y - bias) / scale, so the input's mean offset is mean((y - bias)/scale)
    running standard deviations and its variance ratio var((y - bias)/scale)."""
    scale = _array(norm["scale"]) if "scale" in norm else 1.0
    bias = _array(norm["bias"]) if "bias" in norm else 0.0
    z = (normalised - bias) / np.where(np.abs(scale) > 1e-12, scale, 1e-12)
    return {"mean_offset_std": float(np.mean(np.abs(z.mean(0)))),
            "log_var_ratio": float(np.mean(np.log(np.maximum(z.var(0), 1e-12))))}


def trivial_losses(batch: dict[str, np.ndarray], static: steps.Static) -> dict[str, float]:
    """Each task's loss for the trivial predictor of the module docstring."""
    valid = batch["depth"] > 0
    log_depth = np.log(np.where(valid, batch["depth"], 1.0))
    mean_normal = batch["normals"][valid].mean(0)
    shape = batch["depth"].shape
    preds = {"depth": np.full(shape, log_depth[valid].mean(), np.float32),
             "normals": np.broadcast_to(mean_normal, (*shape, 3)).astype(np.float32),
             "contours": np.zeros(shape, np.float32)}
    if "semantics" in static.tasks:
        preds["semantics"] = np.broadcast_to(
            np.log(class_shares(batch["semantics"]) + 1e-6), (*shape, NUM_CLASSES))
    preds = {t: preds[t].astype(np.float32) for t in static.tasks}
    return {k: float(v) for k, v in steps.task_losses(
        jax.tree.map(jnp.asarray, preds), jax.tree.map(jnp.asarray, batch), static).items()}


def class_shares(labels: np.ndarray) -> np.ndarray:
    """Share of each semantic class among the labelled pixels."""
    labels = labels[(labels >= 0) & (labels < NUM_CLASSES)]
    return np.bincount(labels, minlength=NUM_CLASSES) / max(labels.size, 1)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


ORACLE_CELL = 16      # AlexNet's (and the dilated ResNets') output stride


def contour_oracle_loss(contours: np.ndarray, weighting: str, cell: int = ORACLE_CELL) -> float:
    """The contour loss of the coarse oracle of the module docstring: per
    image, the contour share q of each cell x cell block, bilinearly
    upsampled, turned into the logit that minimises the weighted
    cross-entropy there, log(w_pos q / (w_neg (1 - q)))."""
    target = jnp.asarray(contours, jnp.float32)
    n, h, w = target.shape
    hc, wc = -(-h // cell), -(-w // cell)
    padded = jnp.pad(target, ((0, 0), (0, hc * cell - h), (0, wc * cell - w)), mode="edge")
    share = padded.reshape(n, hc, cell, wc, cell).mean((2, 4))
    share = jax.image.resize(share, (n, hc * cell, wc * cell), "linear")[:, :h, :w]
    share = jnp.clip(share, 1e-4, 1 - 1e-4)
    pos = target.mean((1, 2), keepdims=True)
    w_pos, w_neg = {"reference": ((1 - pos) / jnp.maximum(pos, 1 / (h * w)), 1.0),
                    "hed": (1 - pos, pos), "none": (1.0, 1.0)}[weighting]
    logits = jnp.log(w_pos * share) - jnp.log(w_neg * (1 - share))
    return float(losses.contour_loss(logits, target, weighting=weighting))


def _across_images_variance(x: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Variance across images per pixel (and channel), averaged."""
    x = np.asarray(x, np.float64)
    if mask is None:
        return float(x.var(0).mean())
    m = mask.astype(np.float64)
    while m.ndim < x.ndim:
        m = m[..., None]
    count = np.maximum(m.sum(0), 1)
    mean = (x * m).sum(0) / count
    var = (((x - mean) ** 2) * m).sum(0) / count
    return float(var[(m.sum(0) > 1).squeeze()].mean()) if var.ndim else float(var)


def input_dependence(preds_syn, batch, preds_real) -> dict[str, dict[str, float]]:
    valid = batch["depth"] > 0
    labelled = (batch["semantics"] >= 0) & (batch["semantics"] < NUM_CLASSES)
    targets = {"depth": np.log(np.where(valid, batch["depth"], 1.0)),
               "normals": batch["normals"], "contours": batch["contours"],
               "semantics": np.eye(NUM_CLASSES)[np.where(labelled, batch["semantics"], 0)]}

    def probs(pred, task):
        if task == "contours":
            return 1 / (1 + np.exp(-pred))
        return _softmax(pred) if task == "semantics" else pred

    masks = {"depth": valid, "normals": valid, "contours": None, "semantics": labelled}
    out = {}
    for task, pred in preds_syn.items():
        mask = masks[task]
        entry = {
            "prediction_var_synthetic": _across_images_variance(probs(pred, task), mask),
            "target_var_synthetic": _across_images_variance(
                targets[task].astype(np.float32), mask)}
        entry["ratio_synthetic"] = (entry["prediction_var_synthetic"]
                                    / max(entry["target_var_synthetic"], 1e-12))
        if preds_real is not None:
            entry["prediction_var_real"] = _across_images_variance(
                probs(preds_real[task], task))
            entry["ratio_real"] = (entry["prediction_var_real"]
                                   / max(entry["target_var_synthetic"], 1e-12))
        out[task] = entry
    return out


def _standardised(rows: np.ndarray) -> np.ndarray | None:
    """(samples, channels) with each non-constant channel at mean 0, sd 1 and
    the constant ones left out; None if every channel is constant."""
    rows = np.asarray(rows, np.float64)
    sd = rows.std(0)
    keep = sd > 1e-12 * max(float(np.abs(rows).max(initial=0.0)), 1e-30)
    if not keep.any():
        return None
    return (rows[:, keep] - rows[:, keep].mean(0)) / sd[keep]


def effective_rank(rows: np.ndarray) -> float:
    """exp(entropy) of the eigenvalue shares of the correlation matrix of
    `rows` (samples, channels); constant channels are left out (0 if all are)."""
    z = _standardised(rows)
    if z is None:
        return 0.0
    eigenvalues = np.clip(np.linalg.eigvalsh(z.T @ z / len(z)), 0.0, None)
    p = eigenvalues[eigenvalues > 0] / eigenvalues.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def between_group_share(rows: np.ndarray, groups: np.ndarray) -> float:
    """Share of the variance of the standardised `rows` (samples, channels)
    that lies between the groups' means (1: rows are constant within each
    group; about (groups - 1) / samples for rows unrelated to the groups)."""
    z = _standardised(rows)
    if z is None:
        return 0.0
    means = np.zeros_like(z)
    for g in np.unique(groups):
        means[groups == g] = z[groups == g].mean(0)
    return float(np.sum(means ** 2) / np.sum(z ** 2))


POSITIONS_PER_CROP = 16     # image positions per crop that enter the effective rank


def feature_geometry(features_of, images: np.ndarray, labels: np.ndarray,
                     chunk: int = 64) -> dict[str, dict[str, float]]:
    """`features_of(images)` -> {tap: (n, h, w, c) post-ReLU}; per tap the
    photo_share and effective_rank of the module docstring. Positions are a
    fixed draw, so the same images give the same figures."""
    pooled, positions = {}, {}
    rng = np.random.default_rng(0)
    for start in range(0, len(images), chunk):
        for name, x in features_of(images[start:start + chunk]).items():
            x = np.asarray(x, np.float64)
            n, h, w, c = x.shape
            pooled.setdefault(name, []).append(x.mean((1, 2)))
            flat = x.reshape(n, h * w, c)
            picks = rng.integers(0, h * w, size=(n, min(POSITIONS_PER_CROP, h * w)))
            positions.setdefault(name, []).append(
                np.take_along_axis(flat, picks[..., None], axis=1).reshape(-1, c))
    return {name: {"photo_share": between_group_share(np.concatenate(pooled[name]), labels),
                   "effective_rank": effective_rank(np.concatenate(positions[name])),
                   "channels": int(pooled[name][0].shape[-1])}
            for name in pooled}


def discriminator_history(workdir: epath.Path) -> dict[str, float]:
    path = workdir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    rows = [r for r in rows if "d_accuracy" in r]
    if not rows:
        return {}
    acc = [r["d_accuracy"] for r in rows]
    adv = [r["loss/adversarial"] for r in rows if "loss/adversarial" in r]
    out = {"d_accuracy_first": acc[0], "d_accuracy_max": max(acc),
           "d_accuracy_last": acc[-1], "logged_rows": len(rows)}
    if adv:
        out.update(adversarial_first=adv[0], adversarial_last=adv[-1])
    return out


def diagnose(workdir: str, *, num_images: int = 64, step: int | None = None,
             num_photo_crops: int = 240) -> dict:
    """The report of the module docstring, as a dict."""
    workdir = epath.Path(workdir)
    config, static, state, step = load_run(workdir, step)
    _, init = steps.create(config, config.image_size, jax.random.key(config.seed))
    initial = steps.initial_state(init, jax.random.key(config.seed))

    held_out = held_out_source(config)
    batch = synthetic_batch(held_out, np.arange(num_images), config.image_size)
    real = real_source(config)          # a run without DA still has a real domain
    if hasattr(real, "render_batch"):
        real_images = real.render_batch(np.arange(num_images))["image"]
    else:
        real_images = np.stack([real[i]["image"] for i in range(min(num_images, len(real)))])

    @jax.jit
    def forward(state, images):
        model = nnx.merge(static.g_def, state.g_params, state.g_stats, copy=True)
        model.eval()
        return model(images)

    def run(weights, images):
        return jax.device_get(forward(weights, jnp.asarray(normalize_images(images))))

    def post_relu_taps(weights):
        return lambda images: {name: np.maximum(x, 0)
                               for name, x in run(weights, images)[0].items()}

    photos = labeled.make_labeled("photos", "train", resolution=config.image_size,
                                  seed=config.seed, num_records=num_photo_crops)
    photo_records = [photos[i] for i in range(len(photos))]
    photo_images = np.stack([r["image"] for r in photo_records])
    photo_labels = np.array([int(r["label"]) for r in photo_records])

    taps_syn, preds_syn = run(state, batch["image"])
    taps_real, preds_real = run(state, real_images)
    g_stats = jax.device_get(state.g_stats)["encoder"]
    g_params = jax.device_get(state.g_params)
    norm_state = {"norms": {name: {**g_stats["norms"][name],
                                   **g_params["encoder"]["norms"][name]}
                            for name in g_stats["norms"]}} if "norms" in g_stats else {}

    model_losses = {k: float(v) for k, v in steps.task_losses(
        jax.tree.map(jnp.asarray, preds_syn), jax.tree.map(jnp.asarray, batch),
        static).items()}
    trivial = trivial_losses(batch, static)
    report = {
        "workdir": str(workdir), "step": step, "num_images": num_images,
        "weights": {**{f"g/{k}": v for k, v in weight_norms(
            state.g_params, initial.g_params).items()},
                    **{f"d/{k}": v for k, v in weight_norms(
                        state.d_params, initial.d_params).items()}},
        "activations": {"synthetic": tap_statistics(taps_syn, norm_state),
                        "real": tap_statistics(taps_real, norm_state)},
        "conv1_colour_share": {
            "now": colour_share(g_params["encoder"]["conv1"]["kernel"]),
            "initial": colour_share(jax.device_get(initial.g_params)["encoder"]["conv1"]
                                    ["kernel"])},
        "discriminator": discriminator_history(workdir),
        "tasks": {t: {"loss": model_losses[t], "trivial_loss": trivial[t],
                      "ratio": model_losses[t] / max(trivial[t], 1e-12)}
                  for t in static.tasks},
        **({"contours_coarse_oracle_loss": contour_oracle_loss(
            batch["contours"], static.contour_weighting)} if "contours" in static.tasks
           else {}),
        "input_dependence": input_dependence(preds_syn, batch, preds_real),
        "features": {
            "num_photo_crops": len(photo_images),
            "now": feature_geometry(post_relu_taps(state), photo_images, photo_labels),
            "initial": feature_geometry(post_relu_taps(initial), photo_images,
                                        photo_labels)},
    }
    return report


def summary(report: dict) -> str:
    """A page of the report for the console."""
    lines = [f"Diagnostics of {report['workdir']} at step {report['step']} "
             f"({report['num_images']} images per domain)", "",
             "| layer | weight norm | x init |", "|---|---|---|"]
    lines += [f"| {k} | {v['norm']:.3g} | {v['ratio']:.2f} |"
              for k, v in report["weights"].items()]
    lines += ["", "| tap | dead syn | dead real | BN offset syn | BN offset real | "
              "log var ratio syn | log var ratio real |", "|---|---|---|---|---|---|---|"]
    syn, real = report["activations"]["synthetic"], report["activations"]["real"]
    for name in syn:
        s, r = syn[name], real[name]
        lines.append(f"| {name} | {s['dead_share']:.2f} | {r['dead_share']:.2f} | "
                     f"{s.get('mean_offset_std', math.nan):.2f} | "
                     f"{r.get('mean_offset_std', math.nan):.2f} | "
                     f"{s.get('log_var_ratio', math.nan):+.2f} | "
                     f"{r.get('log_var_ratio', math.nan):+.2f} |")
    c = report["conv1_colour_share"]
    lines += ["", f"conv1 colour share: {c['now']:.2f} (initial {c['initial']:.2f})"]
    if report["discriminator"]:
        d = report["discriminator"]
        lines.append(f"D accuracy: first {d['d_accuracy_first']:.2f}, max "
                     f"{d['d_accuracy_max']:.2f}, last {d['d_accuracy_last']:.2f}")
    lines += ["", "| task | loss | trivial | ratio | pred/target var (syn) | "
              "pred var real / target var |", "|---|---|---|---|---|---|"]
    for t, v in report["tasks"].items():
        dep = report["input_dependence"][t]
        lines.append(f"| {t} | {v['loss']:.4f} | {v['trivial_loss']:.4f} | "
                     f"{v['ratio']:.2f} | {dep['ratio_synthetic']:.2f} | "
                     f"{dep.get('ratio_real', math.nan):.2f} |")
    f = report["features"]
    lines += ["", f"Probe taps (post-ReLU) on {f['num_photo_crops']} photos-probe crops, "
              "now against the initial weights:", "",
              "| tap | photo share | photo share init | effective rank | "
              "effective rank init | channels |", "|---|---|---|---|---|---|"]
    for name, now in f["now"].items():
        init = f["initial"][name]
        lines.append(f"| {name} | {now['photo_share']:.2f} | {init['photo_share']:.2f} | "
                     f"{now['effective_rank']:.1f} | {init['effective_rank']:.1f} | "
                     f"{now['channels']} |")
    if "contours_coarse_oracle_loss" in report:
        lines.append(f"\ncontours: a {ORACLE_CELL}x{ORACLE_CELL}-cell oracle reaches "
                     f"{report['contours_coarse_oracle_loss']:.4f}")
    return "\n".join(lines) + "\n"


def run(config, workdir: str) -> dict:
    """Diagnoses run `workdir` as `config` (configs/diagnose.py) says, writes
    `<workdir>/diagnose_<step>.json` and prints the summary."""
    if config.num_images < 1:
        raise ValueError(f"num_images={config.num_images}; it must be >= 1")
    if config.num_photo_crops < 2 * len(PHOTOS):
        raise ValueError(f"num_photo_crops={config.num_photo_crops}; it must be >= "
                         f"{2 * len(PHOTOS)} (two per photograph)")
    report = diagnose(workdir, num_images=config.num_images,
                      step=None if config.step < 0 else config.step,
                      num_photo_crops=config.num_photo_crops)
    if jax.process_index() == 0:
        out = epath.Path(workdir) / f"diagnose_{report['step']}.json"
        out.write_text(json.dumps(report, indent=1))
        print(summary(report), flush=True)
        print(f"written to {out}", flush=True)
    return report


if __name__ == "__main__":
    run_config_command(run, "Diagnostics config (configs/diagnose.py).",
                       "The pretraining workdir to diagnose.")
