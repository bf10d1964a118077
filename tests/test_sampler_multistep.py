"""asymvq.Sampler beyond the original: DPM++ 2M (with and without Karras sigmas), Euler, Euler a.

Parity: each kind against the diffusers scheduler it follows (DPMSolverMultistepScheduler,
EulerDiscreteScheduler, EulerAncestralDiscreteScheduler), built the way SD 1.x users build it:
``X.from_config(PNDMScheduler.from_config(SD 1.5's scheduler_config.json).config)``, i.e. scaled-linear
betas, ``steps_offset=1`` and (current diffusers) ``timestep_spacing="linspace"``; ``"leading"`` (older
diffusers) and ``"trailing"`` are tested too.  The diffusers loop is the pipelines' loop
(``latents * init_noise_sigma``, ``scale_model_input``, CFG on ``[uncond, cond]``, ``c_concat`` after
the scaled latent), with the same deterministic stand-in model and, for Euler a, the same injected
noise (diffusers' ``randn_tensor`` patched to return it).  20-step trajectories compared step by
step: max |ours - ref| / max |ref| <= 1e-5.
"""

from __future__ import annotations

from typing import Any, List, Optional

import numpy as np
import pytest

from asymvq import config
from asymvq.rng import Generator
from asymvq.sampler import KINDS, Sampler, randn
from reference.samplers_reference import StandInUNet

torch = pytest.importorskip("torch")  # test-only reference
diffusers = pytest.importorskip("diffusers")

B, H, W, L, D = 2, 16, 24, 77, 16
REL = 1e-5
SCALE = 7.5

#: SD 1.5's scheduler_config.json (runwayml/stable-diffusion-v1-5, scheduler/).
SD15_SCHEDULER_CONFIG = dict(
    _class_name="PNDMScheduler", beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, num_train_timesteps=1000,
    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, trained_betas=None, clip_sample=False,
)

SIGMA_KINDS = [("dpmpp_2m", False), ("dpmpp_2m", True), ("euler", False), ("euler_a", False)]
SPACINGS = ["linspace", "leading", "trailing"]


def diffusers_scheduler(kind: str, karras: bool = False, spacing: Optional[str] = None) -> Any:
    from diffusers import (DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                           PNDMScheduler)

    cls = {"dpmpp_2m": DPMSolverMultistepScheduler, "euler": EulerDiscreteScheduler,
           "euler_a": EulerAncestralDiscreteScheduler}[kind]
    extra = {"use_karras_sigmas": True} if karras else {}
    if spacing is not None:
        extra["timestep_spacing"] = spacing
    sched = cls.from_config(PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG).config, **extra)
    assert sched.config.timestep_spacing == (spacing or "linspace") and sched.config.steps_offset == 1
    if kind == "dpmpp_2m":
        assert sched.config.algorithm_type == "dpmsolver++" and sched.config.solver_order == 2
        assert sched.config.lower_order_final and sched.config.prediction_type == "epsilon"
    return sched


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


def inputs(batch: int = B, h: int = H, w: int = W, d: int = D):
    """x_T, cond, uncond (uncond with batch 1, as the pipelines pass it)."""
    return randn(1, (batch, 4, h, w)), randn(2, (batch, L, d)), randn(3, (1, L, d))


def run(sampler: Sampler, model: Any, *args: Any, **kwargs: Any) -> List[np.ndarray]:
    """The latent after every step, through the callback."""
    traj: List[np.ndarray] = []
    x0 = sampler.sample(model, *args, callback=lambda i, t, x: traj.append(x), **kwargs)
    np.testing.assert_array_equal(x0, traj[-1])
    return traj


