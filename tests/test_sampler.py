"""asymvq.Sampler: the schedule, DDIM (any eta) and PLMS of the original (SPEC §5.1, §5.5, §6), the loop in C.

Parity: DDIM(eta=0) against diffusers' DDIMScheduler configured like the original; DDIM(eta=1) with
injected noise and PLMS against the NumPy transcription in tests/reference/samplers_reference.py; all
with a deterministic stand-in model and 50-step trajectories compared step by step (relative error =
max |ours - ref| / max |ref| <= 1e-5).
"""

from __future__ import annotations

import dataclasses
from typing import Any, List, Optional

import numpy as np
import pytest
from reference import samplers_reference as ref
from reference.samplers_reference import StandInUNet

from asymvq import config
from asymvq.sampler import Sampler, randn

B, H, W, L, D = 2, 16, 24, 77, 16
REL = 1e-5


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


def assert_trajectories_close(ours: List[np.ndarray], theirs: List[np.ndarray]) -> None:
    assert len(ours) == len(theirs)
    worst = max(rel_err(a, b) for a, b in zip(ours, theirs))
    assert worst <= REL, f"max relative error over the trajectory {worst:.3g} > {REL}"


# --------------------------------------------------------------------------------------------------
# Schedule and tables


def test_alphas_cumprod_has_the_spec_reference_values() -> None:
    abar = Sampler().alphas_cumprod
    assert abar.dtype == np.float32 and abar.shape == (1000,)
    np.testing.assert_allclose(abar[[0, 1, 999]], [0.99914998, 0.99829602, 0.0046600983], rtol=1e-7)


def test_alphas_cumprod_equals_the_float64_transcription_cast_to_float32() -> None:
    np.testing.assert_array_equal(Sampler().alphas_cumprod, ref.alphas_cumprod())


def test_schedule_comes_from_the_config() -> None:
    path = config.packaged_config("v1-inpainting-inference")
    np.testing.assert_array_equal(Sampler(config=path).alphas_cumprod, Sampler().alphas_cumprod)
    spec = dataclasses.replace(config.load(path), linear_start=0.0001, linear_end=0.02, timesteps=500)
    s = Sampler(steps=10, config=spec)
    np.testing.assert_array_equal(s.alphas_cumprod, ref.alphas_cumprod(0.0001, 0.02, 500))
    np.testing.assert_array_equal(s.timesteps, np.arange(0, 500, 50) + 1)


def test_a_config_path_that_is_not_a_diffusion_config_is_a_type_error_naming_what_it_holds() -> None:
    with pytest.raises(TypeError, match="a diffusion config path .*got AutoencoderSpec"):
        Sampler(config=config.packaged_config("autoencoder_kl_32x32x4"))


def test_ddim_timesteps_have_the_plus_one_offset() -> None:
    t = Sampler(steps=50).timesteps
    assert t.tolist() == list(range(1, 1000, 20))  # 1, 21, ..., 981


def test_step_counts_not_dividing_the_schedule_keep_the_whole_range() -> None:
    # 1000 // 6 = 166 and range(0, 1000, 166) has 7 entries: the original runs all 7
    s = Sampler(steps=6)
    assert s.timesteps.tolist() == [1, 167, 333, 499, 665, 831, 997]
    assert s.num_model_calls == 7
    assert Sampler("plms", steps=6).num_model_calls == 8


