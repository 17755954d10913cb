"""Golden outputs of pytorch-fid's FIDInceptionV3 for the parity test of our Flax port.

The network gets random weights from ``np.random.default_rng(SEED)`` through
``random_pytorch_fid_state_dict`` of experiments/random_weights.py (no download:
pytorch-fid's weight loader is patched to return them), so the 95 MB of weights never need
storing: the test regenerates them from the same seed and first checks them against the
per-tensor checksums saved here. The golden file holds the inputs, pool3 features and
logits in float32 and float64, spatial means of pytorch-fid's blocks 0-2, and
bilinear-resize cases (``F.interpolate(align_corners=False)``, up and down). About 0.2 MB.

Needs torch, torchvision and pytorch-fid next to diffjax, e.g. (x86_64, local wheels):

    pip install torch==2.14.1 torchvision==0.29.1 pytorch-fid==0.3.0
    python experiments/make_inception_golden.py --out tests/data/inception_golden.npz
"""

from __future__ import annotations

import argparse
import importlib.metadata
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_fid import inception as pfid
from random_weights import random_pytorch_fid_state_dict

from diffjax.networks.inception import pytorch_fid_state_dict_shapes

SEED = 2019
IMAGE_SEED = 7
RESIZE_CASES = (((17, 23), (40, 31)), ((50, 45), (19, 22)))


def build_pytorch_fid(state_dict: dict[str, np.ndarray]) -> tuple[torch.nn.Module, torch.nn.Module]:
    """pytorch-fid's InceptionV3 wrapper (blocks 0-3) and its inner network, given weights."""
    sd = {k: torch.from_numpy(v.copy()) for k, v in state_dict.items()}
    for k in list(sd):
        if k.endswith("bn.running_var"):
            sd[k.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
    captured = {}
    original = pfid.fid_inception_v3

    def capture() -> torch.nn.Module:
        net = original()
        captured["net"] = net
        return net

    pfid.load_state_dict_from_url = lambda *a, **k: sd  # strict load_state_dict follows
    pfid.fid_inception_v3 = capture
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = pfid.InceptionV3(output_blocks=[0, 1, 2, 3]).eval()
    finally:
        pfid.fid_inception_v3 = original
    return model, captured["net"].eval()


def run(model: torch.nn.Module, net: torch.nn.Module, x: np.ndarray, dtype: torch.dtype) -> dict:
    model, net = model.to(dtype), net.to(dtype)
    with torch.no_grad():
        blocks = model(torch.from_numpy(x).to(dtype))
        pool3 = blocks[3].flatten(1)
        logits = net.fc(pool3)
    out = {"pool3": pool3.numpy(), "logits": logits.numpy()}
    for i in range(3):
        out[f"block{i}_mean"] = blocks[i].mean(dim=(2, 3)).numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="tests/data/inception_golden.npz")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)

    state_dict = random_pytorch_fid_state_dict(SEED)
    model, net = build_pytorch_fid(state_dict)
    keys = list(pytorch_fid_state_dict_shapes())
    torch_keys = [k for k in net.state_dict() if not k.endswith("num_batches_tracked")]
    assert sorted(torch_keys) == keys, "pytorch-fid's keys differ from ours"
    checksums = np.array([np.sum(state_dict[k], dtype=np.float64) for k in keys])

    rng = np.random.default_rng(IMAGE_SEED)
    images = rng.random((2, 3, 32, 32), dtype=np.float32)  # pytorch-fid's [0, 1] NCHW
    out32 = run(model, net, images, torch.float32)
    out64 = run(model, net, images.astype(np.float64), torch.float64)

    golden = {
        "seed": np.array(SEED),
        "keys": np.array(keys),
        "checksums": checksums,
        "images": images.transpose(0, 2, 3, 1).copy(),  # NHWC, values in [0, 1]
        "torch_version": np.array(torch.__version__),
        "pytorch_fid_version": np.array(importlib.metadata.version("pytorch-fid")),
    }
    for name, value in out32.items():
        golden[f"{name}_f32"] = value
    for name, value in out64.items():
        golden[f"{name}_f64"] = value
    for i, (src, dst) in enumerate(RESIZE_CASES):
        x = rng.random((1, 3, *src))
        y = F.interpolate(torch.from_numpy(x), size=dst, mode="bilinear", align_corners=False)
        golden[f"resize{i}_in"] = x.transpose(0, 2, 3, 1)
        golden[f"resize{i}_out"] = y.numpy().transpose(0, 2, 3, 1)
    np.savez_compressed(args.out, **golden)
    print(
        f"wrote {args.out}: pool3 |x| mean {np.abs(out32['pool3']).mean():.4g}, "
        f"f32-f64 max diff {np.abs(out32['pool3'] - out64['pool3']).max():.3g}"
    )


if __name__ == "__main__":
    main()
