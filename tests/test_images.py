"""cebench.images, the suite's one reader of images: bombs, 16-bit pixels, the size bound, --skip-bad, threads.

A decompression bomb is made cheaply by lowering PIL's Image.MAX_IMAGE_PIXELS (PIL raises DecompressionBombError
above twice it), not by writing a 30000x30000 PNG; the suite's own bound by lowering cebench.images.MAX_PIXELS.
"""

import numpy as np
import pytest
import torch
from PIL import Image

import pretrain.data
from cebench.errors import CebenchError
from evaluation.experiments.imagesets import gallery_and_queries
from pretrain.data import ImageCache, check_images, list_images, read_image
from voc.devkit import load_image, load_split, segmentation_files
from vocfactory import make_vocdevkit


def _bomb(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # a 64x48 image (3072 px) is now "a bomb" (> 2 x 500)


def _folder(tmp_path, n=4, size=(40, 30)):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def _retrieval_cfg(images):
    return {"images": str(images), "seed": 0, "max_queries": 1, "gallery_list": None, "query_list": None,
            "max_gallery": None}


def test_a_decompression_bomb_in_voc_is_one_line_and_skip_bad_leaves_it_out(tmp_path, monkeypatch):
    voc = make_vocdevkit(tmp_path, splits={"train": 3}, vary_size=False)
    bomb = voc.root / "VOC2007" / "JPEGImages" / f"{voc.splits['train'][1]}.jpg"
    Image.new("RGB", (64, 48), (9, 9, 9)).save(bomb)  # the size its XML says
    real_open = Image.open

    def open_bomb(fp, *args, **kwargs):  # only this file is above PIL's limit
        if str(fp) == str(bomb):
            monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
        else:
            monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", open_bomb)
    with pytest.raises(CebenchError, match=rf"{bomb}: unreadable image \(DecompressionBombError") as err:
        load_split(voc.root, "2007", "train")
    assert "\n" not in str(err.value)
    split = load_split(voc.root, "2007", "train", skip_bad=True)
    assert bomb.stem not in split.ids and len(split) == 2
    assert [s["id"] for s in split.skipped] == [bomb.stem] and "DecompressionBombError" in split.skipped[0]["reason"]
    ids, *_, skipped = segmentation_files(voc.root, "2007", "train", skip_bad=True)
    assert bomb.stem not in ids and [s["id"] for s in skipped] == [bomb.stem]


def test_a_bomb_in_retrievals_images_and_in_pretraining_is_one_line_or_skipped(tmp_path, monkeypatch):
    folder = _folder(tmp_path)
    _bomb(monkeypatch)  # every image of the folder is above PIL's limit now
    with pytest.raises(CebenchError, match=r"00\.png: unreadable image \(DecompressionBombError"):
        gallery_and_queries(_retrieval_cfg(folder))
    paths = list_images(folder)
    with pytest.raises(CebenchError, match="DecompressionBombError"):
        read_image(paths[0], 16)
    with pytest.raises(CebenchError, match="no readable images left"):  # --skip-bad: all four skipped
        check_images(paths, skip_bad=True)
    with pytest.raises(CebenchError, match="no readable images to cache"):
        ImageCache(paths, 16, skip_bad=True, threads=1)


def test_the_size_bound_refuses_before_decoding_and_counts_a_jpegs_reduced_decode(tmp_path, monkeypatch):
    png, jpeg = tmp_path / "big.png", tmp_path / "big.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(png)
    Image.new("RGB", (64, 64), (1, 2, 3)).save(jpeg)
    monkeypatch.setattr("cebench.images.MAX_PIXELS", 1000)  # 64x64 = 4096 pixels is above the bound now
    with pytest.raises(CebenchError, match=rf"{png}: image is 64x64 .*above the limit .*MAX_PIXELS") as err:
        read_image(png, 16)
    assert "\n" not in str(err.value)
    with pytest.raises(CebenchError, match="above the limit"):
        load_image(png)
    # A JPEG needed at 30 px decodes at 1/2 scale in the DCT (32x32 = 1024 px): still above 1000, refused ...
    with pytest.raises(CebenchError, match="image is 32x32"):
        read_image(jpeg, 30)
    # ... at 16 px, at 1/4 scale (16x16): within the bound, decoded
    assert read_image(jpeg, 16).shape == (16, 16, 3)
    assert load_image(jpeg, draft=True).size == (8, 8)  # the devkit's cheap check decodes at 1/8
    # --skip-bad's header check judges a file as read_image will decode it
    assert check_images([jpeg, png], skip_bad=True, short_side=16) == ([jpeg], [png])


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    image = np.asarray(load_image(path))
    assert image.shape == (48, 64, 3) and (image == expected[:, :, None]).all()
    assert (image == 255).mean() < 0.01  # convert("RGB") made 99.5% of such pixels 255
    assert read_image(path, 48).shape == (48, 64, 3)  # pretraining's reader: no resize needed, same pixels
    assert (read_image(path, 48)[:, :, 0] == expected).all()


def test_pixels_without_a_range_are_refused_in_one_line(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.ones((8, 8), np.float32)).save(path)
    with pytest.raises(CebenchError, match=r"float\.tif: floating-point pixels \(PIL mode F\)"):
        load_image(path)


def test_the_image_cache_decodes_with_the_threads_given_not_every_core(tmp_path, monkeypatch):
    paths = list_images(_folder(tmp_path, n=3))
    seen = []
    real = pretrain.data.ThreadPoolExecutor

    def spy(max_workers=None, **kwargs):
        seen.append(max_workers)
        return real(max_workers=max_workers, **kwargs)

    monkeypatch.setattr(pretrain.data, "ThreadPoolExecutor", spy)
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    threads = torch.get_num_threads()  # what an entry point's --threads set (conftest: 1)
    cache = ImageCache(paths, 16)
    assert seen == [threads] and len(cache) == 3
    ImageCache(paths, 16, threads=2)
    assert seen == [threads, 2]
