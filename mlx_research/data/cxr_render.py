"""Rendering of the synthetic chest X-ray views (see `mlx_research.data.cxr`).

`render_views(details, rng, ...)` draws a study's frontal PA view (the patient's LEFT on the image
RIGHT) and, with two views, a lateral one (anterior on the image left), each finding of `details`
at its side, lobe and severity; vectorised numpy, about 2 ms per 128 x 128 view.
"""

from __future__ import annotations

import functools

import numpy as np

FINDINGS = ("cardiomegaly", "effusion_left", "effusion_right", "pneumothorax", "nodule",
            "consolidation", "atelectasis", "support_devices")
"""The findings a study can carry (`mlx_research.data.cxr` writes their sentences)."""
_LOBE_ZONE = {"upper": (0.22, 0.45), "middle": (0.5, 0.64), "lower": (0.64, 0.82)}


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return c[None, :], c[:, None]  # x [1, S], y [S, 1] in [0, 1]


def _ellipse(x, y, cx, cy, ax, ay, soft=0.06, power=2.0):
    """Soft (super)ellipse mask: 1 inside, 0 outside, a linear edge ``soft`` wide (in radii)."""
    if power == 2.0:
        d = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)
    else:
        d = (np.abs((x - cx) / ax) ** power + np.abs((y - cy) / ay) ** power) ** (1 / power)
    return np.clip((1 - d) / soft, 0, 1)


def _segment(x, y, p, q, width):
    """Soft line mask: 1 within ``width`` of the segment p-q, fading over another width."""
    (px, py), (qx, qy) = p, q
    dx, dy = qx - px, qy - py
    t = np.clip(((x - px) * dx + (y - py) * dy) / (dx * dx + dy * dy), 0, 1)
    dist = np.sqrt((x - px - t * dx) ** 2 + (y - py - t * dy) ** 2)
    return np.clip(2 - dist / width, 0, 1)


def _smooth(rng: np.random.Generator, size: int, k: int = 20) -> np.ndarray:
    """[S, S] float32 smooth noise in about [-1, 1]: a k x k grid upsampled bilinearly."""
    pos = np.clip((np.arange(size) + 0.5) * k / size - 0.5, 0, k - 1)
    lo = np.minimum(pos.astype(int), k - 2)
    w = np.zeros((size, k), np.float32)
    w[np.arange(size), lo] = 1 - (pos - lo)
    w[np.arange(size), lo + 1] = pos - lo
    return w @ rng.standard_normal((k, k), dtype=np.float32) @ w.T


def render_views(details: dict, rng: np.random.Generator, image_size: int = 128, views: int = 2,
                 site: int = 0) -> np.ndarray:
    """Renders one study's views.

    Frontal findings (lateral: the same where plausible): cardiomegaly widens the heart
    (cardiothoracic ratio 0.45 + 0.2 * severity, normal 0.40-0.46); an effusion fills the lower
    lung on its side with fluid density, a meniscus rising laterally (height 5-45% of the lung);
    a pneumothorax leaves a very dark rim without vessel markings, widest at the apex, outside
    a visible pleural line; a nodule is a bright blob (radius 1.5-7 px at S=128; a mass at
    grade 3) in its lobe; consolidation a bright patchy region in its lobe; atelectasis a thin
    bright oblique band (lobar: also a raised hemidiaphragm); devices are bright lines (ET tube,
    right internal jugular catheter) or a pacemaker box with leads. Random draws come in a
    fixed order (anatomy and noise first), so the same ``rng`` state renders the same patient
    with or without a finding.

    Args:
      details: finding -> {"severity", "grade", and "side" | "lobe" | "device"}.
      rng: the study's image generator.
      image_size: S.
      views: 1 (frontal) or 2 (frontal, lateral).
      site: reading site 0..2 (corner of the site marker).

    Returns:
      uint8 [views, S, S].
    """
    x, y = _grid(image_size)
    dx, dy, scale, gain, ctr = rng.uniform(  # python floats keep the arrays float32
        [-0.02, -0.02, 0.95, 0.85, 0.40], [0.02, 0.02, 1.05, 1.1, 0.46]).tolist()
    texture = [_smooth(rng, image_size) for _ in range(views)]
    noise = rng.standard_normal((views, image_size, image_size), dtype=np.float32)
    pos = dict(zip(FINDINGS, rng.uniform(-1, 1, (len(FINDINGS), 3)).tolist()))  # placements
    sev = {n: d["severity"] for n, d in details.items()}
    if "cardiomegaly" in sev:
        ctr = 0.45 + 0.2 * sev["cardiomegaly"]
    x, y = 0.5 + (x - 0.5 - dx) / scale, 0.5 + (y - 0.5 - dy) / scale
    out = [_frontal(x, y, details, sev, pos, ctr, texture[0])]
    if views == 2:
        out.append(_lateral(x, y, details, sev, pos, ctr, texture[1]))
    images = np.stack(out) * gain + noise * 4.0
    corner = [(0.06, 0.06), (0.94, 0.06), (0.06, 0.94)][site]
    marker = (np.abs(x - corner[0]) < 0.03) & (np.abs(y - corner[1]) < 0.03)
    images = np.where(marker, 230.0, images)
    return np.clip(images, 0, 255).astype(np.uint8)


