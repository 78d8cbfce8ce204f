"""Synthetic cardiac short-axis cine-MRI phantom with controllable image degradation.

Everything produced here is a PHANTOM drawn from a geometric model, not patient data.
It stands in for labelled cardiac MRI (none is available to the project) so that the
Dual Interaction Network can be trained and evaluated on clean versus degraded
(noisy, blurred, low-contrast, bias-corrupted) images.

Each case is a stack of short-axis slices (base to apex) at end-diastole (ED) and
end-systole (ES) with ACDC labels: 0 background, 1 RV cavity, 2 LV myocardium,
3 LV cavity (papillary muscles included, as in ACDC). ``write_acdc_phantom`` saves
cases in the ACDC folder layout so an ACDC reader loads them unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.io import atomic_output

GENERATOR_VERSION = "1.0"
DEGRADATION_LEVELS = {"mild": 0.2, "moderate": 0.5, "severe": 0.85}


@dataclass
class PhantomCase:
    """One phantom case, both frames. Images (Z, Y, X) float32, labels (Z, Y, X) uint8
    (0 bg, 1 RV, 2 Myo, 3 LV); slice 0 is the base. ``spacing`` is (x, y, z) in mm."""

    ed_image: np.ndarray
    ed_labels: np.ndarray
    es_image: np.ndarray
    es_labels: np.ndarray
    spacing: tuple[float, float, float]


@dataclass
class _Degradation:
    """Per-case degradation parameters shared by both frames; arrays are (Z, Y, X)."""

    pull_to: float
    contrast_loss: float
    body: np.ndarray
    bias: np.ndarray
    blur_px: float
    noise_sigma: float


def _z(a) -> np.ndarray:
    """Per-slice values (Z,) as a (Z, 1, 1) array for broadcasting against (Z, Y, X)."""
    return np.asarray(a, dtype=float)[:, None, None]


def _soft(d: np.ndarray, px: float) -> np.ndarray:
    """Partial-volume coverage from a signed distance in mm (positive inside)."""
    return np.clip(0.5 + d / px, 0.0, 1.0)


def _paint(img: np.ndarray, alpha: np.ndarray, value) -> None:
    """Composite ``value`` (scalar or (Z, Y, X)) over ``img`` in place with coverage ``alpha``."""
    img *= 1.0 - alpha
    img += alpha * value


def _smooth_noise(rng: np.random.Generator, shape: tuple, sigma: tuple) -> np.ndarray:
    """Unit-variance Gaussian-filtered white noise of ``shape``; ``sigma`` in pixels per axis.

    Filtered on a grid padded to multiples of 32 (fast FFT sizes), then cropped.
    """
    full = tuple(n if n < 32 else -(-n // 32) * 32 for n in shape)
    spectrum = np.fft.rfftn(rng.standard_normal(full))
    freqs = [np.fft.fftfreq(n) for n in full[:-1]] + [np.fft.rfftfreq(full[-1])]
    for axis, (f, s) in enumerate(zip(freqs, sigma)):
        view = [1] * len(full)
        view[axis] = f.size
        spectrum *= np.exp(-2.0 * (np.pi * s * f.reshape(view)) ** 2)
    out = np.fft.irfftn(spectrum, s=full, axes=tuple(range(len(full))))[tuple(slice(n) for n in shape)]
    return out / out.std()


def _ellipse_distance(x, y, cx, cy, a, b, theta) -> np.ndarray:
    """Signed distance (mm, positive inside) along the ray from the centre to an ellipse."""
    dx, dy = x - cx, y - cy
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    psi = np.arctan2(v, u)
    boundary = 1.0 / np.sqrt((np.cos(psi) / a) ** 2 + (np.sin(psi) / b) ** 2)
    return boundary - np.hypot(u, v)


def _gauss_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) row-normalised Gaussian smoothing matrix, sigma in pixels, truncated at 4 sigma."""
    d = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :])
    cut = 4.0 * sigma + 1.0
    k = np.exp(-0.5 * (np.minimum(d, cut) / sigma) ** 2) * (d <= cut)
    return k / k.sum(axis=1, keepdims=True)


