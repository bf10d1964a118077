"""The drop-in command lines on tiny random-weight checkpoints (issue 7 §6)."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from asymvq import inpaint_st, txt2img

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
EXAMPLES = SHARED / "inpainting_examples"


@pytest.fixture
def cli(tiny_cli):
    """This file's runs: two sampling steps; txt2img at 128 x 128."""
    return tiny_cli.with_flags(inpaint=["--steps", "2"], txt2img=["--H", "128", "--W", "128", "--ddim_steps", "2"])


def two_pairs(tmp_path):
    indir = tmp_path / "in"
    indir.mkdir()
    for name in ["bench2", "overture-creations-5sI6fQgYIuo"]:
        shutil.copy(EXAMPLES / f"{name}.png", indir)
        shutil.copy(EXAMPLES / f"{name}_mask.png", indir)
    return indir


def test_inpaint_st_writes_one_png_per_pair_with_the_inpaint_size(cli, tmp_path, capsys):
    out = tmp_path / "out"
    assert inpaint_st.main(cli.inpaint(EXAMPLES, out)) == 0
    pairs = sorted(p.name.replace("_mask", "") for p in EXAMPLES.glob("*_mask.png"))
    assert sorted(p.name for p in out.glob("*.png")) == pairs
    for name in pairs:
        w, h = Image.open(EXAMPLES / name).size
        f = 640 / max(w, h) if max(w, h) > 640 else 1.0
        w, h = int(f * w), int(f * h)
        assert Image.open(out / name).size == (w - w % 64, h - h % 64)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "s/step" in ln]
    assert len(lines) == len(pairs)


def test_inpaint_st_report_prints_the_preservation_error(cli, tmp_path, capsys):
    assert inpaint_st.main(cli.inpaint(two_pairs(tmp_path), tmp_path / "out", "--report")) == 0
    assert capsys.readouterr().out.count("pre_error") == 2


def _fails(capsys, argv, main, match):
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert match in err
    assert err.startswith("error: ") and err.count("error: ") == 1, err


def test_inpaint_st_image_without_mask_is_skipped_with_one_warning(cli, tmp_path, capsys):
    # issue 11/13: like the original, which lists *_mask.png (before: an error)
    indir = two_pairs(tmp_path)
    (indir / "bench2_mask.png").unlink()
    out = tmp_path / "out"
    assert inpaint_st.main(cli.inpaint(indir, out)) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["overture-creations-5sI6fQgYIuo.png"]
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert warnings == ["warning: skipping 1 image(s) without a NAME_mask.png: bench2.png"]


def test_inpaint_st_mask_without_image_fails_before_writing_anything(cli, tmp_path, capsys):
    indir = two_pairs(tmp_path)
    (indir / "bench2.png").unlink()
    out = tmp_path / "out"
    _fails(capsys, cli.inpaint(indir, out), inpaint_st.main, "has no image bench2.png")
    assert not list(out.glob("*.png")) if out.exists() else True


def test_inpaint_st_mask_of_another_size_is_refused(cli, tmp_path, capsys):
    indir = two_pairs(tmp_path)
    Image.new("L", (100, 100)).save(indir / "bench2_mask.png")
    _fails(capsys, cli.inpaint(indir, tmp_path / "out"), inpaint_st.main, "differs from image size")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.png"))


def test_inpaint_st_non_image_file_is_refused(cli, tmp_path, capsys):
    indir = two_pairs(tmp_path)
    (indir / "bench2.png").write_bytes(b"not a picture")
    _fails(capsys, cli.inpaint(indir, tmp_path / "out"), inpaint_st.main, "is not a readable image")


