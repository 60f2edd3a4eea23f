"""Rendering of the synthetic chest X-ray views (see `mlx_research.data.cxr`).

`render_views(details, rng, ...)` draws a study's frontal PA view (the patient's LEFT on the image
RIGHT) and, with two views, a lateral one (anterior on the image left), each finding of `details`
at its side, lobe and severity; vectorised numpy, each shape evaluated only in the window of
pixels it can reach: about 0.5 ms per 128 x 128 view.
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


Window = tuple[slice, slice]
"""(rows, cols) of the pixels a shape can reach; it is zero on every other pixel."""


def _span(v: np.ndarray, lo: float, hi: float) -> slice:
    """Indices of the evenly spaced increasing ``v`` in [lo, hi], and one or two more each side."""
    if v.size < 2:
        return slice(0, v.size)
    v0, step = float(v[0]), float(v[-1] - v[0]) / (v.size - 1)
    return slice(max(int((lo - v0) / step) - 1, 0), max(int((hi - v0) / step) + 3, 0))


def _box(x, y, x_lo, x_hi, y_lo, y_hi) -> Window:
    """The window of [x_lo, x_hi] x [y_lo, y_hi] (x [1, W], y [H, 1] evenly spaced, increasing)."""
    return _span(y[:, 0], y_lo, y_hi), _span(x[0], x_lo, x_hi)


def _full(x, y, shape: tuple[Window, np.ndarray]) -> np.ndarray:
    """[H, W] array of a windowed shape: its values in the window, zeros elsewhere."""
    window, values = shape
    out = np.zeros((y.shape[0], x.shape[1]), values.dtype)
    out[window] = values
    return out


def _ellipse(x, y, cx, cy, ax, ay, soft=0.06, power=2.0) -> tuple[Window, np.ndarray]:
    """Soft (super)ellipse mask: 1 inside, 0 outside, a linear edge ``soft`` wide (in radii)."""
    window = _box(x, y, cx - ax, cx + ax, cy - ay, cy + ay)
    x, y = x[:, window[1]], y[window[0]]
    if power == 2.0:
        d = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)
    else:
        d = (np.abs((x - cx) / ax) ** power + np.abs((y - cy) / ay) ** power) ** (1 / power)
    return window, np.clip((1 - d) / soft, 0, 1)


def _segment(x, y, p, q, width) -> tuple[Window, np.ndarray]:
    """Soft line mask: 1 within ``width`` of the segment p-q, fading over another width."""
    (px, py), (qx, qy) = p, q
    window = _box(x, y, min(px, qx) - 2 * width, max(px, qx) + 2 * width,
                  min(py, qy) - 2 * width, max(py, qy) + 2 * width)
    x, y = x[:, window[1]], y[window[0]]
    dx, dy = qx - px, qy - py
    t = np.clip(((x - px) * dx + (y - py) * dy) / (dx * dx + dy * dy), 0, 1)
    dist = np.sqrt((x - px - t * dx) ** 2 + (y - py - t * dy) ** 2)
    return window, np.clip(2 - dist / width, 0, 1)


@functools.lru_cache(maxsize=8)
def _upsampling(size: int, k: int) -> np.ndarray:
    """[S, k] float32 bilinear interpolation weights from k grid points to S pixels."""
    pos = np.clip((np.arange(size) + 0.5) * k / size - 0.5, 0, k - 1)
    lo = np.minimum(pos.astype(int), k - 2)
    w = np.zeros((size, k), np.float32)
    w[np.arange(size), lo] = 1 - (pos - lo)
    w[np.arange(size), lo + 1] = pos - lo
    return w


def _smooth(rng: np.random.Generator, size: int, k: int = 20) -> np.ndarray:
    """[S, S] float32 smooth noise in about [-1, 1]: a k x k grid upsampled bilinearly."""
    w = _upsampling(size, k)
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
    images[:, (np.abs(y - corner[1]) < 0.03) & (np.abs(x - corner[0]) < 0.03)] = 230.0  # marker
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
    body = _full(x, y, _ellipse(x, y, 0.5, 0.6, 0.45, 0.62, 0.03, 3.5)) + (
        np.abs(x - 0.5) < 0.1) * (y < 0.2)
    img = 14 + 86 * np.clip(body, 0, 1)
    air = np.zeros_like(img)  # zero outside the lungs' windows
    windows = []
    for side, (cx, cy, ax, ay) in enumerate(lungs):
        window, lung = _ellipse(x, y, cx, cy, ax, ay, 0.05, 2.4)
        windows.append(window)
        xs, ys = x[:, window[1]], y[window[0]]
        name = ("effusion_right", "effusion_left")[side]
        if name in sev:  # fluid from the base up to a lateral-rising meniscus
            lateral = np.clip((xs - cx) / ax * (1 if side else -1), 0, 1)
            level = cy + ay - 2 * ay * (0.05 + 0.4 * sev[name]) - 0.06 * lateral
            lung = lung * np.clip((level - ys) / 0.015, 0, 1)
        dark = 1.0 + 0.35 * texture[window]
        if "pneumothorax" in sev and details["pneumothorax"]["side"] == ("right", "left")[side]:
            s = 0.08 + 0.4 * sev["pneumothorax"]
            inner = _full(xs, ys, _ellipse(
                xs, ys, cx + (0.3 if side == 0 else -0.3) * s * ax, cy + 0.5 * s * ay,
                ax * (1 - 0.6 * s), ay * (1 - 0.6 * s), 0.02, 2.4))
            dark = inner * dark + (1 - inner) * 1.6
            img[window] += 30 * lung * np.clip(1 - np.abs(inner - 0.5) * 2, 0, 1)  # pleural line
        air[window] += lung * dark
    for window, shape in (_ellipse(x, y, 0.54, 0.65, ctr * 0.345, 0.14, 0.1),  # heart
                          _ellipse(x, y, 0.55, 0.3, 0.06, 0.05, 0.2)):  # aortic knob (apart)
        air[window] *= 1 - shape
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
                window, band = _segment(x, y, (px - w, py - 0.02 * pos[name][2]),
                                        (px + w, py + 0.02), 0.004 + 0.01 * s)
                img[window] += (30 + 35 * s) * band
    img -= 55 * air
    rows = slice(min(w[0].start for w in windows), max(w[0].stop for w in windows))
    cols = slice(min(w[1].start for w in windows), max(w[1].stop for w in windows))
    xs, ys = x[:, cols], y[rows]  # ribs show only through air
    rib = np.clip((np.cos(2 * np.pi * (ys + 0.8 * (xs - 0.5) ** 2) / 0.075) - 0.5) * 3, 0, 1)
    img[rows, cols] += 18 * rib * np.clip(air[rows, cols], 0, 1) * (ys > 0.15)
    for sx in (-1, 1):  # clavicles
        window, clavicle = _segment(x, y, (0.5 + sx * 0.05, 0.18), (0.5 + sx * 0.3, 0.12), 0.012)
        img[window] += 25 * clavicle
    spine = np.ix_(np.cos(2 * np.pi * y[:, 0] / 0.055) > -0.3, np.abs(x[0] - 0.5) < 0.035)
    img[spine] += 12
    if "support_devices" in details:
        img += _devices(x, y, details["support_devices"]["device"], frontal=True)
    return img


def _devices(x, y, device, frontal):
    if device == 0:  # ET tube in the trachea
        return 75 * _full(x, y, _segment(x, y, (0.5 if frontal else 0.52, 0.0), (0.5, 0.3), 0.006))
    if device == 1:  # right IJ catheter down into the SVC
        mid = (0.4, 0.15) if frontal else (0.5, 0.15)
        top = (0.38 if frontal else 0.5, 0.0)
        return 80 * np.maximum(_full(x, y, _segment(x, y, top, mid, 0.005)),
                               _full(x, y, _segment(x, y, mid, (0.46, 0.36), 0.005)))
    box = (0.78, 0.2) if frontal else (0.14, 0.22)
    pacer = 110 * ((np.abs(x - box[0]) < 0.045) & (np.abs(y - box[1]) < 0.03))
    heart = (0.58, 0.66) if frontal else (0.36, 0.66)
    return np.maximum(pacer, 80 * _full(x, y, _segment(x, y, box, heart, 0.004)))


def _lateral(x, y, details, sev, pos, ctr, texture):
    img = 12 + 88 * _full(x, y, _ellipse(x, y, 0.5, 0.6, 0.36, 0.58, 0.03))  # body
    window, lung = _ellipse(x, y, 0.5, 0.47, 0.25, 0.3)
    fluid = max([sev.get(n, 0.0) for n in ("effusion_left", "effusion_right")])
    if fluid:  # posterior costophrenic sulcus fills first
        level = 0.77 - 0.58 * (0.05 + 0.4 * fluid) - 0.08 * np.clip(
            (x[:, window[1]] - 0.5) / 0.25, 0, 1)
        lung = lung * np.clip((level - y[window[0]]) / 0.015, 0, 1)
    dark = 1.0 + 0.35 * texture
    if "pneumothorax" in sev:  # retrosternal lucency
        dark = dark + 0.5 * sev["pneumothorax"] * _full(x, y, _ellipse(x, y, 0.32, 0.3, 0.08, 0.15))
    img[window] -= 52 * lung * dark[window]
    rows, cols = y[:, 0], x[0]
    spine = (rows > 0.1) & (np.cos(2 * np.pi * rows / 0.055) > -0.3)
    img[np.ix_(spine, np.abs(cols - 0.8) < 0.04)] += 35
    img[np.ix_(rows < 0.32, np.abs(cols - 0.52) < 0.02)] -= 20  # trachea
    window, sternum = _segment(x, y, (0.16, 0.15), (0.2, 0.75), 0.01)
    img[window] += 25 * sternum
    window, heart = _ellipse(x, y, 0.38, 0.64, 0.13 * ctr / 0.43, 0.14, 0.08)
    img[window] = np.maximum(img[window], (100 + 20 * heart) * heart + img[window] * (1 - heart))
    for name in ("nodule", "consolidation", "atelectasis"):
        if name in details:
            zone = details[name]["lobe"].split()[1]
            px = {"upper": 0.45, "middle": 0.35, "lower": 0.62}[zone] + 0.05 * pos[name][1]
            lo, hi = _LOBE_ZONE[zone]
            py = 0.17 + 0.6 * (lo + (hi - lo) * (pos[name][0] + 1) / 2)
            s = sev[name]
            if name == "atelectasis":
                window, band = _segment(x, y, (px - 0.12, py), (px + 0.12, py + 0.02),
                                        0.004 + 0.01 * s)
                img[window] += (30 + 35 * s) * band
            else:
                r = 0.012 + 0.045 * s * s if name == "nodule" else 0.045 + 0.06 * s
                img += (45 + 40 * s) * np.exp(-((x - px) ** 2 + (y - py) ** 2) / r ** 2)
    if "support_devices" in details:
        img += _devices(x, y, details["support_devices"]["device"], frontal=False)
    return img
