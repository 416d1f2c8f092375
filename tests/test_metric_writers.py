"""Metric files: JSONL lines, and TensorBoard event records read back exactly
by TensorBoard's own loader."""

import json

import numpy as np
from PIL import Image

from helpers import tensorboard_events

from mtssl.metric_writers import MetricWriter, _crc32c


def test_crc32c_known_answer():
    # The CRC-32C check value from the RFC 3720 test vectors.
    assert _crc32c(b"123456789") == 0xE3069283
    assert _crc32c(bytes(32)) == 0x8A9136AA


def test_scalars_and_images_round_trip(tmp_path):
    writer = MetricWriter(tmp_path)
    writer.write_scalars(10, {"loss/depth": 0.5, "d_accuracy": 0.25})
    writer.write_scalars(20, {"loss/depth": 0.125, "d_accuracy": 0.75})
    image = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    png = writer.write_image(20, "predictions", image)
    writer.close()

    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(x["step"], x["loss/depth"]) for x in lines] == [(10, 0.5), (20, 0.125)]
    np.testing.assert_array_equal(np.asarray(Image.open(png)), image)

    (events_file,) = (tmp_path / "tensorboard").iterdir()
    events = tensorboard_events(events_file)
    assert events[0]["file_version"] == "brain.Event:2"
    scalars = [(e["step"], e["scalars"]) for e in events if e["scalars"]]
    assert scalars == [(10, {"loss/depth": 0.5, "d_accuracy": 0.25}),
                       (20, {"loss/depth": 0.125, "d_accuracy": 0.75})]
    (img_event,) = [e for e in events if e["images"]]
    assert img_event["step"] == 20
    assert img_event["images"]["predictions"] == png.read_bytes()


def test_tensorboard_checks_our_record_checksums(tmp_path):
    writer = MetricWriter(tmp_path)
    writer.write_scalars(1, {"x": 1.0})
    writer.write_scalars(2, {"x": 2.0})
    writer.close()
    (events_file,) = (tmp_path / "tensorboard").iterdir()
    assert [e["step"] for e in tensorboard_events(events_file)] == [0, 1, 2]
    data = bytearray(events_file.read_bytes())
    data[-6] ^= 0xFF                                # inside the last record
    events_file.write_bytes(bytes(data))
    assert [e["step"] for e in tensorboard_events(events_file)] == [0, 1]


def test_resuming_drops_rows_logged_after_the_checkpoint(tmp_path):
    with MetricWriter(tmp_path) as writer:
        for step in (1, 2, 3, 4):
            writer.write_scalars(step, {"loss": float(step)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')                 # torn by a kill mid-write
    with MetricWriter(tmp_path, resume_step=2) as writer:
        writer.write_scalars(3, {"loss": 30.0})
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 30.0)]
