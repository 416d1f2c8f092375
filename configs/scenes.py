"""The procedural scene engine's settings (`mtssl.data.SyntheticScenes`).

    python -m mtssl.preview --config=configs/preview.py --workdir=previews
    python -m mtssl.preview --config=configs/preview.py:paper --workdir=previews

(configs/preview.py nests this file's fields as `scenes`, so
--config.scenes.<field>=<value> overrides any of them.)

Arguments after ':' pick a preset: `paper` renders at 256 px (the paper's
training crops are 227 px taken from 256 px renders); `fast` turns off the
optional costs (antialiasing, shadows, sensor effects) for quick experiments;
`target` is the deliberately different appearance used as the procedural
target domain (`mtssl.data.scenes.TARGET_APPEARANCE`).
Every field maps one to one onto `SyntheticScenes` / `SceneConfig` keywords.
"""

import ml_collections

from mtssl.data.scenes import TARGET_APPEARANCE


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.resolution = 128
    c.seed = 0
    c.num_records = 1_000_000
    c.aa_samples = 4          # extra rays per refined edge pixel (0: off)
    c.aa_fraction = 0.25      # share of pixels that may be refined
    c.shadows = True
    c.sensor_effects = True   # per-scene noise and blur

    c.scene = ml_collections.ConfigDict()
    c.scene.min_objects = 3
    c.scene.max_objects = 8
    c.scene.room_width = (3.0, 8.0)          # metres, (low, high)
    c.scene.room_depth = (3.0, 8.0)
    c.scene.room_height = (2.4, 3.2)
    c.scene.camera_height = (0.9, 1.8)
    c.scene.camera_pitch_deg = (-35.0, 5.0)
    c.scene.camera_roll_deg = (-3.0, 3.0)
    c.scene.fov_deg = (50.0, 80.0)           # horizontal
    c.scene.min_lights = 1
    c.scene.max_lights = 3
    c.scene.ambient = (0.08, 0.3)
    c.scene.stack_probability = 0.35
    c.scene.wall_aligned_probability = 0.6
    c.scene.placement_tries = 16

    if arg == "paper":
        c.resolution = 256
    elif arg == "fast":
        c.aa_samples = 0
        c.shadows = False
        c.sensor_effects = False
    elif arg == "target":
        c.scene.update(TARGET_APPEARANCE)
    elif arg:
        raise ValueError(f"unknown preset {arg!r}; valid: 'paper', 'fast', 'target'")
    return c