def diffusers_loop(sched: Any, steps: int, model: Any, x_T: np.ndarray, cond: np.ndarray,
                   uncond: Optional[np.ndarray], scale: float, c_concat: Optional[np.ndarray] = None,
                   noise: Optional[np.ndarray] = None, monkeypatch: Any = None) -> List[np.ndarray]:
    """The StableDiffusion(Inpaint)Pipeline denoising loop around a NumPy model; latents after every step."""
    sched.set_timesteps(steps)
    b = x_T.shape[0]
    guided = uncond is not None and scale != 1.0
    if noise is not None:
        draws = iter(noise)
        monkeypatch.setattr("diffusers.schedulers.scheduling_euler_ancestral_discrete.randn_tensor",
                            lambda shape, **kw: torch.from_numpy(next(draws).copy()))
    ctx = np.broadcast_to(cond, (b,) + cond.shape[1:])
    if guided:
        ctx = np.concatenate([np.broadcast_to(uncond, (b,) + uncond.shape[1:]), ctx])
    latents = torch.from_numpy(x_T.copy()) * sched.init_noise_sigma
    traj = []
    for t in sched.timesteps:
        inp = torch.cat([latents] * 2) if guided else latents
        inp = sched.scale_model_input(inp, t)
        if c_concat is not None:
            cc = torch.from_numpy(np.broadcast_to(c_concat, (b,) + c_concat.shape[1:]).copy())
            inp = torch.cat([inp, torch.cat([cc] * 2) if guided else cc], dim=1)
        n = inp.shape[0]
        tv = float(t)  # as asymvq hands timesteps to a Python model: int64 when integral
        ts = np.full(n, tv, np.float32) if tv != int(tv) else np.full(n, int(tv), np.int64)
        eps = torch.from_numpy(model(inp.numpy(), ts, np.ascontiguousarray(ctx)))
        if guided:
            e_u, e_c = eps.chunk(2)
            eps = e_u + scale * (e_c - e_u)
        latents = sched.step(eps, t, latents).prev_sample
        traj.append(latents.numpy().copy())
    return traj


def assert_trajectories_close(ours: List[np.ndarray], theirs: List[np.ndarray]) -> float:
    assert len(ours) == len(theirs)
    worst = max(rel_err(a, b) for a, b in zip(ours, theirs))
    assert worst <= REL, f"max relative error over the trajectory {worst:.3g} > {REL}"
    return worst


# --------------------------------------------------------------------------------------------------
# Tables


def test_the_schedule_is_diffusers_float32_alphas_cumprod_bit_for_bit() -> None:
    want = diffusers_scheduler("euler").alphas_cumprod.numpy()
    for kind in ("dpmpp_2m", "euler", "euler_a"):
        np.testing.assert_array_equal(Sampler(kind, 20).alphas_cumprod, want)


def test_ddim_and_plms_keep_the_original_float64_schedule() -> None:
    ours = Sampler("ddim", 20).alphas_cumprod
    assert not np.array_equal(ours, diffusers_scheduler("euler").alphas_cumprod.numpy())


def test_sd15_scheduler_config_gives_linspace_in_current_diffusers_the_default_spacing() -> None:
    assert diffusers_scheduler("dpmpp_2m").config.timestep_spacing == "linspace"
    assert Sampler("dpmpp_2m", 20).spacing == Sampler("euler", 20).spacing == "linspace"


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("kind, karras", SIGMA_KINDS)
@pytest.mark.parametrize("steps", [1, 7, 14, 15, 20, 50, 500, 997])
def test_timesteps_and_noise_levels_equal_diffusers(kind: str, karras: bool, spacing: str, steps: int) -> None:
    sched = diffusers_scheduler(kind, karras, spacing)
    sched.set_timesteps(steps)
    s = Sampler(kind, steps, karras=karras, spacing=spacing)
    np.testing.assert_array_equal(s.model_timesteps, sched.timesteps.numpy().astype(np.float32))
    # torch's AVX-512 sqrt is not correctly rounded (~15% of float32 results 1 ulp off), ours is: 1 ulp
    np.testing.assert_allclose(s.noise_levels, sched.sigmas.numpy(), rtol=2.0**-22, atol=0)
    assert s.init_noise_sigma == pytest.approx(float(sched.init_noise_sigma), rel=2.0**-21)


def test_euler_scales_x_T_by_sigma_max_or_its_leading_variant_and_dpm_not_at_all() -> None:
    s = Sampler("euler", 20, spacing="leading")
    assert s.init_noise_sigma == np.float32(np.sqrt(np.float32(s.noise_levels[0]) ** 2 + 1))
    assert Sampler("euler", 20).init_noise_sigma == Sampler("euler", 20).noise_levels[0]
    assert Sampler("dpmpp_2m", 20).init_noise_sigma == 1.0


# --------------------------------------------------------------------------------------------------
# Trajectories against diffusers