def test_ddim_table_matches_spec_6_1() -> None:
    s = Sampler(steps=50, eta=1.0)
    rows = {  # k: (tau, a, aprev, sigma, sqrt(1 - aprev - sigma^2))
        49: (981, 0.00577550009, 0.00728172716, 0.454463282, 0.886668708),
        48: (961, 0.00728172716, 0.00911730994, 0.448282454, 0.888777549),
        47: (941, 0.00911730994, 0.0113379117, 0.442060413, 0.890642846),
        2: (41, 0.960872769, 0.980380774, 0.0998873317, 0.0981924),
        1: (21, 0.980380774, 0.998296022, 0.0394796007, 0.0120556508),
        0: (1, 0.998296022, 0.999149978, 0.0206483543, 0.0205831801),
    }
    for k, (tau, a, aprev, sigma, dir_coef) in rows.items():
        assert s.timesteps[k] == tau
        np.testing.assert_allclose([s.alphas[k], s.alphas_prev[k], s.sigmas[k]], [a, aprev, sigma], rtol=1e-7)
        d = np.sqrt(np.float32(1) - s.alphas_prev[k] - s.sigmas[k] * s.sigmas[k])
        np.testing.assert_allclose(d, dir_coef, rtol=2e-6)


def test_sigmas_match_the_transcription_and_vanish_for_eta_0() -> None:
    for eta in (0.0, 0.5, 1.0):
        table = ref.ddim_table(ref.alphas_cumprod(), 50, eta)
        np.testing.assert_array_equal(Sampler(steps=50, eta=eta).sigmas, table.sigma)
    assert not Sampler(steps=50, eta=0.0).sigmas.any()


# --------------------------------------------------------------------------------------------------
# Parity


def test_ddim_eta0_matches_diffusers_ddim_scheduler() -> None:
    torch = pytest.importorskip("torch")  # test-only reference
    diffusers = pytest.importorskip("diffusers")
    x_T, c, uc = inputs()
    ours = run(Sampler("ddim", 50, 0.0), StandInUNet(), x_T, c, uc, 7.5)

    sched = diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )
    sched.set_timesteps(50)
    model, x, theirs = StandInUNet(), torch.from_numpy(x_T), []
    for t in sched.timesteps:
        e = ref.guided_eps(model, x.numpy(), int(t), c, uc, 7.5)
        x = sched.step(torch.from_numpy(e), t, x, eta=0.0).prev_sample
        theirs.append(x.numpy())
    assert_trajectories_close(ours, theirs)


def test_ddim_eta1_with_injected_noise_matches_the_transcription() -> None:
    x_T, c, uc = inputs()
    noise = randn(4, (50, B, 4, H, W))
    ours = run(Sampler("ddim", 50, 1.0), StandInUNet(), x_T, c, uc, 7.5, noise=noise)
    theirs = ref.ddim_sample(StandInUNet(), x_T, c, uc, 7.5, steps=50, eta=1.0, noise=noise)
    assert_trajectories_close(ours, theirs)


def test_ddim_any_eta_matches_the_transcription() -> None:
    x_T, c, uc = inputs()
    noise = randn(5, (20, B, 4, H, W))
    ours = run(Sampler("ddim", 20, 0.3), StandInUNet(), x_T, c, uc, 3.0, noise=noise)
    theirs = ref.ddim_sample(StandInUNet(), x_T, c, uc, 3.0, steps=20, eta=0.3, noise=noise)
    assert_trajectories_close(ours, theirs)


def test_plms_matches_the_transcription_with_one_extra_model_call() -> None:
    x_T, c, uc = inputs()
    model = StandInUNet()
    ours = run(Sampler("plms", 50), model, x_T, c, uc, 7.5)
    assert model.calls == 51  # the first step evaluates twice (SPEC §6.2)
    theirs = ref.plms_sample(StandInUNet(), x_T, c, uc, 7.5, steps=50)
    assert_trajectories_close(ours, theirs)


def test_plms_bootstrap_evaluates_the_next_timestep_on_the_ddim_predicted_latent() -> None:
    x_T, c, uc = inputs(batch=1)
    model = StandInUNet(record=True)
    Sampler("plms", 50).sample(model, x_T, c, uc, 7.5)
    t_seen = [int(call[1][0]) for call in model.inputs]
    assert t_seen[:4] == [981, 961, 961, 941]  # 981, then 961 twice (bootstrap, then step 2)
    table = ref.ddim_table(ref.alphas_cumprod(), 50, 0.0)
    e = ref.guided_eps(StandInUNet(), x_T, 981, c, uc, 7.5)
    x1 = ref.ddim_update(x_T, e, table, 49, None)
    np.testing.assert_array_equal(model.inputs[1][0][:1], x1)


