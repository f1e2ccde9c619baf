"""Device parameters drawn once per array, and the closed-form symmetry point."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import DeviceConfig


@dataclass
class DeviceParameters:
    """Per-device constants of one array, each of the array's shape, in weight units."""

    alpha_up: np.ndarray
    """α⁺: step of an up pulse at g = 0."""
    alpha_down: np.ndarray
    """α⁻: magnitude of the step of a down pulse at g = 0."""
    b_max: np.ndarray
    """Upper soft bound, > 0."""
    b_min: np.ndarray
    """Lower soft bound, < 0."""


def draw_soft_bounds(config: DeviceConfig, shape: tuple[int, int], rng: np.random.Generator) -> DeviceParameters:
    """Draw soft-bound parameters with device-to-device variation.

    b_max = |β (1 + σ_b ξ₁)|, b_min = −|β (1 + σ_b ξ₂)|, gain = 1 + σ_d2d ξ₃, r = σ_ud ξ₄,
    α⁺ = Δw_min |gain + r + min(u, 0)|, α⁻ = Δw_min |gain − r − max(u, 0)|.
    Taking absolute values keeps every device physical (positive steps, b_min < 0 < b_max)
    in the rare draws where ξ crosses −1/σ; aihwkit enforces the same.
    """
    beta = config.bound
    u = config.imbalance
    b_max = np.abs(beta * (1.0 + config.bound_dtod * rng.standard_normal(shape)))
    b_min = -np.abs(beta * (1.0 + config.bound_dtod * rng.standard_normal(shape)))
    gain = 1.0 + config.dw_min_dtod * rng.standard_normal(shape)
    r = config.up_down_dtod * rng.standard_normal(shape)
    alpha_up = config.dw_min * np.abs(gain + r + min(u, 0.0))
    alpha_down = config.dw_min * np.abs(gain - r - max(u, 0.0))
    return DeviceParameters(alpha_up=alpha_up, alpha_down=alpha_down, b_max=b_max, b_min=b_min)


def unbounded_parameters(config: DeviceConfig, shape: tuple[int, int]) -> DeviceParameters:
    """Return the parameters stored for the floating-point device: nominal steps, no bounds."""
    return DeviceParameters(
        alpha_up=np.full(shape, config.dw_min),
        alpha_down=np.full(shape, config.dw_min),
        b_max=np.full(shape, np.inf),
        b_min=np.full(shape, -np.inf),
    )


def symmetry_point(params: DeviceParameters) -> np.ndarray:
    """Return w*, where up and down steps are equal: α⁺ (1 − w/b_max) = α⁻ (1 − w/b_min).

    w* = (α⁺ − α⁻) / (α⁺/b_max − α⁻/b_min); for symmetric bounds β (α⁺ − α⁻)/(α⁺ + α⁻).
    """
    return (params.alpha_up - params.alpha_down) / (params.alpha_up / params.b_max - params.alpha_down / params.b_min)
