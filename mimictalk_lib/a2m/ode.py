"""Fixed-grid ODE integrators with torchdiffeq's semantics (torchdiffeq is not a dependency).

Upstream samples with `torchdiffeq.odeint(fn, y0, t=linspace(0, 1, N), method='midpoint')`.
On a fixed grid torchdiffeq steps once per grid interval, computing every time value in the grid's
dtype as a tensor (dt = t1 - t0, half = 0.5 * dt, ...); atol/rtol have no effect. Its 'rk4' is
the 3/8-rule variant (`rk4_alt_step_func`), reproduced here with the same operation order.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..utils import ProgressFn, report

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # f(t, y) -> dy/dt

_ONE_THIRD = 1 / 3
_TWO_THIRDS = 2 / 3


def _euler(f: Velocity, t0, dt, t1, y):
    return dt * f(t0, y)


def _midpoint(f: Velocity, t0, dt, t1, y):
    half_dt = 0.5 * dt
    y_mid = y + f(t0, y) * half_dt
    return dt * f(t0 + half_dt, y_mid)


def _rk4_38(f: Velocity, t0, dt, t1, y):
    """Kutta's 3/8 rule: k2 at t0 + dt/3, k3 at t0 + 2dt/3, weights (1, 3, 3, 1) / 8."""
    k1 = f(t0, y)
    k2 = f(t0 + dt * _ONE_THIRD, y + dt * k1 * _ONE_THIRD)
    k3 = f(t0 + dt * _TWO_THIRDS, y + dt * (k2 - k1 * _ONE_THIRD))
    k4 = f(t1, y + dt * (k1 - k2 + k3))
    return (k1 + 3 * (k2 + k3) + k4) * dt * 0.125


STEPPERS = {"euler": _euler, "midpoint": _midpoint, "rk4": _rk4_38}
SOLVERS = tuple(STEPPERS)  # the method names, in the order a UI lists them
EVALS_PER_STEP = {"euler": 1, "midpoint": 2, "rk4": 4}


def integrate(
    f: Velocity,
    y0: torch.Tensor,
    grid: torch.Tensor,
    method: str = "midpoint",
    on_step: ProgressFn | None = None,
    step_offset: int = 0,
    total_steps: int | None = None,
) -> torch.Tensor:
    """Integrate dy/dt = f(t, y) from grid[0] to grid[-1], one step per grid interval; return
    y(grid[-1]). `on_step(done, total)` is called after each step (done counts from
    step_offset + 1) and may raise to interrupt."""
    if method not in STEPPERS:
        raise ValueError(f"unknown ODE method '{method}'; choose one of {sorted(STEPPERS)}")
    step = STEPPERS[method]
    n = len(grid) - 1
    total = n if total_steps is None else total_steps
    y = y0
    for i in range(n):
        t0, t1 = grid[i], grid[i + 1]
        y = y + step(f, t0, t1 - t0, t1, y)
        report(on_step, step_offset + i + 1, total)
    return y