def test_inpainting_ddim_matches_the_transcription() -> None:
    x_T, c, uc = inputs()
    c_concat = np.concatenate([(randn(6, (1, 1, H, W)) > 0).astype(np.float32), randn(7, (1, 4, H, W))], 1)
    noise = randn(8, (50, B, 4, H, W))
    model = StandInUNet(in_channels=9)
    ours = run(Sampler("ddim", 50, 1.0), model, x_T, c, uc, 7.5, c_concat=c_concat, noise=noise)
    theirs = ref.ddim_sample(StandInUNet(in_channels=9), x_T, c, uc, 7.5, 50, 1.0, noise, c_concat=c_concat)
    assert_trajectories_close(ours, theirs)


def test_guided_batch_is_uncond_then_cond_and_c_concat_follows_x() -> None:
    x_T, c, _ = inputs()
    uc = randn(9, (B, L, D))
    c_concat = randn(10, (B, 5, H, W))
    model = StandInUNet(in_channels=9, record=True)
    Sampler("ddim", 10).sample(model, x_T, c, uc, 7.5, c_concat=c_concat)
    x_in, t_in, ctx = model.inputs[0]
    assert x_in.shape == (2 * B, 9, H, W) and ctx.shape == (2 * B, L, D)
    np.testing.assert_array_equal(x_in[:B, :4], x_T)  # channels 0-3: x_t ...
    np.testing.assert_array_equal(x_in[B:, :4], x_T)
    np.testing.assert_array_equal(x_in[:B, 4:], c_concat)  # ... then mask + masked-image latent
    np.testing.assert_array_equal(x_in[B:, 4:], c_concat)
    np.testing.assert_array_equal(ctx[:B], uc)  # [uncond, cond]
    np.testing.assert_array_equal(ctx[B:], c)
    assert t_in.tolist() == [901] * (2 * B)  # 10 steps: tau = 1, 101, ..., 901
    assert t_in.dtype == np.int64


@pytest.mark.parametrize("uncond_given", [False, True])
def test_without_guidance_the_model_sees_batch_b_once_per_step(uncond_given: bool) -> None:
    x_T, c, uc = inputs()
    model = StandInUNet(record=True)
    x0 = Sampler("ddim", 10).sample(model, x_T, c, uc if uncond_given else None, 1.0)
    assert model.calls == 10 and all(call[0].shape[0] == B for call in model.inputs)
    expected = ref.ddim_sample(StandInUNet(), x_T, c, None, 1.0, steps=10)[-1]
    assert rel_err(x0, expected) <= REL


def test_batch_1_conditioning_is_repeated_over_the_batch() -> None:
    x_T, c, uc = inputs()
    one = Sampler("ddim", 10).sample(StandInUNet(), x_T, c[:1], uc, 7.5)
    repeated = Sampler("ddim", 10).sample(StandInUNet(), x_T, np.repeat(c[:1], B, 0), np.repeat(uc, B, 0), 7.5)
    np.testing.assert_array_equal(one, repeated)


def test_seeded_noise_is_randn_of_the_noise_shape() -> None:
    x_T, c, uc = inputs()
    s = Sampler("ddim", 20, 1.0)
    seeded = s.sample(StandInUNet(), x_T, c, uc, 7.5, seed=1234)
    injected = s.sample(StandInUNet(), x_T, c, uc, 7.5, noise=randn(1234, (20, B, 4, H, W)))
    np.testing.assert_array_equal(seeded, injected)
    other = s.sample(StandInUNet(), x_T, c, uc, 7.5, seed=1235)
    assert not np.array_equal(seeded, other)


