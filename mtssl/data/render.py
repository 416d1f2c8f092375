"""Ray casting renderer for `scenes.Scene`: images plus exact ground truth.

One pixel-centre ray per pixel gives the ground truth (planar depth, camera-
frame normals, instance ids, semantic classes) and the first colour sample.
Pixels on geometric edges (instance, normal or depth discontinuities) are then
supersampled with `aa_samples` extra rays each (which reuse the centre's
shadow visibility), up to a budget of `aa_fraction` of the image, and only the
ray chunks holding such pixels are traced, so antialiasing costs what it is
worth; texture patterns are band-limited by the pixel footprint instead, which
is the standard alternative to supersampling them.

All functions are pure JAX over fixed shapes: `render(scene, key, cfg)` jits,
vmaps over a batch of scenes, and runs unchanged on CPU, GPU and TPU. With
`cfg.cull` (the CPU default) it skips work with real branches, which pays
only when images are rendered one at a time (see `trace`).

Conventions: camera frame is OpenCV (x right, y down, z forward); depth is the
z coordinate of the hit point in that frame (metres); normals are unit vectors
in that frame, oriented towards the camera; intrinsics map camera coordinates
to pixel coordinates with pixel centres at integer + 0.5.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from mtssl.data import scenes as sc

_EPS = 1e-4
_FAR = 1e9
# The antialiasing budget's ties are broken in the order of tiles of this side,
# whatever `RenderConfig.tile` is, so the image never depends on the ray tiles.
_AA_TIE_TILE = 32


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    """Image-formation knobs. Hashable: it is a static jit argument."""

    resolution: int = 128
    aa_samples: int = 4        # extra rays per refined edge pixel (0: off)
    aa_fraction: float = 0.25  # share of pixels that may be refined
    shadows: bool = True
    sensor_effects: bool = True  # per-scene noise and blur, as sampled
    # Skip objects a chunk of rays cannot hit (see `trace`). Pays off when
    # images are rendered one at a time (CPU); with a vmapped batch (GPU, TPU)
    # leave it off. None: on for the CPU backend, off otherwise.
    cull: bool | None = None
    # The side of the square image tiles rays are grouped by: a loop
    # iteration of `_cast` traces up to tile**2 rays (times the batch when
    # vmapped). It changes no bit of the output, only the speed. None: 48 on
    # the culling path, where it renders 11-14% faster than 32 at 104 and
    # 256 px (power-of-two ray counts per iteration, 1,024 or 4,096, run
    # slower there, and counts that are no multiple of 16 much slower:
    # docs/performance.md, "Renderer speed"); 32 on the vmapped path, the
    # tile its GPU figures were measured with.
    tile: int | None = None

    def __post_init__(self):
        if self.resolution < 8:
            raise ValueError(f"resolution must be >= 8, got {self.resolution}")
        if self.aa_samples < 0:
            raise ValueError(f"aa_samples must be >= 0, got {self.aa_samples}")
        if not 0.0 <= self.aa_fraction <= 1.0:
            raise ValueError(f"aa_fraction must be in [0, 1], got {self.aa_fraction}")
        if self.cull is None:
            object.__setattr__(self, "cull", jax.default_backend() == "cpu")
        if self.tile is None:
            object.__setattr__(self, "tile", 48 if self.cull else 32)
        if self.tile < 1:
            raise ValueError(f"tile must be >= 1, got {self.tile}")


def intrinsics(scene: sc.Scene, resolution: int) -> jax.Array:
    """The 3x3 pinhole matrix K (pixel centres at integer + 0.5)."""
    f = scene.camera.focal * resolution
    c = jnp.float32(resolution / 2)
    zero, one = jnp.float32(0), jnp.float32(1)
    return jnp.stack([jnp.stack([f, zero, c]), jnp.stack([zero, f, c]),
                      jnp.stack([zero, zero, one])])


# Vectors are tuples (x, y, z) of equally shaped arrays (structure of
# arrays): XLA:CPU vectorises elementwise maths over rays well, but reductions
# over a trailing axis of size 3 poorly, so no (N, 3) arrays in hot paths.


def _dot(a, b):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _normalize(a):
    inv = jax.lax.rsqrt(jnp.maximum(_dot(a, a), 1e-18))
    return (a[0] * inv, a[1] * inv, a[2] * inv)


def _rows(table, index):
    """Gathers row `index` of an (S, C) table as a tuple of C arrays."""
    return tuple(table[:, c][index] for c in range(table.shape[1]))


def camera_rays(scene: sc.Scene, resolution: int, px: jax.Array, py: jax.Array):
    """World rays through image points (px, py) in pixels (centres at +0.5).

    Returns (origin, direction) as 3-tuples. Directions are scaled so their
    camera-frame z is 1: the ray parameter at a hit is the planar depth.
    """
    f = scene.camera.focal * resolution
    c = resolution / 2
    x, y = (px - c) / f, (py - c) / f
    r = scene.camera.rotation
    d = tuple(r[i, 0] * x + r[i, 1] * y + r[i, 2] for i in range(3))
    o = tuple(jnp.broadcast_to(scene.camera.position[i], px.shape) for i in range(3))
    return o, d


def _box_t(lo, hi, ox, oy, oz, ix, iy, iz):
    t1x, t2x = (lo[0] - ox) * ix, (hi[0] - ox) * ix
    t1y, t2y = (lo[1] - oy) * iy, (hi[1] - oy) * iy
    t1z, t2z = (lo[2] - oz) * iz, (hi[2] - oz) * iz
    near = jnp.maximum(jnp.maximum(jnp.minimum(t1x, t2x), jnp.minimum(t1y, t2y)),
                       jnp.minimum(t1z, t2z))
    far = jnp.minimum(jnp.minimum(jnp.maximum(t1x, t2x), jnp.maximum(t1y, t2y)),
                      jnp.maximum(t1z, t2z))
    return jnp.where((near <= far) & (near > _EPS), near, _FAR)


def _cylinder_t(cyl, ox, oy, oz, dx, dy, dz, iz):
    cx, cy, r, z0, z1 = cyl[0], cyl[1], cyl[2], cyl[3], cyl[4]
    qx, qy = ox - cx, oy - cy
    a = dx * dx + dy * dy
    b = qx * dx + qy * dy
    c = qx * qx + qy * qy - r * r
    disc = b * b - a * c
    t_side = (-b - jnp.sqrt(jnp.maximum(disc, 0.0))) / a
    z_side = oz + t_side * dz
    side_ok = (disc >= 0) & (t_side > _EPS) & (z_side >= z0) & (z_side <= z1)
    t_cap = (jnp.where(dz < 0, z1, z0) - oz) * iz
    hx, hy = qx + t_cap * dx, qy + t_cap * dy
    cap_ok = (t_cap > _EPS) & (hx * hx + hy * hy <= r * r)
    return jnp.minimum(jnp.where(side_ok, t_side, _FAR),
                       jnp.where(cap_ok, t_cap, _FAR))


def _sphere_t(sph, ox, oy, oz, dx, dy, dz):
    qx, qy, qz = ox - sph[0], oy - sph[1], oz - sph[2]
    a = dx * dx + dy * dy + dz * dz
    b = qx * dx + qy * dy + qz * dz
    c = qx * qx + qy * qy + qz * qz - sph[3] * sph[3]
    disc = b * b - a * c
    t = (-b - jnp.sqrt(jnp.maximum(disc, 0.0))) / a
    return jnp.where((disc >= 0) & (t > _EPS), t, _FAR)


def _room_hit(room, o, d):
    """Nearest room plane from inside: (t, plane index in 0..5).

    Planes: 0 floor, 1 ceiling, 2 x=0, 3 x=W, 4 y=0, 5 y=D.
    """
    ts = []
    for a in range(3):
        t = (jnp.where(d[a] > 0, room[a], 0.0) - o[a]) / d[a]
        ts.append(jnp.where(jnp.isfinite(t) & (t > 0), t, _FAR))
    tx, ty, tz = ts
    px = jnp.where(d[0] > 0, 3, 2)
    py = jnp.where(d[1] > 0, 5, 4)
    pz = jnp.where(d[2] > 0, 1, 0)
    t_best = jnp.minimum(jnp.minimum(tx, ty), tz)
    plane = jnp.where(tz <= jnp.minimum(tx, ty), pz, jnp.where(tx <= ty, px, py))
    return t_best, plane


def _to_object(objects: sc.Objects, j, p, is_direction=False):
    """World point (or direction) -> object j's frame, as a 3-tuple."""
    c, s = objects.cos_sin[j, 0], objects.cos_sin[j, 1]
    if is_direction:
        x, y, z = p
    else:
        x = p[0] - objects.position[j, 0]
        y = p[1] - objects.position[j, 1]
        z = p[2] - objects.position[j, 2]
    return (c * x + s * y, -s * x + c * y, z)


