#!/usr/bin/env python3
"""Writes unet_small.h5: a PyTorch reference for the DeepQSM U-Net of core/nn/unet.h.

The network is written out with torch.nn.functional (not nn.Module) so every
op, its order and every parameter layout can be read next to core/nn/unet.h.
All values (parameters, input, target) are drawn in float64, rounded to
float32 and then used in float64: the stored float32 inputs are exactly what
the reference saw, and the only error left in the C++ comparison is the C++
side's own float32 arithmetic.

Cases (dropout is 0 in both; dropout is tested on its own in the backend
tests, its masks come from our Philox stream that PyTorch does not have):
  /            depth 3, base_filters 4, head_kernel 1, residual true
  /plain/      depth 3, base_filters 4, head_kernel 3, residual false
Both read the same /x and /target. Each case holds y, loss, params/<name>,
grads/<name> and params_after_adam/<name> (one torch.optim.Adam step,
lr 1e-3, betas (0.9, 0.99), eps 1e-8), all in our layouts:
  activations (N, D, H, W, C); conv weights (Co, k, k, k, Ci);
  transposed-conv weights (Ci, 2, 2, 2, Co); biases (Co).

Usage: python3 make_unet_reference.py [out.h5]   (default: next to this file)
"""
import os
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

DEPTH = 3
BASE = 4
N, S = 2, 16  # input (N, S, S, S, 1)
ADAM = dict(lr=1e-3, betas=(0.9, 0.99), eps=1e-8)


def f32(t):
    """Round a float64 tensor to float32 precision, keep it float64."""
    return t.float().double()


def param_specs(head_kernel):
    """(name, PyTorch shape, kind) in core/nn/unet.h's flat-buffer order."""
    fs = [BASE * 2**i for i in range(DEPTH)]
    specs = []
    for i in range(DEPTH):
        cin = 1 if i == 0 else fs[i - 1]
        specs += [(f"enc{i}.conv0.w", (fs[i], cin, 3, 3, 3), "conv"), (f"enc{i}.conv0.b", (fs[i],), "bias"),
                  (f"enc{i}.conv1.w", (fs[i], fs[i], 3, 3, 3), "conv"), (f"enc{i}.conv1.b", (fs[i],), "bias")]
    for i in range(DEPTH - 2, -1, -1):
        specs += [(f"up{i}.w", (fs[i + 1], fs[i], 2, 2, 2), "deconv"), (f"up{i}.b", (fs[i],), "bias"),
                  (f"dec{i}.conv0.w", (fs[i], 2 * fs[i], 3, 3, 3), "conv"), (f"dec{i}.conv0.b", (fs[i],), "bias"),
                  (f"dec{i}.conv1.w", (fs[i], fs[i], 3, 3, 3), "conv"), (f"dec{i}.conv1.b", (fs[i],), "bias")]
    k = head_kernel
    specs += [("head.w", (1, fs[0], k, k, k), "conv"), ("head.b", (1,), "bias")]
    return specs


def init_params(specs, gen):
    """He-normal weights; small random (nonzero) biases so bias handling is tested."""
    params = {}
    for name, shape, kind in specs:
        if kind == "bias":
            t = 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64)
        else:
            # fan_in: Conv3d (Co, Ci, k, k, k) -> Ci k^3; ConvTranspose3d (Ci, Co, 2, 2, 2) -> Ci.
            fan_in = shape[1] * shape[2] ** 3 if kind == "conv" else shape[0]
            t = (2.0 / fan_in) ** 0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)
        params[name] = f32(t).requires_grad_(True)
    return params