def test_torch_cpu_noise_is_one_torch_draw_of_the_latent_shape_per_step() -> None:
    # the original's p_sample_ddim: torch.randn(x.shape) once per step, on one generator
    import torch

    x_T, c, uc = inputs()
    s = Sampler("ddim", 20, 1.0)
    g = torch.Generator().manual_seed(2**63 - 1)
    draws = np.stack([torch.randn((B, 4, H, W), generator=g).numpy() for _ in range(20)])
    seeded = s.sample(StandInUNet(), x_T, c, uc, 7.5, seed=2**63 - 1, rng="torch-cpu")
    np.testing.assert_array_equal(seeded, s.sample(StandInUNet(), x_T, c, uc, 7.5, noise=draws))


def test_a_generator_given_as_rng_continues_its_stream_across_samples() -> None:
    from asymvq.rng import Generator

    x_T, c, uc = inputs()
    s = Sampler("ddim", 10, 0.5)
    g = Generator("torch-cpu", 5)
    first, second = (s.sample(StandInUNet(), x_T, c, uc, 7.5, rng=g) for _ in range(2))
    ref = Generator("torch-cpu", 5)
    noise = np.stack([ref.randn((B, 4, H, W)) for _ in range(20)])
    np.testing.assert_array_equal(first, s.sample(StandInUNet(), x_T, c, uc, 7.5, noise=noise[:10]))
    np.testing.assert_array_equal(second, s.sample(StandInUNet(), x_T, c, uc, 7.5, noise=noise[10:]))
    assert not np.array_equal(first, second)


def test_numpy_rng_with_a_seed_is_the_plain_seeded_stream() -> None:
    x_T, c, uc = inputs()
    s = Sampler("ddim", 10, 1.0)
    np.testing.assert_array_equal(
        s.sample(StandInUNet(), x_T, c, uc, 7.5, seed=9, rng="numpy"), s.sample(StandInUNet(), x_T, c, uc, 7.5, seed=9)
    )


def test_torch_cuda_noise_is_one_generator_draw_per_step() -> None:
    from asymvq.rng import Generator

    x_T, c, uc = inputs()
    s = Sampler("ddim", 10, 1.0)
    g = Generator("torch-cuda", 3)
    noise = np.stack([g.randn((B, 4, H, W)) for _ in range(10)])
    np.testing.assert_array_equal(
        s.sample(StandInUNet(), x_T, c, uc, 7.5, seed=3, rng="torch-cuda"),
        s.sample(StandInUNet(), x_T, c, uc, 7.5, noise=noise),
    )


def test_an_unknown_rng_is_rejected() -> None:
    x_T, c, uc = inputs()
    with pytest.raises(ValueError, match="rng must be one of"):
        Sampler("ddim", 10, 1.0).sample(StandInUNet(), x_T, c, uc, 7.5, seed=1, rng="cuda")


def test_a_generator_with_a_seed_is_rejected() -> None:
    from asymvq.rng import Generator

    x_T, c, uc = inputs()
    with pytest.raises(ValueError, match="either seed or a Generator"):
        Sampler("ddim", 10, 1.0).sample(StandInUNet(), x_T, c, uc, 7.5, seed=1, rng=Generator("numpy", 1))


def test_noise_is_ignored_when_eta_is_0() -> None:
    x_T, c, uc = inputs()
    s = Sampler("ddim", 10, 0.0)
    plain = s.sample(StandInUNet(), x_T, c, uc, 7.5)
    np.testing.assert_array_equal(plain, s.sample(StandInUNet(), x_T, c, uc, 7.5, noise=randn(0, (10, B, 4, H, W))))
    np.testing.assert_array_equal(plain, s.sample(StandInUNet(), x_T, c, uc, 7.5, seed=3))


def test_inputs_are_not_modified() -> None:
    x_T, c, uc = inputs()
    copies = [a.copy() for a in (x_T, c, uc)]
    Sampler("ddim", 5, 1.0).sample(StandInUNet(), x_T, c, uc, 7.5, seed=0)
    for a, b in zip((x_T, c, uc), copies):
        np.testing.assert_array_equal(a, b)