def _background(rng, x, y, t, px, heart_c, heart_reach, tissue):
    """Clean thorax without the heart and the body and inner-body coverages, all (Z, Y, X)."""
    shape = (t.size,) + x.shape
    lv_x, lv_y = heart_c

    # Body: bright subcutaneous fat rim around textured muscle/soft tissue, air outside.
    bcx = lv_x.mean() - rng.uniform(10.0, 30.0)
    bcy = lv_y.mean() + rng.uniform(10.0, 25.0)
    ba, bb = rng.uniform(115.0, 150.0), rng.uniform(85.0, 115.0)
    btheta = rng.uniform(-0.15, 0.15)
    wobble = 3.0 * _smooth_noise(rng, shape, (0.5, 40.0 / px, 40.0 / px))
    d_body = _ellipse_distance(x, y, bcx, bcy, ba, bb, btheta) + wobble
    fat_rim = rng.uniform(5.0, 14.0) * (1.0 + 0.35 * _smooth_noise(rng, shape, (0.5, 15.0 / px, 15.0 / px)))
    inner = _soft(d_body - fat_rim, px)

    texture = (1.0 + 0.07 * _smooth_noise(rng, shape, (0.6, 2.0 / px, 2.0 / px))
               + 0.09 * _smooth_noise(rng, shape, (0.6, 8.0 / px, 8.0 / px)))
    zz = np.arange(t.size)[:, None, None]
    for _ in range(int(rng.integers(8, 17))):  # muscle bundles / vessels as soft blobs
        bx, by = bcx + rng.uniform(-ba, ba), bcy + rng.uniform(-bb, bb)
        br, bz, bsz = rng.uniform(4.0, 14.0), rng.uniform(0, t.size - 1), rng.uniform(0.5, 2.0)
        texture += rng.normal(0.0, 0.18) * np.exp(
            -0.5 * (((x - bx) ** 2 + (y - by) ** 2) / br ** 2 + ((zz - bz) / bsz) ** 2))

    img = np.zeros(shape)
    body = _soft(d_body, px)
    _paint(img, body, tissue["fat"] * (1.0 + 0.05 * texture))
    _paint(img, inner, tissue["muscle"] * texture)

    # Liver: bottom-left (inferior, patient right), growing towards the apex.
    grow = _z(0.6 + 0.6 * t)
    lcx = lv_x.mean() - rng.uniform(30.0, 60.0)
    lcy = _z(lv_y.mean() + rng.uniform(50.0, 80.0) - 25.0 * t)
    d_liver = _ellipse_distance(x, y, lcx, lcy, rng.uniform(60.0, 90.0) * grow,
                                rng.uniform(35.0, 55.0) * grow, rng.uniform(-0.4, 0.1))
    d_liver = d_liver + 4.0 * _smooth_noise(rng, shape, (0.5, 10.0 / px, 10.0 / px))
    _paint(img, _soft(d_liver, px) * inner, tissue["liver"] * texture)

    # Lungs: dark, beside the heart on both sides, shrinking towards the apex.
    shrink = _z(1.0 - 0.25 * t)
    lung_lat = (heart_reach[0] + rng.uniform(15.0, 30.0), rng.uniform(-10.0, 25.0))
    lung_med = (-(heart_reach[1] + rng.uniform(20.0, 40.0)), rng.uniform(-10.0, 30.0))
    for ox, oy in (lung_lat, lung_med):
        d_lung = _ellipse_distance(x, y, _z(lv_x + ox), _z(lv_y + oy), rng.uniform(25.0, 40.0) * shrink,
                                   rng.uniform(40.0, 65.0) * shrink, rng.uniform(-0.5, 0.5))
        d_lung = d_lung + 5.0 * _smooth_noise(rng, shape, (0.5, 8.0 / px, 8.0 / px))
        _paint(img, _soft(d_lung, px) * _soft(d_body - fat_rim - 4.0, px),
               tissue["lung"] * (1.0 + 0.3 * texture))

    # Spine (vertebral body + bright CSF) and descending aorta between spine and heart.
    sx, sy = bcx + rng.uniform(-10.0, 10.0), bcy + bb - rng.uniform(25.0, 40.0)
    sr = rng.uniform(14.0, 19.0)
    _paint(img, _soft(sr - np.hypot(x - sx, y - sy), px) * inner, tissue["bone"] * texture)
    _paint(img, _soft(5.0 - np.hypot(x - sx, y - sy - sr - 7.0), px) * inner, tissue["csf"])
    ar = rng.uniform(9.0, 13.0)
    ax, ay = sx + rng.uniform(15.0, 30.0), sy - sr - rng.uniform(5.0, 20.0)
    ray = np.hypot(ax - lv_x.mean(), ay - lv_y.mean())
    push = max(0.0, heart_reach[0] + ar + 6.0 - ray) / ray
    ax, ay = ax + push * (ax - lv_x.mean()), ay + push * (ay - lv_y.mean())
    _paint(img, _soft(ar - np.hypot(x - ax, y - ay), px) * inner, tissue["aorta"])
    return img, body, inner


