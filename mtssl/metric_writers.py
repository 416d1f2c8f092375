"""Where training metrics go: the console, JSONL, TensorBoard, PNG files.

`MetricWriter(workdir)` writes, on process 0 only:
  * `<workdir>/metrics.jsonl`: one JSON object per logged step
    ({"step": ..., "time": ..., "<name>": value, ...}), easy to load in
    pandas or a notebook;
  * `<workdir>/tensorboard/events.out.tfevents.*`: TensorBoard scalars and
    images, written by the small event-file encoder below (TensorBoard's
    file format is a TFRecord of `Event` protos), so neither TensorFlow nor
    the tensorboard package is needed to write them (the tests read them
    with TensorBoard's own event loader);
  * `<workdir>/images/<name>_<step>.png`.
"""

from __future__ import annotations

import io
import json
import socket
import struct
import time
from collections.abc import Mapping

import jax
import numpy as np
from etils import epath
from PIL import Image

# --- TFRecord framing and the few Event proto fields TensorBoard needs --------

_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", _masked_crc(length)) + data
            + struct.pack("<I", _masked_crc(data)))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        bits, n = n & 0x7F, n >> 7
        out.append(bits | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _field(number, 2) + _varint(len(payload)) + payload


def _event(step: int, wall_time: float, *, summary: bytes = b"",
           file_version: str | None = None) -> bytes:
    out = _field(1, 1) + struct.pack("<d", wall_time) + _field(2, 0) + _varint(step)
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if summary:
        out += _bytes_field(5, summary)
    return out


def _scalar_value(tag: str, value: float) -> bytes:
    return _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5)
                        + struct.pack("<f", value))


def _image_value(tag: str, png: bytes, height: int, width: int) -> bytes:
    image = (_field(1, 0) + _varint(height) + _field(2, 0) + _varint(width)
             + _field(3, 0) + _varint(3) + _bytes_field(4, png))
    return _bytes_field(1, _bytes_field(1, tag.encode()) + _bytes_field(4, image))


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _row_step(row: str) -> float:
    """The step of a metrics.jsonl row; inf for a row torn by a crash."""
    try:
        return json.loads(row)["step"] if row.endswith("\n") else float("inf")
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")


class MetricWriter:
    """Scalars to JSONL + TensorBoard, images to PNG + TensorBoard.

    Only process 0 writes; other processes get a writer that does nothing.
    A run resumed from checkpoint step `resume_step` first drops the
    metrics.jsonl rows of later steps (logged before a crash, then trained
    again), so the file has one row per logged step of the run that its
    checkpoints describe. TensorBoard purges such orphaned steps itself.
    """

    def __init__(self, workdir: str | epath.Path, resume_step: int | None = None):
        self.workdir = epath.Path(workdir)
        self.active = jax.process_index() == 0
        if not self.active:
            return
        jsonl = self.workdir / "metrics.jsonl"
        if resume_step is not None and jsonl.exists():
            rows = jsonl.read_text().splitlines(keepends=True)
            kept = [r for r in rows if _row_step(r) <= resume_step]
            if len(kept) < len(rows):
                tmp = jsonl.parent / (jsonl.name + ".tmp")
                tmp.write_text("".join(kept))
                tmp.replace(jsonl)
        (self.workdir / "tensorboard").mkdir(parents=True, exist_ok=True)
        (self.workdir / "images").mkdir(parents=True, exist_ok=True)
        now = time.time()
        name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}"
        self._events = (self.workdir / "tensorboard" / name).open("ab")
        self._events.write(_record(_event(0, now, file_version="brain.Event:2")))
        self._jsonl = jsonl.open("a")

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.active:
            return
        now = time.time()
        values = {k: float(v) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": int(step), "time": now, **values}) + "\n")
        self._jsonl.flush()
        summary = b"".join(_scalar_value(k, v) for k, v in values.items())
        self._events.write(_record(_event(int(step), now, summary=summary)))
        self._events.flush()

    def write_image(self, step: int, name: str, image: np.ndarray) -> epath.Path | None:
        """Writes a uint8 RGB image; returns the PNG's path."""
        if not self.active:
            return None
        png = png_bytes(image)
        path = self.workdir / "images" / f"{name}_{int(step):08d}.png"
        path.write_bytes(png)
        h, w = image.shape[:2]
        self._events.write(_record(_event(int(step), time.time(),
                                          summary=_image_value(name, png, h, w))))
        self._events.flush()
        return path

    def close(self) -> None:
        if self.active:
            self._events.close()
            self._jsonl.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
