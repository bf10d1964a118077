"""Comparing decoders on the same latents (issue 14 §1), on tiny random-weight models."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from fixtures import write_checkpoint
from PIL import Image
from safetensors.numpy import save_file

from asymvq import checkpoint, inpaint_st
from asymvq.__main__ import main as asymvq_main
from asymvq.autoencoder import Autoencoder
from asymvq.compare import METRICS, make_strip, mask_outline, parse_decoder
from asymvq.metrics import preservation_error, psnr_outside_mask, ssim_outside_mask
from asymvq.pipelines import SCALE_FACTOR, InpaintPipeline

ROOT = Path(__file__).resolve().parents[1]
VOCAB = ROOT.parent / "shared" / "data" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
TINY = ROOT / "configs" / "tiny"
CONFIG_D = TINY / "v1-inpainting-inference.yaml"
STEPS = 2


def compare_checkpoints(d: Path) -> dict:
    """compare's tiny random-weight checkpoints, written into ``d``: SD inpainting, two decoders, SD's VAE."""
    sd = write_checkpoint(d / "sd-inpaint.ckpt", "sd15-inpaint")
    # SD's VAE on its own: the first stage's tensors without their prefix, and the standard
    # AutoencoderKL config (the diffusion config's first_stage_config block)
    w = checkpoint.load(sd)
    vae = {
        k[len("first_stage_model.") :]: np.ascontiguousarray(v)
        for k, v in w.items()
        if k.startswith("first_stage_model.")
    }
    save_file(vae, str(d / "sd-vae.safetensors"))
    first = yaml.safe_load(CONFIG_D.read_text())["model"]["params"]["first_stage_config"]
    (d / "sd-vae.yaml").write_text(yaml.safe_dump({"model": first}))
    return {
        "sd": sd,
        "base": write_checkpoint(d / "decoder-base.ckpt", "decoder-base"),
        "large2": write_checkpoint(d / "decoder-large2.ckpt", "decoder-large2"),
        "vae": d / "sd-vae.safetensors",
        "vae_config": d / "sd-vae.yaml",
    }


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return compare_checkpoints(tmp_path_factory.mktemp("compare-ckpts"))


def make_pairs(folder: Path, n: int, size: int = 64) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for i in range(n):
        img = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        mask = np.zeros((size, size), np.uint8)
        mask[16:48, 8 + 4 * i : 40 + 4 * i] = 255
        Image.fromarray(img).save(folder / f"pair{i}.png")
        Image.fromarray(mask).save(folder / f"pair{i}_mask.png")
    return folder


def pipe(ckpts, config, ckpt):
    return InpaintPipeline.from_original(CONFIG_D, ckpts["sd"], config, ckpt, vocab=VOCAB, precision="fp32")


def test_inpaint_pipeline_with_the_diffusion_config_runs_sds_vanilla_decoder_on_the_same_latent(ckpts, tmp_path):
    pairs = make_pairs(tmp_path, 1)
    img, msk = pairs / "pair0.png", pairs / "pair0_mask.png"
    asym = pipe(ckpts, TINY / "autoencoder_kl_32x32x4.yaml", ckpts["base"])(img, msk, steps=STEPS, progress=False)
    van_pipe = pipe(ckpts, CONFIG_D, ckpts["sd"])
    van = van_pipe(img, msk, steps=STEPS, progress=False)
    assert not van_pipe.decoder.conditional and "(no condition)" in repr(van_pipe)
    np.testing.assert_array_equal(van.latents, asym.latents)  # the diffusion does not depend on the decoder
    sd_vae = Autoencoder.from_config(CONFIG_D, ckpts["sd"], parts="decoder")
    np.testing.assert_array_equal(van.arrays, sd_vae.decode(asym.latents / SCALE_FACTOR))
    assert not np.array_equal(van.arrays, asym.arrays)


def test_standard_autoencoderkl_config_with_sd_vae_weights_is_the_vanilla_decoder(ckpts, tmp_path):
    pairs = make_pairs(tmp_path, 1)
    img, msk = pairs / "pair0.png", pairs / "pair0_mask.png"
    from_first_stage = pipe(ckpts, CONFIG_D, ckpts["sd"])(img, msk, steps=STEPS, progress=False)
    p = pipe(ckpts, ckpts["vae_config"], ckpts["vae"])
    assert not p.decoder.conditional
    np.testing.assert_array_equal(p(img, msk, steps=STEPS, progress=False).arrays, from_first_stage.arrays)


def test_inpaint_pipeline_still_refuses_a_text_to_image_config_as_config_d(ckpts):
    from asymvq.config import ConfigError

    with pytest.raises(ConfigError, match="inpainting diffusion config"):
        InpaintPipeline.from_original(TINY / "v1-t2i-inference.yaml", ckpts["sd"], CONFIG_D, ckpts["sd"], vocab=VOCAB)


def test_inpaint_st_accepts_the_diffusion_config_as_config_for_the_vanilla_decoder(ckpts, tmp_path):
    pairs = make_pairs(tmp_path / "in", 1)
    out = tmp_path / "out"
    rc = inpaint_st.main(
        [
            "--indir",
            str(pairs),
            "--outdir",
            str(out),
            "--config_d",
            str(CONFIG_D),
            "--ckpt_d",
            str(ckpts["sd"]),
            "--config",
            str(CONFIG_D),
            "--ckpt",
            str(ckpts["sd"]),
            "--vocab",
            str(VOCAB),
            "--steps",
            str(STEPS),
        ]
    )
    assert rc == 0
    ref = pipe(ckpts, CONFIG_D, ckpts["sd"])(pairs / "pair0.png", pairs / "pair0_mask.png", steps=STEPS, progress=False)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "pair0.png")), ref.uint8[0])


def compare_head(ckpts, indir, outdir):
    """``python -m asymvq compare``'s arguments before the decoders: the pairs, the output, the SD model."""
    return [
        "compare",
        "--indir",
        str(indir),
        "--outdir",
        str(outdir),
        "--config_d",
        str(CONFIG_D),
        "--ckpt_d",
        str(ckpts["sd"]),
    ]