def _lobe_point(name, d, pos, lungs):
    """(x, y) of a lung finding inside its lobe of the frontal lungs (cx, cy, ax, ay) per side."""
    cx, cy, ax, ay = lungs[0 if d["lobe"].startswith("right") else 1]
    lo, hi = _LOBE_ZONE[d["lobe"].split()[1]]
    t = lo + (hi - lo) * (pos[name][0] + 1) / 2
    v = cy - ay + 2 * ay * t
    half = ax * np.sqrt(max(1 - ((v - cy) / ay) ** 2, 0.05))
    lateral = -1 if d["lobe"].startswith("right") else 1  # away from the mediastinum
    return cx + lateral * (0.15 + 0.35 * pos[name][1]) * half, v


def _frontal(x, y, details, sev, pos, ctr, texture):
    lungs = [(0.31, 0.46, 0.16, 0.31), (0.69, 0.47, 0.15, 0.30)]  # patient right, left
    if details.get("atelectasis", {}).get("grade") == 3:  # lobar collapse: raised diaphragm
        i = 0 if details["atelectasis"]["lobe"].startswith("right") else 1
        cx, cy, ax, ay = lungs[i]
        lungs[i] = (cx, cy - 0.03, ax, ay - 0.03)
    body = _ellipse(x, y, 0.5, 0.6, 0.45, 0.62, 0.03, 3.5) + (np.abs(x - 0.5) < 0.1) * (y < 0.2)
    img = 14 + 86 * np.clip(body, 0, 1)
    air = np.zeros_like(img)
    for side, (cx, cy, ax, ay) in enumerate(lungs):
        lung = _ellipse(x, y, cx, cy, ax, ay, 0.05, 2.4)
        name = ("effusion_right", "effusion_left")[side]
        if name in sev:  # fluid from the base up to a lateral-rising meniscus
            lateral = np.clip((x - cx) / ax * (1 if side else -1), 0, 1)
            level = cy + ay - 2 * ay * (0.05 + 0.4 * sev[name]) - 0.06 * lateral
            lung = lung * np.clip((level - y) / 0.015, 0, 1)
        dark = 1.0 + 0.35 * texture
        if "pneumothorax" in sev and details["pneumothorax"]["side"] == ("right", "left")[side]:
            s = 0.08 + 0.4 * sev["pneumothorax"]
            inner = _ellipse(x, y, cx + (0.3 if side == 0 else -0.3) * s * ax, cy + 0.5 * s * ay,
                             ax * (1 - 0.6 * s), ay * (1 - 0.6 * s), 0.02, 2.4)
            dark = inner * dark + (1 - inner) * 1.6
            img += 30 * lung * np.clip(1 - np.abs(inner - 0.5) * 2, 0, 1)  # pleural line
        air += lung * dark
    heart = _ellipse(x, y, 0.54, 0.65, ctr * 0.345, 0.14, 0.1)
    knob = _ellipse(x, y, 0.55, 0.3, 0.06, 0.05, 0.2)  # aortic knob
    air *= (1 - heart) * (1 - knob)
    for name, d in details.items():
        if name in ("nodule", "consolidation", "atelectasis"):
            px, py = _lobe_point(name, d, pos, lungs)
            s = sev[name]
            if name == "nodule":
                r = 0.012 + 0.045 * s * s
                img += (40 + 40 * s) * np.exp(-((x - px) ** 2 + (y - py) ** 2) / r ** 2)
            elif name == "consolidation":  # air replaced by fluid in a patchy region
                r = 0.045 + 0.06 * s
                blob = np.exp(-((x - px) ** 2 + (y - py) ** 2) / r ** 2)
                air *= 1 - (0.5 + 0.5 * s) * blob * np.clip(0.8 + 0.6 * texture, 0, 1)
            else:
                w = 0.1 * (1 if px < 0.5 else -1)
                band = _segment(x, y, (px - w, py - 0.02 * pos[name][2]), (px + w, py + 0.02),
                                0.004 + 0.01 * s)
                img += (30 + 35 * s) * band
    img -= 55 * air
    rib = np.clip((np.cos(2 * np.pi * (y + 0.8 * (x - 0.5) ** 2) / 0.075) - 0.5) * 3, 0, 1)
    img += 18 * rib * np.clip(air, 0, 1) * (y > 0.15)
    for sx in (-1, 1):  # clavicles
        img += 25 * _segment(x, y, (0.5 + sx * 0.05, 0.18), (0.5 + sx * 0.3, 0.12), 0.012)
    img += 12 * (np.abs(x - 0.5) < 0.035) * (np.cos(2 * np.pi * y / 0.055) > -0.3)  # spine
    if "support_devices" in details:
        img += _devices(x, y, details["support_devices"]["device"], frontal=True)
    return img


