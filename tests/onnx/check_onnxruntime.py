#!/usr/bin/env python3
"""Runs `deepqsm export --onnx`'s graph in ONNX Runtime and checks it against
deepqsm-infer's single network pass (--scales 1 --flips 1 --refine 0).

Usage: check_onnxruntime.py DEEPQSM DEEPQSM_INFER MODEL.h5 WORKDIR [--field F.nii[.gz]]

Without --field it checks a random field (48 x 32 x 64 voxels, x y z) and the
head phantom of `deepqsm phantom --size 64`, and that `deepqsm import --onnx`
gives back a model whose deepqsm-infer output is the original's. With
--field it checks that field only (every side must be a multiple of the
model's side multiple) and prints the difference: the by-hand check on a
measured field. Equality means max |onnx - ours| / max |ours| <= 1e-4.

Exits 77 (ctest: skipped) when onnxruntime or numpy cannot be imported.
Needs no NIfTI library: the few lines below read and write NIfTI-1.
"""
import gzip
import os
import struct
import subprocess
import sys

try:
    import numpy as np
    import onnxruntime as ort
except ImportError as e:  # test tooling from PyPI (scripts/setup.sh), optional
    print(f"SKIP: onnxruntime/numpy not importable ({e}); install with "
          "`pip install onnxruntime` (scripts/setup.sh does so in its venv)")
    sys.exit(77)

TOL = 1e-4
DTYPES = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64, 256: np.int8,
          512: np.uint16, 768: np.uint32}


def read_nifti(path):
    """NIfTI-1 volume as float32 (x, y, z), scl_slope/scl_inter applied."""
    raw = open(path, "rb").read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if struct.unpack("<i", raw[:4])[0] != 348:
        sys.exit(f"{path}: not a little-endian NIfTI-1 file")
    dim = struct.unpack("<8h", raw[40:56])
    datatype = struct.unpack("<h", raw[70:72])[0]
    vox_offset = int(struct.unpack("<f", raw[108:112])[0])
    slope, inter = struct.unpack("<2f", raw[112:120])
    shape = tuple(dim[1:1 + dim[0]])
    data = np.frombuffer(raw, DTYPES[datatype], int(np.prod(shape)), vox_offset)
    data = data.reshape(shape, order="F").astype(np.float32)
    if slope not in (0.0, 1.0) or inter != 0.0:
        data = data * (slope or 1.0) + inter
    return data[..., 0] if data.ndim == 4 else data


def write_nifti(path, vol, voxel=1.0):
    """float32 (x, y, z) as NIfTI-1 (.nii), identity-scaled affine."""
    hdr = bytearray(352)
    struct.pack_into("<i", hdr, 0, 348)
    struct.pack_into("<8h", hdr, 40, 3, *vol.shape, 1, 1, 1, 1)
    struct.pack_into("<hh", hdr, 70, 16, 32)
    struct.pack_into("<8f", hdr, 76, 1.0, voxel, voxel, voxel, 0, 0, 0, 0)
    struct.pack_into("<f", hdr, 108, 352.0)
    struct.pack_into("<f", hdr, 112, 1.0)
    struct.pack_into("<h", hdr, 254, 1)  # sform_code scanner
    for row, off in enumerate((280, 296, 312)):
        r = [0.0] * 4
        r[row] = voxel
        struct.pack_into("<4f", hdr, off, *r)
    hdr[344:348] = b"n+1\0"
    with open(path, "wb") as f:
        f.write(bytes(hdr) + np.asarray(vol, np.float32).tobytes(order="F"))


def run(*cmd):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"FAIL: {' '.join(map(str, cmd))}\n{r.stdout}{r.stderr}")
    return r.stdout


def single_pass(infer, model, field, out):
    run(infer, field, "-o", out, "--model", model, "--scales", "1", "--flips", "1", "--refine", "0",
        "--device", "cpu")
    return read_nifti(out)


def onnx_pass(session, field):
    x = np.ascontiguousarray(field.T)[None, None]  # (x, y, z) -> [1, 1, z, y, x] = [1, 1, D, H, W]
    return session.run(["chi"], {"field": x})[0][0, 0].T


def rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def compare(name, session, infer, model, field_path, work):
    ours = single_pass(infer, model, field_path, os.path.join(work, name + "_chi.nii"))
    theirs = onnx_pass(session, read_nifti(field_path))
    r = rel(theirs, ours)
    print(f"{name}: {ours.shape} voxels, max |onnxruntime - deepqsm-infer| / max |deepqsm-infer| "
          f"= {r:.3g} (max |chi| {np.max(np.abs(ours)):.3g} ppm)")
    return r, ours


def main():
    args = sys.argv[1:]
    field = None
    if "--field" in args:
        i = args.index("--field")
        field = args[i + 1]
        del args[i:i + 2]
    if len(args) != 4:
        sys.exit(__doc__)
    deepqsm, infer, model, work = args
    os.makedirs(work, exist_ok=True)
    onnx_path = os.path.join(work, "model.onnx")
    run(deepqsm, "export", model, "--onnx", onnx_path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    session = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    for key in ("deepqsm.recipe", "deepqsm.b0_direction", "deepqsm.voxel_size_mm",
                "deepqsm.side_multiple"):
        if key not in meta:
            sys.exit(f"FAIL: {onnx_path} lacks metadata {key}")
    print(f"onnxruntime {ort.__version__}; side multiple {meta['deepqsm.side_multiple']}, "
          f"B0 {meta['deepqsm.b0_direction']}, voxel {meta['deepqsm.voxel_size_mm']} mm")

    worst = 0.0
    if field:
        worst, _ = compare(os.path.basename(field).split(".")[0], session, infer, model, field, work)
    else:
        rng = np.random.default_rng(7)
        rnd = os.path.join(work, "random.nii")
        write_nifti(rnd, (0.05 * rng.standard_normal((48, 32, 64))).astype(np.float32))
        r, _ = compare("random", session, infer, model, rnd, work)
        worst = max(worst, r)
        phantom = os.path.join(work, "phantom.nii")
        run(deepqsm, "phantom", "-o", phantom, "--size", "64")
        r, ours = compare("phantom", session, infer, model, phantom, work)
        worst = max(worst, r)
        # The other direction: the ONNX file read back into a model file.
        back = os.path.join(work, "imported.h5")
        run(deepqsm, "import", "--onnx", onnx_path, "-o", back)
        again = single_pass(infer, back, phantom, os.path.join(work, "phantom_imported.nii"))
        r = rel(again, ours)
        print(f"phantom through deepqsm import: max rel difference {r:.3g}")
        if r != 0.0:
            sys.exit("FAIL: the imported model does not give the original's output exactly")
    if worst > TOL:
        sys.exit(f"FAIL: ONNX Runtime differs from deepqsm-infer by {worst:.3g} > {TOL}")
    print(f"PASS: within {TOL}")


if __name__ == "__main__":
    main()
