"""asymvq.convert: original checkpoints -> one self-describing .safetensors file.

Outputs are read back with the reference ``safetensors`` library and compared with ``torch.load`` of
the inputs, independently of asymvq's own readers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import safetensors
import safetensors.torch
import torch

from asymvq import config, convert, tables, tokenizer
from asymvq.config import ConfigError
from asymvq.tables import WeightsError
from fixtures import CheckpointCache, fixture_config, fixture_spec


DECODERS = ("decoder-base", "decoder-large", "decoder-large2")
WOC = {
    "decoder-base": "autoencoder_kl_woc_32x32x4",
    "decoder-large": "autoencoder_kl_woc_32x32x4_large",
    "decoder-large2": "autoencoder_kl_woc_32x32x4_large2",
}


def source(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return safetensors.torch.load_file(path)
    return torch.load(path, weights_only=False)["state_dict"]


def output(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safetensors.safe_open(path, "pt") as f:
        return {n: f.get_tensor(n) for n in f.keys()}, f.metadata()


def only_file(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------
# What is kept


@pytest.mark.parametrize("which, fmt", [("sd15-inpaint", "ckpt"), ("sd15-txt2img", "safetensors")])
def test_diffusion_conversion_keeps_exactly_the_required_tensors_unchanged(
    checkpoints: CheckpointCache, tmp_path: Path, which: str, fmt: str
) -> None:
    ckpt = checkpoints.get(which, fmt=fmt)
    out = tmp_path / "sd.safetensors"
    convert.convert(fixture_config(which), ckpt, out)
    tensors, _ = output(out)
    assert set(tensors) == set(tables.requirements(fixture_spec(which)).table)
    original = source(ckpt)
    assert all(torch.equal(t, original[n]) for n, t in tensors.items())


def test_txt2img_conversion_drops_the_whole_first_stage(checkpoints: CheckpointCache, tmp_path: Path) -> None:
    out = tmp_path / "t2i.safetensors"
    convert.convert(fixture_config("sd15-txt2img"), checkpoints.get("sd15-txt2img"), out)
    assert not [n for n in output(out)[0] if n.startswith("first_stage_model.")]


@pytest.mark.parametrize("which", DECODERS)
def test_decoder_conversion_keeps_post_quant_conv_and_the_decoder(
    checkpoints: CheckpointCache, tmp_path: Path, which: str
) -> None:
    ckpt = checkpoints.get(which)
    out = tmp_path / "dec.safetensors"
    convert.convert(fixture_config(which), ckpt, out)
    tensors, meta = output(out)
    assert set(tensors) == set(tables.decoder_tensors(fixture_spec(which)))
    assert any(n.startswith("decoder.encoder.") for n in tensors)
    original = source(ckpt)
    assert all(torch.equal(t, original[n]) for n, t in tensors.items())
    assert meta["asymvq.kind"] == "decoder"


@pytest.mark.parametrize("which", DECODERS)
def test_wocondition_conversion_leaves_out_the_condition_encoder(
    checkpoints: CheckpointCache, tmp_path: Path, which: str
) -> None:
    out = tmp_path / "woc.safetensors"
    convert.convert(config.packaged_tiny_config(WOC[which]), checkpoints.get(which), out)
    tensors, meta = output(out)
    assert not [n for n in tensors if n.startswith("decoder.encoder.")]
    assert meta["asymvq.kind"] == "decoder_wocondition"


def test_diffusion_and_decoder_go_into_one_file(checkpoints: CheckpointCache, tmp_path: Path) -> None:
    out = tmp_path / "all.safetensors"
    report = convert.convert(
        fixture_config("sd15-inpaint"),
        checkpoints.get("sd15-inpaint"),
        out,
        decoder_config=fixture_config("decoder-large"),
        decoder_ckpt=checkpoints.get("decoder-large", fmt="safetensors"),
    )
    tensors, meta = output(out)
    expected = set(tables.requirements(fixture_spec("sd15-inpaint")).table) | set(
        tables.decoder_tensors(fixture_spec("decoder-large"))
    )
    assert set(tensors) == expected and report.tensors == len(expected)
    assert meta["asymvq.decoder_config"] == fixture_config("decoder-large").read_text()


def test_ema_option_takes_the_unet_from_the_ema_copies(checkpoints: CheckpointCache, tmp_path: Path) -> None:
    ckpt = checkpoints.get("sd15-txt2img", ema=True)
    original = source(ckpt)
    out = tmp_path / "ema.safetensors"
    report = convert.convert(fixture_config("sd15-txt2img"), ckpt, out, ema=True)
    tensors, meta = output(out)
    name = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    assert torch.equal(tensors[name], original["model_ema.diffusion_modelinput_blocks11proj_inweight"])
    assert meta["asymvq.ema"] == "true"
    assert report.dropped[str(ckpt)]["model.diffusion_model.*"] == len(
        tables.unet_tensors(fixture_spec("sd15-txt2img").unet)
    )


def test_ema_option_without_ema_copies_names_what_it_looked_for(checkpoints: CheckpointCache, tmp_path: Path) -> None:
    with pytest.raises(
        WeightsError,
        match=r"missing: model\.diffusion_model\.out\.2\.bias .*looked for model_ema\.diffusion_modelout2bias",
    ):
        convert.convert(
            fixture_config("sd15-txt2img"), checkpoints.get("sd15-txt2img"), tmp_path / "x.safetensors", ema=True
        )
    assert only_file(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# The dropped-prefix report


def test_report_lists_what_a_decoder_checkpoint_dropped(checkpoints: CheckpointCache, tmp_path: Path) -> None:
    ckpt = checkpoints.get("decoder-base")
    report = convert.convert(fixture_config("decoder-base"), ckpt, tmp_path / "d.safetensors")
    encoder = len(tables.vae_encoder_tensors(fixture_spec("decoder-base"), prefix="")) - 2
    assert report.dropped[str(ckpt)] == {
        "decoder.up_layers.*": 8,
        "loss.*": 11,
        "encoder.*": encoder,
        "quant_conv.*": 2,
    }
    assert {"optimizer_states", "global_step", "epoch", "hyper_parameters"} <= set(report.other_entries[str(ckpt)])
    summary = report.summary()
    assert "  loss.*: 11 tensors" in summary and "optimizer_states" in summary


def test_report_lists_what_an_sd_checkpoint_dropped(checkpoints: CheckpointCache, tmp_path: Path) -> None:
    ckpt = checkpoints.get("sd15-inpaint", ema=True)
    report = convert.convert(fixture_config("sd15-inpaint"), ckpt, tmp_path / "sd.safetensors")
    spec = fixture_spec("sd15-inpaint")
    dropped = report.dropped[str(ckpt)]
    assert dropped == {
        "DDPM schedule buffers (betas, alphas_cumprod, ...)": 12,
        "cond_stage_model.transformer.text_model.embeddings.position_ids": 1,
        "first_stage_model.decoder.*": len(tables.decoder_tensors(spec.first_stage)) - 2,  # type: ignore[union-attr]
        "first_stage_model.post_quant_conv.*": 2,
        "model_ema.*": len(tables.unet_tensors(spec.unet)) + 2,  # type: ignore[union-attr]
    }


def test_unknown_keys_are_dropped_and_reported_by_prefix(checkpoints: CheckpointCache, tmp_path: Path) -> None:
    sd = source(checkpoints.get("decoder-base", fmt="safetensors"))
    sd["ema_decoder.conv_in.weight"] = torch.zeros(2)
    sd["ema_decoder.conv_in.bias"] = torch.zeros(2)
    src = tmp_path / "src.safetensors"
    safetensors.torch.save_file(sd, src)
    report = convert.convert(fixture_config("decoder-base"), src, tmp_path / "out.safetensors")
    assert report.dropped[str(src)]["ema_decoder.conv_in.*"] == 2


# ---------------------------------------------------------------------------------------------
# Mismatches: every problem at once, nothing written


def test_wrong_config_lists_every_problem_and_writes_nothing(checkpoints: CheckpointCache, tmp_path: Path) -> None:
    out = tmp_path / "out.safetensors"
    with pytest.raises(WeightsError) as info:
        convert.convert(fixture_config("decoder-large"), checkpoints.get("decoder-base"), out)
    problems = info.value.problems
    assert "wrong shape: decoder.conv_in.weight is [64, 4, 3, 3], expected [128, 4, 3, 3]" in problems
    assert "missing: decoder.up.0.block.2.conv1.weight (expected shape [64, 64, 3, 3])" in problems
    assert len(problems) > 100
    assert "decoder-base-tiny-float32-s0.ckpt fits the shipped config(s) tiny/autoencoder_kl_32x32x4.yaml" in str(
        info.value
    )
    assert only_file(tmp_path) == []


def test_inpainting_weights_against_the_txt2img_config_are_one_shape_problem(
    checkpoints: CheckpointCache, tmp_path: Path
) -> None:
    with pytest.raises(WeightsError) as info:
        convert.convert(fixture_config("sd15-txt2img"), checkpoints.get("sd15-inpaint"), tmp_path / "x.safetensors")
    assert info.value.problems == [
        "wrong shape: model.diffusion_model.input_blocks.0.0.weight is [32, 9, 3, 3], expected [32, 4, 3, 3]"
    ]


def test_problems_of_both_inputs_are_reported_together(checkpoints: CheckpointCache, tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as info:
        convert.convert(
            fixture_config("sd15-txt2img"),
            checkpoints.get("sd15-inpaint"),
            tmp_path / "x.safetensors",
            decoder_config=fixture_config("decoder-large"),
            decoder_ckpt=checkpoints.get("decoder-base"),
        )
    files = {p.split(": ", 1)[0] for p in info.value.problems}
    assert files == {"sd15-inpaint-tiny-float32-s0.ckpt", "decoder-base-tiny-float32-s0.ckpt"}
    assert only_file(tmp_path) == []


def test_integer_weights_are_a_dtype_problem(checkpoints: CheckpointCache, tmp_path: Path) -> None:
    sd = source(checkpoints.get("decoder-base", fmt="safetensors"))
    sd["decoder.conv_out.bias"] = sd["decoder.conv_out.bias"].to(torch.int32)
    src = tmp_path / "src.safetensors"
    safetensors.torch.save_file(sd, src)
    with pytest.raises(WeightsError, match="wrong dtype: decoder.conv_out.bias is int32"):
        convert.convert(fixture_config("decoder-base"), src, tmp_path / "out.safetensors")


def test_decoder_config_must_describe_a_decoder(checkpoints: CheckpointCache, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected an autoencoder"):
        convert.convert(
            fixture_config("sd15-inpaint"),
            checkpoints.get("sd15-inpaint"),
            tmp_path / "x.safetensors",
            decoder_config=fixture_config("sd15-txt2img"),
            decoder_ckpt=checkpoints.get("sd15-txt2img"),
        )


def test_output_must_be_safetensors(checkpoints: CheckpointCache, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"must be a \.safetensors file"):
        convert.convert(fixture_config("decoder-base"), checkpoints.get("decoder-base"), tmp_path / "x.ckpt")


def test_interrupted_conversion_leaves_no_file(
    checkpoints: CheckpointCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = convert._to_tag

    def interrupt(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 20:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(convert, "_to_tag", interrupt)
    with pytest.raises(KeyboardInterrupt):
        convert.convert(fixture_config("decoder-base"), checkpoints.get("decoder-base"), tmp_path / "out.safetensors")
    assert only_file(tmp_path) == []


def test_terminated_command_leaves_no_file(
    checkpoints: CheckpointCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = convert._to_tag

    def terminate(*args: Any) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    monkeypatch.setattr(convert, "_to_tag", terminate)
    args = [
        "--config",
        str(fixture_config("decoder-base")),
        "--ckpt",
        str(checkpoints.get("decoder-base")),
        "-o",
        str(tmp_path / "o.safetensors"),
    ]
    with pytest.raises(SystemExit) as info:
        convert.main(args)
    assert info.value.code == 128 + signal.SIGTERM
    assert only_file(tmp_path) == []


def test_existing_output_is_replaced_only_when_the_new_one_is_complete(
    checkpoints: CheckpointCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"previous")

    def interrupt(*args: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(convert, "_to_tag", interrupt)
    with pytest.raises(KeyboardInterrupt):
        convert.convert(fixture_config("decoder-base"), checkpoints.get("decoder-base"), out)
    assert out.read_bytes() == b"previous" and only_file(tmp_path) == ["out.safetensors"]


# ---------------------------------------------------------------------------------------------
# dtypes


@pytest.mark.parametrize(
    "dtype, torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)]
)
def test_dtype_conversion_rounds_like_torch(
    checkpoints: CheckpointCache, tmp_path: Path, dtype: str, torch_dtype: torch.dtype
) -> None:
    ckpt = checkpoints.get("decoder-base")
    out = tmp_path / f"{dtype}.safetensors"
    convert.convert(fixture_config("decoder-base"), ckpt, out, dtype=dtype)
    tensors, _ = output(out)
    original = source(ckpt)
    assert all(t.dtype == torch_dtype and torch.equal(t, original[n].to(torch_dtype)) for n, t in tensors.items())


def test_bf16_source_widens_exactly_to_fp32(checkpoints: CheckpointCache, tmp_path: Path) -> None:
    ckpt = checkpoints.get("decoder-large", fmt="safetensors", dtype="bfloat16")
    out = tmp_path / "f32.safetensors"
    convert.convert(fixture_config("decoder-large"), ckpt, out, dtype="fp32")
    tensors, _ = output(out)
    original = source(ckpt)
    assert all(t.dtype == torch.float32 and torch.equal(t, original[n].float()) for n, t in tensors.items())


def test_without_dtype_each_tensor_keeps_its_stored_dtype(checkpoints: CheckpointCache, tmp_path: Path) -> None:
    ckpt = checkpoints.get("decoder-base", fmt="ckpt", dtype="float16")
    out = tmp_path / "keep.safetensors"
    convert.convert(fixture_config("decoder-base"), ckpt, out)
    assert {t.dtype for t in output(out)[0].values()} == {torch.float16}


def test_values_beyond_float16_range_are_refused_for_fp16(checkpoints: CheckpointCache, tmp_path: Path) -> None:
    sd = source(checkpoints.get("decoder-base", fmt="safetensors"))
    sd["decoder.conv_in.bias"][0] = 1e6
    src = tmp_path / "src.safetensors"
    safetensors.torch.save_file(sd, src)
    with pytest.raises(ValueError, match=r"tensor 'decoder.conv_in.bias' does not fit float16 .*use bf16"):
        convert.convert(fixture_config("decoder-base"), src, tmp_path / "out.safetensors", dtype="fp16")
    assert only_file(tmp_path) == ["src.safetensors"]


def test_unknown_dtype_is_rejected(checkpoints: CheckpointCache, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dtype 'int8'"):
        convert.convert(
            fixture_config("decoder-base"), checkpoints.get("decoder-base"), tmp_path / "o.safetensors", dtype="int8"
        )


# ---------------------------------------------------------------------------------------------
# Metadata


def test_metadata_holds_format_version_kind_and_the_config_text(checkpoints: CheckpointCache, tmp_path: Path) -> None:
    out = tmp_path / "sd.safetensors"
    convert.convert(fixture_config("sd15-inpaint"), checkpoints.get("sd15-inpaint"), out)
    _, meta = output(out)
    assert meta["asymvq.format_version"] == convert.FORMAT_VERSION == "1"
    assert meta["asymvq.kind"] == "inpaint"
    assert meta["asymvq.config"] == fixture_config("sd15-inpaint").read_text()
    assert meta["asymvq.config.name"] == "v1-inpainting-inference.yaml"


def test_read_metadata_gives_back_the_specs(checkpoints: CheckpointCache, tmp_path: Path) -> None:
    out = tmp_path / "sd.safetensors"
    convert.convert(
        fixture_config("sd15-inpaint"),
        checkpoints.get("sd15-inpaint"),
        out,
        decoder_config=fixture_config("decoder-large2"),
        decoder_ckpt=checkpoints.get("decoder-large2"),
    )
    meta = convert.read_metadata(out)
    assert meta.spec == fixture_spec("sd15-inpaint")
    assert meta.decoder == fixture_spec("decoder-large2")
    assert (meta.format_version, meta.kind, meta.vocab, meta.ema) == ("1", "inpaint", None, False)


def test_read_metadata_refuses_other_format_versions(tmp_path: Path) -> None:
    path = tmp_path / "future.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(1)}, path, metadata={"asymvq.format_version": "2"})
    with pytest.raises(ValueError, match="format version 2; this asymvq reads version 1"):
        convert.read_metadata(path)


def test_read_metadata_refuses_files_not_written_by_convert(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not written by `python -m asymvq convert`"):
        convert.read_metadata(path)


def synthetic_vocab(path: Path) -> Path:
    """A merges file of the right size (48,894 distinct two-symbol rules); not CLIP's, but well-formed."""
    alphabet = [chr(b) for b in [*range(33, 127), *range(161, 173), *range(174, 256)]]  # bytes shown as themselves
    rules = [f"{a} {b}" for a in alphabet for b in alphabet] + [f"{a} {b}</w>" for a in alphabet for b in alphabet]
    path.write_text("#version: 0.2\n" + "\n".join(rules[: tokenizer.NUM_MERGES]) + "\n", encoding="utf-8")
    return path


