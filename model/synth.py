"""Synthetic short-axis cardiac MR stacks for left-ventricle segmentation.

The paper's data (Cardiac Atlas Project) are short-axis cine MR stacks of
10-15 slices, square in-plane sizes such as 128, 192 or 256 voxels, about
1.2-1.6 mm in plane and 8-10 mm between slices. ``make_case`` draws one such
stack: a bright left-ventricle blood pool (label 1) inside a dark myocardium
ring (labelled when ``myocardium=True``, else background), a bright right-ventricle
crescent beside it (labelled when ``rv=True``, else background), papillary muscles,
epicardial fat, lungs, a descending aorta as bright as blood and other organ-like
blobs in a textured body, a smooth multiplicative bias field, per-slice intensity
changes and Rician noise. The left ventricle shrinks from base to apex and may
vanish in the last slice. ``channels=2`` adds a second MR contrast of the same
anatomy (myocardium brighter than blood) with its own bias field and noise.

``write_dataset`` writes cases in the Medical Segmentation Decathlon v1 layout
(``dataset.json``, ``imagesTr/``, ``labelsTr/``). Case ``i`` depends only on
``(seed, i)``, so it is the same whatever the number of cases.

numpy and nibabel only: no Keras, TensorFlow or scipy here.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import secrets
import shutil
from collections.abc import Callable

import nibabel as nib
import numpy as np

from model.errors import InputError

__all__ = ["make_case", "write_dataset", "class_names", "IN_PLANE_SIZES", "SLICE_RANGE", "CHANNEL_NAMES"]

#: In-plane sizes drawn per case when ``shape`` is None (square images).
IN_PLANE_SIZES: tuple[int, ...] = (128, 192, 256)
#: Inclusive range of slice counts drawn per case when ``shape`` is None.
SLICE_RANGE: tuple[int, int] = (10, 15)

#: dataset.json "modality" names of the image channels, for ``channels`` 1 and 2.
CHANNEL_NAMES: tuple[str, ...] = ("MRI", "T1")

_MIN_DIM = 8
_MAX_DIM = 1024

# With rv=True the right ventricle is drawn smaller than without (a thinner crescent on one side
# of the LV that ends sooner towards the apex), so that the three classes differ clearly in
# size: RV blood pool < LV blood pool < myocardium. Factors on the drawn centre offset, radial
# and tangential half-axes, and length from the base.
_RV_SCALES = {"offset": 1.6, "radial": 0.6, "tangential": 0.8, "length": 0.8}


# --------------------------------------------------------------------------- checks


def _check_shape(shape: object, what: str = "shape") -> tuple[int, int, int]:
    """Return ``shape`` as three ints in [8, 1024] or raise InputError."""
    try:
        dims = tuple(shape)  # type: ignore[arg-type]
    except TypeError:
        raise InputError(
            f"{what} {shape!r} is not a shape; give three sizes such as (192, 192, 12)"
        ) from None
    if len(dims) != 3 or not all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in dims
    ):
        raise InputError(
            f"{what} {shape!r} must be three whole numbers (X, Y, Z); give e.g. (192, 192, 12)"
        )
    dims = tuple(int(d) for d in dims)
    for d in dims:
        if d < _MIN_DIM:
            raise InputError(
                f"{what} {dims} has a size {d} below {_MIN_DIM}; give every size at least {_MIN_DIM}"
            )
        if d > _MAX_DIM:
            raise InputError(
                f"{what} {dims} has a size {d} above {_MAX_DIM}; give every size at most {_MAX_DIM}"
            )
    return dims  # type: ignore[return-value]


def _check_flag(value: object, what: str) -> bool:
    """Return ``value`` as a bool or raise InputError (no truthy numbers or strings)."""
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{what} {value!r} is not true or false; give True or False")
    return bool(value)


def _check_channels(channels: object) -> int:
    """Return ``channels`` as 1 or 2 or raise InputError."""
    if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels not in (1, 2):
        raise InputError(f"channels {channels!r} is not 1 or 2; give 1 (one MR contrast) or 2 (two contrasts)")
    return int(channels)


def class_names(*, myocardium: bool = False, rv: bool = False) -> tuple[str, ...]:
    """Class names by label value: background, left ventricle, then myocardium and right ventricle
    when asked, numbered in that order without gaps (e.g. rv alone is label 2)."""
    names = ["background", "left ventricle"]
    if myocardium:
        names.append("myocardium")
    if rv:
        names.append("right ventricle")
    return tuple(names)


# --------------------------------------------------------------------------- geometry


def _soft(d: np.ndarray) -> np.ndarray:
    """Partial-volume weight of a shape from its signed distance (voxels, negative inside)."""
    return np.clip(0.5 - d, 0.0, 1.0)


def _paint(img: np.ndarray, weight: np.ndarray, value: np.ndarray | float) -> None:
    """Blend ``value`` into ``img`` in place with ``weight`` in [0, 1]."""
    img += weight * (value - img)


_FAR = np.float32(1e4)  # "distance" outside a shape's bounding box


def _blob(
    x: np.ndarray,
    y: np.ndarray,
    cx,
    cy,
    ra,
    rb,
    theta,
    harmonics: list[tuple[int, float, object]] | None = None,
    *,
    margin: float = 2.0,
) -> np.ndarray:
    """Approximate signed distance (voxels, negative inside) to a rotated wobbly ellipse.

    ``x`` is (X, 1, 1) and ``y`` (1, Y, 1) voxel coordinates; ``cx, cy, ra, rb,
    theta`` are scalars or (1, 1, Z) arrays (per slice); ``harmonics`` are
    ``(k, amplitude, phase)`` perturbations of the boundary radius,
    ``1 + sum(a * cos(k * phi + phase))``. A radius of 0 gives an empty shape.
    The result is (X, Y, Z), or (X, Y, 1) when nothing varies per slice. It is
    computed only in the shape's bounding box grown by ``margin`` voxels (the
    largest offset a caller adds to grow the shape); elsewhere it is a large
    positive value.
    """
    f32 = np.float32
    params = [np.asarray(v, dtype=f32) for v in (cx, cy, ra, rb, theta)]
    cx, cy, ra, rb, theta = params
    ra = np.maximum(ra, f32(1e-3))
    rb = np.maximum(rb, f32(1e-3))
    nz = max((v.shape[-1] for v in params if v.ndim == 3), default=1)
    for _, _, ph in harmonics or ():
        ph = np.asarray(ph)
        if ph.ndim == 3:
            nz = max(nz, ph.shape[-1])
    X, Y = x.shape[0], y.shape[1]
    wobble = 1.0 + sum(abs(a) for _, a, _ in harmonics or ())
    elong = float(np.sqrt(np.maximum(ra / rb, rb / ra)).max())
    reach = float(np.maximum(ra, rb).max()) * wobble + (margin + 1.0) * elong
    x0 = max(int(math.floor(float(cx.min()) - reach)), 0)
    x1 = min(int(math.ceil(float(cx.max()) + reach)) + 1, X)
    y0 = max(int(math.floor(float(cy.min()) - reach)), 0)
    y1 = min(int(math.ceil(float(cy.max()) + reach)) + 1, Y)
    out = np.full((X, Y, nz), _FAR, dtype=f32)
    if x0 < x1 and y0 < y1:
        out[x0:x1, y0:y1, :] = _blob_core(
            x[x0:x1], y[:, y0:y1], cx, cy, ra, rb, theta, harmonics
        )
    return out


def _blob_core(x, y, cx, cy, ra, rb, theta, harmonics) -> np.ndarray:
    """``_blob`` on a sub-grid, float32 throughout; cos(k phi) by the Chebyshev recurrence."""
    f32 = np.float32
    c, s = np.cos(theta), np.sin(theta)
    dx = x - cx
    dy = y - cy
    un = (dx * c + dy * s) / ra
    vn = (dy * c - dx * s) / rb
    q = np.sqrt(un * un + vn * vn)
    if harmonics:
        safe = np.maximum(q, f32(1e-6))
        c1 = un / safe  # cos(phi)
        s1 = vn / safe  # sin(phi)
        ck, sk = c1, s1
        kmax = max(k for k, _, _ in harmonics)
        powers = {1: (c1, s1)}
        for k in range(2, kmax + 1):
            ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
            powers[k] = (ck, sk)
        for k, a, ph in harmonics:
            ph = np.asarray(ph, dtype=f32)
            ck, sk = powers[k]
            q = q - ((f32(a) * np.cos(ph)) * ck - (f32(a) * np.sin(ph)) * sk)
    return (q - f32(1.0)) * np.sqrt(ra * rb)


def _harmonics(rng: np.random.Generator, amp: float, t: np.ndarray, ks=(2, 3, 4)):
    """Random boundary harmonics whose phases turn slowly from base to apex."""
    out = []
    for k in ks:
        a = float(rng.uniform(0.0, amp)) * 2.0 / k
        ph = rng.uniform(0, 2 * math.pi) + rng.uniform(-1.0, 1.0) * t
        out.append((k, a, ph))
    return out


def _taper(t: np.ndarray, length: float, power: float) -> np.ndarray:
    """Radius scale from base (t=0, scale 1) to apex: 0 from ``t >= length`` on."""
    u = np.clip(t / length, 0.0, 1.0)
    return (1.0 - u**power) ** (1.0 / power)


def _smooth_noise(
    shape: tuple[int, int, int], rng: np.random.Generator, sigma: tuple[float, float, float]
) -> np.ndarray:
    """Gaussian-filtered white noise (FFT, periodic), zero mean, unit std, float32.

    ``sigma`` is the filter width in voxels along each axis.
    """
    white = rng.standard_normal(shape, dtype=np.float32)
    spec = np.fft.rfftn(white)
    fx = np.fft.fftfreq(shape[0])[:, None, None]
    fy = np.fft.fftfreq(shape[1])[None, :, None]
    fz = np.fft.rfftfreq(shape[2])[None, None, :]
    two_pi2 = 2.0 * math.pi**2
    filt = np.exp(
        -two_pi2 * ((fx * sigma[0]) ** 2 + (fy * sigma[1]) ** 2 + (fz * sigma[2]) ** 2)
    )
    out = np.fft.irfftn(spec * filt, s=shape, axes=(0, 1, 2)).astype(np.float32)
    out -= out.mean()
    std = float(out.std())
    if std > 0:
        out /= std
    return out


def _bias_field(
    shape: tuple[int, int, int], rng: np.random.Generator, strength: float
) -> np.ndarray:
    """Smooth positive multiplicative field: a few low-frequency cosines and a gradient."""
    X, Y, Z = shape
    x = (np.arange(X, dtype=np.float32) / X)[:, None, None]
    y = (np.arange(Y, dtype=np.float32) / Y)[None, :, None]
    z = (np.arange(Z, dtype=np.float32) / Z)[None, None, :]
    field = np.zeros(shape, dtype=np.float32)
    for _ in range(3):
        kx, ky = (float(v) for v in rng.uniform(-1.2, 1.2, size=2))
        kz = float(rng.uniform(-0.4, 0.4))
        ph = float(rng.uniform(0, 2 * math.pi))
        # cos(A + B) with A in plane and B along z: no 3D trigonometry
        a = 2 * math.pi * (kx * x + ky * y) + ph
        b = 2 * math.pi * kz * z
        field += np.cos(a) * np.cos(b) - np.sin(a) * np.sin(b)
    gx, gy = (float(v) for v in rng.uniform(-1.0, 1.0, size=2))
    field = field / 3.0 + (gx * (x - 0.5) + gy * (y - 0.5))
    field *= np.float32(strength)
    return np.exp(field, out=field)


# --------------------------------------------------------------------------- one case


def make_case(
    shape: tuple[int, int, int],
    rng: np.random.Generator,
    *,
    myocardium: bool = False,
    rv: bool = False,
    channels: int = 1,
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """One synthetic stack: image float32 (X, Y, Z), or (X, Y, Z, 2) with ``channels=2``,
    label uint8 (X, Y, Z), voxel spacing in mm.

    Axis 2 runs from base (slice 0) to apex. Labels, numbered as ``class_names`` says:
    0 background, 1 left-ventricle blood pool (papillary muscles included), then the
    left-ventricle myocardium when ``myocardium`` is true and the right-ventricle blood
    pool (a crescent beside the LV) when ``rv`` is true; a class not asked for is
    background. ``rv=True`` also draws the right ventricle smaller (thinner, ending
    sooner towards the apex), so that its class is the smallest; without it the image
    is the same whatever ``myocardium`` says. Channel 0 is positive and MR-like (blood
    around 550-800 before bias and noise) and does not depend on ``channels``; channel 1
    is a second contrast (myocardium brighter than blood, air dark) with its own bias
    field, per-slice changes and Rician noise.
    """
    X, Y, Z = _check_shape(shape)
    if not isinstance(rng, np.random.Generator):
        raise InputError(
            f"rng {rng!r} is not a numpy Generator; pass np.random.default_rng(seed)"
        )
    myocardium = _check_flag(myocardium, "myocardium")
    rv = _check_flag(rv, "rv")
    channels = _check_channels(channels)
    n = float(min(X, Y))
    f32 = np.float32

    in_plane = round(float(rng.uniform(1.2, 1.6)), 3)
    spacing = (in_plane, in_plane, round(float(rng.uniform(8.0, 10.0)), 3))

    x = np.arange(X, dtype=f32)[:, None, None]
    y = np.arange(Y, dtype=f32)[None, :, None]
    t = (np.arange(Z, dtype=f32) / max(Z - 1, 1))[None, None, :]  # 0 base .. 1 apex

    # ---- intensities (bSSFP-like: blood bright, myocardium dark, fat bright, lungs dark)
    blood = float(rng.uniform(550.0, 800.0))
    myo_val = blood * float(rng.uniform(0.22, 0.38))
    tissue_val = blood * float(rng.uniform(0.3, 0.5))
    fat_val = blood * float(rng.uniform(0.75, 1.0))
    lung_val = blood * float(rng.uniform(0.03, 0.08))
    air_val = blood * 0.01

    texture = _smooth_noise((X, Y, Z), rng, (0.012 * n + 0.6, 0.012 * n + 0.6, 0.6))
    blotch = _smooth_noise((X, Y, Z), rng, (0.04 * n, 0.04 * n, 1.0))

    img = np.full((X, Y, Z), air_val, dtype=f32)

    # ---- body with a subcutaneous fat layer
    bcx = X * (0.5 + rng.uniform(-0.04, 0.04))
    bcy = Y * (0.5 + rng.uniform(-0.04, 0.04))
    bra = X * rng.uniform(0.40, 0.58)
    brb = Y * rng.uniform(0.34, 0.50)
    btheta = rng.uniform(-0.25, 0.25)
    body_h = _harmonics(rng, 0.03, t)
    d_body = _blob(x, y, bcx, bcy, bra, brb, btheta, body_h)
    fat_th = n * rng.uniform(0.015, 0.04) + 1.0
    body = _soft(d_body)
    _paint(img, body, fat_val * (1.0 + 0.1 * texture))
    inner = _soft(d_body + fat_th)
    _paint(img, inner, tissue_val * (1.0 + 0.15 * blotch))

    # ---- heart placement (per-slice centre drifts a little from base to apex)
    r0 = max(n * rng.uniform(0.07, 0.1), 2.5)  # LV cavity radius at the base
    th = max(n * rng.uniform(0.03, 0.045), 1.5)  # myocardium thickness
    ro0 = r0 + th
    hcx0 = X * (0.5 + rng.uniform(-0.12, 0.12))
    hcy0 = Y * (0.5 + rng.uniform(-0.12, 0.12))
    drift = [float(v) * 0.4 * r0 for v in rng.uniform(-1.0, 1.0, size=2)]
    hcx = hcx0 + drift[0] * t
    hcy = hcy0 + drift[1] * t
    phi_rv = rng.uniform(0, 2 * math.pi)  # direction of the right ventricle

    # ---- lungs on both sides of the heart, across the RV direction
    omega = phi_rv + math.pi / 2 + rng.uniform(-0.5, 0.5)
    for side in (-1.0, 1.0):
        dist = n * rng.uniform(0.20, 0.28) + ro0
        lcx = hcx0 + side * dist * math.cos(omega)
        lcy = hcy0 + side * dist * math.sin(omega)
        lra = n * rng.uniform(0.10, 0.16)
        lrb = n * rng.uniform(0.18, 0.28)
        lsc = 1.0 - rng.uniform(0.0, 0.4) * t  # lungs shrink a little towards the apex
        d_lung = _blob(x, y, lcx, lcy, lra * lsc, lrb * lsc, omega, _harmonics(rng, 0.08, t))
        _paint(img, _soft(d_lung) * inner, lung_val * (1.0 + 0.3 * blotch))

    # ---- organ-like blobs (liver, stomach, fat pads, vessels): some as bright as blood
    for _ in range(int(rng.integers(2, 6))):
        ang = rng.uniform(0, 2 * math.pi)
        rad = rng.uniform(0.0, 0.9)
        ocx = bcx + rad * bra * math.cos(ang)
        ocy = bcy + rad * brb * math.sin(ang)
        ora = n * rng.uniform(0.03, 0.16)
        orb = ora * rng.uniform(0.5, 1.5)
        zc = rng.uniform(-0.3, 1.3)
        hz = rng.uniform(0.3, 1.2)
        zsc = np.sqrt(np.clip(1.0 - ((t - zc) / hz) ** 2, 0.0, 1.0))
        d_org = _blob(x, y, ocx, ocy, ora * zsc, orb * zsc, rng.uniform(0, math.pi),
                      _harmonics(rng, 0.1, t))
        val = blood * float(rng.uniform(0.15, 1.05))
        _paint(img, _soft(d_org) * inner, val * (1.0 + 0.1 * blotch))

    # ---- descending aorta: a bright disk behind the heart, through all slices
    a_ang = phi_rv + math.pi + rng.uniform(-0.7, 0.7)
    a_dist = ro0 * rng.uniform(1.5, 2.2)
    a_r = max(n * rng.uniform(0.03, 0.045), 1.5)
    d_ao = _blob(x, y, hcx0 + a_dist * math.cos(a_ang), hcy0 + a_dist * math.sin(a_ang),
                 a_r, a_r * rng.uniform(0.85, 1.0), 0.0)
    _paint(img, _soft(d_ao) * inner, blood * float(rng.uniform(0.85, 1.05)))

    # ---- left ventricle: cavity and myocardium ring, tapering from base to apex
    L = rng.uniform(0.95, 1.2)
    pw = rng.uniform(2.0, 3.0)
    s_cav = _taper(t, L, pw)
    s_out = _taper(t, L * 1.12, pw)
    ecc = rng.uniform(0.0, 0.15)
    theta = rng.uniform(0, math.pi) + rng.uniform(-0.3, 0.3) * t
    r_cav = r0 * s_cav
    r_out = np.where(r_cav > 0.3, r_cav + th, ro0 * s_out)
    rv_th = max(0.25 * th, 0.8)  # right-ventricle free wall
    peri_th = max(0.5 * th, 1.2)  # epicardial fat band
    cav_h = _harmonics(rng, 0.05, t)
    out_h = [(k, a * 0.5, ph) for k, a, ph in cav_h]
    d_cav = _blob(x, y, hcx, hcy, r_cav * (1 + ecc), r_cav * (1 - ecc), theta, cav_h)
    d_out = _blob(x, y, hcx, hcy, r_out * (1 + ecc), r_out * (1 - ecc), theta, out_h,
                  margin=peri_th + 2.0)

    # ---- right ventricle: an ellipse beside the LV, minus the LV = a crescent
    # (rv=True scales the drawn values, drawing nothing more, so the rest of the case is the same)
    scale = _RV_SCALES if rv else dict.fromkeys(_RV_SCALES, 1.0)
    s_rv = _taper(t, L * rng.uniform(0.7, 0.95) * scale["length"], pw)
    rv_d = ro0 * rng.uniform(0.35, 0.55) * s_rv * scale["offset"]
    rv_ar = ro0 * rng.uniform(0.95, 1.15) * s_rv * scale["radial"]
    rv_at = ro0 * rng.uniform(1.2, 1.5) * s_rv * scale["tangential"]
    rcx = hcx + rv_d * math.cos(phi_rv)
    rcy = hcy + rv_d * math.sin(phi_rv)
    rv_h = _harmonics(rng, 0.04, t)
    d_rv = _blob(x, y, rcx, rcy, rv_ar, rv_at, phi_rv, rv_h, margin=rv_th + peri_th + 2.0)

    # epicardial / pericardial fat: a patchy bright band hugging the heart
    d_heart = np.minimum(d_out, d_rv - rv_th)
    patches = np.clip(0.2 + blotch, 0.0, 1.0)
    _paint(img, _soft(d_heart - peri_th) * patches, fat_val * (1.0 + 0.1 * texture))

    _paint(img, _soft(d_rv - rv_th), myo_val * (1.0 + 0.1 * texture))  # RV free wall
    _paint(img, _soft(d_rv), blood * (1.0 + 0.05 * texture))  # RV blood
    _paint(img, _soft(d_out), myo_val * (1.0 + 0.1 * texture))  # LV myocardium + septum
    _paint(img, _soft(d_cav), blood * (1.0 + 0.05 * texture))  # LV blood pool

    # papillary muscles: dark spots inside the cavity against the wall, in some slices
    psi = rng.uniform(0, 2 * math.pi)
    for ang in (psi, psi + rng.uniform(1.8, 2.6)):
        last = rng.uniform(0.5, 0.9)
        pr = r_cav * rng.uniform(0.1, 0.22) * (t < last)
        pd = r_cav * rng.uniform(0.65, 0.85)
        ang_z = ang + rng.uniform(-0.3, 0.3) * t
        d_pap = _blob(x, y, hcx + pd * np.cos(ang_z), hcy + pd * np.sin(ang_z),
                      pr * rng.uniform(1.0, 1.5), pr, ang_z)
        _paint(img, _soft(d_pap) * _soft(d_cav), myo_val * rng.uniform(0.9, 1.4))

    # ---- labels from the hard shapes (the RV blood pool is what the LV wall leaves of it)
    names = class_names(myocardium=myocardium, rv=rv)
    label = np.zeros((X, Y, Z), dtype=np.uint8)
    if rv:
        label[(d_rv < 0) & (d_out >= 0)] = names.index("right ventricle")
    if myocardium:
        label[d_out < 0] = names.index("myocardium")
    label[d_cav < 0] = 1

    # ---- second contrast from the noiseless anatomy, before channel 0 is changed in place:
    # u(1.6 - u)^2 of the blood-relative intensity u turns myocardium (u ~ 0.3) brighter than
    # blood (u = 1) and keeps air and lungs dark.
    clean = None
    if channels == 2:
        u = img / f32(blood)
        clean = u * (f32(1.6) - u) ** 2

    # ---- acquisition: bias field, per-slice intensity, Rician noise
    image = _acquire(img, rng, blood)
    if clean is None:
        return image, label, spacing
    # drawn after every draw of channel 0, so channel 0 is the same as with channels=1
    level = float(rng.uniform(600.0, 900.0))
    second = _acquire(clean * f32(level), rng, 0.5 * level)
    return np.stack([image, second], axis=-1), label, spacing


def _acquire(img: np.ndarray, rng: np.random.Generator, level: float) -> np.ndarray:
    """A noiseless (X, Y, Z) image as acquired: bias field, per-slice intensity and Rician
    noise of std 2-6 % of ``level`` (a bright tissue's intensity); ``img`` is changed in place."""
    X, Y, Z = img.shape
    f32 = np.float32
    img *= _bias_field((X, Y, Z), rng, float(rng.uniform(0.15, 0.35)))
    img *= rng.uniform(0.9, 1.1, size=Z).astype(f32)[None, None, :]
    sigma = level * float(rng.uniform(0.02, 0.06))
    n_re = rng.standard_normal((X, Y, Z), dtype=f32)
    n_im = rng.standard_normal((X, Y, Z), dtype=f32)
    n_re *= sigma
    n_im *= sigma
    n_re += img
    return np.hypot(n_re, n_im).astype(f32, copy=False)


# --------------------------------------------------------------------------- dataset


def _case_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for case ``index``: depends on (seed, index) only."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def _nifti(data: np.ndarray, spacing: tuple[float, float, float], dtype) -> nib.Nifti1Image:
    """A NIfTI image of (X, Y, Z) or (X, Y, Z, C) data (channels last, as MSD writes them)."""
    affine = np.diag([*spacing, 1.0]).astype(np.float64)
    # Centre the volume on the scanner origin (RAS-ish, diagonal = spacing).
    affine[:3, 3] = -0.5 * (np.asarray(data.shape[:3]) - 1) * np.asarray(spacing)
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(dtype)
    img.header.set_zooms(tuple(spacing) + (1.0,) * (data.ndim - 3))
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def _make_temp_dir(parent: pathlib.Path, name: str) -> pathlib.Path:
    """A new hidden sibling ``parent/.NAME.tmp-xxxxxxxx`` (honours the umask, unlike mkdtemp)."""
    for _ in range(100):
        tmp = parent / f".{name}.tmp-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary folder name next to {parent / name}")