def _object_hits(objects: sc.Objects, j, o, d, slots=(sc.BOXES, sc.CYLINDERS,
                                                      sc.SPHERES)):
    """Ray parameters for the first `slots` = (boxes, cylinders, spheres) part
    slots of object j: a list of (part index within the object, t array)."""
    ox, oy, oz = _to_object(objects, j, o)
    dx, dy, dz = _to_object(objects, j, d, is_direction=True)
    n_box, n_cyl, n_sph = slots
    ix, iy, iz = 1.0 / dx, 1.0 / dy, 1.0 / dz
    box_lo, box_hi = objects.box_lo[j], objects.box_hi[j]
    cyls, sphs = objects.cylinders[j], objects.spheres[j]
    hits = [(k, _box_t(box_lo[k], box_hi[k], ox, oy, oz, ix, iy, iz))
            for k in range(n_box)]
    hits += [(sc.BOXES + k, _cylinder_t(cyls[k], ox, oy, oz, dx, dy, dz, iz))
             for k in range(n_cyl)]
    hits += [(sc.BOXES + sc.CYLINDERS + k, _sphere_t(sphs[k], ox, oy, oz, dx, dy, dz))
             for k in range(n_sph)]
    return hits


def _segment_bounds(o, d, t_max):
    """World AABB (lo, hi) of the ray segments o + [0, t_max] d."""
    lo, hi = [], []
    for a in range(3):
        end = o[a] + t_max * d[a]
        lo.append(jnp.minimum(o[a].min(), end.min()))
        hi.append(jnp.maximum(o[a].max(), end.max()))
    return jnp.stack(lo), jnp.stack(hi)


