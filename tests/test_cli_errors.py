"""Issue 11 item 7: every bad command-line value ends in one ``error:`` line and exit code 2,
before any model is loaded (the checkpoints here are empty files: loading one would fail with
another message), and the one shared place that maps errors to exit codes (``_cli.run_command``)."""

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from asymvq import _cli, convert, demo, inpaint_st, txt2img
from asymvq.tables import WeightsError

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny"


@pytest.fixture
def cli(empty_cli):
    """This file's command lines: empty checkpoint files; txt2img at 128 x 128."""
    return empty_cli.with_flags(txt2img=["--H", "128", "--W", "128"])


def one_pair(folder: Path, name: str = "a", size: int = 64) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (90, 120, 150)).save(folder / f"{name}.png")
    Image.new("L", (size, size), 255).save(folder / f"{name}_mask.png")
    return folder


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` (the pixels are never there)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )


def assert_one_error_line(capsys, code, match):
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert match in lines[0], err


def call(main, argv):
    """``main(argv)``'s exit status, whether returned or raised as SystemExit (argparse)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


# ------------------------------------------------------------------------------------------------
# txt2img


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--ddim_steps", "3"], "--ddim_steps 3: "),
        (["--ddim_steps", "1001"], "--ddim_steps 1001: "),
        (["--ddim_steps", "0"], "--ddim_steps must be >= 1"),
        (["--ddim_eta", "-1"], "--ddim_eta -1.0: "),
        (["--ddim_eta", "nan"], "--ddim_eta nan: "),
        (["--ddim_eta", "inf"], "--ddim_eta inf: "),
        (["--scale", "nan"], "--scale must be a finite number"),
        (["--scale", "inf"], "--scale must be a finite number"),
        (["--seed", "-1"], "--seed must be between 0 and 4294967295"),
        (["--seed", "4294967296"], "--seed must be between 0 and 4294967295"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--ddim_steps", "abc"], "argument --ddim_steps: invalid int value"),
    ],
)
def test_txt2img_bad_value_is_one_error_line_with_status_2(cli, tmp_path, capsys, extra, match):
    assert_one_error_line(capsys, call(txt2img.main, cli.txt2img(tmp_path / "out", *extra)), match)


def test_txt2img_from_file_that_is_not_utf8_is_refused(cli, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"a red house\n\xff\xfe latin-1 \xe9\n")
    code = txt2img.main(cli.txt2img(tmp_path / "out", "--from-file", str(prompts)))
    assert_one_error_line(capsys, code, "is not UTF-8 text")


def test_txt2img_output_name_taken_by_a_folder_is_refused_before_the_work(cli, tmp_path, capsys):
    (tmp_path / "out" / "0.png").mkdir(parents=True)
    code = txt2img.main(cli.txt2img(tmp_path / "out"))
    assert_one_error_line(capsys, code, "0.png exists and is not a file")


def test_txt2img_explicit_iterations_check_every_output_name(cli, tmp_path, capsys):
    (tmp_path / "out" / "grid.png").mkdir(parents=True)
    code = txt2img.main(cli.txt2img(tmp_path / "out", "--n_iter", "2"))
    assert_one_error_line(capsys, code, "grid.png exists and is not a file")


# ------------------------------------------------------------------------------------------------
# inpaint_st


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--steps", "0"], "--steps 0: "),
        (["--steps", "3"], "--steps 3: "),
        (["--threads", "0"], "--threads must be >= 1"),
    ],
)
def test_inpaint_st_bad_value_is_one_error_line_with_status_2(cli, tmp_path, capsys, extra, match):
    argv = cli.inpaint(one_pair(tmp_path / "in"), tmp_path / "out", *extra)
    assert_one_error_line(capsys, call(inpaint_st.main, argv), match)


def test_inpaint_st_output_name_taken_by_a_folder_is_refused_before_the_work(cli, tmp_path, capsys):
    (tmp_path / "out" / "a.png").mkdir(parents=True)
    code = inpaint_st.main(cli.inpaint(one_pair(tmp_path / "in"), tmp_path / "out"))
    assert_one_error_line(capsys, code, "a.png exists and is not a file")


def test_inpaint_st_decompression_bomb_is_refused_by_name(cli, tmp_path, capsys):
    indir = tmp_path / "in"
    indir.mkdir()
    png_header_only(indir / "huge.png", 20000, 20000)
    png_header_only(indir / "huge_mask.png", 20000, 20000)
    code = inpaint_st.main(cli.inpaint(indir, tmp_path / "out"))
    assert_one_error_line(capsys, code, f"image {indir / 'huge.png'} is too large to open safely")


def test_inpaint_st_truncated_png_is_found_before_the_models_load(cli, tmp_path, capsys):
    indir = one_pair(tmp_path / "in")
    data = (indir / "a.png").read_bytes()
    (indir / "a.png").write_bytes(data[: len(data) - 20])
    code = inpaint_st.main(cli.inpaint(indir, tmp_path / "out"))
    assert_one_error_line(capsys, code, "is not a readable image")


# ------------------------------------------------------------------------------------------------
# demo and convert


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--seed", "-1"], "--seed must be between 0 and"),
        (["--steps", "3"], "--steps 3: "),
        (["--size", "100"], "--size must be a positive multiple of 64"),
    ],
)
def test_demo_bad_value_is_one_error_line_with_status_2(tmp_path, capsys, extra, match):
    assert_one_error_line(capsys, call(demo.main, ["--outdir", str(tmp_path / "d"), *extra]), match)


def test_demo_outdir_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert_one_error_line(capsys, demo.main(["--outdir", str(tmp_path / "f")]), "is a file, not a folder")


def test_convert_unreadable_checkpoint_is_one_error_line_with_status_2(tmp_path, capsys):
    (tmp_path / "x.ckpt").write_bytes(b"not a checkpoint")
    code = convert.main(
        [
            "--config",
            str(TINY / "autoencoder_kl_32x32x4.yaml"),
            "--ckpt",
            str(tmp_path / "x.ckpt"),
            "-o",
            str(tmp_path / "o.safetensors"),
        ]
    )
    assert_one_error_line(capsys, code, str(tmp_path / "x.ckpt"))


# ------------------------------------------------------------------------------------------------
# The shared mapping (_cli.run_command)


def test_user_error_becomes_one_line_and_status_2(capsys):
    def body():
        raise _cli.CLIError("--thing is wrong")

    assert_one_error_line(capsys, _cli.run_command(body), "--thing is wrong")


def test_a_long_list_of_weight_problems_is_cut_after_ten(capsys):
    problems = [f"missing: layer{i}.weight" for i in range(25)]

    def body():
        raise WeightsError(problems, "checking /models/x.ckpt", hint="is this the right file?")

    code = _cli.run_command(body)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: checking /models/x.ckpt: 25 problem(s) with the weights")
    assert "layer9.weight" in err and "layer10.weight" not in err and "; and 15 more" in err
    assert "is this the right file?" in err


def test_memory_error_is_a_user_error(capsys):
    def body():
        raise MemoryError()

    assert_one_error_line(capsys, _cli.run_command(body), "out of memory")


def test_keyboard_interrupt_is_one_line_and_status_130(capsys):
    def body():
        raise KeyboardInterrupt

    assert _cli.run_command(body) == 130
    assert capsys.readouterr().err == "error: interrupted\n"


def test_internal_bug_is_one_line_asking_for_a_report_with_status_1(capsys, monkeypatch):
    monkeypatch.delenv(_cli.DEBUG_ENV, raising=False)

    def body():
        return {}["missing"]

    assert _cli.run_command(body) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: internal error (KeyError: 'missing')") and "please report it" in err
    assert len(err.strip().splitlines()) == 1


def test_debug_env_shows_the_traceback(monkeypatch):
    monkeypatch.setenv(_cli.DEBUG_ENV, "1")

    def body():
        raise _cli.CLIError("shown as a traceback")

    with pytest.raises(_cli.CLIError):
        _cli.run_command(body)


def test_command_line_error_has_no_traceback_in_a_real_process(cli, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "asymvq.txt2img", *cli.txt2img(tmp_path / "o"), "--ddim_eta", "nan"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: --ddim_eta nan") and r.stderr.count("\n") == 1


def test_the_checks_do_not_load_weights(cli, tmp_path, capsys):
    # with every value good, the empty checkpoint is what fails: the checks above ran first
    code = txt2img.main(cli.txt2img(tmp_path / "out"))
    err = capsys.readouterr().err
    assert code == 2 and (str(cli.ckpts["t2i"]) in err or str(cli.ckpts["decoder"]) in err), err
    assert not list((tmp_path / "out").glob("*.png"))


def test_weights_that_do_not_fit_are_one_line_naming_the_file_and_cut_after_ten(tiny_cli, tmp_path, capsys):
    decoder = tiny_cli.ckpts["decoder"]
    cli = tiny_cli.with_ckpts(inpaint=decoder)  # a decoder where the SD model belongs
    code = inpaint_st.main(cli.inpaint(one_pair(tmp_path / "in"), tmp_path / "out"))
    assert_one_error_line(capsys, code, f"error: {decoder}: weights (CLIP text encoder): 36 problem(s)")
    # (assert_one_error_line consumed stderr; run again to look at the tail)
    inpaint_st.main(cli.inpaint(tmp_path / "in", tmp_path / "out"))
    assert capsys.readouterr().err.rstrip().endswith("; and 26 more")


@pytest.mark.parametrize(
    "flag, config, match",
    [
        ("--config", "autoencoder_kl_32x32x4.yaml", "is not a text-to-image diffusion config"),
        ("--config", "v1-inpainting-inference.yaml", "is not a text-to-image diffusion config"),
        ("--config_c", "v1-t2i-inference.yaml", "is not an autoencoder config"),
    ],
)
def test_txt2img_config_of_the_wrong_kind_is_refused_before_loading(cli, tmp_path, capsys, flag, config, match):
    argv = cli.txt2img(tmp_path / "out")
    argv[argv.index(flag) + 1] = str(TINY / config)
    assert_one_error_line(capsys, txt2img.main(argv), match)


@pytest.mark.parametrize(
    "flag, config, match",
    [
        ("--config_d", "autoencoder_kl_32x32x4.yaml", "is not an inpainting diffusion config"),
        ("--config_d", "v1-t2i-inference.yaml", "is not an inpainting diffusion config"),
        # (a decoder config without condition is no longer refused: issue 14 runs such decoders in the
        # inpainting pipeline, to compare them with the asymmetric ones)
    ],
)
def test_inpaint_st_config_of_the_wrong_kind_is_refused_before_loading(cli, tmp_path, capsys, flag, config, match):
    argv = cli.inpaint(one_pair(tmp_path / "in"), tmp_path / "out")
    argv[argv.index(flag) + 1] = str(TINY / config)
    assert_one_error_line(capsys, inpaint_st.main(argv), match)
