"""Procedural indoor scenes as fixed-shape pytrees of arrays.

A scene is everything the renderer needs to draw one image: a box-shaped room,
up to `max_objects` pieces of furniture built from parts, a camera, lights and
a material per surface. `sample_scene(key, cfg)` is a pure JAX function of its
key, so the same key gives the same scene under jit, vmap, on any backend, and
whether the scene is drawn alone or inside a batch.

Invariants the renderer relies on:
  * World frame: z up, floor at z=0, room = [0, W] x [0, D] x [0, H].
  * Every object is a rigid set of parts in its own frame (origin at the
    footprint centre on the object's base, z up), placed with a yaw and a
    translation: boxes are axis-aligned and cylinders vertical in that frame.
  * Unused part slots are zero-size primitives far below the floor, so no ray
    from inside the room can reach them before the room itself.
  * Surface index ("part id"): 0..5 are the room planes (floor, ceiling, walls
    x=0, x=W, y=0, y=D); object j, part k is 6 + j * PARTS_PER_OBJECT + k,
    with k in [0, BOXES) boxes, then CYLINDERS cylinders, then SPHERES spheres.
  * Instance id: 1 floor, 2 ceiling, 3..6 walls, 7 + j object j.
  * Semantic class (index into SEMANTIC_CLASSES): floor, ceiling, wall, then
    one per furniture kind in KINDS order; NO_CLASS where a dataset has none.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

BOXES = 6
CYLINDERS = 2
SPHERES = 1
PARTS_PER_OBJECT = BOXES + CYLINDERS + SPHERES
ROOM_PLANES = 6
FIRST_OBJECT_INSTANCE = 7
MAX_LIGHTS = 3

# Where unused parts live: far below the floor, outside every room.
_PARKED_Z = -1000.0

# Furniture kinds. Order matters: it indexes the template table below.
KINDS = ("cabinet", "table", "chair", "shelf", "sofa", "ball", "barrel",
         "lamp", "round_table")
_KIND = {name: i for i, name in enumerate(KINDS)}
# Per-pixel semantic classes: the room's surfaces, then every furniture kind.
SEMANTIC_CLASSES = ("floor", "ceiling", "wall") + KINDS
FIRST_KIND_CLASS = 3
NO_CLASS = -1      # a pixel without a class label (datasets that give none)
# Kinds small enough to stand on top of another object.
_STACKABLE = ("cabinet", "ball", "barrel")
# Kinds with a flat top something else can stand on.
_SUPPORTS = ("cabinet", "table", "shelf", "round_table")

# Per kind: (width, depth, height) ranges in metres, as (low, high).
_DIMS = {
    "cabinet": ((0.3, 1.2), (0.3, 0.7), (0.3, 1.3)),
    "table": ((0.8, 1.8), (0.6, 1.0), (0.68, 0.8)),
    "chair": ((0.4, 0.55), (0.4, 0.55), (0.8, 1.0)),
    "shelf": ((0.6, 1.4), (0.3, 0.45), (1.0, 2.0)),
    "sofa": ((1.3, 2.2), (0.75, 1.0), (0.7, 0.95)),
    "ball": ((0.15, 0.6), (0.15, 0.6), (0.15, 0.6)),
    "barrel": ((0.2, 0.7), (0.2, 0.7), (0.3, 1.1)),
    "lamp": ((0.3, 0.45), (0.3, 0.45), (1.3, 1.8)),
    "round_table": ((0.7, 1.3), (0.7, 1.3), (0.68, 0.78)),
}

# Part slots each kind fills: (boxes, cylinders, spheres) used, as prefixes
# of the slot lists. Must agree with `_templates`.
KIND_SLOTS = {
    "cabinet": (1, 0, 0), "table": (5, 0, 0), "chair": (6, 0, 0),
    "shelf": (6, 0, 0), "sofa": (4, 0, 0), "ball": (0, 0, 1),
    "barrel": (0, 1, 0), "lamp": (0, 2, 1), "round_table": (0, 2, 0),
}

# Texture kinds understood by the shader. The procedural ones are the
# training distribution; "photo" maps tiles of real photographs onto surfaces
# (`render.photo_atlas`), for the target domain.
PROCEDURAL_TEXTURES = ("solid", "stripes", "checker", "noise", "wood", "gradient")
TEXTURES = PROCEDURAL_TEXTURES + ("photo",)


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """Knobs of the scene distribution. Hashable: it is a static jit argument."""

    min_objects: int = 3
    max_objects: int = 8
    room_width: tuple[float, float] = (3.0, 8.0)
    room_depth: tuple[float, float] = (3.0, 8.0)
    room_height: tuple[float, float] = (2.4, 3.2)
    camera_height: tuple[float, float] = (0.9, 1.8)
    camera_pitch_deg: tuple[float, float] = (-35.0, 5.0)
    camera_roll_deg: tuple[float, float] = (-3.0, 3.0)
    fov_deg: tuple[float, float] = (50.0, 80.0)   # horizontal field of view
    min_lights: int = 1
    max_lights: int = MAX_LIGHTS
    ambient: tuple[float, float] = (0.08, 0.3)
    stack_probability: float = 0.35   # a small object tries to stand on another
    wall_aligned_probability: float = 0.6
    placement_tries: int = 16
    # Appearance (the defaults are the training distribution; `TARGET_APPEARANCE`
    # is a deliberately different one for measuring domain adaptation).
    saturation: tuple[float, float] = (0.0, 0.75)   # albedo HSV saturation
    value: tuple[float, float] = (0.15, 0.95)       # albedo HSV value
    textures: tuple[str, ...] = PROCEDURAL_TEXTURES  # allowed texture kinds
    light_tint: float = 0.25          # per-channel light colour spread
    noise_probability: float = 0.5    # share of images with sensor noise
    noise_std: tuple[float, float] = (0.0, 0.03)
    blur_probability: float = 0.2

    def __post_init__(self):
        unknown = [t for t in self.textures if t not in TEXTURES]
        if unknown or not self.textures:
            raise ValueError(f"textures must be a non-empty subset of {TEXTURES}, "
                             f"got {self.textures}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects, got {self.min_objects}, "
                f"{self.max_objects}")
        if not 1 <= self.min_lights <= self.max_lights <= MAX_LIGHTS:
            raise ValueError(
                f"need 1 <= min_lights <= max_lights <= {MAX_LIGHTS}, got "
                f"{self.min_lights}, {self.max_lights}")


# A deliberately different appearance over the same geometry: the "target"
# domain whose labels are never trained on (see mtssl.config,
# real.source="target"): every surface textured with tiles of real
# photographs (none of them the probe's or the real domain's photos),
# strongly tinted and brighter lighting, always noisy, mostly blurred.
TARGET_APPEARANCE = {
    "textures": ("photo",), "light_tint": 0.6,
    "noise_probability": 1.0, "noise_std": (0.02, 0.06), "blur_probability": 0.7,
    "ambient": (0.25, 0.45)}


class Camera(NamedTuple):
    position: jax.Array   # (3,) world
    rotation: jax.Array   # (3, 3) camera-to-world; columns: right, down, forward
    focal: jax.Array      # () focal length in units of image width (f_px / W)


class Objects(NamedTuple):
    position: jax.Array   # (N, 3) world position of the local origin
    cos_sin: jax.Array    # (N, 2) yaw
    box_lo: jax.Array     # (N, BOXES, 3) local frame
    box_hi: jax.Array     # (N, BOXES, 3)
    cylinders: jax.Array  # (N, CYLINDERS, 5) cx, cy, radius, z0, z1 (local)
    spheres: jax.Array    # (N, SPHERES, 4) cx, cy, cz, radius (local)
    active: jax.Array     # (N,) bool
    kind: jax.Array       # (N,) int32 index into KINDS (meaningful if active)
    bounds: jax.Array     # (N, 2, 3) world AABB (lo, hi); lo > hi if inactive


class Materials(NamedTuple):
    """One row per surface (part id)."""

    color_a: jax.Array    # (S, 3) linear RGB in [0, 1]
    color_b: jax.Array    # (S, 3)
    texture: jax.Array    # (S,) int32 index into TEXTURES
    frequency: jax.Array  # (S,) pattern cycles per metre
    orientation: jax.Array  # (S, 2) pattern direction (cos, sin)
    specular: jax.Array   # (S,) specular weight
    shininess: jax.Array  # (S,) Phong exponent
    seed: jax.Array       # (S,) uint32 noise seed


class Lights(NamedTuple):
    position: jax.Array   # (MAX_LIGHTS, 3)
    color: jax.Array      # (MAX_LIGHTS, 3) intensity per channel, 0 if off
    ambient: jax.Array    # (3,)


class Scene(NamedTuple):
    room: jax.Array       # (3,) W, D, H
    camera: Camera
    objects: Objects
    materials: Materials
    lights: Lights
    noise_std: jax.Array  # () sensor noise, in [0, 1] intensity units
    blur: jax.Array       # () bool, apply a 3x3 blur to the image


def num_surfaces(max_objects: int) -> int:
    return ROOM_PLANES + max_objects * PARTS_PER_OBJECT


def no_objects(n: int) -> Objects:
    """n empty object slots: every part parked out of reach, all inactive."""
    box_lo, box_hi, cyl, sph = _empty_parts()
    return Objects(
        position=jnp.zeros((n, 3)).at[:, 2].set(_PARKED_Z),
        cos_sin=jnp.zeros((n, 2)).at[:, 0].set(1.0),
        box_lo=jnp.broadcast_to(box_lo, (n,) + box_lo.shape),
        box_hi=jnp.broadcast_to(box_hi, (n,) + box_hi.shape),
        cylinders=jnp.broadcast_to(cyl, (n,) + cyl.shape),
        spheres=jnp.broadcast_to(sph, (n,) + sph.shape),
        active=jnp.zeros((n,), bool),
        kind=jnp.zeros((n,), jnp.int32),
        bounds=jnp.broadcast_to(jnp.array([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]),
                                (n, 2, 3)))


def _uniform(key, lo_hi, shape=()):
    lo, hi = lo_hi
    return jax.random.uniform(key, shape, minval=lo, maxval=hi)


def _empty_parts():
    parked = jnp.array([0.0, 0.0, _PARKED_Z])
    box_lo = jnp.broadcast_to(parked, (BOXES, 3))
    cyl = jnp.broadcast_to(jnp.array([0.0, 0.0, 0.0, _PARKED_Z, _PARKED_Z]),
                           (CYLINDERS, 5))
    sph = jnp.broadcast_to(jnp.array([0.0, 0.0, _PARKED_Z, 0.0]), (SPHERES, 4))
    return box_lo, box_lo, cyl, sph


def _with_boxes(boxes):
    """boxes: list of (lo, hi) 3-vectors -> padded (BOXES, 3) lo and hi."""
    lo, hi, cyl, sph = _empty_parts()
    for k, (b_lo, b_hi) in enumerate(boxes):
        lo = lo.at[k].set(jnp.asarray(b_lo))
        hi = hi.at[k].set(jnp.asarray(b_hi))
    return lo, hi, cyl, sph


def _templates(dims, key):
    """All furniture templates for one size; returns per-kind stacked parts.

    dims: (3,) width (x), depth (y), height (z). Every template fits in
    [-w/2, w/2] x [-d/2, d/2] x [0, h].
    """
    w, d, h = dims[0] / 2, dims[1] / 2, dims[2]
    k1, k2 = jax.random.split(key)
    leg = jnp.minimum(0.06, 0.2 * jnp.minimum(w, d))
    top = _uniform(k1, (0.03, 0.06))
    board = 0.025

    def legs(z1):
        return [((sx * w - (sx > 0) * 2 * leg, sy * d - (sy > 0) * 2 * leg, 0.0),
                 (sx * w + (sx < 0) * 2 * leg, sy * d + (sy < 0) * 2 * leg, z1))
                for sx, sy in ((-1, -1), (1, -1), (-1, 1), (1, 1))]

    out = {}
    out["cabinet"] = _with_boxes([((-w, -d, 0.0), (w, d, h))])
    out["table"] = _with_boxes([((-w, -d, h - top), (w, d, h))] + legs(h - top))
    seat = 0.45 * h / 0.9
    out["chair"] = _with_boxes(
        [((-w, -d, seat - 0.04), (w, d, seat)),
         ((-w, d - 0.05, seat), (w, d, h))] + legs(seat - 0.04))
    # Shelf: two sides, top, bottom and one or two inner boards (the last slot
    # of a one-board shelf is parked).
    inner = jax.random.bernoulli(k2)
    b1 = h * jnp.where(inner, 0.33, 0.5)
    b2 = jnp.where(inner, h * 0.66, _PARKED_Z)
    b2_hi = jnp.where(inner, h * 0.66 + board, _PARKED_Z)
    out["shelf"] = _with_boxes([
        ((-w, -d, 0.0), (-w + board, d, h)),
        ((w - board, -d, 0.0), (w, d, h)),
        ((-w, -d, h - board), (w, d, h)),
        ((-w + board, -d, 0.0), (w - board, d, 0.08)),
        ((-w + board, -d, b1), (w - board, d, b1 + board)),
        ((-w + board, -d, b2), (w - board, d, b2_hi)),
    ])
    arm = jnp.minimum(0.2, 0.15 * w * 2)
    seat_h = 0.45 * h
    out["sofa"] = _with_boxes([
        ((-w, -d, 0.0), (w, d, seat_h)),
        ((-w, d - 0.2, seat_h), (w, d, h)),
        ((-w, -d, seat_h), (-w + arm, d - 0.2, seat_h + 0.2)),
        ((w - arm, -d, seat_h), (w, d - 0.2, seat_h + 0.2)),
    ])
    lo, hi, cyl, sph = _empty_parts()
    r = jnp.minimum(w, d)
    out["ball"] = (lo, hi, cyl, sph.at[0].set(jnp.stack([0.0, 0.0, r, r])))
    out["barrel"] = (lo, hi, cyl.at[0].set(jnp.stack([0.0, 0.0, r, 0.0, h])), sph)
    shade = jnp.minimum(r, 0.2)
    out["lamp"] = (lo, hi,
                   cyl.at[0].set(jnp.stack([0.0, 0.0, r * 0.8, 0.0, 0.03]))
                   .at[1].set(jnp.stack([0.0, 0.0, 0.015, 0.03, h - shade])),
                   sph.at[0].set(jnp.stack([0.0, 0.0, h - shade, shade])))
    out["round_table"] = (lo, hi,
                          cyl.at[0].set(jnp.stack([0.0, 0.0, r, h - top, h]))
                          .at[1].set(jnp.stack([0.0, 0.0, 0.05, 0.0, h - top])),
                          sph)
    return tuple(jnp.stack([out[k][i] for k in KINDS]) for i in range(4))


def make_camera(position, yaw, pitch, roll, hfov) -> Camera:
    """A camera at `position` (world) looking along yaw/pitch (radians, yaw 0
    = +x, pitch > 0 up), rolled about its axis, with horizontal FOV `hfov`."""
    return Camera(jnp.asarray(position, jnp.float32), _rotation(yaw, pitch, roll),
                  0.5 / jnp.tan(jnp.asarray(hfov, jnp.float32) / 2))


def _rotation(yaw, pitch, roll):
    cy, sy = jnp.cos(yaw), jnp.sin(yaw)
    cp, sp = jnp.cos(pitch), jnp.sin(pitch)
    forward = jnp.stack([cy * cp, sy * cp, sp])
    right = jnp.stack([sy, -cy, 0.0])
    down = jnp.cross(forward, right)
    cr, sr = jnp.cos(roll), jnp.sin(roll)
    right, down = cr * right + sr * down, -sr * right + cr * down
    return jnp.stack([right, down, forward], axis=1)


def _random_colors(key, n, cfg: SceneConfig):
    """Linear-RGB albedos: hue anywhere, saturation and value in the config's
    ranges (by default muted: moderate saturation)."""
    kh, ks, kv = jax.random.split(key, 3)
    hue = jax.random.uniform(kh, (n,))
    sat = jax.random.uniform(ks, (n,), minval=cfg.saturation[0], maxval=cfg.saturation[1])
    val = jax.random.uniform(kv, (n,), minval=cfg.value[0], maxval=cfg.value[1])
    k = (jnp.array([5.0, 3.0, 1.0]) + hue[:, None] * 6.0) % 6.0
    rgb = val[:, None] * (1 - sat[:, None] * jnp.clip(
        jnp.minimum(k, 4.0 - k), 0.0, 1.0))
    return rgb ** 2.2


def _materials(key, n_surfaces, part_object, cfg: SceneConfig):
    """Random materials; parts of one object share one of two palettes."""
    keys = jax.random.split(key, 10)
    n_pal = n_surfaces
    pal_a = _random_colors(keys[0], n_pal, cfg)
    pal_b = jnp.where(jax.random.bernoulli(keys[1], 0.5, (n_pal, 1)),
                      _random_colors(keys[2], n_pal, cfg),
                      pal_a * jax.random.uniform(keys[3], (n_pal, 1), minval=0.3,
                                                 maxval=0.8))
    allowed = jnp.asarray([TEXTURES.index(t) for t in cfg.textures], jnp.int32)
    texture = allowed[jax.random.randint(keys[4], (n_pal,), 0, len(allowed))]
    frequency = jnp.exp(jax.random.uniform(keys[5], (n_pal,),
                                           minval=math.log(1.0),
                                           maxval=math.log(12.0)))
    angle = jax.random.uniform(keys[6], (n_pal,), maxval=math.pi)
    orientation = jnp.stack([jnp.cos(angle), jnp.sin(angle)], -1)
    specular = jax.random.uniform(keys[7], (n_pal,), maxval=0.5) ** 2
    shininess = jnp.exp(jax.random.uniform(keys[8], (n_pal,),
                                           minval=math.log(4.0),
                                           maxval=math.log(80.0)))
    seed = jax.random.bits(keys[9], (n_pal,), jnp.uint32)
    # Object parts take either their object's first or second palette entry so
    # an object reads as one or two materials, not a patchwork.
    choose = jax.random.bernoulli(jax.random.fold_in(key, 1), 0.3, (n_surfaces,))
    first = ROOM_PLANES + part_object * PARTS_PER_OBJECT
    row = jnp.where(part_object < 0, jnp.arange(n_surfaces),
                    jnp.where(choose, first + 1, first))
    return Materials(pal_a[row], pal_b[row], texture[row], frequency[row],
                     orientation[row], specular[row], shininess[row], seed[row])


def sample_scene(key: jax.Array, cfg: SceneConfig) -> Scene:
    """Draws one scene. Pure: the same key always gives the same scene."""
    n_obj = cfg.max_objects
    keys = iter(jax.random.split(key, 32))
    room = jnp.stack([_uniform(next(keys), cfg.room_width),
                      _uniform(next(keys), cfg.room_depth),
                      _uniform(next(keys), cfg.room_height)])

    # Camera: somewhere in the room, looking roughly at its centre.
    margin = 0.35
    cam_xy = jax.random.uniform(next(keys), (2,), minval=margin,
                                maxval=room[:2] - margin)
    cam_z = jnp.minimum(_uniform(next(keys), cfg.camera_height), room[2] - 0.3)
    to_centre = room[:2] / 2 - cam_xy
    yaw = jnp.arctan2(to_centre[1], to_centre[0]) + jnp.deg2rad(
        _uniform(next(keys), (-40.0, 40.0)))
    pitch = jnp.deg2rad(_uniform(next(keys), cfg.camera_pitch_deg))
    roll = jnp.deg2rad(_uniform(next(keys), cfg.camera_roll_deg))
    hfov = jnp.deg2rad(_uniform(next(keys), cfg.fov_deg))
    camera = make_camera(jnp.concatenate([cam_xy, cam_z[None]]), yaw, pitch, roll,
                         hfov)

    # Objects, placed one after another; a candidate is rejected if its
    # bounding cylinder overlaps an earlier object's, the camera, or the walls.
    count = jax.random.randint(next(keys), (), cfg.min_objects, n_obj + 1)
    kinds = jax.random.randint(next(keys), (n_obj,), 0, len(KINDS))
    dims_lo = jnp.array([[r[0] for r in _DIMS[k]] for k in KINDS])
    dims_hi = jnp.array([[r[1] for r in _DIMS[k]] for k in KINDS])
    stackable = jnp.array([k in _STACKABLE for k in KINDS])
    supports = jnp.array([k in _SUPPORTS for k in KINDS])
    obj_keys = jax.random.split(next(keys), n_obj)
    tries = cfg.placement_tries

    def place(j, placed_so_far):
        """Places object slot j given the earlier ones (a fori_loop body)."""
        (centre, base, radius, height, cos_sin, active, top_half, box_lo, box_hi,
         cyls, sphs) = placed_so_far
        kk = jax.random.split(obj_keys[j], 10)
        kind = kinds[j]
        dims = jax.random.uniform(kk[0], (3,), minval=dims_lo[kind],
                                  maxval=dims_hi[kind])
        # Round things have equal width and depth; balls are as tall as wide.
        round_kind = (kind == _KIND["ball"]) | (kind == _KIND["barrel"]) | (
            kind == _KIND["lamp"]) | (kind == _KIND["round_table"])
        dims = jnp.where(round_kind, dims.at[1].set(dims[0]), dims)
        dims = jnp.where(kind == _KIND["ball"], dims.at[2].set(dims[0]), dims)

        # Candidate supports: the floor, or an earlier object with a flat top.
        can_support = active & supports[kinds] & (jnp.arange(n_obj) < j)
        want_stack = stackable[kind] & jax.random.bernoulli(
            kk[1], cfg.stack_probability, (tries,))
        support = jax.random.categorical(
            kk[2], jnp.where(can_support, 0.0, -jnp.inf), shape=(tries,))
        stacked = want_stack & can_support.any()
        # Stacked objects shrink to fit their support's top.
        fit = jnp.minimum(top_half[support].min(-1)[:, None] * 2 / dims[:2].max(),
                          1.0) * 0.9
        dims_t = dims[None, :] * jnp.where(stacked[:, None], fit, 1.0)
        r_t = 0.5 * jnp.linalg.norm(dims_t[:, :2], axis=-1)

        aligned = jax.random.bernoulli(kk[3], cfg.wall_aligned_probability,
                                       (tries,))
        yaw_t = jnp.where(
            aligned,
            jax.random.randint(kk[4], (tries,), 0, 4) * (math.pi / 2)
            + jax.random.normal(kk[5], (tries,)) * 0.05,
            jax.random.uniform(kk[6], (tries,), maxval=2 * math.pi))
        floor_xy = jax.random.uniform(kk[7], (tries, 2), minval=r_t[:, None],
                                      maxval=room[:2] - r_t[:, None])
        u = jax.random.uniform(kk[8], (tries, 2), minval=-1.0, maxval=1.0)
        local = u * jnp.maximum(top_half[support] - r_t[:, None], 0.0)
        s_cs = cos_sin[support]
        on_xy = centre[support] + jnp.stack(
            [s_cs[:, 0] * local[:, 0] - s_cs[:, 1] * local[:, 1],
             s_cs[:, 1] * local[:, 0] + s_cs[:, 0] * local[:, 1]], -1)
        xy_t = jnp.where(stacked[:, None], on_xy, floor_xy)
        z0_t = jnp.where(stacked, base[support] + height[support], 0.0)
        z1_t = z0_t + dims_t[:, 2]

        # Objects clash when their bounding cylinders overlap in plan and in
        # height (a stacked object only touches its support).
        dist = jnp.linalg.norm(xy_t[:, None, :] - centre[None, :, :], axis=-1)
        z_overlap = (z0_t[:, None] < base[None, :] + height[None, :] - 1e-3) & (
            base[None, :] < z1_t[:, None] - 1e-3)
        clash = (dist < r_t[:, None] + radius[None, :]) & z_overlap & active[None]
        cam_clash = (jnp.linalg.norm(xy_t - cam_xy, axis=-1) < r_t + 0.45) & (
            z0_t < cam_z + 0.2) & (z1_t > cam_z - 1.5)
        inside = jnp.all((xy_t >= r_t[:, None] - 1e-3)
                         & (xy_t <= room[:2] - r_t[:, None] + 1e-3), -1) & (
            z1_t < room[2] - 0.05)
        ok = ~clash.any(-1) & ~cam_clash & inside
        pick = jnp.argmax(ok)
        placed = ok[pick] & (j < count)

        lo, hi, cyl, sph = (t[kind] for t in _templates(dims_t[pick], kk[9]))
        lo_p, hi_p, cyl_p, sph_p = _empty_parts()
        return (
            centre.at[j].set(jnp.where(placed, xy_t[pick], 0.0)),
            base.at[j].set(jnp.where(placed, z0_t[pick], _PARKED_Z)),
            radius.at[j].set(jnp.where(placed, r_t[pick], 0.0)),
            height.at[j].set(jnp.where(placed, dims_t[pick, 2], 0.0)),
            cos_sin.at[j].set(jnp.stack([jnp.cos(yaw_t[pick]),
                                         jnp.sin(yaw_t[pick])])),
            active.at[j].set(placed),
            top_half.at[j].set(jnp.where(placed & supports[kind],
                                         dims_t[pick, :2] / 2, 0.0)),
            box_lo.at[j].set(jnp.where(placed, lo, lo_p)),
            box_hi.at[j].set(jnp.where(placed, hi, hi_p)),
            cyls.at[j].set(jnp.where(placed, cyl, cyl_p)),
            sphs.at[j].set(jnp.where(placed, sph, sph_p)),
        )

    empty = no_objects(n_obj)
    init = (jnp.zeros((n_obj, 2)), jnp.full((n_obj,), _PARKED_Z),
            jnp.zeros((n_obj,)), jnp.zeros((n_obj,)), empty.cos_sin, empty.active,
            jnp.zeros((n_obj, 2)), empty.box_lo, empty.box_hi, empty.cylinders,
            empty.spheres)
    (centre, base, radius, height, cos_sin, active, _, box_lo, box_hi, cyls,
     sphs) = jax.lax.fori_loop(0, n_obj, place, init)

    # World AABB of each object from its bounding cylinder (conservative).
    lo = jnp.concatenate([centre - radius[:, None], base[:, None]], -1)
    hi = jnp.concatenate([centre + radius[:, None], (base + height)[:, None]], -1)
    bounds = jnp.where(active[:, None, None], jnp.stack([lo, hi], 1),
                       no_objects(n_obj).bounds)
    objects = Objects(
        position=jnp.concatenate([centre, base[:, None]], -1),
        cos_sin=cos_sin, box_lo=box_lo, box_hi=box_hi,
        cylinders=cyls, spheres=sphs, active=active,
        kind=jnp.where(active, kinds, 0).astype(jnp.int32), bounds=bounds)

    part_object = jnp.concatenate([
        jnp.full((ROOM_PLANES,), -1),
        jnp.repeat(jnp.arange(n_obj), PARTS_PER_OBJECT)])
    materials = _materials(next(keys), num_surfaces(n_obj), part_object, cfg)

    n_lights = jax.random.randint(next(keys), (), cfg.min_lights,
                                  cfg.max_lights + 1)
    lk = jax.random.split(next(keys), 4)
    light_xy = jax.random.uniform(lk[0], (MAX_LIGHTS, 2), minval=0.2,
                                  maxval=room[:2] - 0.2)
    light_z = room[2] - jax.random.uniform(lk[1], (MAX_LIGHTS,), minval=0.05,
                                           maxval=0.9)
    tint = 1.0 + cfg.light_tint * jax.random.uniform(lk[2], (MAX_LIGHTS, 3),
                                                     minval=-1.0, maxval=1.0)
    power = jax.random.uniform(lk[3], (MAX_LIGHTS, 1), minval=0.5, maxval=1.5)
    on = (jnp.arange(MAX_LIGHTS) < n_lights)[:, None]
    ambient = _uniform(next(keys), cfg.ambient) * (
        1.0 + 0.1 * jax.random.normal(next(keys), (3,)))
    lights = Lights(jnp.concatenate([light_xy, light_z[:, None]], -1),
                    jnp.where(on, tint * power, 0.0), ambient)

    noise_std = jnp.where(jax.random.bernoulli(next(keys), cfg.noise_probability),
                          _uniform(next(keys), cfg.noise_std), 0.0)
    blur = jax.random.bernoulli(next(keys), cfg.blur_probability)
    return Scene(room, camera, objects, materials, lights, noise_std, blur)