def trace(objects: sc.Objects, o, d, t_max, cull: bool = False):
    """Nearest object part hit before t_max: (t, part id or -1).

    A loop over objects (small graph, fast compile); within an object the part
    tests are unrolled so XLA fuses them into one elementwise kernel.

    With `cull`, an object is skipped when it is inactive or its bounding box
    misses the bounding box of all the ray segments, and only the part slots
    its kind uses are tested. The result is bit-identical to the full test
    (skipped tests could not have hit). This only saves work where the
    branches are real: one ray set at a time, not under vmap, where they
    become selects that evaluate every branch.
    """
    seg_lo, seg_hi = _segment_bounds(o, d, t_max) if cull else (None, None)

    def update(j, carry, hits):
        t_best, part = carry
        first = sc.ROOM_PLANES + j * sc.PARTS_PER_OBJECT
        for k, t in hits:
            closer = t < t_best
            t_best = jnp.where(closer, t, t_best)
            part = jnp.where(closer, first + k, part)
        return t_best, part

    def body(j, carry):
        if not cull:
            return update(j, carry, _object_hits(objects, j, o, d))
        bounds = objects.bounds[j]
        overlaps = objects.active[j] & jnp.all(bounds[0] <= seg_hi) & jnp.all(
            seg_lo <= bounds[1])
        branches = [lambda c: c] + [
            (lambda c, slots=sc.KIND_SLOTS[kind]:
             update(j, c, _object_hits(objects, j, o, d, slots)))
            for kind in sc.KINDS]
        index = jnp.where(overlaps, objects.kind[j] + 1, 0)
        return jax.lax.switch(index, branches, carry)

    init = (t_max, jnp.full(t_max.shape, -1, jnp.int32))
    return jax.lax.fori_loop(0, objects.position.shape[0], body, init)


def intersect(scene: sc.Scene, o, d, cull: bool = False):
    """Nearest surface along rays: (t, part id in [0, num_surfaces))."""
    t_room, plane = _room_hit(scene.room, o, d)
    t, part = trace(scene.objects, o, d, t_room, cull)
    return t, jnp.where(part < 0, plane, part)


_ROOM_NORMALS = ((0, 0, 1), (0, 0, -1), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0))


def surface_columns(scene: sc.Scene) -> dict[str, jax.Array]:
    """Per-surface geometry as columns indexed by part id (length S each).

    Shading gathers from these instead of from the nested object arrays: one
    flat gather per value and no index arithmetic. `cos`, `sin`, `px`, `py`,
    `pz` place the surface's object (identity for the room); `g0..g5` hold a
    room plane's normal, a box's lo and hi corners, a cylinder's
    (cx, cy, r, z0, z1) or a sphere's (cx, cy, cz, r), in the object frame.
    """
    objects = scene.objects
    n_obj = objects.position.shape[0]
    per_part = lambda x: jnp.repeat(x, sc.PARTS_PER_OBJECT)

    def pad6(x):
        return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, 6 - x.shape[-1])])

    geometry = jnp.concatenate([
        jnp.concatenate([objects.box_lo, objects.box_hi], -1),
        pad6(objects.cylinders), pad6(objects.spheres)], axis=1).reshape(-1, 6)
    geometry = jnp.concatenate([pad6(jnp.array(_ROOM_NORMALS, jnp.float32)),
                                geometry])
    zeros = jnp.zeros((sc.ROOM_PLANES,))
    cols = {
        "cos": jnp.concatenate([zeros + 1, per_part(objects.cos_sin[:, 0])]),
        "sin": jnp.concatenate([zeros, per_part(objects.cos_sin[:, 1])]),
        "px": jnp.concatenate([zeros, per_part(objects.position[:, 0])]),
        "py": jnp.concatenate([zeros, per_part(objects.position[:, 1])]),
        "pz": jnp.concatenate([zeros, per_part(objects.position[:, 2])]),
    }
    cols.update({f"g{i}": geometry[:, i] for i in range(6)})
    assert cols["cos"].shape[0] == sc.num_surfaces(n_obj)
    return cols