def parity(kind: str, karras: bool, steps: int, guided: bool, inpaint: bool, monkeypatch: Any,
           spacing: Optional[str] = None) -> float:
    x_T, c, uc = inputs()
    cc = None
    model = StandInUNet(in_channels=9 if inpaint else 4, seed=7)
    if inpaint:
        cc = np.concatenate([(randn(4, (1, 1, H, W)) > 0).astype(np.float32), randn(5, (1, 4, H, W))], 1)
    s = Sampler(kind, steps, karras=karras, spacing=spacing)
    noise = randn(6, (len(s.timesteps), B, 4, H, W)) if kind == "euler_a" else None
    u, scale = (uc, SCALE) if guided else (None, 1.0)
    ours = run(s, model, x_T, c, u, scale, c_concat=cc, noise=noise)
    theirs = diffusers_loop(diffusers_scheduler(kind, karras, spacing), steps, model, x_T, c, u, scale, c_concat=cc,
                            noise=noise, monkeypatch=monkeypatch)
    return assert_trajectories_close(ours, theirs)


@pytest.mark.parametrize("kind, karras", SIGMA_KINDS)
def test_20_step_trajectory_with_cfg_matches_diffusers(kind: str, karras: bool, monkeypatch) -> None:
    parity(kind, karras, 20, guided=True, inpaint=False, monkeypatch=monkeypatch)


@pytest.mark.parametrize("kind, karras", SIGMA_KINDS)
def test_20_step_inpainting_trajectory_with_c_concat_and_cfg_matches_diffusers(kind: str, karras: bool,
                                                                               monkeypatch) -> None:
    parity(kind, karras, 20, guided=True, inpaint=True, monkeypatch=monkeypatch)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("kind, karras", [k for k in SIGMA_KINDS if not k[1]])
def test_20_step_trajectory_with_other_spacings_matches_diffusers(kind: str, karras: bool, spacing: str,
                                                                 monkeypatch) -> None:
    parity(kind, karras, 20, guided=True, inpaint=True, monkeypatch=monkeypatch, spacing=spacing)


@pytest.mark.parametrize("kind, karras", SIGMA_KINDS)
def test_unguided_trajectory_matches_diffusers(kind: str, karras: bool, monkeypatch) -> None:
    parity(kind, karras, 20, guided=False, inpaint=False, monkeypatch=monkeypatch)


@pytest.mark.parametrize("steps", [1, 2, 8, 14, 15, 30])
@pytest.mark.parametrize("karras", [False, True])
def test_dpmpp_2m_step_counts_below_and_above_15_match_diffusers(steps: int, karras: bool, monkeypatch) -> None:
    # diffusers lowers the order of the final step (lower_order_final / final_sigmas_type "zero")
    x_T, c, uc = inputs()
    model = StandInUNet(seed=8)
    ours = run(Sampler("dpmpp_2m", steps, karras=karras), model, x_T, c, uc, SCALE)
    theirs = diffusers_loop(diffusers_scheduler("dpmpp_2m", karras), steps, model, x_T, c, uc, SCALE)
    assert_trajectories_close(ours, theirs)


def test_the_model_sees_the_euler_scaled_latent_and_unscaled_c_concat() -> None:
    x_T, c, uc = inputs(batch=1)
    cc = randn(9, (1, 5, H, W))
    model = StandInUNet(in_channels=9, record=True)
    s = Sampler("euler", 3, spacing="leading")
    s.sample(model, x_T, c, uc, SCALE, c_concat=cc)
    x, t, _ = model.inputs[0]
    sigma = np.float32(s.noise_levels[0])
    want = (x_T * np.float32(s.init_noise_sigma)) / np.float32(np.sqrt(sigma * sigma + np.float32(1)))
    np.testing.assert_array_equal(x[1, :4], want[0])
    np.testing.assert_array_equal(x[:, 4:], np.concatenate([cc, cc]))
    assert list(t) == [s.timesteps[-1]] * 2


@pytest.mark.parametrize("kind", ["dpmpp_2m", "euler", "euler_a"])
def test_one_model_call_per_step(kind: str) -> None:
    x_T, c, uc = inputs()
    model = StandInUNet()
    s = Sampler(kind, 12)
    s.sample(model, x_T, c, uc, SCALE, seed=0)
    assert model.calls == len(s.timesteps) == s.num_model_calls == 12


