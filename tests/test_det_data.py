"""COCO-format data: the checks that name the bad entry, mask decoding (polygons, RLE), large-scale jitter, and
COCO evaluation through pycocotools."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from det_data import CATEGORIES, make_coco_dataset
from vimamba.data import DataError
from vimamba.det.coco_eval import coco_ground_truth, evaluate_coco, to_coco_results
from vimamba.det.data import CocoSource, LargeScaleJitter, decode_mask, load_coco


# pycocotools 2.0.x's mask decoding predates numpy 2's copy keyword; harmless, and thousands of lines
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    return make_coco_dataset(tmp_path_factory.mktemp("coco"), num_images=6, val_same_as_train=False)


def _train(root: Path):
    return load_coco(root / "annotations" / "instances_train2017.json", root / "train2017")


def test_loader_maps_categories_and_decodes_every_mask_encoding(coco):
    data = _train(coco)
    assert data.classes == [c["name"] for c in CATEGORIES]
    assert data.label_to_category == {1: 3, 2: 7, 3: 11}
    source = CocoSource(data, train=True)
    kinds = set()
    for index in range(len(source)):
        image, target = source.load(index)
        anns = data.annotations[target["image_id"]]
        assert target["masks"].shape == (len(anns), image.height, image.width)
        for ann, box, mask, label in zip(anns, target["boxes"], target["masks"], target["labels"]):
            seg = ann["segmentation"]
            kinds.add("polygon" if isinstance(seg, list) else "rle-" + type(seg["counts"]).__name__)
            assert data.label_to_category[int(label)] == ann["category_id"]
            x, y, w, h = ann["bbox"]
            torch.testing.assert_close(box, torch.tensor([x, y, x + w, y + h], dtype=torch.float32))
            ys, xs = torch.nonzero(mask, as_tuple=True)
            # the mask fills its box (the shapes are drawn to touch every side of it)
            assert xs.min() >= x - 1 and xs.max() <= x + w and ys.min() >= y - 1 and ys.max() <= y + h
            assert mask.sum() >= 0.4 * w * h
    assert kinds == {"polygon", "rle-str", "rle-list"}, kinds


def test_decode_mask_polygon_is_the_filled_area():
    mask = decode_mask([[2, 2, 12, 2, 12, 8, 2, 8]], 10, 16)
    assert mask.shape == (10, 16) and mask.dtype == np.uint8
    assert mask[3:8, 3:12].all() and not mask[9].any() and not mask[:, 14:].any()


def _write(tmp_path: Path, coco: Path, edit) -> tuple[Path, Path]:
    data = json.loads((coco / "annotations" / "instances_train2017.json").read_text())
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return path, coco / "train2017"


def _first_ann(data):
    return data["annotations"][0]


@pytest.mark.parametrize("edit,fragments", [
    (lambda d: d.update(categories=[]), ["'categories' is empty"]),
    (lambda d: d["images"][1].update(file_name="missing.jpg"), ["image id 101", "missing.jpg", "not found"]),
    (lambda d: _first_ann(d).update(image_id=999), ["annotation id 1", "image id 999", "not in 'images'"]),
    (lambda d: _first_ann(d).update(category_id=42), ["annotation id 1", "category_id 42"]),
    (lambda d: _first_ann(d).update(bbox=[100.0, 5.0, 90.0, 10.0]), ["annotation id 1", "(image id 100",
                                                                     "reaches outside the"]),
    (lambda d: _first_ann(d).update(bbox=[1.0, 1.0, 0.0, 5.0]), ["annotation id 1", "has no area"]),
    (lambda d: _first_ann(d).update(bbox=[1, 2, 3]), ["annotation id 1", "'bbox' must be [x, y, width, height]"]),
    (lambda d: _first_ann(d).update(segmentation=[[1, 2, 3, 4]]), ["annotation id 1", "polygon 0"]),
    (lambda d: _first_ann(d).update(segmentation={"size": [5, 5], "counts": "abc"}), ["annotation id 1",
                                                                                      "RLE size [5, 5]"]),
    (lambda d: _first_ann(d).pop("segmentation"), ["annotation id 1", "no 'segmentation'"]),
    (lambda d: d["annotations"].append(dict(_first_ann(d))), ["annotation id 1", "appears twice"]),
    (lambda d: d["images"].append(dict(d["images"][0])), ["image id 100", "appears twice"]),
    (lambda d: d["images"][0].pop("width"), ["image id 100", "'width' and 'height'"]),
    (lambda d: d["categories"].append({"id": 3, "name": "again"}), ["category id 3 appears twice"]),
    (lambda d: d["categories"].append({"id": 5}), ["category 3 needs an integer 'id' and a string 'name'"]),
    (lambda d: d.pop("annotations"), ["'annotations' must be a list"]),
])
def test_bad_annotation_files_name_the_entry(tmp_path, coco, edit, fragments):
    path, images = _write(tmp_path, coco, edit)
    with pytest.raises(DataError) as info:
        load_coco(path, images)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_image_files_that_disagree_with_the_annotations(tmp_path, coco):
    images = coco / "train2017"
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in images.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    with Image.open(broken / "train_000.jpg") as im:
        im.resize((im.width + 10, im.height)).save(broken / "train_000.jpg")
    (broken / "train_001.jpg").write_bytes(b"not an image")
    data = load_coco(coco / "annotations" / "instances_train2017.json", broken)
    source = CocoSource(data, train=True)
    with pytest.raises(DataError, match=r"image id 100 .*train_000.jpg\) is \d+x\d+ but instances_train2017.json says"):
        source.load(0)
    with pytest.raises(DataError, match=r"cannot read image id 101 .*train_001.jpg"):
        source.load(1)
    bad = tmp_path / "x.json"
    bad.write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        load_coco(bad, images)


def test_training_source_skips_images_without_objects_and_crowds(tmp_path, coco):
    def edit(d):
        d["annotations"] = [a for a in d["annotations"] if a["image_id"] != 101]
        for a in d["annotations"]:
            if a["image_id"] == 102:
                a["iscrowd"] = 1
    path, images = _write(tmp_path, coco, edit)
    data = load_coco(path, images)
    train_ids = [im["id"] for im in CocoSource(data, train=True).images]
    assert 101 not in train_ids and 102 not in train_ids and len(train_ids) == 4
    assert len(CocoSource(data, train=False)) == 6
    assert all("area" in a and "iscrowd" in a for a in data.coco_dict["annotations"])


def test_large_scale_jitter_keeps_boxes_masks_and_image_together(coco):
    data = _train(coco)
    source = CocoSource(data, train=True)
    jitter = LargeScaleJitter(96, scale_range=(0.3, 2.0), hflip=0.5)
    sizes = set()
    for seed in range(12):
        image, target = source.load(seed % len(source))
        torch.manual_seed(seed)
        out, t = jitter(image, target)
        assert out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
        height, width = out.shape[-2:]
        sizes.add((height, width))
        assert height <= 96 and width <= 96
        assert t["masks"].shape == (len(t["boxes"]), height, width) and len(t["labels"]) == len(t["boxes"])
        if len(t["boxes"]):
            boxes = t["boxes"]
            assert (boxes[:, 2] - boxes[:, 0] >= 1).all() and (boxes[:, 3] - boxes[:, 1] >= 1).all()
            assert (boxes[:, 0::2] <= width).all() and (boxes[:, 1::2] <= height).all() and (boxes >= 0).all()
            for box, mask in zip(boxes, t["masks"]):
                ys, xs = torch.nonzero(mask, as_tuple=True)
                if len(xs):  # the mask lies inside its box (up to the resize's rounding)
                    assert xs.min() >= box[0] - 2 and xs.max() <= box[2] + 1
                    assert ys.min() >= box[1] - 2 and ys.max() <= box[3] + 1
            # the drawn objects keep their colours: a red rectangle stays red inside its box
            for box, mask, label in zip(boxes, t["masks"], t["labels"]):
                if int(label) == 1 and mask.sum() > 20:
                    inside = out[:, mask.bool()].mean(dim=1)
                    assert inside[0] > 0.6 and inside[2] < 0.35
    assert len(sizes) > 3  # the scale and crop vary


# ---- COCO evaluation ------------------------------------------------------------------------------------------------
def _perfect_outputs(data):
    outputs = {}
    for image in data.images:
        anns = data.annotations[image["id"]]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns])
        masks = torch.stack([torch.from_numpy(decode_mask(a["segmentation"], image["height"], image["width"])).float()
                             for a in anns])[:, None]
        outputs[image["id"]] = {"boxes": boxes, "scores": torch.linspace(0.9, 0.5, len(anns)),
                                "labels": torch.tensor([data.category_to_label[a["category_id"]] for a in anns]),
                                "masks": masks}
    return outputs


def test_coco_eval_scores_ground_truth_perfectly_and_shifted_boxes_lower(coco):
    data = _train(coco)
    gt = coco_ground_truth(data.coco_dict)
    outputs = _perfect_outputs(data)
    results = [r for i, o in outputs.items() for r in to_coco_results(o, i, data.label_to_category)]
    assert {r["category_id"] for r in results} <= {3, 7, 11}
    scores = evaluate_coco(gt, results)
    for iou_type in ("bbox", "segm"):
        assert scores[iou_type]["AP"] == pytest.approx(1.0) and scores[iou_type]["AP50"] == pytest.approx(1.0)
        assert scores[iou_type]["APl"] is None  # no object over 96x96 pixels in this set
    # boxes moved by a third of their size: none is right at IoU 0.75, some at 0.5
    for output in outputs.values():
        widths = output["boxes"][:, 2] - output["boxes"][:, 0]
        output["boxes"] = output["boxes"] + torch.stack([widths / 6, 0 * widths, widths / 6, 0 * widths], dim=1)
        output.pop("masks")
    shifted = [r for i, o in outputs.items() for r in to_coco_results(o, i, data.label_to_category)]
    scores = evaluate_coco(gt, shifted, iou_types=("bbox",))
    assert 0.0 < scores["bbox"]["AP"] < 0.9 and scores["bbox"]["AP75"] < scores["bbox"]["AP50"]
    assert evaluate_coco(gt, [])["segm"]["AP"] == 0.0
    # wrong classes score zero
    wrong = [dict(r, category_id=3 if r["category_id"] != 3 else 7) for r in results]
    assert evaluate_coco(gt, wrong, iou_types=("bbox",))["bbox"]["AP"] == 0.0


def test_results_in_coco_format():
    output = {"boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0]]), "scores": torch.tensor([0.75]),
              "labels": torch.tensor([2]), "masks": torch.zeros(1, 1, 64, 48)}
    output["masks"][0, 0, 20:60, 10:30] = 0.9
    (entry,) = to_coco_results(output, 5, {1: 3, 2: 7})
    assert entry["image_id"] == 5 and entry["category_id"] == 7 and entry["bbox"] == [10.0, 20.0, 20.0, 40.0]
    assert entry["score"] == 0.75 and entry["segmentation"]["size"] == [64, 48]
    decoded = decode_mask(entry["segmentation"], 64, 48)
    assert decoded.sum() == 800 and decoded[20:60, 10:30].all()
    json.dumps(entry)
    Image.fromarray(decoded * 255)  # a plain uint8 array