def _draw_heart(rng, t):
    """Random heart shape parameters; arrays are per slice (Z,), t = 0 base .. 1 apex."""
    return {
        "r0": rng.uniform(20.0, 27.0),  # ED endocardial radius at the base, mm
        "apex": rng.uniform(0.8, 0.95),
        "theta": rng.uniform(0.0, np.pi) + rng.normal(0.0, 0.25) * t,  # ellipse orientation
        "a2": rng.uniform(0.04, 0.14),
        "a3": rng.normal(0.0, 0.025), "p3": rng.uniform(0.0, 2 * np.pi),
        "a4": rng.normal(0.0, 0.02), "p4": rng.uniform(0.0, 2 * np.pi),
        "w0": rng.uniform(6.5, 9.5),  # ED wall thickness, mm
        "wb1": rng.uniform(0.0, 0.2), "wp1": rng.uniform(0.0, 2 * np.pi),
        "wb2": rng.normal(0.0, 0.05), "wp2": rng.uniform(0.0, 2 * np.pi),
        "f_es": rng.uniform(0.58, 0.72),  # ES/ED endocardial radius ratio
        "es_amp": rng.uniform(0.0, 0.06), "es_p": rng.uniform(0.0, 2 * np.pi),
        "g_es": rng.uniform(1.0, 1.12),  # myocardial area gain at ES (long-axis shortening)
        # RV direction: image left and slightly anterior (up), with per-case jitter and twist.
        "alpha": np.deg2rad(-160.0 + np.clip(rng.normal(0.0, 12.0), -25.0, 25.0) + rng.normal(0.0, 8.0) * t),
        "T0": rng.uniform(15.0, 24.0),  # ED RV cavity thickness at the base, mm
        "t_end": rng.uniform(0.85, 1.15),  # RV vanishes at t >= t_end
        "D0": np.deg2rad(rng.uniform(65.0, 90.0)),  # half angular extent of the RV crescent
        "skew": rng.uniform(-0.3, 0.3),
        "rv_wall": rng.uniform(2.0, 3.0),
        "e_rv": rng.uniform(0.5, 0.7), "d_es": rng.uniform(0.88, 0.97),
        "fat0": rng.uniform(0.5, 2.5), "fb1": rng.uniform(0.5, 1.2), "fp1": rng.uniform(0.0, 2 * np.pi),
        "fb2": rng.uniform(0.3, 0.8), "fp2": rng.uniform(0.0, 2 * np.pi),
        "rp": rng.uniform(2.5, 4.0), "pap_off": np.deg2rad(rng.uniform(35.0, 55.0, size=2)),
    }


