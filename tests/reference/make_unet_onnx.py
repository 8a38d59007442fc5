#!/usr/bin/env python3
"""Writes unet_small_torch.onnx and unet_small_plain_torch.onnx: the reference
U-Net of make_unet_reference.py, with the weights stored in unet_small.h5,
exported by PyTorch's own torch.onnx.export (TorchScript exporter, opset 17).

tests/test_onnx.cpp ([onnx][reference]) reads them with `deepqsm import`'s
reader and requires unet_small.h5's weights back exactly and its output y on
its input x to 1e-4, so the import is tested on files PyTorch wrote, not only
on our own exports. The network is make_unet_reference.unet(), wrapped in a
Module whose parameters are those weights (in PyTorch's layouts), run in
float32.

Usage: python3 make_unet_onnx.py   (writes next to this file; needs torch, h5py)
Regenerate whenever unet_small.h5 is regenerated.
"""
import os
import sys

import h5py
import numpy as np
import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
import make_unet_reference as ref  # noqa: E402


def theirs(a):
    """Our layout -> PyTorch's: rank-5 tensors move their last dim to dim 1."""
    t = torch.from_numpy(np.asarray(a, dtype=np.float32))
    return t.permute(0, 4, 1, 2, 3).contiguous() if t.dim() == 5 else t


def conv(x, p, name):
    """ref.conv with the padding as a Python int: under tracing, w.shape[-1] // 2
    is a tensor, which F.conv3d does not take."""
    w = p[name + ".w"]
    return torch.nn.functional.conv3d(x, w, p[name + ".b"], padding=int(w.shape[-1]) // 2)


ref.conv = conv  # ref.unet calls it


class ReferenceUNet(torch.nn.Module):
    def __init__(self, group, head_kernel, residual):
        super().__init__()
        self.names = [name for name, _, _ in ref.param_specs(head_kernel)]
        self.weights = torch.nn.ParameterList(
            [torch.nn.Parameter(theirs(group["params/" + n][()])) for n in self.names])
        self.residual = residual

    def forward(self, x):
        return ref.unet(x, dict(zip(self.names, self.weights)), self.residual)


def main():
    with h5py.File(os.path.join(here, "unet_small.h5"), "r") as f:
        x = theirs(f["x"][()])[:1]  # one sample: [1, 1, 16, 16, 16]
        for group, out in (("/", "unet_small_torch.onnx"), ("plain", "unet_small_plain_torch.onnx")):
            g = f[group]
            net = ReferenceUNet(g, int(g.attrs["head_kernel"]), bool(g.attrs["residual"])).eval()
            path = os.path.join(here, out)
            axes = {2: "D", 3: "H", 4: "W"}
            torch.onnx.export(net, (x,), path, opset_version=17, input_names=["input"],
                              output_names=["output"], dynamic_axes={"input": axes, "output": axes})
            print(f"wrote {path} ({os.path.getsize(path) / 1024:.0f} KiB), torch {torch.__version__}")


if __name__ == "__main__":
    main()
