"""Small synthetic problems from the write-ups (host NumPy arrays, seeded)."""

from __future__ import annotations

import math

import numpy as np


def three_moons(n: int, seed: int = 0, noise: float = 0.08):
    """Three interleaved half-moons (up, down, up) with Gaussian noise: x (n, 2), labels 0-2."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, n)
    t = rng.uniform(0, math.pi, n)
    cx = np.array([0.0, 1.0, 2.5])[label]
    up = label != 1
    x = np.stack([cx + np.where(up, np.cos(t), -np.cos(t)),
                  np.where(up, np.sin(t), 0.5 - np.sin(t))], axis=1)
    return x + rng.normal(0, noise, x.shape), label


def circle(n: int, seed: int = 0):
    """Points of [0,1]^2, target +1 inside the circle of radius 1/sqrt(2 pi) around the
    centre (half the area, so balanced classes) and -1 outside: x (n, 2), y (n, 1)."""
    x = np.random.default_rng(seed).uniform(0, 1, (n, 2))
    inside = ((x - 0.5) ** 2).sum(axis=1) < 1 / (2 * math.pi)
    return x, np.where(inside, 1.0, -1.0).reshape(-1, 1)