def _heart_radii(h, t, phi, es):
    """Endocardial, epicardial radii and RV cavity thickness (mm), each (Z, Y, X), for one frame."""
    tz = _z(t)
    prof = np.sqrt(np.clip(1.0 - (h["apex"] * tz) ** 2, 0.02, 1.0))
    outline = (1.0 + h["a2"] * np.cos(2.0 * (phi - _z(h["theta"])))
               + h["a3"] * np.cos(3.0 * phi + h["p3"]) + h["a4"] * np.cos(4.0 * phi + h["p4"]))
    endo = h["r0"] * prof * outline
    wall = h["w0"] * (1.0 - 0.2 * tz) * (1.0 + h["wb1"] * np.cos(phi - h["wp1"])
                                         + h["wb2"] * np.cos(2.0 * phi + h["wp2"]))
    epi = endo + np.clip(wall, 5.0, 12.0)
    thick = h["T0"] * np.sqrt(np.clip(1.0 - (tz / h["t_end"]) ** 2, 0.0, 1.0))
    half = h["D0"] * (1.0 - 0.25 * tz)
    if es:
        endo_es = endo * h["f_es"] * (1.0 + h["es_amp"] * np.cos(phi - h["es_p"]))
        epi = np.sqrt(endo_es ** 2 + h["g_es"] * (epi ** 2 - endo ** 2))
        endo = endo_es
        thick, half = thick * h["e_rv"], half * h["d_es"]
    s = (np.mod(phi - _z(h["alpha"]) + np.pi, 2.0 * np.pi) - np.pi) / half
    inside = np.abs(s) < 1.0
    rv = np.where(inside, thick * np.clip(1.0 - s ** 2, 0.0, 1.0) ** 0.6 * (1.0 + h["skew"] * s), 0.0)
    return endo, epi, rv


def _render_heart(img, h, x, y, t, px, centre, tissue, myo_val, blood_val, es):
    """Paint the heart of one frame onto ``img`` (Z, Y, X) in place; return labels (Z, Y, X) uint8."""
    cx, cy = _z(centre[0]), _z(centre[1])
    dx, dy = x - cx, y - cy
    r, phi = np.hypot(dx, dy), np.arctan2(dy, dx)
    endo, epi, rv = _heart_radii(h, t, phi, es)
    rv_wall = h["rv_wall"] * np.clip(rv / 3.0, 0.0, 1.0)
    fat = h["fat0"] * np.maximum(0.0, 0.3 + h["fb1"] * np.cos(phi - h["fp1"])
                                 + h["fb2"] * np.cos(2.0 * phi - h["fp2"]))
    a_rv = _soft(epi + rv - r, px) * np.clip(rv / px, 0.0, 1.0)
    a_epi, a_endo = _soft(epi - r, px), _soft(endo - r, px)

    _paint(img, _soft(epi + rv + rv_wall + fat - r, px), tissue["fat"])
    _paint(img, _soft(epi + rv + rv_wall - r, px), myo_val)
    _paint(img, a_rv, blood_val * tissue["rv_ratio"])
    _paint(img, a_epi, myo_val)
    _paint(img, a_endo, blood_val)

    # Papillary muscles (myocardial signal, LV label as in ACDC) on the free-wall side, mid-ventricle.
    r_mean = endo.mean(axis=(1, 2))
    rp = np.minimum(h["rp"] * np.sqrt(np.sin(np.pi * np.clip((t - 0.1) / 0.8, 0.0, 1.0))), 0.3 * r_mean)
    rho = np.maximum(r_mean - rp - 1.0, 0.3 * r_mean)
    for sign, off in zip((1.0, -1.0), h["pap_off"]):
        beta = h["alpha"] + np.pi + sign * off
        d_pap = _z(rp) - np.hypot(dx - _z(rho * np.cos(beta)), dy - _z(rho * np.sin(beta)))
        _paint(img, _soft(d_pap, px) * (_z(rp) > 0), myo_val)

    labels = np.zeros(img.shape, np.uint8)
    labels[a_rv > 0.5] = 1
    labels[a_epi > 0.5] = 2
    labels[a_endo > 0.5] = 3
    return labels


