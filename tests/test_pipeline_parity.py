"""End to end: asymvq's pipelines against a PyTorch reference built from independent
parts (transformers' CLIPTextModel, diffusers' UNet2DConditionModel, the SPEC-written
autoencoder reference, the NumPy transcription of the samplers), same tiny random
weights, identical noise streams. Final images within PSNR >= 40 dB."""

import math

import numpy as np
import pytest
import torch
from reference import samplers_reference as sref
from reference import unet_reference as uref
from reference import vae_reference as vref
from test_text_encoder import reference as clip_reference
from test_text_encoder import reference_model as clip_model

from asymvq import config, demo
from asymvq.image import load_pair
from asymvq.pipelines import INPAINT_PROMPT, SCALE_FACTOR, InpaintPipeline, Txt2ImgPipeline, _nearest_resize

STEPS = 8


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two [-1, 1] images mapped to [0, 1]."""
    x = np.clip((a.astype(np.float64) + 1) / 2, 0, 1)
    y = np.clip((b.astype(np.float64) + 1) / 2, 0, 1)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def torch_state(d):
    return {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in d.items()}


def reference_unet(spec, weights):
    model = uref.build_reference(spec, weights)
    return lambda x, t, ctx: uref.reference_eps(model, x, t, ctx)


@pytest.fixture(scope="module")
def inpaint_setup():
    torch.set_num_threads(1)
    cfg_d = config.packaged_tiny_config("v1-inpainting-inference")
    cfg_c = config.packaged_tiny_config("autoencoder_kl_32x32x4")
    spec_d, spec_c = config.load(cfg_d), config.load(cfg_c)
    wd, wc = demo.random_weights(spec_d, 3), demo.random_weights(spec_c, 4)
    tok = demo.demo_tokenizer()[0]
    pipe = InpaintPipeline._build(spec_d, spec_c, wd, wc, tok, "fp32", {}, cfg_d, cfg_c)
    return spec_d, spec_c, wd, wc, tok, pipe


def test_inpainting_pipeline_matches_a_pytorch_reference_loop(inpaint_setup):
    spec_d, spec_c, wd, wc, tok, pipe = inpaint_setup
    image, mask = demo.demo_inputs(128)
    x, m, _ = load_pair(image, mask)
    h, w = x.shape[2] // 8, x.shape[3] // 8
    rs = np.random.RandomState(7)
    x_T = rs.randn(1, 4, h, w).astype(np.float32)
    post = rs.randn(1, 4, h, w).astype(np.float32)
    xi = rs.randn(STEPS, 1, 4, h, w).astype(np.float32)
    res = pipe(x, m, steps=STEPS, eta=1.0, x_T=x_T, posterior_noise=post, step_noise=xi, progress=False)

    clip = clip_model(spec_d.text_encoder, {k: v for k, v in wd.items() if k.startswith("cond_stage_model.")})
    c = clip_reference(clip, tok([INPAINT_PROMPT]))
    uc = clip_reference(clip, tok([""]))
    enc = vref.reference_autoencoder(spec_d.first_stage, torch_state(wd), prefix="first_stage_model.", decoder=False)
    mean, logvar = enc.posterior(torch.from_numpy(x * (m < 0.5)))
    z_mi = SCALE_FACTOR * (mean + torch.exp(0.5 * logvar) * torch.from_numpy(post)).numpy()
    c_cat = np.concatenate([_nearest_resize(m, h, w), z_mi], 1).astype(np.float32)
    traj = sref.ddim_sample(
        reference_unet(spec_d.unet, wd), x_T, c, uc, 7.5, steps=STEPS, eta=1.0, noise=xi, c_concat=c_cat
    )
    dec = vref.reference_autoencoder(spec_c, torch_state(wc), encoder=False)
    want = dec.decode(torch.from_numpy(traj[-1] / SCALE_FACTOR), torch.from_numpy(x), torch.from_numpy(m)).numpy()

    lat_err = np.abs(res.latents - traj[-1]).max() / np.abs(traj[-1]).max()
    print(f"inpaint: latent rel err {lat_err:.2e}, PSNR {psnr(res.arrays, want):.1f} dB")
    assert lat_err <= 1e-3, lat_err
    assert psnr(res.arrays, want) >= 40.0


def test_txt2img_pipeline_matches_a_pytorch_reference_loop():
    torch.set_num_threads(1)
    cfg_d = config.packaged_tiny_config("v1-t2i-inference")
    cfg_c = config.packaged_tiny_config("autoencoder_kl_woc_32x32x4")
    spec_d, spec_c = config.load(cfg_d), config.load(cfg_c)
    wd, wc = demo.random_weights(spec_d, 5), demo.random_weights(spec_c, 6)
    tok = demo.demo_tokenizer()[0]
    pipe = Txt2ImgPipeline._build(spec_d, spec_c, wd, wc, tok, "fp32", {}, cfg_d, cfg_c)
    x_T = np.random.RandomState(9).randn(1, 4, 16, 16).astype(np.float32)
    res = pipe("a red house", height=128, width=128, steps=STEPS, sampler="plms", x_T=x_T, progress=False)

    clip = clip_model(spec_d.text_encoder, {k: v for k, v in wd.items() if k.startswith("cond_stage_model.")})
    c, uc = clip_reference(clip, tok(["a red house"])), clip_reference(clip, tok([""]))
    traj = sref.plms_sample(reference_unet(spec_d.unet, wd), x_T, c, uc, 7.5, steps=STEPS)
    dec = vref.reference_autoencoder(spec_c, torch_state(wc), encoder=False)
    want = dec.decode(torch.from_numpy(traj[-1] / SCALE_FACTOR)).numpy()
    lat_err = np.abs(res.latents - traj[-1]).max() / np.abs(traj[-1]).max()
    print(f"txt2img: latent rel err {lat_err:.2e}, PSNR {psnr(res.arrays, want):.1f} dB")
    assert lat_err <= 1e-3
    assert psnr(res.arrays, want) >= 40.0
