"""Comparison: the same pretraining step in PyTorch eager (CPU), for bench_train.

Not a project dependency: run it in a throwaway environment,

    python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.13.0 numpy
    /tmp/torchenv/bin/python experiments/bench_torch.py            # paper + runlocal, 96/227
    /tmp/torchenv/bin/python experiments/bench_torch.py --channels_last

The network is mtssl's (configs/pretrain.py, or :runlocal's widths):
AlexNet-BN conv1..conv5, the dilated fc6 and 1x1 fc7, three heads of four
stride-2 transposed convolutions (kernels 3, 3, 5, 3; bilinear resize where
the size differs), the conv5 patch discriminator; one step = D update (SGD
momentum, weight decay) on detached conv5 features of both domains, then G
update (Adam) on the three task losses plus the adversarial term, batch
`batch` synthetic + `batch` real. The feature pools are left out (a copy).
Each (config, resolution) runs in its own subprocess; rows as bench_train's
(`config`, `resolution`, `batch`, `images_per_s`, `peak_rss_mb`, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from _machine import cpu_machine, machine_label

WIDTHS = {  # config -> (encoder width, head channels, discriminator width)
    "configs/pretrain.py": (1.0, 64, 1.0),
    "configs/pretrain.py:runlocal": (0.25, 32, 0.25),
}


def scaled(channels: int, width: float) -> int:
    return max(8, round(channels * width))


def build(width: float, head_channels: int, disc_width: float):
    import torch
    from torch import nn

    ch = {k: scaled(v, width) for k, v in {"conv1": 96, "conv2": 256, "conv3": 384,
                                           "conv4": 384, "conv5": 256, "fc6": 4096,
                                           "fc7": 4096}.items()}

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, ch["conv1"], 11, 4, 2, bias=False)
            self.conv2 = nn.Conv2d(ch["conv1"], ch["conv2"], 5, 1, 2, bias=False)
            self.conv3 = nn.Conv2d(ch["conv2"], ch["conv3"], 3, 1, 1, bias=False)
            self.conv4 = nn.Conv2d(ch["conv3"], ch["conv4"], 3, 1, 1, bias=False)
            self.conv5 = nn.Conv2d(ch["conv4"], ch["conv5"], 3, 1, 1, bias=False)
            self.fc6 = nn.Conv2d(ch["conv5"], ch["fc6"], 6, 1, 5, dilation=2, bias=False)
            self.fc7 = nn.Conv2d(ch["fc6"], ch["fc7"], 1, bias=False)
            self.norms = nn.ModuleDict({k: nn.BatchNorm2d(c) for k, c in ch.items()})

        def forward(self, x, upto=None):
            n, relu = self.norms, torch.relu
            pool = nn.functional.max_pool2d
            x = n["conv1"](self.conv1(x))
            x = n["conv2"](self.conv2(pool(relu(x), 3, 2)))
            x = n["conv3"](self.conv3(pool(relu(x), 3, 2)))
            x = n["conv4"](self.conv4(relu(x)))
            conv5 = x = n["conv5"](self.conv5(relu(x)))
            if upto == "conv5":
                return conv5, None
            x = n["fc6"](self.fc6(pool(relu(x), 3, 1, 1)))
            return conv5, n["fc7"](self.fc7(relu(x)))

    class Head(nn.Module):
        def __init__(self, out):
            super().__init__()
            layers, cin = [], ch["fc7"]
            for i, k in enumerate((3, 3, 5, 3)):
                last = i == 3
                layers.append(nn.ConvTranspose2d(cin, out if last else head_channels, k, 2,
                                                 bias=last))
                if not last:
                    layers += [nn.BatchNorm2d(head_channels), nn.ReLU()]
                cin = head_channels
            self.layers = nn.Sequential(*layers)

        def forward(self, x, size):
            y = self.layers(torch.relu(x))
            if y.shape[-2:] != size:
                y = nn.functional.interpolate(y, size=size, mode="bilinear")
            return y

    dc = scaled(512, disc_width)
    disc = nn.Sequential(
        nn.Conv2d(ch["conv5"], dc, 3, 2, bias=False), nn.BatchNorm2d(dc), nn.LeakyReLU(0.2),
        nn.Conv2d(dc, dc, 1, bias=False), nn.BatchNorm2d(dc), nn.LeakyReLU(0.2),
        nn.Conv2d(dc, 1, 1))
    heads = nn.ModuleDict({"depth": Head(1), "normals": Head(3), "contours": Head(1)})
    return Encoder(), heads, disc


def bench_one(config: str, resolution: int, batch: int, repeats: int,
              channels_last: bool) -> dict:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    encoder, heads, disc = build(*WIDTHS[config])
    g_params = list(encoder.parameters()) + list(heads.parameters())
    g_opt = torch.optim.Adam(g_params, lr=1e-3, betas=(0.5, 0.999))
    d_opt = torch.optim.SGD(disc.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for m in (encoder, heads, disc):
        m.to(memory_format=fmt)
    size = (resolution, resolution)
    syn = torch.randn(batch, 3, *size).to(memory_format=fmt)
    real = torch.randn(batch, 3, *size).to(memory_format=fmt)
    depth = torch.rand(batch, 1, *size) * 7 + 0.5
    normals = F.normalize(torch.randn(batch, 3, *size), dim=1)
    contours = (torch.rand(batch, 1, *size) < 0.1).float()
    bce = F.binary_cross_entropy_with_logits

    def step():
        conv5, fc7 = encoder(syn)
        with torch.no_grad():
            real5, _ = encoder(real, upto="conv5")
        d_fake, d_real = disc(conv5.detach()), disc(real5)
        d_loss = (bce(d_fake, torch.zeros_like(d_fake)) + bce(d_real, torch.ones_like(d_real)))
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()
        pred_depth = heads["depth"](fc7, size)
        pred_normals = F.normalize(heads["normals"](fc7, size), dim=1)
        pred_contours = heads["contours"](fc7, size)
        adv = disc(conv5)
        g_loss = (5 * F.l1_loss(pred_depth, torch.log(depth))
                  + 10 * (1 - (pred_normals * normals).sum(1)).mean()
                  + bce(pred_contours, contours) + 0.05 * bce(adv, torch.ones_like(adv)))
        g_opt.zero_grad(set_to_none=True)
        g_loss.backward()     # D's gradients from this pass are discarded by its zero_grad
        g_opt.step()

    start = time.perf_counter()
    step()
    warmup_s = time.perf_counter() - start
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"kind": "step", "framework": f"pytorch {torch.__version__} eager"
            + (" channels_last" if channels_last else ""), "config": config,
            "resolution": resolution, "batch": batch, "images_per_s": batch / median,
            "steps_per_s": 1 / median, "best_images_per_s": batch / min(times),
            "compile_s": warmup_s, "repeats": repeats,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(WIDTHS))
    parser.add_argument("--resolutions", type=int, nargs="+", default=[96, 227])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--out", default="experiments/results/bench_torch.json")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(bench_one(args.one[0], int(args.one[1]), args.batch, args.repeats,
                                   args.channels_last)))
        return
    info = cpu_machine()
    label = machine_label(info)
    rows = []
    for config in args.configs:
        for res in args.resolutions:
            command = [sys.executable, __file__, "--one", config, str(res), "--batch",
                       str(args.batch), "--repeats", str(args.repeats)]
            if args.channels_last:
                command.append("--channels_last")
            proc = subprocess.run(command, capture_output=True, text=True, check=True)
            row = json.loads(proc.stdout.strip().splitlines()[-1]) | {"machine": info}
            rows.append(row)
            print(f"{row['framework']:>38s} {config:>30s} {res:4d} px batch {args.batch}: "
                  f"{row['images_per_s']:7.1f} img/s, peak RSS {row['peak_rss_mb']:.0f} MB [{label}]",
                  flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
