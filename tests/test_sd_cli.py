"""``diffjax txt2img`` / ``diffjax img2img`` on the tiny SD 1.x folder (in-process).

The runs use the shapes of tests/test_sd_pipeline.py's jitted runs (batch 2, 8x8, 6 steps,
the folder's PNDM), so the persistent compilation cache serves both files.
"""

from __future__ import annotations

import os

import matplotlib.image
import numpy as np
import pytest

from diffjax.app import cli
from diffjax.app.txt2img import read_image

MODEL = os.path.join(os.path.dirname(__file__), "data", "tiny_sd1")
COMMON = ["--model", MODEL, "--prompt", "a photo of a cat", "--num-images", "2",
          "--steps", "6", "--guidance", "7.5"]


def _png(path) -> np.ndarray:
    img = matplotlib.image.imread(str(path))
    assert img.ndim == 3 and img.shape[-1] in (3, 4)
    return img


def test_txt2img_and_img2img_write_grids(tmp_path, capsys) -> None:
    out = tmp_path / "cat.png"
    assert cli.main(["txt2img", *COMMON, "--height", "8", "--width", "8", "--out",
                     str(out)]) == 0
    report = capsys.readouterr().out
    for phase in ("loaded", "compiled in", "sampled and decoded 2 image(s), 6 steps",
                  "wrote 2 txt2img image(s) 8x8"):
        assert phase in report, report
    grid = _png(out)
    assert grid.shape[:2] == (10, 19)  # two 8x8 tiles in a row, 1-pixel borders
    tiles = grid[1:9, 1:9, :3], grid[1:9, 10:18, :3]
    assert float(np.abs(tiles[0] - tiles[1]).max()) > 0  # two seeds' worth of noise

    source = tmp_path / "in.png"
    matplotlib.image.imsave(str(source), (tiles[0] * 255).round().astype(np.uint8))
    np.testing.assert_array_equal(read_image(str(source)), (tiles[0] * 255).round())
    out2 = tmp_path / "out.png"
    assert cli.main(["img2img", *COMMON, "--image", str(source), "--strength", "0.6",
                     "--out", str(out2)]) == 0
    assert "wrote 2 img2img image(s) 8x8" in capsys.readouterr().out
    assert _png(out2).shape[:2] == (10, 19)

    # The same weights as a CompVis single file (with the folder's configs): the same grid.
    out3 = tmp_path / "cat_single_file.png"
    single = os.path.join(os.path.dirname(MODEL), "compvis_tiny_sd1.safetensors")
    argv = ["txt2img", *COMMON, "--height", "8", "--width", "8", "--out", str(out3)]
    argv[argv.index(MODEL)] = single
    assert cli.main([*argv, "--config", MODEL]) == 0
    np.testing.assert_array_equal(_png(out3), grid)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["txt2img", *COMMON, "--height", "10", "--out", "x.png"], "height=10 is not a multiple"),
        (["txt2img", "--model", "/nonexistent", "--prompt", "a", "--out", "x.png"],
         "does not exist"),
        (["txt2img", *COMMON, "--out", "x.jpg"], "must be a .png"),
        (["img2img", *COMMON, "--image", "/nonexistent.png", "--out", "x.png"],
         "--image '/nonexistent.png' does not exist"),
        (["img2img", *COMMON, "--image", "x.png", "--strength", "2", "--out", "x.png"],
         "strength"),
    ],
)
def test_errors_are_one_line_exit_2(argv, match, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1 and "Traceback" not in err, err
