"""Segmentation data: ADE20K and class-file folders, label checks, pairing errors, the reference's augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from seg_data import CLASSES, make_seg_data
from vimamba.data import DataError, SeededTransformDataset
from vimamba.seg.data import (
    ADE20K_CLASSES,
    SegEvalTransform,
    SegTrainTransform,
    _cat_ratio_crop,
    _hsv_to_rgb,
    _rgb_to_hsv,
    check_image_sizes,
    load_split,
    palette,
    photometric_distortion,
    rescale_size,
)


def write_pair(root, name, pixels, labels, split="training"):
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(root / "images" / split / f"{name}.jpg")
    Image.fromarray(labels).save(root / "annotations" / split / f"{name}.png")


def test_ade20k_labels_shift_by_one_and_zero_is_ignored(tmp_path):
    labels = np.array([[0, 1, 2], [150, 255, 7]], dtype=np.uint8)
    write_pair(tmp_path, "ADE_train_1", np.zeros((2, 3, 3), np.uint8), labels)
    source = load_split(tmp_path, "train")
    assert source.classes == list(ADE20K_CLASSES) and len(ADE20K_CLASSES) == 150
    image, got = source.load(0)
    assert image.size == (3, 2) and got.tolist() == [[255, 0, 1], [149, 255, 6]]
    write_pair(tmp_path, "ADE_train_2", np.zeros((2, 3, 3), np.uint8), np.array([[151, 1, 1], [1, 1, 1]], np.uint8))
    with pytest.raises(DataError, match=r"ADE_train_2.png holds label value\(s\) 151 outside the class range: "
                                        r"ADE20K labels are 0..150"):
        load_split(tmp_path, "train").load(1)


def test_a_class_file_makes_the_values_classes_and_255_ignored(tmp_path):
    root = make_seg_data(tmp_path / "d")
    source = load_split(root, "val")
    assert source.classes == list(CLASSES) and len(source) == 8 and not source.reduce_zero_label
    _, labels = source.load(0)
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 255} and (labels[:2] == 255).all()
    bad = tmp_path / "d" / "annotations" / "validation" / "china_0.png"
    broken = np.asarray(Image.open(bad)).copy()
    broken[10, 10] = 4
    Image.fromarray(broken).save(bad)
    with pytest.raises(DataError, match=r"china_0.png holds label value\(s\) 4 outside the class range: the 4 "
                                        r"classes are 0..3 and 255 marks ignored pixels"):
        load_split(root, "val").load(0)
    (root / "classes.txt").write_text("a\nb\na\n")
    with pytest.raises(DataError, match="names 'a' twice"):
        load_split(root, "val")
    with pytest.raises(DataError, match="class-name file not found"):
        load_split(root, "val", dataset="folder", class_names=tmp_path / "none.txt")


def test_images_and_annotations_must_pair_by_name(tmp_path):
    root = make_seg_data(tmp_path / "d")
    (root / "annotations" / "training" / "china_2.png").rename(root / "annotations" / "training" / "china_9.png")
    with pytest.raises(DataError, match=r"do not match by name: 1 image\(s\) have no annotation \(e.g. china_2.png: "
                                        r"expected .*china_2.png\); 1 annotation\(s\) have no image \(e.g. china_9.png"):
        load_split(root, "train")
    with pytest.raises(DataError, match="has no images/validation or images/val folder"):
        load_split(tmp_path / "d" / "images", "val")
    with pytest.raises(DataError, match="data folder not found"):
        load_split(tmp_path / "nowhere", "train")


def test_annotations_must_be_index_images_of_the_image_size(tmp_path):
    write_pair(tmp_path, "a", np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match="a.png is a RGB image; expected a single-channel index PNG"):
        load_split(tmp_path, "train").load(0)
    write_pair(tmp_path, "a", np.zeros((4, 5, 3), np.uint8), np.ones((4, 4), np.uint8))
    with pytest.raises(DataError, match="a.jpg is 5x4 but its annotation .*a.png is 4x4"):
        load_split(tmp_path, "train").load(0)


def test_rescale_follows_the_long_and_short_edge_rule():
    assert rescale_size(400, 600, (2048, 512)) == (512, 768)  # short side 512
    assert rescale_size(600, 400, (2048, 512)) == (768, 512)  # portrait: the short side is the width
    assert rescale_size(300, 1500, (2048, 512)) == (410, 2048)  # the long side binds
    assert rescale_size(683, 1024, (1024, 256)) == (256, 384)


def test_training_crops_are_padded_with_the_ignore_label(tmp_path):
    transform = SegTrainTransform(crop_size=64, img_scale=(64, 32), ratio_range=None, photometric=False)
    image = Image.fromarray(np.full((40, 50, 3), 200, np.uint8))
    labels = np.ones((40, 50), np.uint8)
    torch.manual_seed(0)
    x, y = transform(image, labels)
    assert x.shape == (3, 64, 64) and y.shape == (64, 64) and y.dtype == torch.int64
    # fitted into (64, 32): 32x40, padded at the bottom and right
    assert (y[:32, :40] == 1).all() and (y[32:] == 255).all() and (y[:, 40:] == 255).all()
    assert (x[:, 32:] == 0).all() and (x[:, :32, :40] != 0).all()
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    torch.testing.assert_close(x[:, :32, :40], ((200 / 255 - mean) / std).expand(3, 32, 40))


def test_augmentation_is_a_function_of_the_item_seed(tmp_path):
    root = make_seg_data(tmp_path / "d")
    source = load_split(root, "train")
    transform = SegTrainTransform(crop_size=48, img_scale=(192, 64), ratio_range=(0.5, 2.0))
    dataset = SeededTransformDataset(source, transform, joint=True)
    a, b, c = dataset[(3, 11)], dataset[(3, 11)], dataset[(3, 12)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    _, labels = source.load(3)
    assert set(a[1].unique().tolist()) <= set(np.unique(labels).tolist()) | {255}


def test_the_crop_avoids_one_class_covering_three_quarters():
    mask = torch.zeros(64, 64, dtype=torch.uint8)
    mask[:, 40:] = 1  # class 1 in the right 24 columns: fewer than half of the 32x32 crops hold both in balance

    def balanced(cap: float) -> int:
        torch.manual_seed(0)
        count = 0
        for _ in range(20):
            top, left, h, w = _cat_ratio_crop(mask, 32, cap)
            window = mask[top:top + h, left:left + w]
            assert (h, w) == (32, 32)
            count += torch.bincount(window.flatten().long(), minlength=2).max().item() / window.numel() < 0.75
        return count

    assert balanced(0.75) == 20 and balanced(1.0) < 12  # 1.0: one draw, no cap (torchvision's RandomCrop)
    ignored = torch.full((64, 64), 255, dtype=torch.uint8)
    assert _cat_ratio_crop(ignored, 32, 0.75)[2:] == (32, 32)  # gives up after 10 tries, as mmseg


def test_photometric_distortion_keeps_shape_and_range():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    outs = [photometric_distortion(image) for _ in range(8)]
    assert all(o.dtype == torch.uint8 and o.shape == image.shape for o in outs)
    assert sum(not torch.equal(o, image) for o in outs) >= 4  # each step has probability 1/2
    rgb = torch.rand(3, 8, 8)
    torch.testing.assert_close(_hsv_to_rgb(_rgb_to_hsv(rgb)), rgb, atol=1e-5, rtol=0)
    grey = torch.full((3, 2, 2), 0.5)
    assert (_rgb_to_hsv(grey)[1] == 0).all()


def test_evaluation_keeps_the_labels_at_full_size(tmp_path):
    image = Image.fromarray(np.zeros((100, 150, 3), np.uint8))
    x, y = SegEvalTransform((64, 32))(image, np.zeros((100, 150), np.uint8))
    assert x.shape == (3, 32, 48) and y.shape == (100, 150)
    x, y = SegEvalTransform(None)(image)
    assert x.shape == (3, 100, 150) and y.numel() == 0


def test_images_smaller_than_the_crop_without_rescaling(tmp_path):
    root = make_seg_data(tmp_path / "d")  # 64x96 tiles
    source = load_split(root, "train")
    check_image_sizes(source, 64)
    with pytest.raises(DataError, match=r"is 96x64, smaller than the 80x80 crop; without rescaling \(img_scale none\)"):
        check_image_sizes(source, 80)


def test_palette_gives_distinct_colours():
    colours = palette(150)
    assert len(set(colours)) == 150 and (0, 0, 0) not in colours
