"""`vimamba det train|eval|predict` on a small COCO-format set of photographs with drawn objects: overfitting
(box and mask AP from pycocotools), what a run writes, resume, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from cli_helpers import assert_one_line_error, run_cli, run_torchrun
from det_data import make_coco_dataset


def det_args(data: Path, out: Path, *extra) -> list:
    return ["det", "train", "--preset", "tiny", "--data", data, "-o", out, "-j", "0", "--no-progress", *extra]


# pycocotools 2.0.x's mask decoding predates numpy 2's copy keyword; harmless, and thousands of lines
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    return make_coco_dataset(tmp_path_factory.mktemp("coco"), num_images=8)


@pytest.mark.slow
def test_a_short_run_overfits_a_small_coco_set(tmp_path, capsys, coco):
    """240 iterations of the tiny Cascade Mask R-CNN on 8 photographs: pycocotools' box and mask AP on them (the
    validation split is the training split) rise far above zero from an untrained model's."""
    previous = torch.get_num_threads()
    try:
        code, out, err = run_cli(capsys, *det_args(coco, tmp_path / "run", "--iterations", "240", "--eval-interval",
                                                   "120", "--lr-steps", "200", "230", "--threads", "2"))
    finally:
        torch.set_num_threads(previous)
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [120, 240]
    # an untrained model scores ~0 here; 200 iterations already give box/mask AP ~0.45/0.53 (AP50 ~0.8)
    assert summary["bbox_AP"] > 0.3 and summary["segm_AP"] > 0.3, summary
    assert summary["bbox_AP50"] > 0.6 and summary["segm_AP50"] > 0.6, summary
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    print(f"overfit: box AP {summary['bbox_AP']:.3f} (AP50 {summary['bbox_AP50']:.3f}), mask AP "
          f"{summary['segm_AP']:.3f} (AP50 {summary['segm_AP50']:.3f})")


def test_train_resume_eval_and_predict(tmp_path, capsys, coco):
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, *det_args(coco, run, "--iterations", "2", "--eval-interval", "2", "-b", "2",
                                               "--eval-batch-size", "8"))
    assert code == 0, err
    for name in ("last.pth", "best.pth", "last.safetensors", "best.safetensors", "metrics.csv", "metrics.jsonl",
                 "learning_curves.png", "config.yaml", "summary.json", "detections_val.json"):
        assert (run / name).is_file(), name
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("bbox_AP", "bbox_AP50", "bbox_AP75", "bbox_APs", "bbox_APm", "segm_AP", "loss_mask",
                "loss_classifier_stage2", "loss_objectness"):
        assert key in row, key
    detections = json.loads((run / "detections_val.json").read_text())
    assert detections and {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(detections[0])
    assert {d["category_id"] for d in detections} <= {3, 7, 11}

    # resume to 4 iterations, in the same folder
    code, out, err = run_cli(capsys, "det", "train", "--resume", run, "--iterations", "4", "-j", "0", "--no-progress")
    assert code == 0, err
    assert "resuming at iteration 2" in out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [2, 4]
    saved = torch.load(run / "last.pth", weights_only=True)
    assert saved["iteration"] == 4 and saved["task"] == "detection"

    code, out, err = run_cli(capsys, "det", "eval", "--data", coco, "--checkpoint", run / "last.pth", "--json",
                             "--no-progress", "-j", "0", "--results", tmp_path / "res.json")
    assert code == 0, err
    report = json.loads(out)
    assert set(report["bbox"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"} and "segm" in report
    assert report["images"] == 8
    assert json.loads((tmp_path / "res.json").read_text()) == json.loads((run / "detections_val.json").read_text())

    photo = tmp_path / "photo.jpg"
    Image.open(coco / "val2017" / "train_000.jpg").save(photo)
    code, out, err = run_cli(capsys, "det", "predict", photo, "--checkpoint", run / "last.safetensors", "-o",
                             tmp_path / "pred", "--score-thresh", "0.0")
    assert code == 0, err
    drawn = Image.open(tmp_path / "pred" / "photo_det.png")
    assert drawn.size == Image.open(photo).size
    results = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert results and all(r["image_id"] == 1 and "segmentation" in r and "category_name" in r for r in results)
    assert json.loads((tmp_path / "pred" / "images.json").read_text())["images"][0]["file_name"] == str(photo)


def test_bad_input_gets_one_line_errors(tmp_path, capsys, coco):
    bad = tmp_path / "bad"
    (bad / "annotations").mkdir(parents=True)
    data = json.loads((coco / "annotations" / "instances_train2017.json").read_text())
    data["annotations"][2]["bbox"] = [500.0, 0.0, 10.0, 10.0]
    (bad / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
    (bad / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    (bad / "train2017").symlink_to(coco / "train2017")
    (bad / "val2017").symlink_to(coco / "val2017")
    code, _, err = run_cli(capsys, *det_args(bad, tmp_path / "run"))
    assert_one_line_error(code, err, "det train", "annotation id 3", "reaches outside the")

    code, _, err = run_cli(capsys, "det", "train", "--preset", "tiny", "-o", tmp_path / "r2")
    assert_one_line_error(code, err, "det train", "pass --data DIR")
    code, _, err = run_cli(capsys, *det_args(coco, tmp_path / "r3", "--architecture", "retinanet"))
    assert_one_line_error(code, err, "det train", "architecture must be one of cascade_mask_rcnn, mask_rcnn")
    code, _, err = run_cli(capsys, "det", "eval", "--checkpoint", tmp_path / "none.pth", "--data", coco)
    assert_one_line_error(code, err, "det eval", "none.pth")
    code, _, err = run_cli(capsys, "det", "eval", "--checkpoint", tmp_path / "none.pth")
    assert_one_line_error(code, err, "det eval", "--data DIR")


def test_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, capsys, coco):
    from safetensors.torch import load_file

    common = ["-b", "2", "--eval-interval", "2", "--eval-batch-size", "8"]
    code, _, err = run_cli(capsys, *det_args(coco, tmp_path / "straight", "--iterations", "4", *common))
    assert code == 0, err
    code, _, err = run_cli(capsys, *det_args(coco, tmp_path / "stopped", "--iterations", "2", *common))
    assert code == 0, err
    code, _, err = run_cli(capsys, "det", "train", "--resume", tmp_path / "stopped", "--iterations", "4", "-j", "0",
                           "--no-progress")
    assert code == 0, err
    straight = load_file(tmp_path / "straight" / "last.safetensors")
    resumed = load_file(tmp_path / "stopped" / "last.safetensors")
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0, msg=key)
    def scores(run):
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [(r["iteration"], r["train_loss"], r["bbox_AP"], r["segm_AP"]) for r in rows]

    assert scores("stopped") == scores("straight")  # timings aside, the same rows


def test_torchrun_two_processes(tmp_path, capsys, coco):
    """DDP over gloo on the CPU: rank 0 writes the run, evaluation splits the images over the processes and
    gathers their detections; a one-process eval of the result gives the same COCO scores."""
    out = tmp_path / "ddp"
    run_torchrun(*det_args(coco, out, "--iterations", "2", "--eval-interval", "2", "-b", "4", "--eval-batch-size", "2"),
                 timeout=600)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    saved = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert len(saved["rng"]) == 2
    code, stdout, err = run_cli(capsys, "det", "eval", "--data", coco, "--checkpoint", out / "last.pth", "--json",
                                "-j", "0", "--no-progress")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["bbox"]["AP"] == pytest.approx(summary["bbox_AP"], abs=1e-12)
    assert report["segm"]["AP"] == pytest.approx(summary["segm_AP"], abs=1e-12)
