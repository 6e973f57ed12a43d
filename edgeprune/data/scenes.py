"""Deterministic procedural robot's-view scenes with per-pixel semantic labels.

Groundwork for segmentation: a model can be trained and evaluated on an endless, reproducible
supply of labelled images without downloading a data set, and token-reduction methods can be
checked on dense predictions. Every scene is a pure function of ``(seed, SceneConfig)``, so a
seed list *is* the data set; :data:`TRAIN_SEEDS` and :data:`HELDOUT_SEEDS` are disjoint.

A scene is a camera looking at a ground plane (a wooden tabletop, a tiled floor or an asphalt
road, each in perspective up to a horizon) with a handful of objects standing on it. Objects
nearer the bottom of the image are nearer the camera, so they are drawn larger and later
(occluding farther ones; labels follow the same painter's order), cast soft shadows, and the
whole image gets a global gain, a directional light gradient, mild blur and sensor noise.
:func:`make_clip` keeps the camera and most objects still and slides a few objects, for
temporal-reuse experiments where most patches do not change between frames.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from edgeprune.core.files import write_atomic
from edgeprune.data import _draw
from edgeprune.data._draw import SceneObject

CLASSES: tuple[str, ...] = ("background", "surface", "box", "ball", "cylinder", "tool", "person")
"""Label ids are indices: 0 wall/sky/roadside verge, 1 the supporting plane (tabletop, floor,
road surface incl. markings), 2 box, 3 ball, 4 cylinder (can/bottle, upright), 5 tool (thin bar
lying on the ground, rotated), 6 person (standing figure)."""

PALETTE: np.ndarray = np.array(
    [[0, 0, 0], [128, 128, 128], [230, 140, 30], [220, 30, 60], [30, 120, 230], [240, 230, 40],
     [150, 60, 200]], np.uint8)
"""[num_classes, 3] uint8 colours for label overlays: black background, grey surface, orange box,
red ball, blue cylinder, yellow tool, purple person."""

BACKGROUNDS: tuple[str, ...] = ("tabletop", "floor", "road")

TRAIN_SEEDS = range(0, 100_000)
"""Seeds for training."""
HELDOUT_SEEDS = range(1_000_000, 1_002_000)
"""Seeds held out for evaluation only; disjoint from :data:`TRAIN_SEEDS` so scores on them
measure generalisation to unseen layouts, not memorisation."""

# Relative frequency of each object class per background (a person on a tabletop makes no sense).
_CLASS_WEIGHTS = {
    "tabletop": (0.3, 0.25, 0.25, 0.2, 0.0),
    "floor": (0.28, 0.2, 0.2, 0.15, 0.17),
    "road": (0.25, 0.15, 0.25, 0.1, 0.25),
}
# (size range, aspect range) in world units per class; pixel size = size * perspective scale.
_SHAPES = {
    _draw.BOX: ((0.14, 0.3), (0.5, 1.1)),
    _draw.BALL: ((0.08, 0.2), (1.0, 1.0)),
    _draw.CYLINDER: ((0.08, 0.15), (1.2, 2.6)),
    _draw.TOOL: ((0.25, 0.45), (1.0, 1.0)),
    _draw.PERSON: ((0.45, 0.75), (1.0, 1.0)),
}


@dataclass(frozen=True)
class SceneConfig:
    """What to vary. Toggles change only the look: labels and layout of a seed stay the same
    when ``texture``, ``lighting``, ``shadows``, ``noise_std`` or ``blur`` change."""

    height: int = 128  # multiple of 16 (the ViT patch size), at most 512
    width: int = 128
    min_objects: int = 2
    max_objects: int = 6  # at most 60 (face ids must fit a uint8 map)
    backgrounds: tuple[str, ...] = BACKGROUNDS  # drawn uniformly per scene
    texture: bool = True  # wood grain, floor tiles, asphalt/grass speckle, object texture
    lighting: bool = True  # random gain, colour cast, directional gradient, light direction
    shadows: bool = True  # soft contact shadows under objects
    perspective: bool = True  # objects nearer the bottom are larger
    noise_std: float = 3.0  # sensor noise sigma in 8-bit levels (scaled 0.5-1.5x per scene)
    blur: float = 0.5  # 0..1 mix with a 3x3 binomial blur (optics)

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            v = getattr(self, name)
            if not (16 <= v <= 512 and v % 16 == 0):
                raise ValueError(f"{name} must be a multiple of 16 in [16, 512], got {v}")
        if not 0 <= self.min_objects <= self.max_objects <= 60:
            raise ValueError("need 0 <= min_objects <= max_objects <= 60")
        if not self.backgrounds or any(b not in BACKGROUNDS for b in self.backgrounds):
            raise ValueError(f"backgrounds must be a non-empty subset of {BACKGROUNDS}")
        if self.noise_std < 0 or not 0 <= self.blur <= 1:
            raise ValueError("need noise_std >= 0 and 0 <= blur <= 1")


@dataclass
class _Layout:
    """Everything about a scene except per-frame sensor noise; objects are in sampling order."""

    base: np.ndarray  # unlit background [H, W, 3] float32
    label: np.ndarray  # background labels [H, W] uint8
    horizon: float
    vp_x: float
    light: np.ndarray  # unit vector towards the light (x right, y down, z towards camera)
    light_field: np.ndarray  # [H, W, 3] gain x gradient x colour cast
    obj_tex: np.ndarray  # [H, W] multiplicative object texture
    noise_std: float
    objects: list[SceneObject] = field(default_factory=list)


def _sample_layout(rng: np.random.Generator, tex_rng: np.random.Generator, cfg: SceneConfig,
                   min_objects: int) -> _Layout:
    h, w = cfg.height, cfg.width
    kind = cfg.backgrounds[int(rng.integers(len(cfg.backgrounds)))]
    horizon = h * float(rng.uniform(0.25, 0.5))
    vp_x = w * float(rng.uniform(0.3, 0.7))
    az, elev = rng.uniform(-np.pi, 0), rng.uniform(0.4, 0.9)  # light from above the camera's side
    gain, grad, cast = rng.uniform(0.7, 1.25), rng.uniform(0.1, 0.4), rng.normal(0, 0.04, 3)
    noise_scale = rng.uniform(0.5, 1.5)
    if cfg.lighting:
        light = np.array([np.cos(az) * np.cos(elev), np.sin(az) * np.cos(elev) * 0.5, np.sin(elev)])
        light /= np.linalg.norm(light)
        yy, xx = _draw.grid(h, w)
        gx, gy = (float(v) * 2 * grad for v in light[:2])  # python floats keep float32 planes
        ramp = (xx[:1] * (gx / w) + (1 - gx / 2)) + (yy[:, :1] * (gy / h) - gy / 2)
        light_field = (gain * ramp)[..., None] * (1 + cast).astype(np.float32)
    else:
        light = np.array([-0.4, -0.3, 0.87])
        light_field = np.ones((h, w, 3), np.float32)
    base, label = _draw.background(kind, tex_rng, h, w, horizon, vp_x, cfg.texture)
    fine = _draw.value_noise(tex_rng, h, w, max(8, w // 4))
    obj_tex = (1 + 0.12 * (fine - 0.5)) if cfg.texture else np.ones((h, w), np.float32)
    weights = np.array(_CLASS_WEIGHTS[kind])
    n = int(rng.integers(max(cfg.min_objects, min_objects), max(cfg.max_objects, min_objects) + 1))
    objects = []
    for _ in range(n):
        cls = 2 + int(rng.choice(5, p=weights / weights.sum()))
        (s0, s1), (a0, a1) = _SHAPES[cls]
        y = horizon + (h - horizon) * float(rng.uniform(0.08, 1.0)) ** 0.7
        colors = np.stack([_draw.hsv(rng.random(), rng.uniform(0.3, 0.9), rng.uniform(0.4, 0.95))
                           for _ in range(3)])
        if cls == _draw.BOX and rng.random() < 0.5:  # cardboard
            colors[:] = _draw.hsv(0.08, 0.5, 0.7)
        if cls == _draw.TOOL:  # metal shaft
            colors[0] = np.float32(0.75)
        if cls == _draw.PERSON:  # skin
            colors[0] = _draw.hsv(0.07, rng.uniform(0.3, 0.6), rng.uniform(0.35, 0.9))
        objects.append(SceneObject(
            cls=cls, x=w * float(rng.uniform(-0.05, 1.05)), y=y, size=float(rng.uniform(s0, s1)),
            aspect=float(rng.uniform(a0, a1)), angle=float(rng.uniform(0, np.pi)),
            variant=int(rng.integers(2)), colors=colors))
    return _Layout(base, label, horizon, vp_x, light, light_field, obj_tex,
                   cfg.noise_std * noise_scale, objects)


def _blur(img: np.ndarray, strength: float) -> np.ndarray:
    """Mix with a separable [1, 2, 1]/4 blur (edge-padded): mild optical softness."""
    p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    v = (p[:-2] + 2 * p[1:-1] + p[2:]) * 0.25
    b = (v[:, :-2] + 2 * v[:, 1:-1] + v[:, 2:]) * 0.25
    return img + strength * (b - img)


def _render(lay: _Layout, cfg: SceneConfig, objects: list[SceneObject],
            noise_rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = cfg.height, cfg.width
    ordered = [objects[i] for i in _draw.paint_order(objects)]
    ids, cls, model, geo, rgb, shadow = _draw.rasterize(
        ordered, h, w, lay.horizon, lay.vp_x, cfg.perspective, lay.light)
    img = lay.base * (1 - 0.5 * shadow)[..., None] if cfg.shadows else lay.base.copy()
    obj = ids > 0
    if obj.any():
        img[obj] = _draw.shade(ids, model, geo, rgb, lay.light) * lay.obj_tex[obj][:, None]
    label = np.where(obj, cls[ids], lay.label).astype(np.uint8)
    img *= lay.light_field
    if cfg.blur > 0:
        img = _blur(img, cfg.blur)
    noise = noise_rng.standard_normal((h, w, 3), dtype=np.float32)  # drawn even if std is 0
    img = img * 255 + noise * lay.noise_std + 0.5
    return np.clip(img, 0, 255).astype(np.uint8), label


def _rngs(seed: int) -> list[np.random.Generator]:
    """Independent streams (layout, texture, noise) from one seed, so toggling a look option
    cannot shift the random draws that decide the layout. Same streams as
    ``np.random.default_rng(seed).spawn(3)``, spelled so that numpy < 1.25 works too."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]


