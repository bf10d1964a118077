"""Issue 11 items 8-10: the command lines never destroy the user's data (outputs over inputs,
``convert -o`` onto an input, half files after SIGTERM), inpaint_st streams its pairs (memory
does not grow with their number), and a bad float mask is refused before the sampling loop."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from fixtures import fixture_config, write_checkpoint
from PIL import Image
from test_cli_errors import assert_one_error_line, one_pair

from asymvq import convert, inpaint_st

ROOT = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ------------------------------------------------------------------------------------------------
# Item 8: outputs never replace inputs


def test_inpaint_st_outdir_equal_to_indir_is_refused_and_inputs_stay(empty_cli, tmp_path, capsys):
    indir = one_pair(tmp_path / "in")
    before = snapshot(indir)
    code = inpaint_st.main(empty_cli.inpaint(indir, indir))
    assert_one_error_line(capsys, code, "is the --indir folder")
    assert snapshot(indir) == before


def test_inpaint_st_outdir_linked_to_indir_is_refused(empty_cli, tmp_path, capsys):
    indir = one_pair(tmp_path / "in")
    (tmp_path / "link").symlink_to(indir, target_is_directory=True)
    before = snapshot(indir)
    code = inpaint_st.main(empty_cli.inpaint(tmp_path / "in" / ".." / "link", indir))
    assert_one_error_line(capsys, code, "is the --indir folder")
    assert snapshot(indir) == before


def test_inpaint_st_output_that_is_a_hard_link_to_an_input_is_refused(empty_cli, tmp_path, capsys):
    indir = one_pair(tmp_path / "in")
    (tmp_path / "out").mkdir()
    os.link(indir / "a_mask.png", tmp_path / "out" / "a.png")  # the output a.png is the input mask
    before = snapshot(indir)
    code = inpaint_st.main(empty_cli.inpaint(indir, tmp_path / "out"))
    assert_one_error_line(capsys, code, "is one of the input files")
    assert snapshot(indir) == before


def test_convert_output_that_is_its_input_is_refused_and_the_input_stays(tmp_path, capsys):
    src = write_checkpoint(tmp_path / "decoder.safetensors", "decoder-base")
    before = src.read_bytes()
    code = convert.main(["--config", str(fixture_config("decoder-base")), "--ckpt", str(src), "-o", str(src)])
    assert_one_error_line(capsys, code, "is the --ckpt input")
    assert src.read_bytes() == before


def test_convert_output_linked_to_its_input_is_refused(tmp_path, capsys):
    src = write_checkpoint(tmp_path / "decoder.safetensors", "decoder-base")
    (tmp_path / "alias.safetensors").symlink_to(src)
    before = src.read_bytes()
    code = convert.main(
        ["--config", str(fixture_config("decoder-base")), "--ckpt", str(src), "-o", str(tmp_path / "alias.safetensors")]
    )
    assert_one_error_line(capsys, code, "is the --ckpt input")
    assert src.read_bytes() == before


SIGTERM_CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from PIL import Image, PngImagePlugin  # registers the PNG writer that is replaced below
    from asymvq import _cli

    def save_then_get_killed(im, fp, filename, *args, **kwargs):
        fp.write(b"\\x89PNG half of a file")
        fp.flush()
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` while the PNG is being written
        raise AssertionError("SIGTERM did not stop the save")

    Image.SAVE["PNG"] = save_then_get_killed
    sys.exit(_cli.run_command(lambda: _cli.save_png(Image.new("RGB", (64, 64)), Path(sys.argv[1]) / "0.png")))
""")


def test_sigterm_while_saving_leaves_no_partial_file(tmp_path):
    r = subprocess.run([sys.executable, "-c", SIGTERM_CHILD, str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 128 + signal.SIGTERM, r.stderr
    assert "AssertionError" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# Item 9: streaming


MEMORY_CHILD = textwrap.dedent("""
    import json, resource, sys
    from asymvq import inpaint_st
    code = inpaint_st.main(sys.argv[1:])
    print(json.dumps({"code": code, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
""")


def peak_rss_kib(cli, tmp_path: Path, pairs: int) -> int:
    """Peak RSS of a child running inpaint_st over ``pairs`` copies (hard links) of one 128x64 pair."""
    indir, outdir = tmp_path / f"in{pairs}", tmp_path / f"out{pairs}"
    indir.mkdir()
    y, x = np.mgrid[0:64, 0:128]
    Image.fromarray(np.stack([x * 2, y * 4, x ^ y], -1).astype(np.uint8)).save(tmp_path / "img.png")
    mask = np.zeros((64, 128), np.uint8)
    mask[16:48, 32:96] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    for i in range(pairs):
        os.link(tmp_path / "img.png", indir / f"p{i:04d}.png")
        os.link(tmp_path / "mask.png", indir / f"p{i:04d}_mask.png")
    argv = cli.inpaint(indir, outdir, "--steps", "1")
    r = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, *argv], capture_output=True, text=True, cwd=ROOT, timeout=1800
    )  # ~20 s on an idle machine; generous for loaded CI
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, r.stderr
    assert len(list(outdir.glob("*.png"))) == pairs
    return result["peak_kib"]


def test_inpaint_st_memory_does_not_grow_with_the_number_of_pairs(tiny_cli, tmp_path):
    few = peak_rss_kib(tiny_cli, tmp_path, 2)
    many = peak_rss_kib(tiny_cli, tmp_path, 200)
    # holding every loaded pair (float32 image + mask, 128 KiB a pair) would add ~25 MiB for 198 more
    print(f"peak RSS: 2 pairs {few / 1024:.1f} MiB, 200 pairs {many / 1024:.1f} MiB")
    assert many - few < 8 * 1024, (few, many)


# ------------------------------------------------------------------------------------------------
# Item 10: a bad float mask is refused before any sampling


@pytest.fixture(scope="module")
def tiny_pipeline():
    from asymvq.demo import build_pipeline

    return build_pipeline("fp32", seed=0)[0]


@pytest.mark.parametrize("value", [0.5, np.nan])
def test_non_binary_float_mask_is_refused_before_the_sampling_loop(tiny_pipeline, value):
    image = np.zeros((1, 3, 64, 64), np.float32)
    mask = np.zeros((1, 1, 64, 64), np.float32)
    mask[..., 10, 10] = value
    steps = []
    with pytest.raises(ValueError, match="mask array values must be exactly 0 or 1"):
        tiny_pipeline(image, mask, steps=2, progress=False, callback=lambda i, t, x=None: steps.append(i))
    assert steps == []


def test_non_finite_float_image_is_refused_before_the_sampling_loop(tiny_pipeline):
    image = np.zeros((1, 3, 64, 64), np.float32)
    image[0, 1, 3, 3] = np.inf
    steps = []
    with pytest.raises(ValueError, match="image array has NaN or Inf"):
        tiny_pipeline(
            image,
            np.zeros((1, 1, 64, 64), np.float32),
            steps=2,
            progress=False,
            callback=lambda i, t, x=None: steps.append(i),
        )
    assert steps == []
