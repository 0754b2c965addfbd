"""Deterministic synthetic 2D grayscale "scans" with known lesion masks.

Each patient has an organ (a smooth blob with a patient-specific outline and texture) seen on
``images_per_patient`` slices; each slice has 0..``max_lesions`` lesions of varied size, contrast (brighter or
darker than the organ) and texture. Acquisition happens at one of ``n_sites`` sites; each site has its own
gain, offset, gamma, noise level and a low-frequency bias field (the intensity drift a model must survive).
The truth mask is the union of lesions, known exactly. Same (seed, patient, slice) -> same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clinrisk.usecases.segmentation.config import GenerateParams


@dataclass(frozen=True)
class SyntheticImage:
    image_id: str
    patient_id: int
    site: str
    image: np.ndarray  # uint8 (H, W)
    mask: np.ndarray  # uint8 (H, W) in {0, 1}
    n_lesions: int
    lesion_contrast: float  # mean signed lesion-organ contrast (0 when no lesion)


def site_of(seed: int, patient_id: int, n_sites: int) -> int:
    return int(np.random.default_rng([seed, patient_id, 7]).integers(n_sites))


def _site_params(seed: int, site: int) -> dict[str, float]:
    rng = np.random.default_rng([seed, 1_000_003, site])
    return {
        "gain": float(rng.uniform(0.75, 1.2)),
        "offset": float(rng.uniform(-0.08, 0.1)),
        "gamma": float(rng.uniform(0.8, 1.25)),
        "noise_scale": float(rng.uniform(0.7, 1.5)),
        "bias": float(rng.uniform(0.0, 0.25)),
    }


def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    """Band-limited noise in [-1, 1]: a coarse random grid, bilinearly up-sampled."""
    n = max(2, size // scale + 2)
    grid = rng.standard_normal((n, n))
    xs = np.linspace(0, n - 1.001, size)
    i0 = xs.astype(int)
    f = xs - i0
    rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]
    out = rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]
    return np.asarray(out / (np.abs(out).max() + 1e-9))


def _blob(
    yy: np.ndarray,
    xx: np.ndarray,
    cy: float,
    cx: float,
    ry: float,
    rx: float,
    angle: float,
    harmonics: np.ndarray,
) -> np.ndarray:
    """Signed inside-ness of a rotated ellipse whose radius wobbles with a few angular harmonics."""
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    theta = np.arctan2(v, u)
    wobble = 1.0 + sum(a * np.cos((k + 2) * theta + p) for k, (a, p) in enumerate(harmonics))
    r = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
    return np.asarray(wobble - r)  # > 0 inside


def generate_image(p: GenerateParams, seed: int, patient_id: int, slice_idx: int) -> SyntheticImage:
    size = p.size
    prng = np.random.default_rng([seed, patient_id])  # patient-level anatomy
    srng = np.random.default_rng([seed, patient_id, slice_idx + 1])  # this slice
    site = site_of(seed, patient_id, p.n_sites)
    sp = _site_params(seed, site)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size

    # organ: patient outline, slightly shifted/scaled per slice
    organ_harm = np.stack([prng.uniform(0, 0.08, 3), prng.uniform(0, 2 * np.pi, 3)], axis=1)
    ry, rx = prng.uniform(0.28, 0.4), prng.uniform(0.3, 0.42)
    scale = srng.uniform(0.9, 1.05)
    organ = (
        _blob(
            yy,
            xx,
            0.5 + srng.normal(0, 0.02),
            0.5 + srng.normal(0, 0.02),
            ry * scale,
            rx * scale,
            prng.uniform(0, np.pi),
            organ_harm,
        )
        > 0
    )
    organ_level = prng.uniform(0.45, 0.6)
    img = np.full((size, size), 0.15, dtype=np.float64)
    img += 0.05 * _smooth_noise(srng, size, max(4, size // 8))  # background tissue
    texture = 0.04 * _smooth_noise(srng, size, max(2, size // 16))
    img[organ] = organ_level + texture[organ]

    # lesions, inside the organ
    mask = np.zeros((size, size), dtype=bool)
    n_lesions = 0 if srng.random() < p.p_no_lesion else int(srng.integers(1, p.max_lesions + 1))
    contrasts = []
    inside = np.argwhere(organ)
    for _ in range(n_lesions):
        if inside.size == 0:
            break
        cy, cx = inside[srng.integers(len(inside))] / size
        r = srng.uniform(0.03, 0.11)  # varied size: ~2 % .. 7 % of the field radius each
        harm = np.stack([srng.uniform(0, 0.15, 2), srng.uniform(0, 2 * np.pi, 2)], axis=1)
        lesion = (
            _blob(yy, xx, cy, cx, r * srng.uniform(0.7, 1.3), r, srng.uniform(0, np.pi), harm) > 0
        ) & organ
        if not lesion.any():
            continue
        contrast = float(srng.choice([-1.0, 1.0]) * srng.uniform(0.12, 0.3))
        tex = srng.uniform(0.0, 0.08) * _smooth_noise(srng, size, max(2, size // 24))
        img[lesion] = organ_level + contrast + tex[lesion]
        mask |= lesion
        contrasts.append(contrast)

    # acquisition at the site: bias field, gain/offset/gamma, noise
    bias = 1.0 + sp["bias"] * _smooth_noise(
        np.random.default_rng([seed, 2_000_003, site]), size, max(4, size // 2)
    )
    img = img * bias
    img = np.clip(img, 0.0, 1.0) ** sp["gamma"] * sp["gain"] + sp["offset"]
    img = img + srng.normal(0.0, p.noise * sp["noise_scale"], img.shape)
    pixels = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    return SyntheticImage(
        image_id=f"p{patient_id:06d}_s{slice_idx:02d}",
        patient_id=patient_id,
        site=f"site{site}",
        image=pixels,
        mask=mask.astype(np.uint8),
        n_lesions=len(contrasts),
        lesion_contrast=float(np.mean(contrasts)) if contrasts else 0.0,
    )