def make_scene(seed: int, config: SceneConfig = SceneConfig()) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``image`` uint8 [H, W, 3] and ``label`` uint8 [H, W] of :data:`CLASSES` ids.

    Fully determined by ``(seed, config)`` through ``np.random.default_rng(seed)``.
    """
    rng, tex_rng, noise_rng = _rngs(seed)
    lay = _sample_layout(rng, tex_rng, config, 0)
    return _render(lay, config, lay.objects, noise_rng)


def scene_batch(seeds: Iterable[int], config: SceneConfig = SceneConfig()
                ) -> tuple[np.ndarray, np.ndarray]:
    """``make_scene`` for each seed, stacked: images [N, H, W, 3], labels [N, H, W] (uint8)."""
    pairs = [make_scene(int(s), config) for s in seeds]
    if not pairs:
        h, w = config.height, config.width
        return np.zeros((0, h, w, 3), np.uint8), np.zeros((0, h, w), np.uint8)
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def make_clip(seed: int, num_frames: int, config: SceneConfig = SceneConfig(), moving: int = 2
              ) -> tuple[np.ndarray, np.ndarray]:
    """A static-camera clip: frames uint8 [T, H, W, 3], labels uint8 [T, H, W].

    The background and all but ``moving`` objects stay put; those slide along straight lines at
    a constant velocity (depth order and perspective size update as they move), and each frame
    gets fresh sensor noise. So most patches change only by noise from frame to frame, which is
    what temporal token reuse exploits.
    """
    if num_frames < 1 or moving < 0:
        raise ValueError("need num_frames >= 1 and moving >= 0")
    rng, tex_rng, noise_rng = _rngs(seed)
    lay = _sample_layout(rng, tex_rng, config, moving)
    h, w = config.height, config.width
    vel = [(float(rng.choice([-1, 1]) * rng.uniform(0.5, 2.0) * w / 128),
            float(rng.uniform(-0.25, 0.25) * h / 128)) for _ in range(moving)]
    frames, labels = [], []
    for t in range(num_frames):
        objs = list(lay.objects)
        for k, (vx, vy) in enumerate(vel):
            o = objs[k]
            y = float(np.clip(o.y + vy * t, lay.horizon + 2, h * 1.05))
            objs[k] = replace(o, x=o.x + vx * t, y=y)
        img, lab = _render(lay, config, objs, noise_rng)
        frames.append(img)
        labels.append(lab)
    return np.stack(frames), np.stack(labels)


def colorize(label: np.ndarray) -> np.ndarray:
    """Label map [H, W] -> RGB [H, W, 3] uint8 through :data:`PALETTE`."""
    return PALETTE[label]


def save_preview(path: str | os.PathLike[str], image: np.ndarray, label: np.ndarray) -> None:
    """Write ``image | colour label`` side by side as a PNG, atomically (:func:`edgeprune.core.files.write_atomic`)
    so a concurrent reader never sees a half-written file."""
    sheet = np.concatenate([image, np.full((image.shape[0], 2, 3), 255, np.uint8), colorize(label)], 1)
    write_atomic(path, lambda tmp: Image.fromarray(sheet).save(tmp, format="PNG"))