def surface_frame(scene: sc.Scene, part, point):
    """Geometry at a hit on surface `part`.

    Returns (normal, local, axis): the outward world-frame unit normal, the
    point in the surface's own frame (object frame, or world for the room),
    and which axis of that frame the normal is closest to (0, 1, 2), for
    texture coordinates.
    """
    col = {k: v[part] for k, v in surface_columns(scene).items()}
    k = (part - sc.ROOM_PLANES) % sc.PARTS_PER_OBJECT
    is_room = part < sc.ROOM_PLANES
    is_box = ~is_room & (k < sc.BOXES)
    is_cyl = ~is_room & ~is_box & (k < sc.BOXES + sc.CYLINDERS)
    is_sph = ~is_room & (k >= sc.BOXES + sc.CYLINDERS)
    c, s = col["cos"], col["sin"]
    qx, qy, qz = point[0] - col["px"], point[1] - col["py"], point[2] - col["pz"]
    lx, ly, lz = c * qx + s * qy, -s * qx + c * qy, qz
    zero, one = jnp.zeros_like(lx), jnp.ones_like(lx)
    g = [col[f"g{i}"] for i in range(6)]

    # Box: the face whose plane the point lies closest to.
    best, n_box = None, None
    for a, la in enumerate((lx, ly, lz)):
        for bound, sign in ((g[a], -1.0), (g[a + 3], 1.0)):
            dist = jnp.abs(la - bound)
            cand = tuple(one * sign if b == a else zero for b in range(3))
            if best is None:
                best, n_box = dist, cand
            else:
                closer = dist < best
                best = jnp.where(closer, dist, best)
                n_box = tuple(jnp.where(closer, x, y) for x, y in zip(cand, n_box))

    # Cylinder: a cap if the point is on a cap plane, else radial.
    cap = jnp.where(jnp.abs(lz - g[4]) < 1e-3, 1.0,
                    jnp.where(jnp.abs(lz - g[3]) < 1e-3, -1.0, 0.0))
    radial = _normalize((lx - g[0], ly - g[1], zero))
    n_cyl = (jnp.where(cap != 0, 0.0, radial[0]), jnp.where(cap != 0, 0.0, radial[1]),
             cap)
    n_sph = _normalize((lx - g[0], ly - g[1], lz - g[2]))

    n_loc = tuple(
        jnp.where(is_box, b, jnp.where(is_cyl, cy_, jnp.where(is_sph, sp, rm)))
        for b, cy_, sp, rm in zip(n_box, n_cyl, n_sph, g[:3]))
    normal = (c * n_loc[0] - s * n_loc[1], s * n_loc[0] + c * n_loc[1], n_loc[2])
    ax, ay, az = (jnp.abs(v) for v in n_loc)
    axis = jnp.where((ax >= ay) & (ax >= az), 0, jnp.where(ay >= az, 1, 2))
    local = tuple(jnp.where(is_room, p, q) for p, q in zip(point, (lx, ly, lz)))
    return normal, local, axis


