"""Drawing primitives behind :mod:`edgeprune.data.scenes`: ground-plane textures and object shapes.

Split out so that ``scenes.py`` holds only the public API and scene composition. Everything
is vectorised numpy over the whole image, plus PIL for filling polygons and ellipses, so that
a 128x128 scene takes a few milliseconds on one core and no per-pixel Python loop exists.
Colours are float32 RGB in [0, 1] until the final quantisation in ``scenes.py``.
"""

from __future__ import annotations

import colorsys
import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

BOX, BALL, CYLINDER, TOOL, PERSON = 2, 3, 4, 5, 6  # class ids; must match scenes.CLASSES
FLAT, SPHERE, CYL = 0, 1, 2  # per-face shading models


@dataclass
class SceneObject:
    """One object standing (or lying) on the ground plane; geometry is derived at draw time
    from ``(x, y)`` so that moving an object in a clip keeps its perspective size consistent."""

    cls: int
    x: float  # ground-contact point, pixels
    y: float
    size: float  # world size; pixel size = size * perspective scale at row y
    aspect: float
    angle: float
    variant: int
    colors: np.ndarray  # [3, 3] float32: colour of faces 0..2


@functools.lru_cache(maxsize=16)
def grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Cached read-only row/column coordinate planes (float32), shared by every scene of a size."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32)