def conv(x, p, name):
    w = p[name + ".w"]
    return F.conv3d(x, w, p[name + ".b"], padding=w.shape[-1] // 2)


def unet(x, p, residual):
    """x (N, 1, D, H, W) -> y (N, 1, D, H, W), NCDHW as PyTorch wants it."""
    skips = []
    h = x
    for i in range(DEPTH):
        h = F.relu(conv(h, p, f"enc{i}.conv0"))  # dropout(p = 0) is the identity
        h = F.relu(conv(h, p, f"enc{i}.conv1"))
        if i < DEPTH - 1:
            skips.append(h)  # the skip is taken before the pool
            h = F.max_pool3d(h, 2)
    for i in range(DEPTH - 2, -1, -1):
        h = F.relu(F.conv_transpose3d(h, p[f"up{i}.w"], p[f"up{i}.b"], stride=2))
        h = torch.cat([h, skips[i]], dim=1)  # [upsampled | skip]
        h = F.relu(conv(h, p, f"dec{i}.conv0"))
        h = F.relu(conv(h, p, f"dec{i}.conv1"))
    y = conv(h, p, "head")  # linear
    return y + x if residual else y


def ours(t):
    """A PyTorch tensor in our layout, as float32 numpy. Rank-5 tensors move dim 1 last:
    activations (N, C, D, H, W) -> (N, D, H, W, C), Conv3d weights (Co, Ci, k, k, k) ->
    (Co, k, k, k, Ci), ConvTranspose3d weights (Ci, Co, 2, 2, 2) -> (Ci, 2, 2, 2, Co)."""
    t = t.detach()
    if t.dim() == 5:
        t = t.permute(0, 2, 3, 4, 1)
    return np.ascontiguousarray(t.numpy().astype(np.float32))


def run_case(out, group, x, target, head_kernel, residual, gen):
    specs = param_specs(head_kernel)
    p = init_params(specs, gen)
    y = unet(x, p, residual)
    loss = F.mse_loss(y, target)  # mean over all elements
    loss.backward()

    g = out if group == "/" else out.create_group(group)
    g.attrs["depth"] = DEPTH
    g.attrs["base_filters"] = BASE
    g.attrs["head_kernel"] = head_kernel
    g.attrs["residual"] = int(residual)
    g.attrs["dropout"] = 0.0
    g["y"] = ours(y)
    g["loss"] = np.array([loss.item()], dtype=np.float32)
    for sub in ("params", "grads", "params_after_adam"):
        g.create_group(sub)
    for name, _, _ in specs:
        g[f"params/{name}"] = ours(p[name])
        g[f"grads/{name}"] = ours(p[name].grad)

    # Adam's first step is p -= lr * g / (|g| + eps): about lr * sign(g), so a
    # gradient within float32 noise of zero could flip sign on the C++ side;
    # test_reference.cpp skips 0 < |g| < 1e-4 max|g| when it steps with its own
    # gradients. Record how close the nearest one comes (relative to its tensor's max).
    margin = min(
        (p[n].grad.abs()[p[n].grad != 0].min() / p[n].grad.abs().max()).item()
        for n, _, _ in specs if p[n].grad.abs().max() > 0)
    g.attrs["min_rel_nonzero_grad"] = margin

    opt = torch.optim.Adam(list(p.values()), **ADAM)
    opt.step()
    for name, _, _ in specs:
        g[f"params_after_adam/{name}"] = ours(p[name])
    print(f"{group}: head_kernel {head_kernel} residual {residual}: loss {loss.item():.6f}, "
          f"{sum(int(np.prod(s)) for _, s, _ in specs)} parameters, "
          f"smallest nonzero |grad| / max |grad| {margin:.2e}")


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                              "unet_small.h5")
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(20190901)
    x = f32(torch.randn((N, 1, S, S, S), generator=gen, dtype=torch.float64))
    target = f32(torch.randn((N, 1, S, S, S), generator=gen, dtype=torch.float64))
    with h5py.File(path, "w") as out:
        out.attrs["torch_version"] = str(torch.__version__)
        out.attrs["generator"] = "tests/reference/make_unet_reference.py"
        out["x"] = ours(x)
        out["target"] = ours(target)
        run_case(out, "/", x, target, head_kernel=1, residual=True, gen=gen)
        run_case(out, "plain", x, target, head_kernel=3, residual=False, gen=gen)
    print(f"wrote {path} ({os.path.getsize(path) / 1024:.0f} KiB), torch {torch.__version__}")


if __name__ == "__main__":
    main()