def instance_id(part):
    room_ids = jnp.array([1, 2, 3, 4, 5, 6], jnp.int32)
    return jnp.where(part < sc.ROOM_PLANES, room_ids[jnp.clip(part, 0, 5)],
                     sc.FIRST_OBJECT_INSTANCE
                     + (part - sc.ROOM_PLANES) // sc.PARTS_PER_OBJECT)


def semantic_class(part, kind):
    """Surface index -> class in `scenes.SEMANTIC_CLASSES`; `kind` is the
    scene's (N,) object kinds."""
    room_classes = jnp.array([0, 1, 2, 2, 2, 2], jnp.int32)   # floor, ceiling, 4 walls
    obj = jnp.clip((part - sc.ROOM_PLANES) // sc.PARTS_PER_OBJECT, 0, kind.shape[0] - 1)
    return jnp.where(part < sc.ROOM_PLANES, room_classes[jnp.clip(part, 0, 5)],
                     sc.FIRST_KIND_CLASS + kind[obj])


def _hash(x, y, seed):
    """Integer lattice hash -> float in [0, 1)."""
    h = (x.astype(jnp.uint32) * jnp.uint32(0x8DA6B343)) ^ (
        y.astype(jnp.uint32) * jnp.uint32(0xD8163841)) ^ seed
    h = (h ^ (h >> 13)) * jnp.uint32(0x5BD1E995)
    h = h ^ (h >> 15)
    return (h >> 8).astype(jnp.float32) / float(1 << 24)


def _value_noise(u, v, seed):
    iu, iv = jnp.floor(u), jnp.floor(v)
    fu, fv = u - iu, v - iv
    fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
    iu, iv = iu.astype(jnp.int32), iv.astype(jnp.int32)
    a, b = _hash(iu, iv, seed), _hash(iu + 1, iv, seed)
    c, e = _hash(iu, iv + 1, seed), _hash(iu + 1, iv + 1, seed)
    return (a * (1 - fu) + b * fu) * (1 - fv) + (c * (1 - fu) + e * fu) * fv


def _parity(x):
    """floor(x) mod 2 as 0.0 / 1.0, for any sign of x."""
    return jnp.floor(x) - 2.0 * jnp.floor(0.5 * x)


# scikit-image's bundled photographs that none of the project's real data
# uses (`real.PHOTOS` are the real domain and the probe's task), cut into
# square tiles for the "photo" texture.
PHOTO_TEXTURE_SOURCES = ("retina", "clock", "cell", "page", "stereo_motorcycle")
_PHOTO_TILE = 48
_PHOTO_TILES_PER_SOURCE = 8
# Metres of surface per photo tile, times the material's pattern frequency.
_PHOTO_TILE_PERIODS = 4.0


@functools.cache
def photo_atlas() -> np.ndarray:
    """(tiles, 48, 48, 3) float32 linear-RGB albedos: fixed crops (a third to
    two thirds of each photo's short side) of `PHOTO_TEXTURE_SOURCES`."""
    import skimage.data  # only the photo texture needs it
    from PIL import Image

    rng = np.random.default_rng(0)
    tiles = []
    for name in PHOTO_TEXTURE_SOURCES:
        photo = getattr(skimage.data, name)()
        photo = photo[0] if isinstance(photo, tuple) else photo   # stereo: the left view
        photo = np.repeat(photo[..., None], 3, -1) if photo.ndim == 2 else photo[..., :3]
        h, w = photo.shape[:2]
        for _ in range(_PHOTO_TILES_PER_SOURCE):
            side = int(min(h, w) * rng.uniform(1 / 3, 2 / 3))
            top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            tile = Image.fromarray(photo[top:top + side, left:left + side]).resize(
                (_PHOTO_TILE, _PHOTO_TILE), Image.BILINEAR)
            tiles.append(np.asarray(tile, np.float32) / 255.0)
    # Albedos stay below 0.9, like the procedural palettes' brightest values.
    return (0.9 * np.stack(tiles) ** 2.2).astype(np.float32)


def _photo_albedo(seed, ru, rv):
    """The photo texture at pattern coordinates (ru, rv): tile `seed % tiles`,
    repeated every `_PHOTO_TILE_PERIODS` pattern periods (nearest texel)."""
    atlas = jnp.asarray(photo_atlas())
    tiles, size = atlas.shape[:2]
    tile = (seed % tiles).astype(jnp.int32)

    def texel(x):
        x = x / _PHOTO_TILE_PERIODS
        return jnp.clip(jnp.floor((x - jnp.floor(x)) * size), 0, size - 1).astype(jnp.int32)

    rgb = atlas[tile, texel(rv), texel(ru)]
    return rgb[..., 0], rgb[..., 1], rgb[..., 2]


def albedo(materials: sc.Materials, part, local, axis, footprint):
    """Procedural texture colour (3-tuple) at `local` (surface-frame point).

    `footprint` is the pixel's width on the surface in metres; patterns whose
    period is close to or below it fade to their mean colour (band-limiting).
    """
    ca, cb = _rows(materials.color_a, part), _rows(materials.color_b, part)
    tex = materials.texture[part]
    freq = materials.frequency[part]
    rot_c, rot_s = _rows(materials.orientation, part)
    seed = materials.seed[part]
    # Planar coordinates: the two local axes other than the normal's.
    lx, ly, lz = local
    u = jnp.where(axis == 0, ly, lx)
    v = jnp.where(axis == 2, ly, lz)
    along = rot_c * u + rot_s * v        # metres along the pattern direction
    ru = along * freq
    rv = (-rot_s * u + rot_c * v) * freq

    stripes = _parity(ru)
    checker = jnp.abs(_parity(ru) - _parity(rv))
    # One noise field serves both the noise texture and the wood grain.
    noise = _value_noise(ru, rv, seed)
    # Wood: bands (a smoothed triangle wave) bent by the noise.
    x = ru + 0.8 * noise
    tri = jnp.abs(2.0 * (x - jnp.floor(x)) - 1.0)
    wood = tri * tri * (3.0 - 2.0 * tri)
    # Gradient: a slow ramp over a few metres, independent of the frequency.
    gradient = jnp.clip(0.5 + 0.3 * along, 0.0, 1.0)
    mix = jnp.where(tex == 1, stripes, jnp.where(tex == 2, checker, jnp.where(
        tex == 3, noise, jnp.where(tex == 4, wood, gradient))))
    # Band-limit: a pattern with period 1/freq seen through a pixel of width
    # `footprint` fades to its mean (0.5 mix) as footprint * freq -> 1.
    detail = jnp.where(tex == 5, 1.0, jnp.clip(1.5 - 2.0 * footprint * freq, 0.0, 1.0))
    mix = jnp.where(tex == 0, 0.0, 0.5 + (mix - 0.5) * detail)
    colour = tuple(a + (b - a) * mix for a, b in zip(ca, cb))
    photo = sc.TEXTURES.index("photo")

    def with_photos():
        return tuple(jnp.where(tex == photo, p, c)
                     for p, c in zip(_photo_albedo(seed, ru, rv), colour))

    # A real branch: scenes without photo textures (the training domain)
    # never gather from the atlas.
    return jax.lax.cond(jnp.any(tex == photo), with_photos, lambda: colour)


def shade(scene: sc.Scene, o, d, t, part, cfg: RenderConfig, visible=None):
    """Linear radiance (3-tuple), per-light visibility and the facing normal.

    Visibility is a tuple of MAX_LIGHTS bool arrays; `visible`, if given,
    replaces the shadow rays.
    """
    point = tuple(oa + t * da for oa, da in zip(o, d))
    normal, local, axis = surface_frame(scene, part, point)
    inv_len = jax.lax.rsqrt(_dot(d, d))
    view = tuple(-da * inv_len for da in d)
    facing = jnp.where(_dot(normal, view) < 0, -1.0, 1.0)
    normal = tuple(n * facing for n in normal)
    n_dot_v = _dot(normal, view)
    # Pixel footprint on the surface: (t / f) across the view ray (t is the
    # planar depth), stretched by the grazing angle, which is clipped so the
    # most grazing pixels stay finite.
    pixel = t / (scene.camera.focal * cfg.resolution) / jnp.maximum(n_dot_v, 0.1)
    base = albedo(scene.materials, part, local, axis, pixel)

    spec_w = scene.materials.specular[part]
    shininess = scene.materials.shininess[part]
    radiance = [b * scene.lights.ambient[a] for a, b in enumerate(base)]
    lights_visible = []
    start = tuple(p + n * 1e-3 for p, n in zip(point, normal))
    for li in range(sc.MAX_LIGHTS):
        to_light = tuple(scene.lights.position[li, a] - start[a] for a in range(3))
        dist2 = _dot(to_light, to_light)
        if visible is not None:
            lit = visible[li]
        elif cfg.shadows:
            t_block, _ = trace(scene.objects, start, to_light,
                               jnp.full(dist2.shape, 1.0 - 1e-4), cfg.cull)
            lit = t_block >= 1.0 - 1e-4
        else:
            lit = jnp.ones(dist2.shape, bool)
        lights_visible.append(lit)
        inv_d = jax.lax.rsqrt(dist2)
        ldir = tuple(x * inv_d for x in to_light)
        n_dot_l = jnp.maximum(_dot(normal, ldir), 0.0)
        half = _normalize(tuple(a + b for a, b in zip(ldir, view)))
        spec = jnp.exp(shininess * jnp.log(jnp.maximum(_dot(normal, half), 1e-6)))
        weight = jnp.where(lit, 2.5 / (1.0 + 0.15 * dist2) * n_dot_l, 0.0)
        for a in range(3):
            radiance[a] = radiance[a] + scene.lights.color[li, a] * weight * (
                base[a] * (1 - spec_w) + spec_w * spec)
    return tuple(radiance), tuple(lights_visible), normal


def instance_contours(instances: jax.Array) -> jax.Array:
    """Pixels with a 4-neighbour of another instance (both sides of a boundary).

    This is the paper's contour target: boundaries of instance masks, not
    texture edges.
    """
    diff_x = instances[:, 1:] != instances[:, :-1]
    diff_y = instances[1:, :] != instances[:-1, :]
    edge = jnp.zeros(instances.shape, bool)
    edge = edge.at[:, 1:].set(diff_x).at[:, :-1].max(diff_x)
    edge = edge.at[1:, :].max(diff_y).at[:-1, :].max(diff_y)
    return edge


def _neighbour_max(x):
    """Max of |x - neighbour| over the 4-neighbourhood, for (H, W) arrays."""
    p = jnp.pad(x, 1, mode="edge")
    c = p[1:-1, 1:-1]
    return jnp.maximum(jnp.maximum(jnp.abs(c - p[:-2, 1:-1]), jnp.abs(c - p[2:, 1:-1])),
                       jnp.maximum(jnp.abs(c - p[1:-1, :-2]), jnp.abs(c - p[1:-1, 2:])))


def _aa_offsets(n: int):
    """n sub-pixel offsets in (-0.5, 0.5)^2: a rotated grid (low discrepancy)."""
    side = max(1, math.ceil(math.sqrt(n)))
    pts = []
    for i in range(n):
        gx, gy = (i % side + 0.5) / side - 0.5, (i // side + 0.5) / side - 0.5
        a = math.atan(0.5)  # the classic RGSS rotation
        pts.append((math.cos(a) * gx - math.sin(a) * gy,
                    math.sin(a) * gx + math.cos(a) * gy))
    return jnp.array(pts, jnp.float32)


def _gaussian_noise(key, shape):
    """Approximately standard normal noise, cheaply: the sum of three hashed
    uniforms (Irwin-Hall), rescaled. Sensor noise needs no better, and
    threefry normals cost more than the rest of a small image's shading."""
    seed = jax.random.bits(key, (), jnp.uint32)
    i = jnp.arange(math.prod(shape), dtype=jnp.uint32)
    u = sum(_hash(i, jnp.full_like(i, k), seed) for k in range(3))
    return ((u - 1.5) * 2.0).reshape(shape)


def _blur3(img):
    p = jnp.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    rows = 0.25 * p[:-2] + 0.5 * p[1:-1] + 0.25 * p[2:]
    return 0.25 * rows[:, :-2] + 0.5 * rows[:, 1:-1] + 0.25 * rows[:, 2:]


def _cast(scene: sc.Scene, xs, ys, cfg: RenderConfig, visible=None, count=None):
    """Traces and shades rays through pixel points (xs, ys): SoA per-ray results.

    Runs as a loop over chunks of rays. Besides keeping each chunk's
    temporaries in cache, the loop makes XLA materialise every result once:
    fused straight into its consumers, the shading chain would be recomputed
    for each of them (each colour channel, the exposure, the AA score...).
    With `count` (a traced int), only the chunks holding the first `count`
    rays run; results for the rest are zeros.
    """
    n = xs.shape[0]
    chunk = min(cfg.tile ** 2, -(-n // 2))
    chunks = -(-n // chunk)
    pad = chunks * chunk - n
    xs = jnp.pad(xs, (0, pad), constant_values=0.5).reshape(chunks, chunk)
    ys = jnp.pad(ys, (0, pad), constant_values=0.5).reshape(chunks, chunk)
    given = visible is not None
    if not given:
        visible = (jnp.ones((n,), bool),) * sc.MAX_LIGHTS
    visible = tuple(jnp.pad(v, (0, pad)).reshape(chunks, chunk) for v in visible)
    rot = scene.camera.rotation  # columns: camera axes in world

    def body(args):
        x, y, vis = args
        o, d = camera_rays(scene, cfg.resolution, x, y)
        t, part = intersect(scene, o, d, cfg.cull)
        radiance, vis, normal = shade(scene, o, d, t, part, cfg,
                                      vis if given else None)
        normal_cam = tuple(_dot(normal, tuple(rot[:, c])) for c in range(3))
        return t, part, radiance, vis, normal_cam

    if count is None:
        out = jax.lax.map(body, (xs, ys, visible))
    else:
        shapes = jax.eval_shape(body, (xs[0], ys[0], tuple(v[0] for v in visible)))
        out = jax.tree.map(lambda a: jnp.zeros((chunks,) + a.shape, a.dtype), shapes)

        def step(i, out):
            res = body((xs[i], ys[i], tuple(v[i] for v in visible)))
            return jax.tree.map(lambda buf, r: buf.at[i].set(r), out, res)

        out = jax.lax.fori_loop(0, (count + chunk - 1) // chunk, step, out)
    return jax.tree.map(lambda a: a.reshape((chunks * chunk,) + a.shape[2:])[:n], out)


def _tile_order(res: int, tile: int) -> np.ndarray:
    """Raster pixel indices listed tile by tile (tile x tile pixel squares),
    so each chunk of rays in `_cast` covers a compact patch of the image."""
    y, x = np.divmod(np.arange(res * res), res)
    return np.lexsort((x, y, x // tile, y // tile)).astype(np.int32)


def render(scene: sc.Scene, key: jax.Array, cfg: RenderConfig) -> dict[str, jax.Array]:
    """One image and its ground truth. `key` drives sensor noise only."""
    res = cfg.resolution
    order = _tile_order(res, cfg.tile)       # static: rays go tile by tile
    raster = np.argsort(order).astype(np.int32)
    xs = jnp.asarray(order % res, jnp.float32) + 0.5
    ys = jnp.asarray(order // res, jnp.float32) + 0.5
    t, part, radiance, visible, normal_cam = jax.tree.map(
        lambda a: a[raster], _cast(scene, xs, ys, cfg))
    instances = instance_id(part).reshape(res, res)
    semantics = semantic_class(part, scene.objects.kind).reshape(res, res)
    depth = t.reshape(res, res)
    normals = jnp.stack(normal_cam, -1).reshape(res, res, 3)
    contours = instance_contours(instances)

    if cfg.aa_samples > 0 and cfg.aa_fraction > 0:
        # Edge score: geometric discontinuities (silhouettes, creases, depth
        # steps). Shadow edges are left to the pixel-centre sample: the extra
        # samples reuse the centre's light visibility instead of casting
        # their own shadow rays, which would cost more than the samples.
        score = (contours.astype(jnp.float32) * 4.0
                 + (_neighbour_max(jnp.log(depth)) > 0.05) * 2.0
                 + sum(_neighbour_max(n.reshape(res, res)) for n in normal_cam) * 0.5)
        budget = max(1, int(cfg.aa_fraction * res * res))
        n = res * res
        # The highest-scoring pixels within the budget; those that need it
        # (score > 0) go first, in tile order so chunks of AA rays stay
        # compact, and only their chunks are traced (ties: `_AA_TIE_TILE`).
        aa_order = _tile_order(res, _AA_TIE_TILE)
        score = score.ravel()[aa_order]
        _, pos = jax.lax.top_k(score, budget)
        pos = jnp.sort(jnp.where(score[pos] > 0, pos, pos + n)) % n
        needed = score[pos] > 0
        idx = jnp.asarray(aa_order)[pos]
        offsets = _aa_offsets(cfg.aa_samples)
        sx = ((idx % res + 0.5)[:, None] + offsets[None, :, 0]).ravel()
        sy = ((idx // res + 0.5)[:, None] + offsets[None, :, 1]).ravel()
        _, _, srad, _, _ = _cast(
            scene, sx, sy, cfg,
            tuple(jnp.repeat(v[idx], cfg.aa_samples) for v in visible),
            count=needed.sum() * cfg.aa_samples)
        radiance = tuple(
            r.at[idx].set(jnp.where(
                needed, (r[idx] + s.reshape(budget, -1).sum(1)) / (cfg.aa_samples + 1),
                r[idx]))
            for r, s in zip(radiance, srad))
    radiance = jnp.stack(radiance, -1)

    # Auto-exposure on mean luminance, then display gamma.
    lum = radiance @ jnp.array([0.2126, 0.7152, 0.0722])
    exposure = jnp.clip(0.22 / jnp.maximum(lum.mean(), 1e-6), 0.25, 8.0)
    img = jnp.clip((radiance * exposure).reshape(res, res, 3), 0.0, 1.0) ** (1 / 2.2)
    if cfg.sensor_effects:
        # Sensor effects act on the recorded (display-space) signal.
        img = jnp.where(scene.blur, _blur3(img), img)
        img = jnp.clip(img + scene.noise_std * _gaussian_noise(key, img.shape),
                       0.0, 1.0)
    image = jnp.round(img * 255.0).astype(jnp.uint8)
    return {
        "image": image,
        "depth": depth.astype(jnp.float32),
        "normals": normals.astype(jnp.float32),
        "instances": instances.astype(jnp.int32),
        "semantics": semantics.astype(jnp.int32),
        "contours": contours,
        "intrinsics": intrinsics(scene, res).astype(jnp.float32),
    }