def compare_args(ckpts, indir, outdir, *extra):
    return [
        *compare_head(ckpts, indir, outdir),
        "--decoder",
        "vanilla",
        "--decoder",
        f"base={TINY / 'autoencoder_kl_32x32x4.yaml'}:{ckpts['base']}",
        "--decoder",
        f"large2={TINY / 'autoencoder_kl_32x32x4_large2.yaml'}:{ckpts['large2']}",
        "--vocab",
        str(VOCAB),
        "--steps",
        str(STEPS),
        *extra,
    ]


@pytest.fixture(scope="module")
def compared(ckpts, tmp_path_factory):
    d = tmp_path_factory.mktemp("compare")
    indir, outdir = make_pairs(d / "in", 3), d / "out"
    assert asymvq_main(compare_args(ckpts, indir, outdir)) == 0
    return indir, outdir


def test_compare_writes_one_image_per_decoder_and_a_strip_per_pair(compared):
    indir, out = compared
    for name in ["pair0.png", "pair1.png", "pair2.png"]:
        for dec in ["vanilla", "base", "large2"]:
            assert Image.open(out / dec / name).size == (64, 64)
        assert Image.open(out / "strips" / name).size == (64 * 5, 64 + 14)  # original, masked, 3 decoders


def test_compare_decodes_one_diffusion_with_every_decoder(ckpts, compared):
    indir, out = compared
    img, msk = indir / "pair1.png", indir / "pair1_mask.png"
    for dec, (cfg, ck) in {
        "vanilla": (CONFIG_D, ckpts["sd"]),
        "base": (TINY / "autoencoder_kl_32x32x4.yaml", ckpts["base"]),
        "large2": (TINY / "autoencoder_kl_32x32x4_large2.yaml", ckpts["large2"]),
    }.items():
        ref = pipe(ckpts, cfg, ck)(img, msk, steps=STEPS, progress=False)
        np.testing.assert_array_equal(np.asarray(Image.open(out / dec / "pair1.png")), ref.uint8[0], err_msg=dec)


def test_compare_metrics_table_holds_each_image_and_decoder_measured_against_the_original(compared):
    indir, out = compared
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [(r["image"], r["decoder"]) for r in rows] == [
        (f"pair{i}.png", d) for i in range(3) for d in ["vanilla", "base", "large2"]
    ]
    r = rows[4]  # pair1, base
    orig, res = Image.open(indir / "pair1.png"), Image.open(out / "base" / "pair1.png")
    msk = Image.open(indir / "pair1_mask.png")
    assert float(r["pre_error"]) == pytest.approx(preservation_error(orig, res, msk), rel=1e-12)
    assert float(r["psnr"]) == pytest.approx(psnr_outside_mask(orig, res, msk), rel=1e-12)
    assert float(r["ssim"]) == pytest.approx(ssim_outside_mask(orig, res, msk), rel=1e-12)