def _devices(x, y, device, frontal):
    if device == 0:  # ET tube in the trachea
        return 75 * _segment(x, y, (0.5 if frontal else 0.52, 0.0), (0.5, 0.3), 0.006)
    if device == 1:  # right IJ catheter down into the SVC
        mid = (0.4, 0.15) if frontal else (0.5, 0.15)
        return 80 * np.maximum(_segment(x, y, (0.38 if frontal else 0.5, 0.0), mid, 0.005),
                               _segment(x, y, mid, (0.46, 0.36), 0.005))
    box = (0.78, 0.2) if frontal else (0.14, 0.22)
    pacer = 110 * ((np.abs(x - box[0]) < 0.045) & (np.abs(y - box[1]) < 0.03))
    heart = (0.58, 0.66) if frontal else (0.36, 0.66)
    return np.maximum(pacer, 80 * _segment(x, y, box, heart, 0.004))


def _lateral(x, y, details, sev, pos, ctr, texture):
    body = _ellipse(x, y, 0.5, 0.6, 0.36, 0.58, 0.03)
    img = 12 + 88 * body
    lung = _ellipse(x, y, 0.5, 0.47, 0.25, 0.3)
    fluid = max([sev.get(n, 0.0) for n in ("effusion_left", "effusion_right")])
    if fluid:  # posterior costophrenic sulcus fills first
        level = 0.77 - 0.58 * (0.05 + 0.4 * fluid) - 0.08 * np.clip((x - 0.5) / 0.25, 0, 1)
        lung = lung * np.clip((level - y) / 0.015, 0, 1)
    dark = 1.0 + 0.35 * texture
    if "pneumothorax" in sev:  # retrosternal lucency
        dark = dark + 0.5 * sev["pneumothorax"] * _ellipse(x, y, 0.32, 0.3, 0.08, 0.15)
    img -= 52 * lung * dark
    img += 35 * (np.abs(x - 0.8) < 0.04) * (y > 0.1) * (np.cos(2 * np.pi * y / 0.055) > -0.3)
    img -= 20 * (np.abs(x - 0.52) < 0.02) * (y < 0.32)  # trachea
    img += 25 * _segment(x, y, (0.16, 0.15), (0.2, 0.75), 0.01)  # sternum
    heart = _ellipse(x, y, 0.38, 0.64, 0.13 * ctr / 0.43, 0.14, 0.08)
    img = np.maximum(img, (100 + 20 * heart) * heart + img * (1 - heart))
    for name in ("nodule", "consolidation", "atelectasis"):
        if name in details:
            zone = details[name]["lobe"].split()[1]
            px = {"upper": 0.45, "middle": 0.35, "lower": 0.62}[zone] + 0.05 * pos[name][1]
            lo, hi = _LOBE_ZONE[zone]
            py = 0.17 + 0.6 * (lo + (hi - lo) * (pos[name][0] + 1) / 2)
            s = sev[name]
            r = 0.012 + 0.045 * s * s if name == "nodule" else 0.045 + 0.06 * s
            amp = 45 + 40 * s if name != "atelectasis" else 30 + 35 * s
            shape = (np.exp(-((x - px) ** 2 + (y - py) ** 2) / r ** 2) if name != "atelectasis"
                     else _segment(x, y, (px - 0.12, py), (px + 0.12, py + 0.02), 0.004 + 0.01 * s))
            img += amp * shape
    if "support_devices" in details:
        img += _devices(x, y, details["support_devices"]["device"], frontal=False)
    return img