def test_float64_inputs_are_rounded_to_float32_like_the_original_start_code() -> None:
    x64 = np.random.RandomState(0).randn(1, 4, 8, 8)
    _, c, uc = inputs(batch=1)
    s = Sampler("ddim", 5)
    np.testing.assert_array_equal(
        s.sample(StandInUNet(), x64, c, uc, 7.5), s.sample(StandInUNet(), x64.astype(np.float32), c, uc, 7.5)
    )


# --------------------------------------------------------------------------------------------------
# Callback, interruption, NaN


def test_callback_sees_every_step_with_its_timestep_and_latent() -> None:
    x_T, c, uc = inputs()
    seen = []
    Sampler("ddim", 50).sample(
        StandInUNet(), x_T, c, uc, 7.5, callback=lambda i, t, x: seen.append((i, t, x.shape, x.dtype))
    )
    assert [s[0] for s in seen] == list(range(50))
    assert [s[1] for s in seen] == list(range(981, 0, -20))
    assert all(s[2] == (B, 4, H, W) and s[3] == np.float32 for s in seen)


def test_a_latent_returned_by_the_callback_replaces_the_state() -> None:
    x_T, c, uc = inputs()
    model = StandInUNet(record=True)
    replacement = randn(11, (B, 4, H, W))

    def callback(i: int, t: int, x: np.ndarray) -> Optional[np.ndarray]:
        return replacement if i == 3 else None

    Sampler("ddim", 10).sample(model, x_T, c, uc, 7.5, callback=callback)
    np.testing.assert_array_equal(model.inputs[4][0][:B], replacement)  # step 4 starts from it


def test_keyboard_interrupt_in_the_callback_stops_the_loop_and_leaves_the_sampler_usable() -> None:
    x_T, c, uc = inputs()
    s = Sampler("ddim", 50, 1.0)
    model = StandInUNet()

    def interrupt(i: int, t: int, x: np.ndarray) -> None:
        if i == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        s.sample(model, x_T, c, uc, 7.5, seed=0, callback=interrupt)
    assert model.calls == 4  # steps 0..3, nothing after the interrupt
    again = s.sample(StandInUNet(), x_T, c, uc, 7.5, seed=0)
    fresh = Sampler("ddim", 50, 1.0).sample(StandInUNet(), x_T, c, uc, 7.5, seed=0)
    np.testing.assert_array_equal(again, fresh)


def test_an_exception_in_a_python_model_propagates_unchanged() -> None:
    x_T, c, uc = inputs()
    calls = []

    def failing(x: np.ndarray, t: np.ndarray, ctx: np.ndarray) -> np.ndarray:
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("model broke at call 5")
        return np.zeros((x.shape[0], 4) + x.shape[2:], np.float32)

    with pytest.raises(RuntimeError, match="model broke at call 5"):
        Sampler("ddim", 50).sample(failing, x_T, c, uc, 7.5)
    assert len(calls) == 5


def test_nan_from_the_model_is_a_floating_point_error_naming_the_step() -> None:
    x_T, c, uc = inputs()
    inner = StandInUNet()

    def nan_at_t_901(x: np.ndarray, t: np.ndarray, ctx: np.ndarray) -> np.ndarray:
        e = inner(x, t, ctx)
        if t[0] == 901:
            e[0, 0, 0, 0] = np.nan
        return e

    with pytest.raises(FloatingPointError, match="step 4 .*t=901"):
        Sampler("ddim", 50).sample(nan_at_t_901, x_T, c, uc, 7.5)


def test_nan_returned_by_the_callback_is_a_floating_point_error() -> None:
    x_T, c, uc = inputs()

    def poison(i: int, t: int, x: np.ndarray) -> np.ndarray:
        x[0, 0, 0, 0] = np.inf
        return x

    with pytest.raises(FloatingPointError, match="callback"):
        Sampler("ddim", 10).sample(StandInUNet(), x_T, c, uc, 7.5, callback=poison)


