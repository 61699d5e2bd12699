"""What a detection run writes beside its record: the devkit's results files and drawn examples."""

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from cebench.files import atomic_write, atomic_write_text
from cebench.names import check_name
from transfer.detection.task import voc_detections
from voc.devkit import load_image


def write_devkit(folder, split_name, classes, detections):
    """The devkit's results files comp4_det_<split>_<class>.txt: '<id> <score> <x1> <y1> <x2> <y2>', 1-based.

    Numbers are written at full precision (shortest exact repr): rounded scores would tie many low-scoring
    detections, and any evaluator would then rank them differently from the record."""
    folder = Path(folder)
    check_name(split_name, "--test-split")
    per_class = voc_detections(detections, len(classes))
    for c, name in enumerate(classes):
        lines = [f"{d[0]} " + " ".join(repr(float(v)) for v in d[1:6]) + "\n" for d in per_class[c]]
        atomic_write_text(folder / f"comp4_det_{split_name}_{name}.txt", "".join(lines))
    return folder


EXAMPLE_SIZE = 384  # px of an example's longer side: small test images are scaled up so labels stay legible


def draw_examples(split, detections, folder, n, min_score=0.3):
    """PNGs of the first `n` test images (longer side EXAMPLE_SIZE px): ground truth in green, detections scoring
    >= min_score in red with their class and score on a dark label, a legend strip above the image."""
    folder = Path(folder)
    font = ImageFont.load_default(size=12)
    for i in range(min(n, len(split))):
        image = load_image(split.image_paths[i])
        scale = EXAMPLE_SIZE / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
        canvas = Image.new("RGB", (image.width, image.height + 20), "white")
        canvas.paste(image, (0, 20))
        draw = ImageDraw.Draw(canvas)
        draw.rectangle([4, 5, 14, 15], outline=(0, 170, 0), width=2)
        draw.text((18, 3), "ground truth", fill=(0, 0, 0), font=font)
        draw.rectangle([110, 5, 120, 15], outline=(230, 30, 30), width=2)
        draw.text((124, 3), f"detection, score >= {min_score:g}", fill=(0, 0, 0), font=font)

        def place(box, scale=scale):  # image coordinates -> canvas (below the legend strip)
            return [float(box[0]) * scale, float(box[1]) * scale + 20, float(box[2]) * scale,
                    float(box[3]) * scale + 20]

        for box in split.boxes[i]:
            draw.rectangle(place(box), outline=(0, 220, 0), width=2)
        boxes, scores, labels = detections[split.ids[i]]
        taken = []  # label rectangles drawn so far: a new label moves down until it overlaps none
        for box, score, label in sorted(zip(boxes, scores, labels, strict=True), key=lambda d: -float(d[1])):
            if score < min_score:
                continue
            x0, y0, _, _ = place(box)
            draw.rectangle(place(box), outline=(255, 40, 40), width=2)
            text = f"{split.classes[label - 1]} {score:.2f}"
            w, h = font.getlength(text) + 4, 15
            x, y = max(0.0, min(x0, canvas.width - w)), max(y0, 20)
            while any(x < a + c and a < x + w and y < b + d and b < y + h for a, b, c, d in taken):
                y += h
            taken.append((x, y, w, h))
            draw.rectangle([x, y, x + w, y + h], fill=(120, 0, 0))
            draw.text((x + 2, y + 1), text, fill=(255, 255, 255), font=font)
        atomic_write(folder / f"{split.ids[i]}.png", lambda f, c=canvas: c.save(f, format="PNG"))
    return folder
