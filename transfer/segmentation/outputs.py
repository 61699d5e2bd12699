"""What a segmentation run writes beside its record: the PNG of colour-coded examples."""

import numpy as np
from PIL import Image

from cebench.files import atomic_write
from transfer.segmentation.task import SEG_CLASSES
from voc.devkit import voc_palette


def save_examples(path, dataset, predictions):
    """One PNG, a row per example: image | ground truth | prediction, masks in the VOC colours, under column
    headers and above a colour key of the classes shown (white: the void border, not scored)."""
    palette = voc_palette()
    rows, shown = [], set()
    for index, pred in sorted(predictions.items()):
        image, mask = dataset.load(index)  # uint8 (H, W, 3), (H, W)
        shown |= set(np.unique(mask).tolist()) | set(np.unique(pred).tolist())
        gap = np.full((image.shape[0], 4, 3), 255, dtype=np.uint8)
        rows.append(np.concatenate([image, gap, palette[mask], gap, palette[pred]], axis=1))
    if not rows:
        return None
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    column = (width - 8) // 3
    labelled = label_grid(grid, ["image", "ground truth", "prediction"], column + 4,
                          [(SEG_CLASSES[c], tuple(int(v) for v in palette[c])) for c in sorted(shown)
                           if c < len(SEG_CLASSES)])
    return atomic_write(path, lambda f: labelled.save(f, format="PNG"))


def label_grid(grid, headers, step, key, font_size=12):
    """The grid under a header strip (one name per column, `step` pixels apart) and above a colour key strip of
    (name, rgb) swatches, wrapped to the grid's width."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=font_size)
    line = font_size + 6
    width = max(grid.width, 240)
    items, x, y = [], 4, 0  # lay the key out first, to know its height
    for name, _ in key:
        item = 16 + int(font.getlength(name)) + 12
        if x + item > width and x > 4:
            x, y = 4, y + line
        items.append((x, y))
        x += item
    key_height = (y + line + 4) if key else 0
    out = Image.new("RGB", (width, line + grid.height + key_height), "white")
    out.paste(grid, (0, line))
    draw = ImageDraw.Draw(out)
    for i, header in enumerate(headers):
        draw.text((i * step + 2, 2), header, fill=(0, 0, 0), font=font)
    top = line + grid.height + 2
    for (name, rgb), (x, y) in zip(key, items, strict=True):
        draw.rectangle([x, top + y + 2, x + 12, top + y + 14], fill=rgb, outline=(0, 0, 0))
        draw.text((x + 16, top + y + 1), name, fill=(0, 0, 0), font=font)
    return out