def _draw_degradation(rng, level, body, px, pull_to, blood):
    """Per-case degradation parameters for ``level`` in [0, 1], each effect jittered per case."""
    jitter = np.clip(np.exp(rng.normal(0.0, 0.2, size=4)), 0.6, 1.5)
    l_contrast, l_bias, l_blur, l_noise = np.minimum(level * jitter, 1.0)
    base_noise = rng.uniform(0.015, 0.03)
    coef = rng.normal(size=8)
    shape = body.shape
    z, yy, xx = (np.linspace(-1.0, 1.0, n) for n in shape)
    w, v, u = z[:, None, None], yy[None, :, None], xx[None, None, :]
    terms = (u, v, u * u, v * v, u * v, w, u * w, v * w)
    field = sum(c * np.broadcast_to(m, shape) for c, m in zip(coef, terms))
    field = field / np.abs(field).max()
    return _Degradation(
        pull_to=pull_to,
        contrast_loss=0.65 * l_contrast,
        body=body,
        bias=np.exp((0.08 + 0.5 * l_bias) * field),
        blur_px=(0.3 + 3.2 * l_blur) / px,
        noise_sigma=blood * (base_noise + 0.13 * l_noise),
    )


def _degrade(rng, clean, deg: _Degradation) -> np.ndarray:
    """Contrast loss inside the body, bias field, in-plane blur, Rician noise; (Z, Y, X) -> float32."""
    img = clean + (deg.pull_to - clean) * (deg.contrast_loss * deg.body)
    img = img * deg.bias
    img = _gauss_matrix(img.shape[1], deg.blur_px) @ img @ _gauss_matrix(img.shape[2], deg.blur_px).T
    noise = rng.standard_normal((2,) + img.shape) * deg.noise_sigma
    return np.hypot(img + noise[0], noise[1]).astype(np.float32)


def synthesize_case(rng: np.random.Generator, degradation: float) -> PhantomCase:
    """Draw one phantom case (ED and ES) with ``degradation`` in [0, 1] (0 clean, 1 severe).

    The anatomy depends only on the generator state, not on ``degradation``: the same
    seed at different levels gives the same labels and increasingly degraded images.
    """
    level = float(degradation)
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"degradation must be in [0, 1], got {degradation!r}")
    nx, ny = (int(n) for n in rng.integers(128, 161, size=2))
    nz = int(rng.integers(6, 11))
    px = float(rng.uniform(1.25, 1.8))
    dz = float(np.round(rng.uniform(5.0, 10.0) * 2.0) / 2.0)
    t = np.linspace(0.0, 1.0, nz)
    x, y = np.meshgrid((np.arange(nx) - (nx - 1) / 2.0) * px, (np.arange(ny) - (ny - 1) / 2.0) * px)
    shape = (nz, ny, nx)

    blood = rng.uniform(600.0, 780.0)
    myo = blood * rng.uniform(0.26, 0.36)
    tissue = {
        "fat": blood * rng.uniform(0.8, 1.0), "muscle": myo * rng.uniform(0.9, 1.15),
        "lung": rng.uniform(15.0, 45.0), "csf": blood * rng.uniform(0.7, 0.9),
        "aorta": blood * rng.uniform(0.85, 1.05), "rv_ratio": rng.uniform(0.9, 1.0),
    }
    tissue["liver"] = tissue["muscle"] * rng.uniform(1.2, 1.5)
    tissue["bone"] = tissue["muscle"] * rng.uniform(1.1, 1.4)

    h = _draw_heart(rng, t)
    offset = rng.uniform(-0.08, 0.08, size=2) * (nx * px, ny * px)
    drift = rng.normal(0.0, 3.0, size=2)
    centre = (offset[0] + drift[0] * (t - 0.5), offset[1] + drift[1] * (t - 0.5))
    epi_max = h["r0"] + 12.0
    reach = (epi_max + 5.0, epi_max + h["T0"] + 8.0)  # lateral, septal (RV side) extent
    background, body, inner = _background(rng, x, y, t, px, centre, reach, tissue)
    myo_val = myo * (1.0 + 0.05 * _smooth_noise(rng, shape, (0.5, 3.0 / px, 3.0 / px)))
    blood_val = blood * (1.0 + 0.04 * _smooth_noise(rng, shape, (0.5, 6.0 / px, 6.0 / px)))

    frames = []
    for es in (False, True):
        img = background.copy()
        labels = _render_heart(img, h, x, y, t, px, centre, tissue, myo_val, blood_val, es)
        frames.append((img, labels))
    pull_to = float(frames[0][0][inner > 0.5].mean())
    deg = _draw_degradation(rng, level, body, px, pull_to, blood)
    (ed, ed_lab), (es, es_lab) = frames
    return PhantomCase(
        ed_image=_degrade(rng, ed, deg), ed_labels=ed_lab,
        es_image=_degrade(rng, es, deg), es_labels=es_lab,
        spacing=(px, px, dz),
    )