def test_a_callback_returning_the_wrong_shape_is_a_value_error() -> None:
    x_T, c, uc = inputs()
    with pytest.raises(ValueError, match="returned by the callback"):
        Sampler("ddim", 10).sample(StandInUNet(), x_T, c, uc, 7.5, callback=lambda i, t, x: x[:1])


def test_a_model_returning_the_wrong_shape_is_a_value_error() -> None:
    x_T, c, uc = inputs()
    with pytest.raises(ValueError, match=r"output of unet\(x, t, context\)"):
        Sampler("ddim", 10).sample(lambda x, t, ctx: np.zeros((1, 4, H, W), np.float32), x_T, c, uc, 7.5)


# --------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("steps", [0, -3, 1001])
def test_steps_outside_1_to_1000_are_rejected(steps: int) -> None:
    with pytest.raises(ValueError, match="steps must be between 1 and 1000"):
        Sampler(steps=steps)


@pytest.mark.parametrize("steps", [3, 1000])
def test_step_counts_the_original_cannot_run_are_rejected_with_the_reason(steps: int) -> None:
    # 1000 // steps divides 999: the last timestep would be 1000, past the schedule (the original fails too)
    with pytest.raises(ValueError, match=f"steps={steps}: .*past the schedule's last index 999"):
        Sampler(steps=steps)


def test_negative_eta_is_rejected() -> None:
    with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
        Sampler(eta=-0.1)


def test_plms_with_nonzero_eta_is_rejected() -> None:
    with pytest.raises(ValueError, match="PLMS .*eta must be 0"):
        Sampler("plms", eta=0.5)


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="kind must be"):
        Sampler("heun")  # "euler" became a kind (issue 15)


def test_a_4_channel_unet_given_c_concat_is_rejected() -> None:
    x_T, c, uc = inputs()
    with pytest.raises(ValueError, match="c_concat given, but this UNet takes in_channels=4"):
        Sampler().sample(StandInUNet(in_channels=4), x_T, c, uc, 7.5, c_concat=randn(0, (B, 5, H, W)))


def test_a_9_channel_unet_without_c_concat_is_rejected() -> None:
    x_T, c, uc = inputs()
    with pytest.raises(ValueError, match=r"in_channels=9 \(inpainting\): pass c_concat \[B, 5, h, w\]"):
        Sampler().sample(StandInUNet(in_channels=9), x_T, c, uc, 7.5)


def test_c_concat_of_the_wrong_size_is_rejected() -> None:
    x_T, c, uc = inputs()
    with pytest.raises(ValueError, match="c_concat must be"):
        Sampler().sample(StandInUNet(in_channels=9), x_T, c, uc, 7.5, c_concat=randn(0, (B, 5, H, W + 8)))


@pytest.mark.parametrize("hw", [(30, 32), (32, 20)])
def test_latent_size_not_a_multiple_of_8_is_rejected(hw: tuple[int, int]) -> None:
    x_T, c, uc = inputs(h=hw[0], w=hw[1])
    with pytest.raises(ValueError, match="multiples of 8"):
        Sampler().sample(StandInUNet(), x_T, c, uc, 7.5)


def test_cond_of_the_wrong_width_is_rejected() -> None:
    x_T, _, uc = inputs()
    with pytest.raises(ValueError, match=r"cond must be \[B, L, 16\]"):
        Sampler().sample(StandInUNet(context_dim=16), x_T, randn(0, (B, L, 32)), uc, 7.5)


def test_cond_of_the_wrong_batch_is_rejected() -> None:
    x_T, _, uc = inputs()
    with pytest.raises(ValueError, match="cond has batch 3, expected 2"):
        Sampler().sample(StandInUNet(), x_T, randn(0, (3, L, D)), uc, 7.5)


def test_cond_that_is_not_3_d_is_rejected() -> None:
    x_T, c, uc = inputs()
    with pytest.raises(ValueError, match="cond must be 3-D"):
        Sampler().sample(StandInUNet(), x_T, c[0], uc, 7.5)


