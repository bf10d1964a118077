"""End to end with torch's noise: the drop-in command lines with ``--rng torch-cpu`` against
reference flows that draw their noise from torch generators exactly where and when the original
scripts draw it (models on the CPU, torch's CPU generator standing in for the original's CUDA
one), on tiny random-weight checkpoints. The written PNGs must equal the reference's uint8 images
within one level.

The reference models are independent of asymvq (transformers' CLIPTextModel, diffusers'
UNet2DConditionModel, the SPEC-written autoencoder, the NumPy DDIM transcription); the noise comes
from torch itself, drawn lazily step by step (``TorchNoise``), so the test checks the draw order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from reference import samplers_reference as sref
from reference import unet_reference as uref
from reference import vae_reference as vref
from test_text_encoder import reference as clip_reference
from test_text_encoder import reference_model as clip_model

from asymvq import checkpoint, config, demo, inpaint_st, txt2img
from asymvq.tokenizer import CLIPTokenizer

ROOT = Path(__file__).resolve().parents[1]
VOCAB = ROOT.parent / "shared" / "data" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
TINY = ROOT / "configs" / "tiny"
SCALE_FACTOR = 0.18215
STEPS = 4


class TorchNoise:
    """``noise[i]``: a fresh ``torch.randn(shape)`` on the global (default) generator, drawn when the
    sampler asks for step i, as the original's ``p_sample_ddim`` draws it."""

    def __init__(self, shape, generator=None):
        self.shape, self.generator = shape, generator

    def __getitem__(self, i: int) -> np.ndarray:
        return torch.randn(self.shape, generator=self.generator, dtype=torch.float32).numpy()


def torch_state(d, prefix=""):
    return {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in d.items() if k.startswith(prefix)}


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """The original's conversion: clamp((x + 1) / 2), * 255, truncate; [H, W, 3]."""
    x = torch.clamp((x + 1.0) / 2.0, 0.0, 1.0)[0].permute(1, 2, 0).numpy()
    return (x * 255.0).astype(np.uint8)


def assert_within_one_level(png: Path, want: np.ndarray) -> None:
    got = np.asarray(Image.open(png).convert("RGB")).astype(np.int16)
    assert got.shape == want.shape
    diff = np.abs(got - want.astype(np.int16))
    print(f"{png.name}: max |diff| {diff.max()} level(s), {np.mean(diff > 0) * 100:.3f} % of values differ")
    assert diff.max() <= 1


@pytest.fixture(scope="module")
def tok():
    return CLIPTokenizer.from_file(str(VOCAB))


def reference_parts(cfg_d: Path, ckpt_d: Path, cfg_c: Path, ckpt_c: Path):
    spec_d, spec_c = config.load(cfg_d), config.load(cfg_c)
    wd, wc = checkpoint.load(ckpt_d), checkpoint.load(ckpt_c)
    # the checkpoint's int64 position_ids buffer is not a weight of transformers' model
    clip = clip_model(
        spec_d.text_encoder,
        {k: v for k, v in wd.items() if k.startswith("cond_stage_model.") and not k.endswith("position_ids")},
    )
    unet = uref.build_reference(spec_d.unet, wd)
    dec = vref.reference_autoencoder(spec_c, torch_state(wc), encoder=False)
    return spec_d, wd, clip, (lambda x, t, ctx: uref.reference_eps(unet, x, t, ctx)), dec


def test_txt2img_rng_torch_cpu_equals_a_torch_seeded_reference_flow(tiny_cli, tok, tmp_path):
    # fixed_code + eta > 0 + two iterations: the start code is drawn once, then every DDIM step draws
    # one noise, and the stream runs on into the second iteration (the two images must differ).
    seed, eta, n_iter, prompt = 1234, 0.5, 2, "a red house"
    ckpts = tiny_cli.ckpts
    out = tmp_path / "out"
    args = tiny_cli.txt2img(
        out,
        "--H",
        "128",
        "--W",
        "128",
        "--ddim_steps",
        str(STEPS),
        "--prompt",
        prompt,
        "--ddim_eta",
        str(eta),
        "--n_iter",
        str(n_iter),
        "--fixed_code",
        "--seed",
        str(seed),
        "--precision",
        "full",
        "--rng",
        "torch-cpu",
        "--skip_grid",
    )
    assert txt2img.main(args) == 0

    torch.set_num_threads(1)
    _, _, clip, unet, dec = reference_parts(
        TINY / "v1-t2i-inference.yaml", ckpts["t2i"], TINY / "autoencoder_kl_woc_32x32x4.yaml", ckpts["decoder"]
    )
    c, uc = clip_reference(clip, tok([prompt])), clip_reference(clip, tok([""]))
    shape = (1, 4, 16, 16)
    torch.manual_seed(seed)  # seed_everything: the default generator
    start_code = torch.randn(shape).numpy()  # --fixed_code: drawn before sampling
    images = []
    for it in range(n_iter):
        traj = sref.ddim_sample(unet, start_code, c, uc, 7.5, steps=STEPS, eta=eta, noise=TorchNoise(shape))
        x = dec.decode(torch.from_numpy(traj[-1] / SCALE_FACTOR))
        images.append(to_uint8(x))
        assert_within_one_level(out / f"{it}.png", images[-1])
    assert not np.array_equal(images[0], images[1])


