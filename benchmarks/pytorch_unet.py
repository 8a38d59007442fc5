#!/usr/bin/env python3
"""The DeepQSM U-Net in PyTorch, timed the way benchmarks/bench_unet.cpp times ours.

Same layers (core/nn/unet.h): per level two 3x3x3 conv + ReLU (+ dropout in the
encoder and bottleneck), 2x2x2 max-pool, 2x2x2 stride-2 transposed conv + ReLU,
concat [upsampled | skip], a 1x1x1 linear head; He-normal init, MSE loss,
Adam (1e-3, 0.9, 0.99). Run in its fastest reasonable configuration:
cudnn.benchmark, channels_last_3d, and on a GPU optionally AMP bf16 and
torch.compile.

  python3 benchmarks/pytorch_unet.py train --depth 5 --base 16 --patch 64 --batch 40
  python3 benchmarks/pytorch_unet.py infer --size 160 160 160 [--device cuda --amp --compile]

Prints one human line and one JSON line, like deepqsm_bench_unet.
"""
import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class UNet(nn.Module):
    def __init__(self, depth=5, base=16, dropout=0.05):
        super().__init__()
        self.depth, self.p = depth, dropout
        f = [base << i for i in range(depth)]
        self.enc = nn.ModuleList(
            nn.ModuleList([nn.Conv3d(1 if i == 0 else f[i - 1], f[i], 3, padding=1),
                           nn.Conv3d(f[i], f[i], 3, padding=1)]) for i in range(depth))
        self.up = nn.ModuleList(nn.ConvTranspose3d(f[i + 1], f[i], 2, stride=2)
                                for i in range(depth - 1))
        self.dec = nn.ModuleList(
            nn.ModuleList([nn.Conv3d(2 * f[i], f[i], 3, padding=1),
                           nn.Conv3d(f[i], f[i], 3, padding=1)]) for i in range(depth - 1))
        self.head = nn.Conv3d(f[0], 1, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x):
        skips = []
        for i, (c0, c1) in enumerate(self.enc):
            x = F.dropout(F.relu(c0(x)), self.p, self.training)
            x = F.dropout(F.relu(c1(x)), self.p, self.training)
            if i < self.depth - 1:
                skips.append(x)
                x = F.max_pool3d(x, 2)
        for i in reversed(range(self.depth - 1)):
            x = torch.cat([F.relu(self.up[i](x)), skips[i]], dim=1)
            x = F.relu(self.dec[i][1](F.relu(self.dec[i][0](x))))
        return self.head(x)


def timed(fn, repeats, device):
    fn()  # warm-up (cudnn.benchmark autotuning, compilation)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["train", "infer"])
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=40)
    ap.add_argument("--size", type=int, nargs=3, default=[160, 160, 160])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--amp", action="store_true", help="autocast to bf16")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    a = ap.parse_args()

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.backends.cudnn.benchmark = True
    dev = torch.device(a.device)
    model = UNet(a.depth, a.base).to(dev).to(memory_format=torch.channels_last_3d)
    if a.compile:
        model = torch.compile(model)
    amp = torch.autocast(a.device, dtype=torch.bfloat16, enabled=a.amp)
    if a.mode == "train":
        shape = (a.batch, 1, a.patch, a.patch, a.patch)
        x = torch.randn(shape, device=dev).to(memory_format=torch.channels_last_3d)
        t = torch.randn(shape, device=dev).to(memory_format=torch.channels_last_3d)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
        model.train()

        def step():
            opt.zero_grad(set_to_none=True)
            with amp:
                loss = F.mse_loss(model(x).float(), t)
            loss.backward()
            opt.step()

        sec = timed(step, a.repeats, a.device)
        what = f"batch {a.batch} of {a.patch}^3: {1e3 * sec:.1f} ms/step, {a.batch / sec:.2f} samples/s"
        result = {"bench": "train", "ms_per_step": 1e3 * sec, "samples_per_s": a.batch / sec}
    else:
        x = torch.randn((1, 1, *a.size), device=dev).to(memory_format=torch.channels_last_3d)
        model.eval()

        def fwd():
            with torch.no_grad(), amp:
                model(x)

        sec = timed(fwd, a.repeats, a.device)
        what = f"volume {'x'.join(map(str, a.size))}: {1e3 * sec:.1f} ms"
        result = {"bench": "infer", "size": a.size, "ms": 1e3 * sec}
    peak = (torch.cuda.max_memory_allocated() / 2**20 if a.device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    backend = f"pytorch {torch.__version__} {a.device}" + (" amp-bf16" if a.amp else "") + (
        " compiled" if a.compile else "")
    print(f"{a.mode}  {backend}: depth {a.depth} base {a.base}, {what}, peak {peak:.0f} MiB, "
          f"threads {torch.get_num_threads()}")
    result.update(backend=backend, depth=a.depth, base=a.base, peak_mib=peak)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