# --------------------------------------------------------------------------------------------------
# Euler a noise


def test_euler_a_seeded_noise_is_randn_of_the_noise_shape() -> None:
    x_T, c, uc = inputs()
    model = StandInUNet()
    s = Sampler("euler_a", 10)
    want = s.sample(model, x_T, c, uc, SCALE, noise=randn(11, (10, B, 4, H, W)))
    np.testing.assert_array_equal(s.sample(model, x_T, c, uc, SCALE, seed=11), want)


def test_euler_a_torch_cpu_noise_is_one_torch_draw_of_the_latent_shape_per_step() -> None:
    x_T, c, uc = inputs()
    model = StandInUNet()
    s = Sampler("euler_a", 6)
    g = torch.Generator().manual_seed(5)
    noise = np.stack([torch.randn([B, 4, H, W], generator=g).numpy() for _ in range(6)])
    want = s.sample(model, x_T, c, uc, SCALE, noise=noise)
    np.testing.assert_array_equal(s.sample(model, x_T, c, uc, SCALE, seed=5, rng="torch-cpu"), want)


def test_euler_a_with_a_generator_continues_its_stream() -> None:
    x_T, c, uc = inputs()
    model = StandInUNet()
    s = Sampler("euler_a", 4)
    g = Generator("torch-cpu", 3)
    first = s.sample(model, x_T, c, uc, SCALE, rng=g)
    second = s.sample(model, x_T, c, uc, SCALE, rng=g)
    assert not np.array_equal(first, second)
    ref = torch.Generator().manual_seed(3)
    draws = np.stack([torch.randn([B, 4, H, W], generator=ref).numpy() for _ in range(8)])
    np.testing.assert_array_equal(second, s.sample(model, x_T, c, uc, SCALE, noise=draws[4:]))


def test_euler_a_without_noise_seed_or_generator_is_rejected() -> None:
    x_T, c, uc = inputs()
    with pytest.raises(ValueError, match="Euler ancestral adds fresh noise"):
        Sampler("euler_a", 5).sample(StandInUNet(), x_T, c, uc, SCALE)


@pytest.mark.parametrize("kind", ["dpmpp_2m", "euler"])
def test_deterministic_kinds_ignore_noise(kind: str) -> None:
    x_T, c, uc = inputs()
    model = StandInUNet()
    s = Sampler(kind, 5)
    np.testing.assert_array_equal(s.sample(model, x_T, c, uc, SCALE, noise=randn(1, (5, B, 4, H, W))),
                                  s.sample(model, x_T, c, uc, SCALE))


# --------------------------------------------------------------------------------------------------
# Arguments


def test_kinds_lists_the_original_samplers_first() -> None:
    assert KINDS == ("ddim", "plms", "dpmpp_2m", "euler", "euler_a")


@pytest.mark.parametrize("kind", ["dpmpp_2m", "euler", "euler_a", "plms"])
def test_eta_with_any_kind_but_ddim_is_rejected(kind: str) -> None:
    with pytest.raises(ValueError, match="eta"):
        Sampler(kind, 20, eta=0.5)


@pytest.mark.parametrize("kind", ["ddim", "plms", "euler", "euler_a"])
def test_karras_with_any_kind_but_dpmpp_2m_is_rejected(kind: str) -> None:
    with pytest.raises(ValueError, match="karras sigmas are offered with the dpmpp_2m sampler only"):
        Sampler(kind, 20, karras=True)


@pytest.mark.parametrize("kind", ["dpm++", "DDIM", "euler-a", ""])
def test_an_unknown_kind_is_rejected_with_the_list(kind: str) -> None:
    with pytest.raises(ValueError, match="ddim, plms, dpmpp_2m, euler, euler_a"):
        Sampler(kind, 20)


@pytest.mark.parametrize("kind, steps", [("dpmpp_2m", 1000), ("euler", 1000), ("euler_a", 0), ("dpmpp_2m", -3)])
def test_step_counts_the_schedule_cannot_hold_are_rejected(kind: str, steps: int) -> None:
    with pytest.raises(ValueError, match="steps"):
        Sampler(kind, steps)


