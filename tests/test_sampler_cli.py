"""--sampler, --negative-prompt and inpaint_st's --prompt/--steps/--scale/--eta/--seed (issue 15): defaults
are the original's, the values reach the pipeline, bad values end in one error line and exit code 2."""

import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from asymvq import inpaint_st, txt2img
from asymvq.sampler import SAMPLER_NAMES

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
EXAMPLES = SHARED / "inpainting_examples"


@pytest.fixture
def cli(tiny_cli):
    """This file's runs: txt2img at 64 x 64 in two steps (inpaint_st's steps are each test's)."""
    return tiny_cli.with_flags(txt2img=["--H", "64", "--W", "64", "--ddim_steps", "2"])


def one_pair(tmp_path: Path) -> Path:
    import shutil

    indir = tmp_path / "in"
    indir.mkdir()
    shutil.copy(EXAMPLES / "bench2.png", indir)
    shutil.copy(EXAMPLES / "bench2_mask.png", indir)
    return indir


def spy_calls(monkeypatch, cls_name: str) -> List[Dict[str, Any]]:
    """The keyword arguments every pipeline call gets (the call then runs as usual)."""
    import asymvq.pipelines as pl

    cls = getattr(pl, cls_name)
    calls: List[Dict[str, Any]] = []
    real = cls.__call__

    def record(self, *args, **kwargs):
        calls.append(kwargs)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", record)
    return calls


def test_inpaint_st_defaults_are_the_original_hard_coded_values():
    d = inpaint_st.parser().parse_args([])
    assert (d.prompt, d.steps, d.scale, d.seed, d.sampler, d.negative_prompt) == (
        inpaint_st.PROMPT,
        50,
        7.5,
        0,
        "ddim",
        "",
    )
    assert d.eta is None  # 1.0, the original's, once the sampler is known to be ddim


def test_inpaint_st_without_the_new_flags_calls_the_pipeline_as_the_original(cli, tmp_path, monkeypatch):
    calls = spy_calls(monkeypatch, "InpaintPipeline")
    assert inpaint_st.main(cli.inpaint(one_pair(tmp_path), tmp_path / "out", "--steps", "2")) == 0
    kw = calls[0]
    assert (kw["prompt"], kw["negative_prompt"], kw["seed"], kw["scale"], kw["eta"], kw["sampler"]) == (
        inpaint_st.PROMPT,
        "",
        0,
        7.5,
        1.0,
        "ddim",
    )


def test_inpaint_st_flags_reach_the_pipeline(cli, tmp_path, monkeypatch):
    calls = spy_calls(monkeypatch, "InpaintPipeline")
    argv = cli.inpaint(
        one_pair(tmp_path),
        tmp_path / "out",
        "--prompt",
        "a bench",
        "--negative-prompt",
        "blur",
        "--steps",
        "3",
        "--scale",
        "5",
        "--seed",
        "9",
        "--sampler",
        "euler_a",
    )
    assert inpaint_st.main(argv) == 0
    kw = calls[0]
    assert (kw["prompt"], kw["negative_prompt"], kw["steps"], kw["scale"], kw["seed"], kw["sampler"], kw["eta"]) == (
        "a bench",
        "blur",
        3,
        5.0,
        9,
        "euler_a",
        0.0,
    )
    assert (tmp_path / "out" / "bench2.png").exists()


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_txt2img_runs_every_sampler(cli, tmp_path, monkeypatch, name):
    calls = spy_calls(monkeypatch, "Txt2ImgPipeline")
    assert txt2img.main(cli.txt2img(tmp_path / "out", "--sampler", name, "--negative-prompt", "dark")) == 0
    assert (calls[0]["sampler"], calls[0]["negative_prompt"]) == (name, "dark")
    assert (tmp_path / "out" / "0.png").exists()


def test_txt2img_plms_flag_still_selects_plms(cli, tmp_path, monkeypatch):
    calls = spy_calls(monkeypatch, "Txt2ImgPipeline")
    assert txt2img.main(cli.txt2img(tmp_path / "out", "--plms")) == 0
    assert calls[0]["sampler"] == "plms"


def _fails(capsys, argv, main, match):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own checks (choices) exit from the parser
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert match in err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--sampler", "euler", "--eta", "0.5"], "eta applies to the ddim sampler only"),
        (["--sampler", "dpmpp_2m", "--eta", "1"], "eta applies to the ddim sampler only"),
        (["--sampler", "heun"], "invalid choice: 'heun'"),
        (["--sampler", "plms", "--eta", "1"], "PLMS is deterministic"),
        (["--steps", "0"], "--steps"),
        (["--scale", "nan"], "--scale must be a finite number"),
        (["--seed", "-1"], "--seed must be between 0 and"),
    ],
)
def test_inpaint_st_bad_sampler_flags_fail_with_one_line(cli, tmp_path, capsys, flags, match):
    _fails(capsys, cli.inpaint(one_pair(tmp_path), tmp_path / "out", *flags), inpaint_st.main, match)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--sampler", "euler_a", "--ddim_eta", "0.3"], "eta applies to the ddim sampler only"),
        (["--sampler", "dpm"], "invalid choice: 'dpm'"),
        (["--sampler", "euler", "--plms"], "--plms and --sampler euler contradict each other"),
    ],
)
def test_txt2img_bad_sampler_flags_fail_with_one_line(cli, tmp_path, capsys, flags, match):
    _fails(capsys, cli.txt2img(tmp_path / "out", *flags), txt2img.main, match)


@pytest.mark.parametrize("module", ["asymvq.inpaint_st", "asymvq.txt2img"])
def test_help_lists_every_sampler(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True).stdout
    assert "{" + ",".join(SAMPLER_NAMES) + "}" in out
    assert "--negative-prompt" in out