def test_inpaint_st_empty_indir_is_refused(cli, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _fails(capsys, cli.inpaint(tmp_path / "empty", tmp_path / "out"), inpaint_st.main, "has no NAME.png")


def test_inpaint_st_unwritable_outdir_is_refused(cli, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    _fails(capsys, cli.inpaint(two_pairs(tmp_path), tmp_path / "file" / "out"), inpaint_st.main, "is not writable")


def test_inpaint_st_checkpoint_not_matching_config_is_refused_without_output(cli, tmp_path, capsys):
    out = tmp_path / "out"
    argv = cli.inpaint(two_pairs(tmp_path), out)
    argv[argv.index("--ckpt_d") + 1] = str(cli.ckpts["t2i"])  # 4-channel UNet for the 9-channel config
    _fails(capsys, argv, inpaint_st.main, "input_blocks.0.0.weight: shape [32, 4, 3, 3], expected [32, 9, 3, 3]")
    assert not list(out.glob("*.png"))


def test_txt2img_writes_samples_and_a_grid(cli, tmp_path):
    out = tmp_path / "out"
    assert txt2img.main(cli.txt2img(out, "--n_samples", "2", "--n_iter", "2")) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["0.png", "1.png", "2.png", "3.png", "grid.png"]
    assert Image.open(out / "0.png").size == (128, 128)
    assert Image.open(out / "grid.png").size == (256, 256)


def test_txt2img_with_the_original_defaults_writes_only_0_png(cli, tmp_path):
    # the original parses --n_iter 2 but runs one iteration and saves one image (before: 0, 1 and grid)
    out = tmp_path / "out"
    assert txt2img.main(cli.txt2img(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0.png"]


def test_txt2img_explicit_n_iter_2_writes_both_images_and_the_grid(cli, tmp_path):
    out = tmp_path / "out"
    assert txt2img.main(cli.txt2img(out, "--n_iter", "2")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0.png", "1.png", "grid.png"]


def test_txt2img_help_says_where_asymvq_goes_beyond_the_original(capsys):
    with pytest.raises(SystemExit):
        txt2img.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "writes what the original writes: OUT/0.png and nothing more" in text
    assert "--n_iter N given explicitly runs N iterations" in text


def test_txt2img_skip_flags_and_plms(cli, tmp_path):
    out = tmp_path / "out"
    assert txt2img.main(cli.txt2img(out, "--n_iter", "1", "--plms", "--skip_grid")) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["0.png"]
    out2 = tmp_path / "out2"
    assert txt2img.main(cli.txt2img(out2, "--n_iter", "2", "--skip_save")) == 0
    assert sorted(p.name for p in out2.glob("*.png")) == ["grid.png"]


def test_txt2img_from_file_runs_every_prompt(cli, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red house\n\na blue boat\n")
    out = tmp_path / "out"
    assert txt2img.main(cli.txt2img(out, "--n_iter", "1", "--from-file", str(prompts), "--skip_grid")) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["0.png", "1.png"]


def test_txt2img_fixed_code_gives_identical_iterations(cli, tmp_path):
    out = tmp_path / "out"
    assert txt2img.main(cli.txt2img(out, "--n_iter", "2", "--fixed_code", "--skip_grid")) == 0
    a, b = (np.asarray(Image.open(out / f"{i}.png")) for i in (0, 1))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "flag, match",
    [
        (["--laion400m"], "--laion400m"),
        (["--H", "100"], "multiples of 64"),
        (["--plms", "--ddim_eta", "0.5"], "--plms needs --ddim_eta 0"),
        (["--C", "3"], "--C must be 4"),
    ],
)
def test_txt2img_bad_flags_fail_with_one_line(cli, tmp_path, capsys, flag, match):
    _fails(capsys, cli.txt2img(tmp_path / "out", *flag), txt2img.main, match)


def test_txt2img_accepts_every_original_flag():
    names = {a for action in txt2img.parser()._actions for a in action.option_strings}
    original = [
        "--prompt",
        "--outdir",
        "--skip_grid",
        "--skip_save",
        "--ddim_steps",
        "--plms",
        "--laion400m",
        "--fixed_code",
        "--ddim_eta",
        "--n_iter",
        "--H",
        "--W",
        "--C",
        "--f",
        "--n_samples",
        "--n_rows",
        "--scale",
        "--from-file",
        "--config",
        "--ckpt",
        "--seed",
        "--precision",
        "--config_c",
        "--ckpt_c",
    ]
    assert set(original) <= names
    d = txt2img.parser().parse_args([])
    assert (d.ddim_steps, d.ddim_eta, d.n_iter, d.H, d.W, d.scale, d.seed, d.precision) == (
        50,
        0.0,
        2,
        512,
        512,
        7.5,
        42,
        "autocast",
    )


def test_inpaint_st_accepts_every_original_flag_with_original_defaults():
    d = inpaint_st.parser().parse_args([])
    assert d.ckpt == "base.ckpt"
    assert d.config == "configs/autoencoder/autoencoder_kl_32x32x4.yaml"
    assert d.config_d == "configs/autoencoder/v1-inpainting-inference.yaml"
    assert d.ckpt_d == "/mnt/output/pre_models/sd-v1-5-inpainting.ckpt"
    assert d.indir == "/mnt/output/my_dataset/val" and d.outdir == "/mnt/output/git_results"


def test_console_scripts_and_module_entry_points_exist():
    r = subprocess.run([sys.executable, "-m", "asymvq.inpaint_st", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--config_d" in r.stdout
    r = subprocess.run([sys.executable, "-m", "asymvq.txt2img", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--ddim_eta" in r.stdout