def test_tokenizer_vocabulary_is_embedded(checkpoints: CheckpointCache, tmp_path: Path) -> None:
    vocab = synthetic_vocab(tmp_path / "merges.txt")
    out = tmp_path / "sd.safetensors"
    convert.convert(fixture_config("sd15-txt2img"), checkpoints.get("sd15-txt2img"), out, tokenizer=vocab)
    embedded = convert.read_metadata(out).vocab
    assert embedded == tokenizer.CLIPTokenizer.from_file(vocab).to_metadata()
    assert tokenizer.CLIPTokenizer.from_metadata(embedded)("ab").shape == (1, 77)


def test_tokenizer_needs_a_diffusion_config(checkpoints: CheckpointCache, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--tokenizer needs a diffusion config"):
        convert.convert(
            fixture_config("decoder-base"),
            checkpoints.get("decoder-base"),
            tmp_path / "o.safetensors",
            tokenizer=tmp_path,
        )


# ---------------------------------------------------------------------------------------------
# Command line


def test_command_line_converts_and_prints_the_report(
    checkpoints: CheckpointCache, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from asymvq.__main__ import main

    out = tmp_path / "d.safetensors"
    code = main(
        [
            "convert",
            "--config",
            str(fixture_config("decoder-base")),
            "--ckpt",
            str(checkpoints.get("decoder-base")),
            "--dtype",
            "bf16",
            "-o",
            str(out),
        ]
    )
    assert code == 0 and out.is_file()
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out}: ") and "decoder.up_layers.*: 8 tensors" in printed


def test_command_line_reports_mismatches_on_one_stderr_line_with_status_2(
    checkpoints: CheckpointCache, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = convert.main(
        [
            "--config",
            str(fixture_config("decoder-large")),
            "--ckpt",
            str(checkpoints.get("decoder-base")),
            "-o",
            str(tmp_path / "x.safetensors"),
        ]
    )
    err = capsys.readouterr().err
    # issue 11: status 2 and one error: line, like every command line (before: status 1, one line per problem)
    # (145 problems: the first 10, then "and 135 more", and the hint naming the configs that fit)
    assert code == 2 and err.startswith("error: checking decoder-base-tiny") and "145 problem(s)" in err
    assert len(err.strip().splitlines()) == 1 and "; and 135 more" in err and "fits the shipped config" in err
    assert only_file(tmp_path) == []


def test_command_line_refuses_a_decoder_config_without_decoder_ckpt(tmp_path: Path) -> None:
    # (--decoder-ckpt without --decoder-config is allowed: its config is inferred, test_infer_config.py)
    with pytest.raises(SystemExit) as info:
        convert.main(
            [
                "--config",
                "a.yaml",
                "--ckpt",
                "b.ckpt",
                "--decoder-config",
                "c.yaml",
                "-o",
                str(tmp_path / "o.safetensors"),
            ]
        )
    assert info.value.code == 2


def test_package_entry_point_lists_convert(capsys: pytest.CaptureFixture[str]) -> None:
    from asymvq.__main__ import main

    assert main(["--help"]) == 0
    assert "convert" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Full size (issue 3: < 60 s and < 1 GB beyond the output for SD v1.5 inpainting)

# Peak RSS from VmHWM: ru_maxrss of a child keeps the high-water mark of the (large) parent at fork.
_MEASURE = """
import re, sys, time
from asymvq import convert
start = time.perf_counter()
convert.convert(sys.argv[1], sys.argv[2], sys.argv[3], dtype=sys.argv[4] if len(sys.argv) > 4 else None)
seconds = time.perf_counter() - start
with open("/proc/self/status") as f:
    print(seconds, int(re.search(r"VmHWM:\\s+(\\d+) kB", f.read()).group(1)) * 1024)
"""


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [[], ["bf16"]])
def test_full_sd15_inpainting_converts_in_under_60_s_and_1_gb(
    checkpoints: CheckpointCache, tmp_path: Path, dtype: list[str]
) -> None:
    ckpt = checkpoints.get("sd15-inpaint", tiny=False)
    out = tmp_path / "sd15.safetensors"
    args = [
        sys.executable,
        "-c",
        _MEASURE,
        str(config.packaged_config("v1-inpainting-inference")),
        str(ckpt),
        str(out),
        *dtype,
    ]
    result = subprocess.run(args, capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent)
    seconds, peak = map(float, result.stdout.split())
    assert seconds < 60
    assert peak < 1 << 30
    with safetensors.safe_open(out, "np") as f:
        assert len(f.keys()) == 196 + 686 + 108
    out.unlink()  # GBs