def test_inpaint_st_rng_torch_cpu_equals_the_originals_flow_with_an_unseeded_torch_generator(tiny_cli, tok, tmp_path):
    # Per image: start code RandomState(0) (reset), the posterior mean, and eta = 1 DDIM noise from
    # torch's never-seeded generator, running on from the first image into the second.
    indir = tmp_path / "in"
    indir.mkdir()
    for name, size in (("a", 128), ("b", 192)):
        img, mask = demo.demo_inputs(size)
        img.save(indir / f"{name}.png")
        mask.save(indir / f"{name}_mask.png")
    ckpts = tiny_cli.ckpts
    out = tmp_path / "out"
    args = tiny_cli.inpaint(indir, out, "--steps", str(STEPS), "--rng", "torch-cpu")
    assert inpaint_st.main(args) == 0

    torch.set_num_threads(1)
    spec_d, wd, clip, unet, dec = reference_parts(
        TINY / "v1-inpainting-inference.yaml", ckpts["inpaint"], TINY / "autoencoder_kl_32x32x4.yaml", ckpts["decoder"]
    )
    enc = vref.reference_autoencoder(spec_d.first_stage, torch_state(wd), prefix="first_stage_model.", decoder=False)
    c = clip_reference(clip, tok(["photograph of a beautiful empty scene, highest quality settings"]))
    uc = clip_reference(clip, tok([""]))
    g = torch.Generator()  # never seeded: torch's default seed, as the original's CUDA generator
    for name in ("a", "b"):
        rgb = np.asarray(Image.open(indir / f"{name}.png").convert("RGB")).astype(np.float32)
        image = torch.from_numpy(rgb / 127.5 - 1.0).permute(2, 0, 1)[None]
        gray = np.asarray(Image.open(indir / f"{name}_mask.png").convert("L")).astype(np.float32) / 255.0
        mask = torch.from_numpy((gray >= 0.5).astype(np.float32))[None, None]
        h, w = image.shape[2] // 8, image.shape[3] // 8
        x_T = np.random.RandomState(0).randn(1, 4, h, w).astype(np.float32)
        mean, _ = enc.posterior(image * (mask < 0.5))
        c_cat = torch.cat([F.interpolate(mask, size=(h, w)), SCALE_FACTOR * mean], 1).numpy()
        traj = sref.ddim_sample(
            unet, x_T, c, uc, 7.5, steps=STEPS, eta=1.0, noise=TorchNoise((1, 4, h, w), g), c_concat=c_cat
        )
        x = dec.decode(torch.from_numpy(traj[-1] / SCALE_FACTOR), image, mask)
        assert_within_one_level(out / f"{name}.png", to_uint8(x))


def test_txt2img_numpy_seed_out_of_range_fails_with_one_error_line(tiny_cli, tmp_path, capsys):
    args = tiny_cli.txt2img(tmp_path / "out", "--rng", "numpy", "--seed", str(2**32))
    assert txt2img.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --seed") and "4294967296" in err[0]
    assert not (tmp_path / "out").exists()


def test_txt2img_numpy_noise_follows_the_seed_and_differs_per_iteration(tiny_cli, tmp_path):
    # issue 11 item 10: --fixed_code --n_iter 2 --ddim_eta 0.5 used to write the same image twice
    def run(out, seed):
        args = tiny_cli.txt2img(
            out,
            "--H",
            "64",
            "--W",
            "64",
            "--ddim_steps",
            "2",
            "--ddim_eta",
            "0.5",
            "--fixed_code",
            "--n_iter",
            "2",
            "--seed",
            str(seed),
            "--precision",
            "full",
            "--skip_grid",
        )
        assert txt2img.main(args) == 0
        return [np.asarray(Image.open(out / f"{i}.png")) for i in (0, 1)]

    a0, a1 = run(tmp_path / "a", 5)
    b0, _ = run(tmp_path / "b", 6)
    assert not np.array_equal(a0, a1)  # the step noise runs on into the second iteration
    assert not np.array_equal(a0, b0)  # and follows --seed