def test_uncond_of_another_length_than_cond_is_rejected() -> None:
    x_T, c, _ = inputs()
    with pytest.raises(ValueError, match="uncond .* and cond .* must have the same length"):
        Sampler().sample(StandInUNet(), x_T, c, randn(0, (1, 10, D)), 7.5)


def test_noise_of_the_wrong_shape_is_rejected() -> None:
    x_T, c, uc = inputs()
    with pytest.raises(ValueError, match=r"noise must be \[50, 2, 4, 16, 24\]"):
        Sampler(eta=1.0).sample(StandInUNet(), x_T, c, uc, 7.5, noise=randn(0, (49, B, 4, H, W)))


def test_eta_above_0_without_noise_or_seed_is_rejected() -> None:
    x_T, c, uc = inputs()
    with pytest.raises(ValueError, match="pass noise .* or a seed"):
        Sampler(eta=1.0).sample(StandInUNet(), x_T, c, uc, 7.5)


def test_noise_and_seed_together_are_rejected() -> None:
    x_T, c, uc = inputs()
    with pytest.raises(ValueError, match="either noise or seed"):
        Sampler(eta=1.0).sample(StandInUNet(), x_T, c, uc, 7.5, noise=randn(0, (50, B, 4, H, W)), seed=1)


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seed_outside_32_bits_is_rejected(seed: int) -> None:
    x_T, c, uc = inputs()
    with pytest.raises(ValueError, match="seed must be an integer between 0 and 2\\*\\*32 - 1"):
        Sampler(eta=1.0).sample(StandInUNet(), x_T, c, uc, 7.5, seed=seed)


def test_integer_latent_is_a_type_error() -> None:
    _, c, uc = inputs()
    with pytest.raises(TypeError, match="x_T must be a floating-point array"):
        Sampler().sample(StandInUNet(), np.zeros((B, 4, H, W), np.int32), c, uc, 7.5)


def test_a_unet_that_is_not_callable_is_a_type_error() -> None:
    x_T, c, uc = inputs()
    with pytest.raises(TypeError, match="unet must be an asymvq.UNet or a callable"):
        Sampler().sample(object(), x_T, c, uc, 7.5)


# --------------------------------------------------------------------------------------------------
# End to end: the C loop with the tiny C UNet vs a PyTorch loop (diffusers' UNet + the transcription)

E2E_REL = 1e-3


class TorchUNet:
    """diffusers' UNet2DConditionModel holding the same ldm weights, as a NumPy model."""

    def __init__(self, spec: config.UNetSpec, weights: dict) -> None:
        from reference.unet_reference import build_reference

        self.model = build_reference(spec, weights)

    def __call__(self, x: np.ndarray, t: np.ndarray, ctx: np.ndarray) -> np.ndarray:
        from reference.unet_reference import reference_eps

        return reference_eps(self.model, np.ascontiguousarray(x, np.float32), t, ctx)


def tiny_unets(name: str, seed: int):
    pytest.importorskip("torch")  # test-only reference
    from reference.unet_reference import random_unet_weights

    from asymvq.unet import UNet

    spec = config.load(config.packaged_tiny_config(name)).unet
    weights = random_unet_weights(spec, seed=seed)
    return spec, UNet.from_config(spec, weights), TorchUNet(spec, weights)


@pytest.fixture(scope="module")
def tiny_t2i():
    return tiny_unets("v1-t2i-inference.yaml", seed=3)


@pytest.fixture(scope="module")
def tiny_inpaint():
    return tiny_unets("v1-inpainting-inference.yaml", seed=4)


def e2e_inputs(spec: config.UNetSpec, h: int, w: int):
    x_T, c, uc = randn(0, (1, 4, h, w)), randn(1, (1, L, spec.context_dim)), randn(2, (1, L, spec.context_dim))
    c_concat = None
    if spec.in_channels == 9:
        c_concat = np.concatenate([(randn(3, (1, 1, h, w)) > 0).astype(np.float32), randn(4, (1, 4, h, w))], 1)
    return x_T, c, uc, c_concat