def write_dataset(
    out: str | os.PathLike,
    *,
    cases: int = 40,
    shape: tuple[int, int, int] | None = (192, 192, 12),
    seed: int = 0,
    myocardium: bool = False,
    rv: bool = False,
    channels: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> pathlib.Path:
    """Write a dataset in the Medical Segmentation Decathlon v1 layout and return its root.

    ``out/dataset.json``, ``out/imagesTr/case_000.nii.gz`` (float32; with ``channels=2``
    a 4D (X, Y, Z, 2) file, channels last, and two "modality" entries, as MSD Prostate)
    and ``out/labelsTr/case_000.nii.gz`` (uint8). ``myocardium`` and ``rv`` add those
    classes (see ``make_case``); "labels" lists every class. ``shape=None`` draws each case's
    shape like the paper's data: square in-plane size from (128, 192, 256) and
    10-15 slices. Case ``i`` depends on ``(seed, i)`` only. ``progress(done, total)``
    is called after each case is written. The dataset is written into a hidden
    temporary sibling folder and renamed into place at the end, so a failure leaves
    nothing behind. Bad arguments raise ``InputError``.
    """
    if isinstance(cases, bool) or not isinstance(cases, (int, np.integer)):
        raise InputError(f"cases {cases!r} is not a whole number; give a count of at least 1")
    cases = int(cases)
    if cases < 1:
        raise InputError(f"cases {cases} is below 1; give a count of at least 1")
    if shape is not None:
        shape = _check_shape(shape)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed {seed!r} is not a whole number >= 0; give e.g. 0")
    seed = int(seed)
    myocardium = _check_flag(myocardium, "myocardium")
    rv = _check_flag(rv, "rv")
    channels = _check_channels(channels)

    root = pathlib.Path(out).expanduser().absolute()
    if root.exists() or root.is_symlink():
        if not root.is_dir():
            raise InputError(
                f"{root} already exists and is not a folder; choose a new folder name"
            )
        if any(root.iterdir()):
            raise InputError(
                f"{root} already exists and is not empty; choose a new folder or delete it"
            )

    # Create missing parents, remembering the top-most one to undo on failure.
    created_top: pathlib.Path | None = None
    parent = root.parent
    missing = [p for p in [parent, *parent.parents] if not p.exists()]
    tmp: pathlib.Path | None = None
    try:
        try:
            if missing:
                parent.mkdir(parents=True)
                created_top = missing[-1]
            tmp = _make_temp_dir(parent, root.name)
        except OSError as e:
            raise InputError(
                f"cannot create a folder in {parent} ({e.strerror or e}); choose a writable location"
            ) from None

        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        training = []
        for i in range(cases):
            rng = _case_rng(seed, i)
            if shape is None:
                size = int(rng.choice(IN_PLANE_SIZES))
                nz = int(rng.integers(SLICE_RANGE[0], SLICE_RANGE[1] + 1))
                case_shape = (size, size, nz)
            else:
                case_shape = shape
            image, label, spacing = make_case(case_shape, rng, myocardium=myocardium, rv=rv, channels=channels)
            name = f"case_{i:03d}.nii.gz"
            nib.save(_nifti(image, spacing, np.float32), tmp / "imagesTr" / name)
            nib.save(_nifti(label, spacing, np.uint8), tmp / "labelsTr" / name)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
            if progress is not None:
                progress(i + 1, cases)

        names = class_names(myocardium=myocardium, rv=rv)
        labels = {str(value): name for value, name in enumerate(names)}
        labelled = [name for name, asked in (("myocardium", myocardium), ("right ventricle", rv)) if asked]
        meta = {
            "name": "SyntheticCardiac",
            "description": (
                "Synthetic short-axis cardiac MR stacks (left-ventricle segmentation), "
                f"generated by hpsearch model.synth with seed {seed}"
                + "".join(f", {name} labelled" for name in labelled)
                + (", two MR contrasts" if channels == 2 else "")
                + "; shapes "
                + ("drawn per case" if shape is None else "x".join(map(str, shape)))
                + "."
            ),
            "reference": "synthetic (hpsearch model/synth.py)",
            "licence": "CC0",
            "release": "1.0",
            "tensorImageSize": "4D" if channels == 2 else "3D",
            "modality": {str(c): CHANNEL_NAMES[c] for c in range(channels)},
            "labels": labels,
            "numTraining": cases,
            "numTest": 0,
            "training": training,
            "test": [],
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

        if root.is_dir():  # exists and empty (checked above): replace it
            root.rmdir()
        tmp.rename(root)
        tmp = None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if created_top is not None:
            # Remove the parents this call created, if nothing else was put in them.
            p = parent
            while True:
                try:
                    p.rmdir()
                except OSError:
                    break
                if p == created_top:
                    break
                p = p.parent
        raise
    return root