def _write_nifti(array: np.ndarray, spacing, path: Path, note: str) -> None:
    """Write a (Z, Y, X) array as NIfTI with spacing (x, y, z), origin 0, identity direction."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetMetaData("ITK_FileNotes", note)  # NIfTI 'descrip' header field (80 chars)
    with atomic_output(path) as temporary:
        sitk.WriteImage(image, str(temporary), useCompression=True)


def _write_text(path: Path, text: str) -> None:
    """Atomically write a UTF-8 text file."""
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_acdc_phantom(out_dir, n_cases: int, degradation: float | str, seed: int,
                       first_id: int = 1) -> list[Path]:
    """Write ``n_cases`` phantom cases in the ACDC layout; return the patient folders.

    ``out_dir/patientNNN/patientNNN_frame01[_gt].nii.gz`` (ED), ``..._frameMM[_gt].nii.gz``
    (ES, MM in 10..14) and ``Info.cfg``; plus ``out_dir/README.txt``. ``degradation`` is a
    level in [0, 1] or a key of ``DEGRADATION_LEVELS``. Case NNN depends only on
    (seed, NNN), so cases can be generated in separate calls.
    """
    if isinstance(degradation, str):
        level = DEGRADATION_LEVELS[degradation]
        level_text = f"{degradation} ({level})"
    else:
        level = float(degradation)
        level_text = str(level)
    if n_cases < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    note = f"dinseg.training.synth {GENERATOR_VERSION} synthetic phantom, not patient data"
    folders = []
    for pid in range(first_id, first_id + n_cases):
        rng = np.random.default_rng([seed, pid])
        case = synthesize_case(rng, level)
        es_frame = int(rng.integers(10, 15))
        info = (f"ED: 1\nES: {es_frame}\nGroup: NOR\nHeight: {rng.uniform(155.0, 195.0):.1f}\n"
                f"NbFrame: {int(rng.integers(25, 36))}\nWeight: {rng.uniform(55.0, 100.0):.1f}\n")
        name = f"patient{pid:03d}"
        folder = out / name
        folder.mkdir(exist_ok=True)
        for frame, image, labels in ((1, case.ed_image, case.ed_labels),
                                     (es_frame, case.es_image, case.es_labels)):
            _write_nifti(image, case.spacing, folder / f"{name}_frame{frame:02d}.nii.gz", note)
            _write_nifti(labels, case.spacing, folder / f"{name}_frame{frame:02d}_gt.nii.gz", note)
        _write_text(folder / "Info.cfg", info)
        folders.append(folder)
    readme = out / "README.txt"
    header = ("SYNTHETIC PHANTOM DATA - NOT PATIENT DATA.\n"
              "Cardiac short-axis cine-MRI-like phantom images in the ACDC folder layout, drawn from a\n"
              f"geometric model by dinseg.training.synth (generator version {GENERATOR_VERSION}).\n"
              "labels: 0 background, 1 RV cavity, 2 LV myocardium, 3 LV cavity\n"
              "Info.cfg Group/Height/Weight/NbFrame are placeholders, not measurements.\n"
              "Batches written here (one line per call):\n")
    previous = readme.read_text(encoding="utf-8") if readme.is_file() else header
    _write_text(readme, previous + (f"patients {first_id:03d}..{first_id + n_cases - 1:03d}: seed {seed}, "
                                    f"degradation {level_text}\n"))
    return folders