def test_a_leading_step_count_whose_first_timestep_would_be_T_is_rejected() -> None:
    # diffusers hands timestep 1000 of a 1000-step schedule to the model here
    with pytest.raises(ValueError, match="puts a timestep at 1000, outside the schedule's 0..999"):
        Sampler("dpmpp_2m", 999, spacing="leading")


def test_a_trailing_step_count_diffusers_would_run_one_step_longer_is_rejected() -> None:
    sched = diffusers_scheduler("euler", spacing="trailing")
    sched.set_timesteps(998)
    assert len(sched.timesteps) == 999  # numpy.arange's float stride: one timestep more than asked
    with pytest.raises(ValueError, match="yields 999 timesteps in diffusers, not 998"):
        Sampler("euler", 998, spacing="trailing")


def test_the_schedule_comes_from_the_config() -> None:
    import dataclasses

    path = config.packaged_config("v1-inpainting-inference")
    spec = dataclasses.replace(config.load(path), linear_start=0.0001, linear_end=0.02, timesteps=500)
    s = Sampler("euler", 10, config=spec, spacing="leading")
    want = torch.cumprod(1 - torch.linspace(0.0001 ** 0.5, 0.02 ** 0.5, 500, dtype=torch.float32) ** 2, 0)
    np.testing.assert_array_equal(s.alphas_cumprod, want.numpy())
    np.testing.assert_array_equal(s.timesteps, np.arange(0, 500, 50) + 1)


def test_a_python_model_gets_fractional_linspace_timesteps_as_float32() -> None:
    x_T, c, uc = inputs(batch=1)
    model = StandInUNet(record=True)
    s = Sampler("euler", 5)
    s.sample(model, x_T, c, uc, SCALE)
    got = [float(t[0]) for _, t, _ in model.inputs]
    assert got == [float(v) for v in s.model_timesteps] and got[1] != int(got[1])
    assert model.inputs[1][1].dtype == np.float32


@pytest.mark.parametrize("kind", ["ddim", "plms"])
def test_spacing_with_the_original_samplers_is_rejected(kind: str) -> None:
    with pytest.raises(ValueError, match="spacing applies to dpmpp_2m, euler and euler_a"):
        Sampler(kind, 20, spacing="leading")


def test_an_unknown_spacing_is_rejected_with_the_list() -> None:
    with pytest.raises(ValueError, match="linspace, leading, trailing"):
        Sampler("euler", 20, spacing="uniform")


# --------------------------------------------------------------------------------------------------
# The C loop with the tiny C UNet


@pytest.fixture(scope="module")
def tiny_t2i():
    from asymvq.unet import UNet
    from reference.unet_reference import random_unet_weights

    spec = config.load(config.packaged_tiny_config("v1-t2i-inference.yaml")).unet
    return spec, UNet.from_config(spec, random_unet_weights(spec, seed=3))


@pytest.mark.parametrize("kind", ["dpmpp_2m", "euler_a"])
def test_the_c_unet_runs_inside_the_c_loop_without_python(tiny_t2i, kind: str, monkeypatch) -> None:
    spec, unet = tiny_t2i
    x_T, c, uc = randn(0, (1, 4, 8, 16)), randn(1, (1, L, spec.context_dim)), randn(2, (1, L, spec.context_dim))
    expected = Sampler(kind, 4).sample(lambda x, t, ctx: unet(x, t, ctx), x_T, c, uc, SCALE, seed=1)

    def no_python(*args: Any) -> None:
        raise AssertionError("the sampler called UNet.__call__ instead of the C UNet")

    monkeypatch.setattr(type(unet), "__call__", no_python)
    np.testing.assert_array_equal(Sampler(kind, 4).sample(unet, x_T, c, uc, SCALE, seed=1), expected)


def test_ctrl_c_during_a_dpmpp_loop_stops_within_one_step(tiny_t2i) -> None:
    import os
    import signal
    import threading

    spec, unet = tiny_t2i
    x_T, c, uc = randn(0, (1, 4, 8, 16)), randn(1, (1, L, spec.context_dim)), randn(2, (1, L, spec.context_dim))
    s = Sampler("dpmpp_2m", 20)
    steps: List[int] = []

    def press_ctrl_c_after_step_1(i: int, t: int, x: np.ndarray) -> None:
        steps.append(i)
        if i == 1:
            threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGINT)).start()

    with pytest.raises(KeyboardInterrupt):
        s.sample(unet, x_T, c, uc, SCALE, callback=press_ctrl_c_after_step_1)
    assert max(steps) <= 3
    np.testing.assert_array_equal(s.sample(unet, x_T, c, uc, SCALE), Sampler("dpmpp_2m", 20).sample(unet, x_T, c, uc,
                                                                                                     SCALE))