def test_compare_summary_is_mean_and_population_std_per_decoder_in_csv_and_json(compared):
    _, out = compared
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    summary = {s["decoder"]: s for s in csv.DictReader(open(out / "summary.csv"))}
    doc = json.loads((out / "metrics.json").read_text())
    assert [s["decoder"] for s in doc["summary"]] == ["vanilla", "base", "large2"]
    for dec in ["vanilla", "base", "large2"]:
        for k in METRICS:
            v = np.array([float(r[k]) for r in rows if r["decoder"] == dec])
            assert float(summary[dec][f"{k}_mean"]) == pytest.approx(v.mean(), rel=1e-12)
            assert float(summary[dec][f"{k}_std"]) == pytest.approx(v.std(), rel=1e-9, abs=1e-15)
        assert int(summary[dec]["n"]) == 3
    assert len(doc["rows"]) == 9 and doc["failures"] == []


def test_compare_draws_the_metric_plot(compared):
    _, out = compared
    im = Image.open(out / "metrics.png")
    assert im.size[0] > im.size[1] > 100


def test_compare_reports_a_corrupt_pair_in_failures_and_finishes_the_others(ckpts, tmp_path, capsys):
    indir = make_pairs(tmp_path / "in", 2)
    (indir / "pair1.png").write_bytes(b"not a png")
    rc = asymvq_main(compare_args(ckpts, indir, tmp_path / "out", "--no-plot"))
    assert rc == 1
    fails = list(csv.DictReader(open(tmp_path / "out" / "failures.csv")))
    assert [Path(f["image"]).name for f in fails] == ["pair1.png"] and "pair1.png" in fails[0]["error"]
    assert (tmp_path / "out" / "large2" / "pair0.png").is_file()


def compare_with_decoders(ckpts, tmp_path, *decoders):
    """``compare``'s exit status on one pair (output: ``tmp_path / "o"``) with these ``--decoder`` values."""
    args = compare_head(ckpts, make_pairs(tmp_path / "in", 1), tmp_path / "o")
    for value in decoders:
        args += ["--decoder", value]
    return asymvq_main(args)


@pytest.mark.parametrize("value", ["base", "base=cfg.yaml", "=cfg.yaml:x.ckpt", "strips=a.yaml:b.ckpt"])
def test_bad_decoder_argument_fails_with_one_error_line(ckpts, tmp_path, capsys, value):
    assert compare_with_decoders(ckpts, tmp_path, value) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --decoder")


def test_missing_decoder_checkpoint_fails_before_any_work(ckpts, tmp_path, capsys):
    decoder = f"x={TINY / 'autoencoder_kl_32x32x4.yaml'}:/no/such.ckpt"
    assert compare_with_decoders(ckpts, tmp_path, decoder) == 2
    assert "x checkpoint not found: /no/such.ckpt" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_duplicate_decoder_names_are_refused(ckpts, tmp_path, capsys):
    assert compare_with_decoders(ckpts, tmp_path, "vanilla", "vanilla") == 2
    assert "unique" in capsys.readouterr().err


def test_decoder_argument_splits_the_config_at_the_first_colon():
    d = parse_decoder("big=/a/b.yaml:/c/d:e.ckpt")
    assert (d.name, d.config, d.ckpt) == ("big", "/a/b.yaml", "/c/d:e.ckpt")


def test_mask_outline_is_the_holes_border_pixels():
    m = np.zeros((6, 6), np.float32)
    m[1:5, 1:5] = 1
    edge = mask_outline(m)
    assert edge.sum() == 12 and not edge[2:4, 2:4].any() and edge[1, 1] and not edge[0, 0]


def test_strip_shows_original_masked_and_each_decoder_with_labels_above():
    orig = np.full((16, 16, 3), 200, np.uint8)
    m = np.zeros((16, 16), np.float32)
    m[4:12, 4:12] = 1
    s = np.asarray(make_strip(orig, m, [("a", orig), ("b", orig)]))
    assert s.shape == (16 + 14, 16 * 4, 3)
    assert tuple(s[14 + 4, 16 + 4]) == (255, 0, 0)  # outline on the masked column
    assert tuple(s[14 + 8, 16 + 8]) == (127, 127, 127)  # hole greyed out
    assert tuple(s[14, 0]) == (200, 200, 200)
