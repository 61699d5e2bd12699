"""Example figures of detection and segmentation: legible size, legend, column headers and colour key."""

from types import SimpleNamespace

import numpy as np
from PIL import Image

from transfer.detection.outputs import EXAMPLE_SIZE, draw_examples
from transfer.segmentation.outputs import save_examples
from voc.devkit import voc_palette


def test_detection_examples_are_scaled_up_with_a_legend(tmp_path):
    path = tmp_path / "000001.jpg"
    Image.fromarray(np.full((64, 96, 3), 128, dtype=np.uint8)).save(path)
    class Split(SimpleNamespace):
        def __len__(self):
            return len(self.ids)

    split = Split(image_paths=[path], ids=["000001"], classes=["cat", "dog"],
                  boxes=[np.array([[10.0, 10.0, 40.0, 50.0]])])
    boxes = np.array([[12.0, 12.0, 42.0, 52.0], [14.0, 13.0, 44.0, 52.0], [0.0, 0.0, 5.0, 5.0]])
    detections = {"000001": (boxes, np.array([0.9, 0.8, 0.1]), np.array([1, 2, 1]))}
    draw_examples(split, detections, tmp_path / "out", n=1)
    out = np.asarray(Image.open(tmp_path / "out" / "000001.png"))
    assert out.shape == (EXAMPLE_SIZE * 64 // 96 + 20, EXAMPLE_SIZE, 3)  # longer side scaled up, legend strip
    strip = out[:20]
    assert (strip < 50).all(axis=2).any() and (strip[..., 1] > 150).any()  # legend text and its green swatch
    labels = (out[20:] == (120, 0, 0)).all(axis=2)  # the two detections' dark label boxes, one under the other
    rows = np.flatnonzero(labels.any(axis=1))
    assert rows.size and rows[-1] - rows[0] + 1 >= 2 * 15


def test_segmentation_examples_have_headers_and_a_colour_key(tmp_path):
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:24, 8:24] = 8  # cat
    dataset = SimpleNamespace(load=lambda i: (np.full((32, 32, 3), 90, dtype=np.uint8), mask))
    pred = np.zeros((32, 32), dtype=np.uint8)
    pred[8:24, 8:24] = 12  # dog
    save_examples(tmp_path / "seg.png", dataset, {0: pred})
    out = np.asarray(Image.open(tmp_path / "seg.png").convert("RGB"))
    palette = voc_palette()
    header, body = out[:18], out[18:18 + 36]
    assert (header < 50).all(axis=2).any()  # the column names
    key = out[18 + 36:]
    for c in (0, 8, 12):  # background, cat, dog: each class shown has its swatch in the key
        assert (key == palette[c]).all(axis=2).sum() >= 100, c
    assert (body == palette[8]).all(axis=2).any() and (body == palette[12]).all(axis=2).any()