def value_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a random (cells+1)^2 lattice upsampled bicubically by PIL."""
    lattice = rng.random((cells + 1, cells + 1), dtype=np.float32)
    up = np.asarray(Image.fromarray(lattice).resize((w, h), Image.BICUBIC))
    return np.clip(up, 0.0, 1.0)


def ground_coords(yy: np.ndarray, xx: np.ndarray, h: int, horizon: float, vp_x: float,
                  unit_px: float):
    """Ground-plane coordinates (X across, Z into the scene) of pixels ``(yy, xx)`` below the
    horizon row for a pinhole camera; one unit spans ``unit_px`` pixels across at the bottom
    row. ``fade`` goes to 0 where a unit shrinks below ~2 px, to damp aliasing near the horizon."""
    depth_px = np.maximum(yy - horizon, 0.5)
    span = h - horizon
    inv = 1.0 / depth_px
    X = (xx - vp_x) * (inv * (span / unit_px))
    Z = inv * (span * span / (0.5 * unit_px))
    fade = np.clip((unit_px / span / 6.0) * depth_px - 1.0 / 3.0, 0.0, 1.0)
    return X, Z, fade


def _frac(a: np.ndarray) -> np.ndarray:
    return a - np.floor(a)


def background(kind: str, rng: np.random.Generator, h: int, w: int, horizon: float,
               vp_x: float, texture: bool) -> tuple[np.ndarray, np.ndarray]:
    """Unlit background image [h, w, 3] and labels (0 wall/sky/verge, 1 supporting surface).

    The ground is every row from ``ceil(horizon)`` down, so the two halves are computed on row
    slices (views, no masks). All random draws happen whether or not ``texture`` is on, so
    toggling texture changes only the look, never the colours or layout of the same seed.
    """
    yy, xx = grid(h, w)
    r0 = min(h, int(math.ceil(horizon)))
    tex = np.float32(1.0 if texture else 0.0)
    n_lo = value_noise(rng, h, w, 4)
    n_hi = value_noise(rng, h, w, max(8, w // 6))
    fine = rng.standard_normal((h, w), dtype=np.float32)
    img = np.empty((h, w, 3), np.float32)
    label = np.zeros((h, w), np.uint8)
    label[r0:] = 1
    up, gnd = img[:r0], img[r0:]  # views: writing them fills img
    gy, gx, g_lo, g_hi, g_fine = yy[r0:], xx[r0:], n_lo[r0:], n_hi[r0:], fine[r0:]
    hue, sat, val = rng.random(3, dtype=np.float32)

    if kind == "tabletop":
        wall = hsv(hue, 0.05 + 0.2 * sat, 0.6 + 0.3 * val)
        wood = hsv(0.05 + 0.06 * rng.random(), 0.4 + 0.3 * rng.random(), 0.35 + 0.4 * rng.random())
        up[:] = wall * (1 + tex * (0.12 * (n_lo[:r0] - 0.5) + 0.02 * fine[:r0]))[..., None]
        X, Z, fade = ground_coords(gy, gx, h, horizon, vp_x, w * (0.3 + 0.3 * rng.random()))
        grain = np.sin(2 * np.pi * (2.5 * Z + 2.0 * g_lo + 0.15 * X)) * (0.6 + 0.8 * g_hi)
        seam = _frac(Z * 0.5 + 0.3 * rng.random()) < 0.06
        shade = 1 + tex * fade * (0.1 * grain - 0.35 * seam + 0.03 * g_fine)
        shade[: max(1, int(h / 64))] += 0.25  # bright bevel of the table's far edge
        gnd[:] = wood * shade[..., None]
    elif kind == "floor":
        wall = hsv(hue, 0.05 + 0.25 * sat, 0.55 + 0.35 * val)
        up[:] = wall * (1 + tex * (0.08 * (n_lo[:r0] - 0.5) + 0.015 * fine[:r0]))[..., None]
        up[max(0, r0 - max(2, h // 40)):] = wall * 0.45  # skirting board
        X, Z, fade = ground_coords(gy, gx, h, horizon, vp_x, w * (0.15 + 0.15 * rng.random()))
        yaw = (rng.random() - 0.5) * 0.6
        U, V = X * math.cos(yaw) - Z * math.sin(yaw), X * math.sin(yaw) + Z * math.cos(yaw)
        iu, iv = np.floor(U).astype(np.int32), np.floor(V).astype(np.int32)
        jitter = ((iu * 9283711) ^ (iv * 6892879)) % 1024 * np.float32(0.12 / 1023) - 0.06
        a = hsv(rng.random(), 0.1 + 0.3 * rng.random(), 0.45 + 0.45 * rng.random())
        b = a * np.float32(0.6 + 0.3 * rng.random()) if rng.random() < 0.5 else a
        checker = ((iu + iv) & 1 == 0)[..., None]
        grout = ((U - iu < 0.05) | (V - iv < 0.05))[..., None]
        tiles = np.where(grout, a * 0.5, np.where(checker, a, b) * (1 + jitter + 0.03 * g_fine)[..., None])
        k = (tex * fade)[..., None]
        mean = (a + b) * 0.5
        gnd[:] = mean + k * (tiles - mean)
    elif kind == "road":
        sky = hsv(0.55 + 0.07 * hue, 0.25 + 0.35 * sat, 0.75 + 0.2 * val)
        lift = np.clip(yy[:r0] / max(horizon, 1.0), 0, 1)[..., None]
        clouds = tex * np.clip(2.5 * (n_lo[:r0] - 0.55), 0, 1)[..., None]
        up[:] = (sky * (0.85 + 0.25 * lift)) * (1 - clouds) + clouds
        ridge = horizon - h * (0.03 + 0.08 * value_noise(rng, 1, w, 6)[0])
        trees = yy[:r0] >= ridge[None, :]
        tree_col = hsv(0.25 + 0.1 * rng.random(), 0.5, 0.25 + 0.15 * rng.random())
        up[trees] = tree_col * (1 + tex * 0.25 * (n_hi[:r0][trees] - 0.5))[..., None]
        X, Z, fade = ground_coords(gy, gx, h, horizon, vp_x, w * 0.1)
        half = 3.0 + 2.0 * rng.random()
        verge = hsv(0.2 + 0.1 * rng.random(), 0.45, 0.35 + 0.2 * rng.random())
        asphalt = np.float32(0.25 + 0.2 * rng.random()) * np.array([1, 1, 1.04], np.float32)
        road = np.abs(X) < half
        label[r0:] = road
        grass = verge * (1 + tex * (0.25 * (g_hi - 0.5) + 0.06 * g_fine))[..., None]
        paint = ((np.abs(X) < 0.12) & (_frac(Z / 6.0) < 0.5)) | (np.abs(np.abs(X) - half + 0.3) < 0.1)
        k = (np.clip(fade * 2, 0.3, 1.0) * paint)[..., None]
        tar = asphalt * (1 + tex * (0.15 * (g_lo - 0.5) + 0.08 * g_fine))[..., None]
        gnd[:] = np.where(road[..., None], tar + k * (0.92 - tar), grass)
    else:
        raise ValueError(f"unknown background {kind!r}")
    return img, label


def paint_order(objs: list[SceneObject]) -> list[int]:
    """Back-to-front (painter's) order: the ground contact farther up the image is farther from
    the camera, so it is drawn first and nearer objects overwrite it, in pixels and labels alike."""
    return sorted(range(len(objs)), key=lambda i: (objs[i].y, i))


def _bar(p: np.ndarray, q: np.ndarray, thick: float) -> list[tuple[float, float]]:
    d = q - p
    n = np.array([-d[1], d[0]]) / max(float(np.hypot(*d)), 1e-6) * thick / 2
    return [tuple(p + n), tuple(q + n), tuple(q - n), tuple(p - n)]


def _ellipse(cx: float, cy: float, rx: float, ry: float) -> list[float]:
    rx, ry = max(rx, 0.5), max(ry, 0.5)
    return [cx - rx, cy - ry, cx + rx, cy + ry]


def rasterize(objs: list[SceneObject], h: int, w: int, horizon: float, vp_x: float,
              perspective: bool, light: np.ndarray):
    """Draw ``objs`` (already in paint order) into a face-id map: id = 4*k + face + 1.

    Returns ``ids`` [h, w] uint8, per-id tables (class, shading model, centre/radii, RGB) and a
    soft shadow map [h, w] in [0, 1]. Face ids let one painter's pass settle occlusion for pixels
    and labels at once; per-pixel shading then looks the id's parameters up.
    """
    ids_img, shadow_img = Image.new("L", (w, h)), Image.new("L", (w, h))
    draw, sdraw = ImageDraw.Draw(ids_img), ImageDraw.Draw(shadow_img)
    cls = np.zeros(256, np.uint8)
    model = np.zeros(256, np.uint8)
    geo = np.ones((256, 4), np.float32)  # cx, cy, rx, ry
    rgb = np.zeros((256, 3), np.float32)
    lx = float(light[0])
    span = h - horizon
    for k, o in enumerate(objs):
        t = float(np.clip((o.y - horizon) / span, 0.05, 1.2))
        s = h * (0.25 + 0.75 * t) * o.size if perspective else h * 0.6 * o.size
        base = 4 * k + 1
        cls[base:base + 3] = o.cls
        rgb[base:base + 3] = o.colors
        x, y = o.x, o.y
        if o.cls == BOX:
            bh, top = s * o.aspect, s * 0.45 * t
            xl, xr, yt = x - s / 2, x + s / 2, y - bh
            sx = -float(np.clip((x - vp_x) / w, -0.5, 0.5)) * s * 0.6
            x0 = xr if sx > 0 else xl
            draw.polygon([(x0, yt), (x0 + sx, yt - top), (x0 + sx, y - top), (x0, y)], fill=base + 2)
            draw.polygon([(xl, yt), (xr, yt), (xr + sx, yt - top), (xl + sx, yt - top)], fill=base + 1)
            draw.polygon([(xl, yt), (xr, yt), (xr, y), (xl, y)], fill=base)
            rgb[base:base + 3] *= np.array([[0.8], [1.05], [0.6 + 0.3 * (sx * lx > 0)]], np.float32)
            sdraw.ellipse(_ellipse(x - lx * s * 0.35 + sx / 2, y - top / 2, s * 0.7, s * 0.12 + top * 0.6), fill=255)
        elif o.cls == BALL:
            r = s / 2
            draw.ellipse(_ellipse(x, y - r, r, r), fill=base)
            model[base], geo[base] = SPHERE, (x, y - r, r, r)
            sdraw.ellipse(_ellipse(x - lx * r * 0.6, y, r, r * 0.3), fill=255)
        elif o.cls == CYLINDER:
            cw, ch = s / 2, s * o.aspect
            e = cw * 0.45 * t
            draw.polygon([(x - cw, y), (x - cw, y - ch), (x + cw, y - ch), (x + cw, y)], fill=base)
            draw.ellipse(_ellipse(x, y, cw, e), fill=base)
            model[base:base + 3], geo[base:base + 3] = CYL, (x, y, cw, 1)
            if o.variant == 0:  # can: printed band, lid
                draw.polygon([(x - cw, y - ch * 0.35), (x - cw, y - ch * 0.7), (x + cw, y - ch * 0.7),
                              (x + cw, y - ch * 0.35)], fill=base + 2)
                draw.ellipse(_ellipse(x, y - ch, cw, e), fill=base + 1)
                model[base + 1] = FLAT
            else:  # bottle: shoulder, neck, cap
                draw.ellipse(_ellipse(x, y - ch, cw, cw * 0.5), fill=base)
                nk = cw * 0.35
                draw.polygon([(x - nk, y - ch), (x - nk, y - ch * 1.4), (x + nk, y - ch * 1.4),
                              (x + nk, y - ch)], fill=base)
                draw.ellipse(_ellipse(x, y - ch * 1.4, nk * 1.1, e * 0.4 + 0.5), fill=base + 1)
            sdraw.ellipse(_ellipse(x - lx * cw, y, cw * 1.5, max(1.5, e * 1.3)), fill=255)
        elif o.cls == TOOL:
            th = max(1.5, s * 0.07)
            d = np.array([math.cos(o.angle), math.sin(o.angle) * (0.25 + 0.4 * t)]) * s
            c = np.array([x, y - th])
            p, q = c - d / 2, c + d / 2
            m = p + 0.38 * d
            draw.polygon(_bar(m, q, th), fill=base)
            draw.polygon(_bar(p, m, th * 1.8), fill=base + 1)
            if o.variant == 1:  # wrench head
                draw.ellipse(_ellipse(*q, th * 1.6, th * 1.4), fill=base)
            off = np.array([-lx * th, th * 0.9])
            sdraw.polygon(_bar(p + off, q + off, th * 2.2), fill=255)
        elif o.cls == PERSON:
            r = s * 0.09
            draw.polygon(_bar(np.array([x - s * 0.06, y]), np.array([x - s * 0.06, y - s * 0.5]), s * 0.1), fill=base + 2)
            draw.polygon(_bar(np.array([x + s * 0.06, y]), np.array([x + s * 0.06, y - s * 0.5]), s * 0.1), fill=base + 2)
            top = y - s + 2 * r * 0.95
            draw.rounded_rectangle([x - s * 0.14, top, x + s * 0.14, y - s * 0.45], radius=max(1.0, s * 0.05), fill=base + 1)
            for sgn in (-1, 1):  # arms
                draw.polygon(_bar(np.array([x + sgn * s * 0.17, top + s * 0.03]),
                                  np.array([x + sgn * s * 0.2, y - s * 0.42]), s * 0.07), fill=base + 1)
            draw.ellipse(_ellipse(x, y - s + r, r, r), fill=base)
            model[base], geo[base] = SPHERE, (x, y - s + r, r, r)
            sdraw.ellipse(_ellipse(x - lx * s * 0.15, y, s * 0.22, s * 0.05), fill=255)
    shadow = shadow_img.filter(ImageFilter.GaussianBlur(radius=max(1.0, h / 80)))
    return (np.asarray(ids_img), cls, model, geo, rgb,
            np.asarray(shadow, dtype=np.float32) / 255.0)


def shade(ids: np.ndarray, model: np.ndarray, geo: np.ndarray, rgb: np.ndarray,
          light: np.ndarray) -> np.ndarray:
    """RGB of the object pixels ``ids[ids > 0]``: Lambert + a specular glint for spheres and
    cylinders (normals from the id's centre and radii), face colour as-is for flat faces."""
    yy, xx = grid(*ids.shape)
    m = ids > 0
    i = ids[m]
    col = rgb[i]
    kind = model[i]
    curved = kind != FLAT
    if curved.any():
        j = i[curved]
        u = np.clip((xx[m][curved] - geo[j, 0]) / geo[j, 2], -1, 1)
        v = np.where(kind[curved] == SPHERE, (yy[m][curved] - geo[j, 1]) / geo[j, 3], 0.0)
        nz = np.sqrt(np.clip(1 - u * u - v * v, 0, 1))
        dot = np.clip(u * light[0] + v * light[1] + nz * light[2], 0, 1)
        glint = (dot ** 16 * 0.35)[:, None]
        col[curved] = col[curved] * (0.3 + 0.75 * dot)[:, None] + glint
    return col
