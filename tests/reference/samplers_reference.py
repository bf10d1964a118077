"""Test-only: a NumPy transcription of SPEC §5.1, §5.5 and §6 (schedule, guidance, DDIM, PLMS).

Written from the SPEC equations, independently of csrc/sampling, so the two check each other.  All
sampler arithmetic is float32 in the original's operation order (the schedule is float64, then
float32).  The model is any ``model(x, t, context) -> eps`` on NumPy arrays; :class:`StandInUNet` is
a deterministic stand-in used where a real UNet is not the point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np

Model = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
f32 = np.float32


def alphas_cumprod(linear_start: float = 0.00085, linear_end: float = 0.012, timesteps: int = 1000) -> np.ndarray:
    """SPEC §5.1: beta = linspace(sqrt(start), sqrt(end), T)^2 in float64, cumprod(1 - beta) -> float32."""
    betas = np.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas).astype(np.float32)


def ddim_timesteps(steps: int, timesteps: int = 1000) -> np.ndarray:
    """SPEC §6.1: range(0, T, T // S) + 1 (ascending)."""
    return np.arange(0, timesteps, timesteps // steps) + 1


@dataclass
class DDIMTable:
    tau: np.ndarray  # int, ascending
    a: np.ndarray  # float32
    aprev: np.ndarray  # float32
    sigma: np.ndarray  # float32


def ddim_table(abar: np.ndarray, steps: int, eta: float) -> DDIMTable:
    """SPEC §6.1: a_k, aprev_k (aprev_0 = abar[0]) and sigma_k (float64 from the float32 values)."""
    tau = ddim_timesteps(steps, len(abar))
    a = abar[tau]
    aprev = np.concatenate([abar[:1], abar[tau[:-1]]])
    a64, ap64 = a.astype(np.float64), aprev.astype(np.float64)
    sigma = (eta * np.sqrt((1 - ap64) / (1 - a64) * (1 - a64 / ap64))).astype(np.float32)
    return DDIMTable(tau, a, aprev, sigma)


def guided_eps(
    model: Model,
    x: np.ndarray,
    t: int,
    cond: np.ndarray,
    uncond: Optional[np.ndarray],
    scale: float,
    c_concat: Optional[np.ndarray] = None,
) -> np.ndarray:
    """SPEC §5.3/§5.5: model on [uncond; cond] with x (and c_concat after it along channels)."""
    B = x.shape[0]
    inp = x if c_concat is None else np.concatenate([x, np.broadcast_to(c_concat, (B,) + c_concat.shape[1:])], 1)
    cond = np.broadcast_to(cond, (B,) + cond.shape[1:])
    if uncond is None or scale == 1.0:
        return model(inp, np.full(B, t, dtype=np.int64), cond).astype(np.float32)
    uncond = np.broadcast_to(uncond, (B,) + uncond.shape[1:])
    out = model(np.concatenate([inp, inp]), np.full(2 * B, t, dtype=np.int64), np.concatenate([uncond, cond]))
    e_u, e_c = out[:B].astype(np.float32), out[B:].astype(np.float32)
    return e_u + f32(scale) * (e_c - e_u)


def ddim_update(x: np.ndarray, e: np.ndarray, tab: DDIMTable, k: int, xi: Optional[np.ndarray]) -> np.ndarray:
    """SPEC §6.1 step, float32: x0 = (x - sqrt(1-a) e)/sqrt(a); sqrt(aprev) x0 + sqrt(1-aprev-s^2) e + s xi."""
    a, ap, s = tab.a[k], tab.aprev[k], tab.sigma[k]
    x0 = (x - np.sqrt(f32(1) - a) * e) / np.sqrt(a)
    out = np.sqrt(ap) * x0 + np.sqrt(f32(1) - ap - s * s) * e
    if xi is not None and s != 0:
        out = out + s * xi
    return out.astype(np.float32)


def ddim_sample(
    model: Model,
    x_T: np.ndarray,
    cond: np.ndarray,
    uncond: Optional[np.ndarray],
    scale: float,
    steps: int = 50,
    eta: float = 0.0,
    noise: Optional[np.ndarray] = None,
    c_concat: Optional[np.ndarray] = None,
    abar: Optional[np.ndarray] = None,
) -> List[np.ndarray]:
    """The DDIM loop; returns the latent after every step (the last one is x_0)."""
    tab = ddim_table(alphas_cumprod() if abar is None else abar, steps, eta)
    x = x_T.astype(np.float32)
    n = len(tab.tau)
    out = []
    for i in range(n):
        k = n - 1 - i
        e = guided_eps(model, x, int(tab.tau[k]), cond, uncond, scale, c_concat)
        x = ddim_update(x, e, tab, k, None if eta == 0 else noise[i])
        out.append(x)
    return out


def plms_sample(
    model: Model,
    x_T: np.ndarray,
    cond: np.ndarray,
    uncond: Optional[np.ndarray],
    scale: float,
    steps: int = 50,
    c_concat: Optional[np.ndarray] = None,
    abar: Optional[np.ndarray] = None,
) -> List[np.ndarray]:
    """SPEC §6.2: PLMS with the two-call bootstrap and AB2/3/4 on the raw eps history."""
    tab = ddim_table(alphas_cumprod() if abar is None else abar, steps, 0.0)
    x = x_T.astype(np.float32)
    n = len(tab.tau)
    hist: List[np.ndarray] = []  # raw eps, newest last
    out = []
    for i in range(n):
        k = n - 1 - i
        t, t_next = int(tab.tau[k]), int(tab.tau[max(k - 1, 0)])
        e = guided_eps(model, x, t, cond, uncond, scale, c_concat)
        if len(hist) == 0:
            x1 = ddim_update(x, e, tab, k, None)
            e2 = guided_eps(model, x1, t_next, cond, uncond, scale, c_concat)
            e_prime = (e + e2) / f32(2)
        elif len(hist) == 1:
            e_prime = (f32(3) * e - hist[-1]) / f32(2)
        elif len(hist) == 2:
            e_prime = (f32(23) * e - f32(16) * hist[-1] + f32(5) * hist[-2]) / f32(12)
        else:
            e_prime = (f32(55) * e - f32(59) * hist[-1] + f32(37) * hist[-2] - f32(9) * hist[-3]) / f32(24)
        x = ddim_update(x, e_prime, tab, k, None)
        hist.append(e)
        if len(hist) >= 4:
            hist.pop(0)
        out.append(x)
    return out


class StandInUNet:
    """A deterministic stand-in for the UNet: eps = tanh(0.1 * W x + t / 1000 + mean_L(context) V).

    ``W`` [out, in] mixes channels at every pixel, ``V`` [D, out] makes the output depend on the
    context (so the two guidance halves differ).  Counts its calls; records its inputs if asked.
    """

    def __init__(
        self, in_channels: int = 4, out_channels: int = 4, context_dim: int = 16, seed: int = 0, record: bool = False
    ) -> None:
        rng = np.random.RandomState(seed)
        self.in_channels, self.out_channels, self.context_dim = in_channels, out_channels, context_dim
        self.W = (rng.randn(out_channels, in_channels) / np.sqrt(in_channels)).astype(np.float32)
        self.V = (rng.randn(context_dim, out_channels) * 0.3).astype(np.float32)
        self.calls = 0
        self.record = record
        self.inputs: List[tuple] = []

    def __call__(self, x: np.ndarray, t: np.ndarray, context: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.record:
            self.inputs.append((x.copy(), np.asarray(t).copy(), context.copy()))
        mix = np.einsum("oi,nihw->nohw", self.W, x.astype(np.float32))
        ctx = context.astype(np.float32).mean(axis=1) @ self.V  # [N, out]
        t_term = (np.asarray(t, dtype=np.float32) / f32(1000))[:, None, None, None]
        return np.tanh(f32(0.1) * mix + t_term + ctx[:, :, None, None]).astype(np.float32)
