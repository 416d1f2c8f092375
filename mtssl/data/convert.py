"""Converters from synthetic datasets on disk into the `on_disk` folder layout.

    python -m mtssl.data.convert scenenet    SRC DST [--max_frames N]
    python -m mtssl.data.convert hypersim    SRC DST [--fov_deg 60 | --fx --fy --cx --cy]
                                             [--instances semantic_instance|render_entity_id]
    python -m mtssl.data.convert blenderproc SRC DST [--fx --fy --cx --cy | --camera FILE]

Every frame goes through `on_disk.save_frame` at the source's full resolution
(`SyntheticFolder` crops and resizes on read), so DST is read with no options:
`--config.synthetic.source=folder:DST`. What DST holds, whatever the source:
planar z-depth in metres (0 = invalid), camera-frame unit normals in OpenCV
axes (x right, y down, z forward) facing the camera, instance ids with 0 for
"no instance", and per-frame intrinsics in pixels with pixel centres at
integer + 0.5. Each source folder of frames (a trajectory, a camera of a
scene, a BlenderProc output folder) becomes a folder at the same relative path
below DST (Hypersim: <scene>/cam_XX, without its images/ level).

scenenet     SceneNet RGB-D: every folder below SRC with photo/<n>.jpg,
             depth/<n>.png (uint16 millimetres of ray length: distance to the
             camera centre), instance/<n>.png. K from its 60 x 45 degree field
             of view (fx = 277.1, fy = 289.7, cx = 160, cy = 120 at 320 x 240).
             No normals in the source: computed from the planar depth.
             Instance ids as stored.
hypersim     Hypersim: images/scene_cam_XX_final_hdf5/frame.IIII.color.hdf5
             (linear HDR colour) with the geometry in scene_cam_XX_geometry_hdf5:
             depth_meters (ray length, NaN where no geometry), normal_cam
             (camera frame, OpenGL axes: y up, z towards the viewer), and
             semantic_instance or render_entity_id (-1 = none; written as id + 1,
             so -1 becomes 0). Colour is tonemapped as Hypersim's own
             scene_generate_images_tonemap.py does (`tonemap_hypersim`), its
             valid pixels those with finite depth and, where that file exists,
             a render_entity_id other than -1 (the script's mask). K: the
             standard 60 degree horizontal field of view (`--fov_deg`) with the
             principal point at the centre, or --fx --fy --cx --cy; the per-scene
             tilt-shift cameras of some scenes are not modelled.
blenderproc  BlenderProc's write_hdf5 output, <n>.hdf5 per frame: colors (uint8),
             depth (planar z) or else distance (ray length), with the background
             a large value (1e10, 65504 or the mist range) that --max_depth makes
             invalid; normals in [0, 1] (n = 2 x - 1; BlenderProc turns Blender's
             world-space normal pass into the camera frame with the frame's pose,
             OpenGL axes), instance_segmaps (0 = background) as stored. K from
             --fx --fy --cx --cy (this layout's convention), else --camera FILE,
             else the frame's camera_pose (write_hdf5(save_world2cam=True)); K
             from files is BlenderProc/BOP's (pixel centres at integers) and gets
             +0.5 on cx, cy.

Everywhere: depth that is not finite, <= 0 or >= --max_depth (default, and at
most, 65.535 m: the most a uint16 millimetre PNG holds) is invalid. A normal of
(near) zero length, which sources write for background and sometimes for real
surfaces, is replaced by the normal computed from depth, and every normal is
turned to face the camera (artists' meshes and Blender's back faces can point
away). Ids beyond 65535 are renumbered densely (contours only need equality).

A source frame that cannot be read (corrupt or missing file, missing key, a
map whose size differs from its image) is skipped and counted, never fatal.
HDF5 needs h5py, an optional dependency: pip install 'mtssl[hdf5]'.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import pathlib
import sys
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from mtssl.data import geometry, on_disk, real

MAX_STORABLE_DEPTH = 65535 * 0.001   # metres in a uint16 millimetre PNG (save_frame)
SCENENET_FOV_DEG = (60.0, 45.0)      # horizontal, vertical
HYPERSIM_FOV_DEG = 60.0              # horizontal; square pixels
HYPERSIM_INSTANCES = ("semantic_instance", "render_entity_id")
# Normals shorter than this are "no normal" (BlenderProc's background decodes to 0).
_MIN_NORMAL_LENGTH = 0.5


class ConvertError(Exception):
    """A problem with the command, not with one frame: stops the conversion."""


@dataclasses.dataclass
class Report:
    """Frames written, and the source frames skipped as unreadable."""
    converted: int
    skipped: real.SkippedRecords


@dataclasses.dataclass
class _Job:
    sequence: pathlib.Path     # output folder, relative to DST
    frame: str
    source: pathlib.Path       # the file named when the frame is skipped
    read: Callable[[], dict[str, np.ndarray]]


# ---- pure helpers --------------------------------------------------------------

def intrinsics_from_fov(width: int, height: int, fov_x_deg: float,
                        fov_y_deg: float | None = None) -> np.ndarray:
    """3x3 K of a centred pinhole with these fields of view (square pixels
    when fov_y_deg is None), pixel centres at integer + 0.5."""
    fx = width / 2 / np.tan(np.radians(fov_x_deg) / 2)
    fy = fx if fov_y_deg is None else height / 2 / np.tan(np.radians(fov_y_deg) / 2)
    return np.array([[fx, 0, width / 2], [0, fy, height / 2], [0, 0, 1]], np.float64)


def k_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float64)


def tonemap_hypersim(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Linear HDR (H, W, 3) -> uint8, as Hypersim's scene_generate_images_tonemap:
    scale so the 90th percentile of brightness (0.3 R + 0.59 G + 0.11 B) over
    the `valid` pixels becomes 0.8 after gamma 1/2.2, then clip to [0, 1]."""
    rgb = np.nan_to_num(np.asarray(rgb, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    gamma = 1.0 / 2.2
    scale = 1.0
    if valid.any():
        brightness = rgb @ np.array([0.3, 0.59, 0.11])
        current = np.percentile(brightness[valid], 90)
        scale = 0.0 if current < 1e-4 else 0.8 ** (1.0 / gamma) / current
    toned = np.power(np.maximum(scale * rgb, 0.0), gamma)
    return np.round(np.clip(toned, 0.0, 1.0) * 255.0).astype(np.uint8)


def fit_instance_ids(ids: np.ndarray) -> np.ndarray:
    """Ids as they are when they fit a 16-bit PNG (0..65535), else renumbered
    densely in the same order, 0 kept as 0 (contours only need equality)."""
    ids = np.asarray(ids, np.int64)
    if ids.size == 0 or (ids.min() >= 0 and ids.max() <= 65535):
        return ids
    others = np.unique(ids[ids != 0])
    if len(others) > 65535:
        raise ValueError(f"{len(others)} distinct instance ids in one frame; a 16-bit "
                         "PNG holds 65535 besides 0")
    return np.where(ids == 0, 0, np.searchsorted(others, ids) + 1)


def camera_facing_normals(normals: np.ndarray | None, depth: np.ndarray,
                          k: np.ndarray) -> np.ndarray:
    """Unit OpenCV-frame normals facing the camera; pixels without a usable
    normal (None, NaN, near-zero length) take the one computed from `depth`
    (planar, 0 = invalid), which is 0 where depth cannot give one."""
    from_depth = np.nan_to_num(geometry.normals_from_depth(
        np.where(depth > 0, depth, np.nan), k))
    if normals is None:
        return from_depth
    n = np.nan_to_num(np.asarray(normals, np.float64)[..., :3])
    length = np.linalg.norm(n, axis=-1, keepdims=True)
    n = np.where(length >= _MIN_NORMAL_LENGTH, n / np.maximum(length, 1e-12), from_depth)
    rays = geometry.backproject(np.ones(depth.shape), k)
    return np.where(np.sum(n * rays, -1, keepdims=True) > 0, -n, n).astype(np.float32)


def _sample(image, depth, normals, instances, k, max_depth) -> dict[str, np.ndarray]:
    """The sample `save_frame` writes, with every invariant of the layout."""
    image = real.to_rgb(image)
    shape = image.shape[:2]
    depth, instances = np.asarray(depth, np.float64), np.asarray(instances)
    for name, got in (("depth", depth.shape), ("instances", instances.shape),
                      ("normals", None if normals is None else normals.shape[:2])):
        if got is not None and got != shape:
            raise ValueError(f"{name} map is {got}, its image is {shape}")
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(depth) & (depth > 0) & (depth < max_depth)
    depth = np.where(valid, depth, 0.0)
    normals = camera_facing_normals(normals, depth, k)
    return {
        "image": image,
        "depth": depth.astype(np.float32),
        "normals": np.where(valid[..., None], normals, 0.0).astype(np.float32),
        "instances": fit_instance_ids(instances),
        "intrinsics": np.asarray(k, np.float64),
    }


# ---- running jobs --------------------------------------------------------------

def _run(jobs: Iterator[_Job], dst: str | pathlib.Path, max_frames: int | None,
         what: str) -> Report:
    dst = pathlib.Path(dst)
    report, seen = Report(0, real.SkippedRecords()), 0
    for job in jobs:
        if max_frames is not None and seen >= max_frames:
            break
        seen += 1
        try:
            sample = job.read()
        except real.READ_ERRORS as e:
            report.skipped.add(str(job.source), e)
            continue
        # Writing is outside the try: a full disk is not a corrupt source frame.
        on_disk.save_frame(dst / job.sequence, job.frame, sample)
        report.converted += 1
    if not seen:
        raise ConvertError(f"no {what} found")
    return report


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError("reading HDF5 (Hypersim, BlenderProc) needs h5py: "
                          "pip install 'mtssl[hdf5]'") from None
    return h5py


def _read_h5(path: pathlib.Path, key: str = "dataset") -> np.ndarray:
    with _h5py().File(path, "r") as f:
        if key not in f:
            raise ValueError(f"{path}: no {key!r} dataset (has {', '.join(f)})")
        return f[key][()]


# ---- SceneNet RGB-D ------------------------------------------------------------

def _scenenet_frame(photo: pathlib.Path, max_depth: float) -> dict[str, np.ndarray]:
    root, stem = photo.parent.parent, photo.stem
    rgb = real.to_rgb(real.read_image_file(photo))
    h, w = rgb.shape[:2]
    k = intrinsics_from_fov(w, h, *SCENENET_FOV_DEG)
    ray = on_disk._read_map(root / "depth" / f"{stem}.png", (h, w)).astype(np.float64)
    instances = on_disk._read_map(root / "instance" / f"{stem}.png", (h, w))
    depth = on_disk.planar_from_ray(ray * 0.001, k)
    return _sample(rgb, depth, None, instances, k, max_depth)


def convert_scenenet(src, dst, *, max_frames: int | None = None,
                     max_depth: float = MAX_STORABLE_DEPTH) -> Report:
    src = pathlib.Path(src)

    def jobs():
        for photos in sorted(p for p in src.rglob("photo") if p.is_dir()):
            sequence = photos.parent.relative_to(src)
            for photo in sorted(photos.iterdir(), key=lambda p: _natural(p.stem)):
                if photo.suffix.lower() in (".jpg", ".jpeg", ".png"):
                    yield _Job(sequence, photo.stem, photo,
                               functools.partial(_scenenet_frame, photo, max_depth))

    return _run(jobs(), dst, max_frames, f"SceneNet trajectories (folders with photo/) "
                                         f"below {src}")


# ---- Hypersim ------------------------------------------------------------------

def _hypersim_frame(color: pathlib.Path, geometry_dir: pathlib.Path, index: str, *,
                    k: np.ndarray | None, fov_deg: float, instances: str,
                    max_depth: float) -> dict[str, np.ndarray]:
    def geometry_map(name):
        return _read_h5(geometry_dir / f"frame.{index}.{name}.hdf5")

    rgb = _read_h5(color)
    ray = geometry_map("depth_meters").astype(np.float64)
    # normal_cam, not normal_bump_cam: the normal of the geometry the depth sees.
    normals = geometry_map("normal_cam").astype(np.float64) * on_disk._OPENGL_TO_OPENCV
    ids = geometry_map(instances).astype(np.int64)
    valid = np.isfinite(ray)
    entity_file = geometry_dir / f"frame.{index}.render_entity_id.hdf5"
    if entity_file.exists():      # the mask Hypersim's own tonemapping uses
        entity = ids if instances == "render_entity_id" else _read_h5(entity_file)
        if entity.shape != ray.shape:
            raise ValueError(f"{entity_file}: {entity.shape}, depth is {ray.shape}")
        valid &= entity != -1
    h, w = rgb.shape[:2]
    if ray.shape != (h, w):
        raise ValueError(f"depth_meters is {ray.shape}, colour is {(h, w)}")
    k = intrinsics_from_fov(w, h, fov_deg) if k is None else k
    depth = on_disk.planar_from_ray(np.where(valid, ray, 0.0), k)
    # -1 (none) + 1 = 0, the layout's "no instance".
    return _sample(tonemap_hypersim(rgb, valid), depth, normals, ids + 1, k, max_depth)


def convert_hypersim(src, dst, *, k: np.ndarray | None = None,
                     fov_deg: float = HYPERSIM_FOV_DEG,
                     instances: str = "semantic_instance", max_frames: int | None = None,
                     max_depth: float = MAX_STORABLE_DEPTH) -> Report:
    if instances not in HYPERSIM_INSTANCES:
        raise ConvertError(f"instances={instances!r}; valid: {', '.join(HYPERSIM_INSTANCES)}")
    _h5py()
    src = pathlib.Path(src)
    read = functools.partial(_hypersim_frame, k=k, fov_deg=fov_deg, instances=instances,
                             max_depth=max_depth)

    def jobs():
        for final in sorted(p for p in src.rglob("scene_cam_*_final_hdf5") if p.is_dir()):
            camera = final.name[len("scene_"):-len("_final_hdf5")]
            geometry_dir = final.with_name(f"scene_{camera}_geometry_hdf5")
            parts = [p for p in final.parent.relative_to(src).parts if p != "images"]
            sequence = pathlib.Path(*parts, camera)
            for color in sorted(final.glob("frame.*.color.hdf5")):
                index = color.name.split(".")[1]
                yield _Job(sequence, index, color,
                           functools.partial(read, color, geometry_dir, index))

    return _run(jobs(), dst, max_frames,
                f"Hypersim frames (images/scene_cam_*_final_hdf5/frame.*.color.hdf5) below {src}")


# ---- BlenderProc ---------------------------------------------------------------

def _bop_k(cam_k: Sequence[float]) -> np.ndarray:
    """BlenderProc/BOP cam_K (pixel centres at integers) -> this layout's K."""
    k = np.asarray(cam_k, np.float64).reshape(3, 3).copy()
    k[0, 2] += 0.5
    k[1, 2] += 0.5
    return k


def read_camera_file(path: str | pathlib.Path) -> Callable[[str], np.ndarray]:
    """frame -> K from a BlenderProc/BOP camera file: {"fx", "fy", "cx", "cy"}
    (BOP camera.json), {"cam_K": [9]}, or BOP scene_camera.json
    ({"<frame>": {"cam_K": [9]}, ...}); its K convention is BOP's."""
    with open(path) as f:
        camera = json.load(f)
    if not isinstance(camera, dict):
        raise ConvertError(f"{path}: expected a JSON object")
    if {"fx", "fy", "cx", "cy"} <= camera.keys():
        k = _bop_k([camera["fx"], 0, camera["cx"], 0, camera["fy"], camera["cy"], 0, 0, 1])
        return lambda frame: k
    if "cam_K" in camera:
        k = _bop_k(camera["cam_K"])
        return lambda frame: k
    per_frame = {key: _bop_k(v["cam_K"]) for key, v in camera.items()
                 if isinstance(v, dict) and "cam_K" in v}
    if not per_frame:
        raise ConvertError(f"{path}: no fx/fy/cx/cy, cam_K, or per-frame cam_K entries")

    def lookup(frame):
        if frame not in per_frame:
            raise ValueError(f"{path} has no cam_K for frame {frame!r}")
        return per_frame[frame]
    return lookup


def _blenderproc_frame(path: pathlib.Path, *, k_for: Callable[[str], np.ndarray] | None,
                       max_depth: float) -> dict[str, np.ndarray]:
    with _h5py().File(path, "r") as f:
        data = {key: f[key][()] for key in ("colors", "depth", "distance", "normals",
                                            "instance_segmaps", "camera_pose") if key in f}
    for key in ("colors", "instance_segmaps"):
        if key not in data:
            raise ValueError(f"no {key!r} (has {', '.join(data) or 'nothing we read'}); "
                             "instances need enable_segmentation_output(map_by='instance')")
    if "depth" not in data and "distance" not in data:
        raise ValueError("neither 'depth' nor 'distance'")
    colors = data["colors"]
    if colors.ndim != 3:
        raise ValueError(f"colors is {colors.shape}: stereo output is not supported "
                         "(write it with stereo_separate_keys=False per eye)")
    if k_for is not None:
        k = k_for(path.stem)
    elif "camera_pose" in data:
        camera = json.loads(data["camera_pose"])
        if "cam_K" not in camera:
            raise ValueError("its camera_pose has no cam_K")
        k = _bop_k(camera["cam_K"])
    else:
        raise ConvertError(f"{path}: no intrinsics; pass --fx --fy --cx --cy or --camera, "
                           "or write the frames with write_hdf5(save_world2cam=True)")
    if "depth" in data:
        depth = data["depth"].astype(np.float64)
    else:
        depth = on_disk.planar_from_ray(data["distance"].astype(np.float64), k)
    normals = None
    if "normals" in data:
        normals = (2.0 * data["normals"][..., :3].astype(np.float64) - 1.0) \
            * on_disk._OPENGL_TO_OPENCV
    return _sample(colors, depth, normals, data["instance_segmaps"], k, max_depth)


def convert_blenderproc(src, dst, *, k: np.ndarray | None = None,
                        camera_file: str | pathlib.Path | None = None,
                        max_frames: int | None = None,
                        max_depth: float = MAX_STORABLE_DEPTH) -> Report:
    _h5py()
    src = pathlib.Path(src)
    k_for = (lambda frame: k) if k is not None else (
        read_camera_file(camera_file) if camera_file else None)
    read = functools.partial(_blenderproc_frame, k_for=k_for, max_depth=max_depth)

    def jobs():
        files = sorted(src.rglob("*.hdf5"), key=lambda p: (p.parent, _natural(p.stem)))
        for path in files:
            yield _Job(path.parent.relative_to(src), path.stem, path,
                       functools.partial(read, path))

    return _run(jobs(), dst, max_frames, f"BlenderProc frames (*.hdf5) below {src}")


def _natural(stem: str):
    """Frame order: numeric stems by number (2 before 10), others after, by name."""
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


# ---- command line --------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("src", help="the source dataset (a folder)")
    common.add_argument("dst", help="the output folder (on_disk layout)")
    common.add_argument("--max_frames", type=int, default=None,
                        help="read at most this many source frames (in sorted order)")
    common.add_argument("--max_depth", type=float, default=MAX_STORABLE_DEPTH,
                        help="depth at or beyond it (metres) is invalid; at most "
                             f"{MAX_STORABLE_DEPTH} (default), a uint16 mm PNG's range")
    camera = argparse.ArgumentParser(add_help=False)
    for name, what in (("fx", "focal lengths"), ("fy", None), ("cx", "principal point"),
                       ("cy", None)):
        camera.add_argument(f"--{name}", type=float, default=None, help=what and (
            f"{what} in pixels, pixel centres at integer + 0.5 (give all four)"))

    parser = argparse.ArgumentParser(
        prog="python -m mtssl.data.convert",
        description="Convert a synthetic dataset into the folder layout "
                    "--config.synthetic.source=folder:DST reads (docs/datasets.md).")
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET",
                                help="one of: scenenet, hypersim, blenderproc")
    sub.add_parser("scenenet", parents=[common], help="SceneNet RGB-D trajectories")
    hypersim = sub.add_parser("hypersim", parents=[common, camera],
                              help="Hypersim scenes (HDF5; needs h5py)")
    hypersim.add_argument("--fov_deg", type=float, default=HYPERSIM_FOV_DEG,
                          help="horizontal field of view when no --fx.. are given")
    hypersim.add_argument("--instances", choices=HYPERSIM_INSTANCES,
                          default="semantic_instance", help="which id map is the instances")
    blenderproc = sub.add_parser("blenderproc", parents=[common, camera],
                                 help="BlenderProc write_hdf5 output (needs h5py)")
    blenderproc.add_argument("--camera", default=None,
                             help="BOP camera.json / scene_camera.json or {'cam_K': [..]}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not 0 < args.max_depth <= MAX_STORABLE_DEPTH:
        parser.error(f"--max_depth={args.max_depth}: must be in (0, {MAX_STORABLE_DEPTH}]")
    if args.max_frames is not None and args.max_frames < 1:
        parser.error("--max_frames must be >= 1")
    common = dict(max_frames=args.max_frames, max_depth=args.max_depth)
    k = None
    if args.dataset != "scenenet":
        given = [getattr(args, n) for n in ("fx", "fy", "cx", "cy")]
        if any(v is not None for v in given):
            if any(v is None for v in given):
                parser.error("give all of --fx --fy --cx --cy, or none")
            k = k_matrix(*given)
        if k is not None and getattr(args, "camera", None):
            parser.error("give --fx --fy --cx --cy or --camera, not both")
    try:
        if args.dataset == "scenenet":
            report = convert_scenenet(args.src, args.dst, **common)
        elif args.dataset == "hypersim":
            report = convert_hypersim(args.src, args.dst, k=k, fov_deg=args.fov_deg,
                                      instances=args.instances, **common)
        else:
            report = convert_blenderproc(args.src, args.dst, k=k, camera_file=args.camera,
                                         **common)
    except (ConvertError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.dataset}: converted {report.converted} frame(s) into {args.dst}, "
          f"skipped {report.skipped.count}"
          + (f" (last: {report.skipped.last})" if report.skipped.count else ""))
    if report.converted:
        print("train on it: python -m mtssl.main --config=configs/pretrain.py "
              f"--workdir=runs/x --config.synthetic.source=folder:{args.dst}")
    return 0 if report.converted else 1


if __name__ == "__main__":
    sys.exit(main())
