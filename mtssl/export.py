"""Export a trained encoder to a plain `.npz`, BatchNorm folded into the convolutions.

    python -m mtssl.export --config=configs/export.py --workdir=runs/local \
        [--config.out=encoder.npz]      # default: <workdir>/encoder.npz

The file holds, for every convolution of the encoder, `<layer>/kernel`
(HWIO, float32) and `<layer>/bias`, with the inference-mode BatchNorm that
follows it folded in (kernel x gamma / sqrt(var + eps) per output channel,
bias beta - mean x that factor), and `meta`: a JSON string with the encoder
name, the taps, each layer's stride, padding and dilation, and the input
convention (uint8 RGB / 255 minus `input_mean`, NHWC). No pickle: load it
with `np.load(path)` anywhere. Layer names: AlexNet `conv1` .. `conv5`,
`fc6`, `fc7`; ResNets `conv1` (the stem) and `conv<s>/block<b>/conv<k>` and
`.../project` for the residual stages.

`npz_forward(weights, images)` recomputes the encoder's named taps from such
a file with plain convolutions (the reference for other frameworks; tested
to reproduce `pretrained.Encoder` outputs). GroupNorm encoders have no
fixed affine map to fold and are refused.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from mtssl.cli import run_config_command
from mtssl.data.pipeline import IMAGENET_MEAN
from mtssl.pretrained import Encoder, load_encoder


def fold(conv: nnx.Conv, norm: nnx.BatchNorm) -> tuple[np.ndarray, np.ndarray]:
    """(kernel, bias) of conv followed by norm in inference mode."""
    kernel = np.asarray(conv.kernel[...], np.float64)
    bias = (np.zeros(kernel.shape[-1]) if conv.bias is None
            else np.asarray(conv.bias[...], np.float64))
    factor = (np.asarray(norm.scale[...], np.float64)
              / np.sqrt(np.asarray(norm.var[...], np.float64) + norm.epsilon))
    shift = np.asarray(norm.bias[...], np.float64) - np.asarray(norm.mean[...]) * factor
    return (kernel * factor).astype(np.float32), (bias * factor + shift).astype(np.float32)


def _geometry(conv: nnx.Conv) -> dict[str, Any]:
    def pair(v):
        return list(v) if isinstance(v, (tuple, list)) else [v, v]
    return {"stride": pair(conv.strides), "dilation": pair(conv.kernel_dilation or 1),
            "padding": [list(p) for p in conv.padding]}


def export_weights(encoder: Encoder) -> dict[str, np.ndarray]:
    """{name: array} of the folded encoder, plus "meta" (see module doc)."""
    module = nnx.merge(encoder.graphdef, encoder.params, encoder.stats, copy=True)
    name = encoder.config.model.encoder
    if encoder.config.model.norm != "batch":
        raise ValueError(f"only BatchNorm encoders fold into plain convolutions "
                         f"(model.norm={encoder.config.model.norm!r})")
    pairs: list[tuple[str, nnx.Conv, nnx.BatchNorm]] = []
    if name == "alexnet":
        pairs = [(t, getattr(module, t), module.norms[t]) for t in module.taps]
    else:
        pairs.append(("conv1", module.stem, module.stem_norm))
        for stage, blocks in zip(module.taps[1:], module.stages):
            for b, block in enumerate(blocks):
                prefix = f"{stage}/block{b}"
                pairs += [(f"{prefix}/conv{k}", c, n)
                          for k, (c, n) in enumerate(zip(block.convs, block.norms))]
                if block.project is not None:
                    pairs.append((f"{prefix}/project", block.project, block.project_norm))
    out, layers = {}, {}
    for layer, conv, norm in pairs:
        out[f"{layer}/kernel"], out[f"{layer}/bias"] = fold(conv, norm)
        layers[layer] = _geometry(conv)
    out["meta"] = np.array(json.dumps({
        "encoder": name, "taps": list(module.taps), "layers": layers,
        "input": "uint8 RGB NHWC / 255 minus input_mean", "layout": "NHWC, HWIO",
        "input_mean": IMAGENET_MEAN.tolist(), "checkpoint_step": encoder.step}))
    return out


def save_npz(encoder: Encoder, path: str) -> None:
    np.savez(path, **export_weights(encoder))


def _conv(weights, meta, layer: str, x: jax.Array) -> jax.Array:
    g = meta["layers"][layer]
    y = jax.lax.conv_general_dilated(
        x, jnp.asarray(weights[f"{layer}/kernel"]), g["stride"],
        [tuple(p) for p in g["padding"]], rhs_dilation=g["dilation"],
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest")
    return y + jnp.asarray(weights[f"{layer}/bias"])


def _max_pool(x, stride: int, pad: int):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1),
                                 (1, stride, stride, 1),
                                 ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def npz_forward(weights, images: jax.Array) -> dict[str, jax.Array]:
    """Named pre-ReLU taps of normalised images from exported weights."""
    meta = json.loads(str(weights["meta"]))
    relu = jax.nn.relu
    taps = {}
    if meta["encoder"] == "alexnet":
        x = taps["conv1"] = _conv(weights, meta, "conv1", images)
        x = taps["conv2"] = _conv(weights, meta, "conv2", _max_pool(relu(x), 2, 0))
        x = taps["conv3"] = _conv(weights, meta, "conv3", _max_pool(relu(x), 2, 0))
        x = taps["conv4"] = _conv(weights, meta, "conv4", relu(x))
        x = taps["conv5"] = _conv(weights, meta, "conv5", relu(x))
        x = taps["fc6"] = _conv(weights, meta, "fc6", _max_pool(relu(x), 1, 1))
        taps["fc7"] = _conv(weights, meta, "fc7", relu(x))
        return taps
    x = taps["conv1"] = _conv(weights, meta, "conv1", images)
    x = _max_pool(relu(x), 2, 1)
    for stage in meta["taps"][1:]:
        b = 0
        while f"{stage}/block{b}/conv0" in meta["layers"]:
            prefix = f"{stage}/block{b}"
            y, k = x, 0
            while f"{prefix}/conv{k}" in meta["layers"]:
                y = _conv(weights, meta, f"{prefix}/conv{k}", y)
                k += 1
                if f"{prefix}/conv{k}" in meta["layers"]:
                    y = relu(y)
            shortcut = (_conv(weights, meta, f"{prefix}/project", x)
                        if f"{prefix}/project" in meta["layers"] else x)
            x = y + shortcut
            b += 1
            if f"{stage}/block{b}/conv0" in meta["layers"]:
                x = relu(x)
        taps[stage] = x
        x = relu(x)
    return taps


def run(config, workdir: str) -> str:
    """Exports the encoder of run `workdir` to `config.out` (default
    `<workdir>/encoder.npz`); returns the path."""
    encoder = load_encoder(workdir)
    out = config.out or str(epath.Path(workdir) / "encoder.npz")
    save_npz(encoder, out)
    print(f"wrote {out} (step {encoder.step}, {encoder.config.model.encoder})", flush=True)
    return out


if __name__ == "__main__":
    run_config_command(run, "Export config (configs/export.py).",
                       "The pretraining workdir (or checkpoint folder) to export.")