def e2e_compare(unets, kind: str, eta: float, steps: int, h: int, w: int) -> None:
    spec, ours, theirs = unets
    x_T, c, uc, cc = e2e_inputs(spec, h, w)
    s = Sampler(kind, steps, eta)
    noise = randn(5, (len(s.timesteps), 1, 4, h, w)) if eta else None
    x0 = s.sample(ours, x_T, c, uc, 7.5, c_concat=cc, noise=noise)
    if kind == "ddim":
        want = ref.ddim_sample(theirs, x_T, c, uc, 7.5, steps, eta, noise, c_concat=cc)[-1]
    else:
        want = ref.plms_sample(theirs, x_T, c, uc, 7.5, steps, c_concat=cc)[-1]
    assert rel_err(x0, want) <= E2E_REL


@pytest.mark.parametrize("kind, eta", [("ddim", 0.0), ("plms", 0.0)])
def test_txt2img_loop_with_the_tiny_unet_matches_pytorch(tiny_t2i, kind: str, eta: float) -> None:
    e2e_compare(tiny_t2i, kind, eta, steps=8, h=8, w=16)


def test_inpainting_loop_with_the_tiny_unet_matches_pytorch(tiny_inpaint) -> None:
    e2e_compare(tiny_inpaint, "ddim", 1.0, steps=8, h=16, w=8)


@pytest.mark.slow
@pytest.mark.parametrize("kind, eta", [("ddim", 0.0), ("plms", 0.0)])
def test_50_step_txt2img_loop_with_the_tiny_unet_matches_pytorch(tiny_t2i, kind: str, eta: float) -> None:
    e2e_compare(tiny_t2i, kind, eta, steps=50, h=16, w=24)


@pytest.mark.slow
def test_50_step_inpainting_loop_with_the_tiny_unet_matches_pytorch(tiny_inpaint) -> None:
    e2e_compare(tiny_inpaint, "ddim", 1.0, steps=50, h=16, w=24)


def test_the_c_unet_runs_inside_the_c_loop_without_python(tiny_t2i, monkeypatch) -> None:
    # the sampler finds the C model of an asymvq.UNet (by type): the loop calls it directly, never UNet.__call__
    spec, unet, _ = tiny_t2i
    x_T, c, uc, _ = e2e_inputs(spec, 8, 16)
    expected = Sampler("ddim", 4).sample(lambda x, t, ctx: unet(x, t, ctx), x_T, c, uc, 7.5)

    def no_python(*args: Any) -> None:
        raise AssertionError("the sampler called UNet.__call__ instead of the C UNet")

    monkeypatch.setattr(type(unet), "__call__", no_python)
    np.testing.assert_array_equal(Sampler("ddim", 4).sample(unet, x_T, c, uc, 7.5), expected)


def test_ctrl_c_during_the_c_loop_stops_within_one_step_and_the_unet_stays_usable(tiny_t2i) -> None:
    import os
    import signal
    import threading

    spec, unet, _ = tiny_t2i
    x_T, c, uc, _ = e2e_inputs(spec, 8, 16)
    s = Sampler("ddim", 20)
    steps: List[int] = []

    def press_ctrl_c_after_step_1(i: int, t: int, x: np.ndarray) -> None:
        steps.append(i)
        if i == 1:  # SIGINT arrives while the loop is back in C
            threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGINT)).start()

    with pytest.raises(KeyboardInterrupt):
        s.sample(unet, x_T, c, uc, 7.5, callback=press_ctrl_c_after_step_1)
    assert max(steps) <= 3  # stopped within a step or two of the signal, not at step 19
    np.testing.assert_array_equal(s.sample(unet, x_T, c, uc, 7.5), Sampler("ddim", 20).sample(unet, x_T, c, uc, 7.5))