class TorchUNet:
    """diffusers' UNet2DConditionModel holding the same ldm weights, as a NumPy model."""

    def __init__(self, spec: config.UNetSpec, weights: dict) -> None:
        from reference.unet_reference import build_reference

        self.model = build_reference(spec, weights)

    def __call__(self, x: np.ndarray, t: np.ndarray, ctx: np.ndarray) -> np.ndarray:
        from reference.unet_reference import reference_eps

        return reference_eps(self.model, np.ascontiguousarray(x, np.float32), t, ctx)


@pytest.fixture(scope="module")
def tiny_pairs():
    """Per model kind: the tiny C UNet and diffusers' torch UNet holding the same random weights."""
    from asymvq.unet import UNet
    from reference.unet_reference import random_unet_weights

    out = {}
    for name, cfg in [("t2i", "v1-t2i-inference.yaml"), ("inpaint", "v1-inpainting-inference.yaml")]:
        spec = config.load(config.packaged_tiny_config(cfg)).unet
        weights = random_unet_weights(spec, seed=4)
        out[name] = spec, UNet.from_config(spec, weights), TorchUNet(spec, weights)
    return out


@pytest.mark.parametrize("name", ["t2i", "inpaint"])
@pytest.mark.parametrize("kind, karras", SIGMA_KINDS)
def test_20_step_c_loop_with_the_tiny_c_unet_matches_diffusers_with_the_torch_unet(tiny_pairs, name: str, kind: str,
                                                                                   karras: bool, monkeypatch) -> None:
    # the parity bound, 1e-5 on the whole trajectory, holds with the real (tiny) UNet too:
    # measured 3e-6 .. 5.2e-6 over these eight cases
    spec, ours_unet, torch_unet = tiny_pairs[name]
    h, w, steps = 8, 16, 20
    x_T, c, uc = randn(0, (1, 4, h, w)), randn(1, (1, L, spec.context_dim)), randn(2, (1, L, spec.context_dim))
    cc = None
    if spec.in_channels == 9:
        cc = np.concatenate([(randn(3, (1, 1, h, w)) > 0).astype(np.float32), randn(4, (1, 4, h, w))], 1)
    noise = randn(5, (steps, 1, 4, h, w)) if kind == "euler_a" else None
    ours = run(Sampler(kind, steps, karras=karras), ours_unet, x_T, c, uc, SCALE, c_concat=cc, noise=noise)
    theirs = diffusers_loop(diffusers_scheduler(kind, karras), steps, torch_unet, x_T, c, uc, SCALE, c_concat=cc,
                            noise=noise, monkeypatch=monkeypatch)
    worst = assert_trajectories_close(ours, theirs)
    print(f"tiny UNet {name} {kind}{' karras' if karras else ''}: max relative error {worst:.3g}")


@pytest.mark.slow
def test_unguided_20_step_dpmpp_2m_lands_closer_to_a_fine_ddim_reference_than_50_step_ddim(tiny_t2i) -> None:
    # tools/step_count_trajectory.py measures it (README "Samplers"). True without guidance; with CFG 7.5
    # on these random weights 50-step DDIM lands closer (0.15 vs 0.18 relative L2), so that is not asserted.
    spec, unet = tiny_t2i
    x_T, c = randn(0, (1, 4, 8, 8)), randn(1, (1, L, spec.context_dim))
    ref = Sampler("ddim", 250).sample(unet, x_T, c, None, 1.0)

    def dist(x: np.ndarray) -> float:
        return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))

    dpm20, ddim50 = dist(Sampler("dpmpp_2m", 20).sample(unet, x_T, c, None, 1.0)), dist(
        Sampler("ddim", 50).sample(unet, x_T, c, None, 1.0))
    assert dpm20 < ddim50 / 2, (dpm20, ddim50)
