"""Wang-style localisation scoring on synthetic heatmaps whose boxes and accuracies are known exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrmtl import labels
from cxrmtl.errors import EvaluationError
from cxrmtl.localize.localization import (
    LocalizationCase,
    accuracy_table,
    case_outcome,
    evaluate_localization,
    ground_truth_boxes,
    heatmap_to_boxes,
    image_sizes,
    iobb,
    iou,
    iou_table,
    scale_boxes,
    to_cache_boxes,
)


def _blob_map(size: int, blobs: list[tuple[int, int, int, int, float]]) -> np.ndarray:
    """A zero map with flat rectangles (x, y, w, h, value)."""
    heat = np.zeros((size, size), dtype=np.float32)
    for x, y, w, h, value in blobs:
        heat[y : y + h, x : x + w] = value
    return heat


def test_heatmap_to_boxes_two_thresholds_give_nested_boxes() -> None:
    heat = _blob_map(32, [(4, 6, 10, 8, 0.5), (20, 20, 5, 3, 1.0)])
    heat[8:10, 6:8] = 1.0  # a sharp core inside the first, weaker blob
    boxes = heatmap_to_boxes(heat)
    # threshold 60 (0.235 of max) sees both blobs; 180 (0.706) only the cores.
    assert boxes.tolist() == [[4, 6, 10, 8], [20, 20, 5, 3], [6, 8, 2, 2]]


def test_heatmap_to_boxes_diagonal_pixels_join_and_constant_map_gives_nothing() -> None:
    heat = np.zeros((8, 8))
    heat[2, 2] = heat[3, 3] = 1.0
    assert heatmap_to_boxes(heat, thresholds=(128,)).tolist() == [[2, 2, 2, 2]]
    assert heatmap_to_boxes(np.full((8, 8), 3.0)).shape == (0, 4)


@pytest.mark.parametrize(
    ("heat", "thresholds", "message"),
    [
        (np.zeros(5), (60,), "2-D"),
        (np.full((4, 4), np.nan), (60,), "NaN"),
        (np.eye(4), (), "at least one"),
        (np.eye(4), (300,), r"\[0, 255\]"),
    ],
)
def test_heatmap_to_boxes_rejects_bad_input(heat: np.ndarray, thresholds: tuple, message: str) -> None:
    with pytest.raises(EvaluationError, match=message):
        heatmap_to_boxes(heat, thresholds=thresholds)


def test_overlaps_exact_values() -> None:
    pred = np.array([[0, 0, 10, 10], [5, 5, 10, 10]], dtype=float)
    gt = np.array([[0, 0, 20, 20]], dtype=float)
    assert iobb(pred, gt)[:, 0].tolist() == [1.0, 1.0]
    assert iou(pred, gt)[:, 0].tolist() == [0.25, 0.25]
    far = np.array([[100, 100, 5, 5]], dtype=float)
    assert iobb(far, gt).tolist() == [[0.0]]


def test_scale_boxes_from_original_size_to_cache_size() -> None:
    box = np.array([[512, 256, 100, 50]], dtype=float)
    scaled = scale_boxes(box, from_size=(1024, 512), to_size=(64, 64))
    assert scaled.tolist() == [[32.0, 32.0, 6.25, 6.25]]
    with pytest.raises(EvaluationError, match="positive"):
        scale_boxes(box, from_size=(0, 512), to_size=(64, 64))


def test_case_outcome_counts_false_positives_strictly_above_threshold() -> None:
    gt = np.array([[0, 0, 10, 10]], dtype=float)
    pred = np.array([[0, 0, 10, 20], [50, 50, 4, 4]], dtype=float)  # IoBB 0.5 and 0.0
    case = LocalizationCase(image="a.png", finding="Mass", pred=pred, gt=gt)
    assert case_outcome(case, kind="iobb", threshold=0.25) == (True, 1)
    assert case_outcome(case, kind="iobb", threshold=0.5) == (False, 2)  # 0.5 is not > 0.5
    empty = LocalizationCase(image="a.png", finding="Mass", pred=np.zeros((0, 4)), gt=gt)
    assert case_outcome(empty, kind="iou", threshold=0.1) == (False, 0)


def _synthetic_cases() -> list[LocalizationCase]:
    """Four Nodule cases and two Effusion cases whose heatmaps put blobs at known places."""
    size = 64
    specs = [
        # finding, gt box, heat blobs (x, y, w, h, value)
        ("Nodule", (10, 10, 8, 8), [(10, 10, 8, 8, 1.0)]),  # exact: IoBB 1, IoU 1
        ("Nodule", (10, 10, 8, 8), [(10, 10, 8, 16, 1.0)]),  # IoBB 0.5, IoU 0.5
        ("Nodule", (10, 10, 8, 8), [(40, 40, 6, 6, 1.0)]),  # miss, 1 FP
        ("Nodule", (10, 10, 8, 8), [(10, 10, 4, 4, 1.0), (40, 40, 6, 6, 1.0)]),  # IoBB 1, IoU 0.25, + 1 FP
        ("Effusion", (0, 32, 32, 32), [(0, 32, 32, 32, 1.0)]),
        ("Effusion", (0, 32, 32, 32), [(32, 0, 32, 32, 1.0)]),
    ]
    cases = []
    for i, (finding, gt, blobs) in enumerate(specs):
        pred = heatmap_to_boxes(_blob_map(size, blobs))
        cases.append(LocalizationCase(image=f"{i}.png", finding=finding, pred=pred, gt=np.array([gt], dtype=float)))
    return cases


def test_evaluate_localization_exact_accuracies() -> None:
    result = evaluate_localization(_synthetic_cases(), kind="iobb")
    assert result["finding"].unique().tolist() == ["Effusion", "Nodule"]  # canonical order
    nodule = result[result["finding"] == "Nodule"].set_index("threshold")
    assert nodule["accuracy"].to_dict() == {0.1: 0.75, 0.25: 0.75, 0.5: 0.5, 0.75: 0.5, 0.9: 0.5}
    assert nodule.loc[0.5, "afp"] == 3 / 4  # case 2: 1 (IoBB 0.5 not > 0.5), case 3: 1, case 4: 1
    assert nodule.loc[0.1, "afp"] == 2 / 4
    effusion = result[result["finding"] == "Effusion"].set_index("threshold")
    assert effusion["accuracy"].tolist() == [0.5] * 5
    assert effusion["afp"].tolist() == [0.5] * 5
    assert set(result["cases"]) == {2, 4}


def test_evaluate_localization_iou() -> None:
    result = evaluate_localization(_synthetic_cases(), kind="iou")
    nodule = result[result["finding"] == "Nodule"].set_index("threshold")["accuracy"]
    # IoU of the four cases: 1, 0.5, 0, 0.25
    expected = {0.1: 0.75, 0.2: 0.75, 0.3: 0.5, 0.4: 0.5, 0.5: 0.25, 0.6: 0.25, 0.7: 0.25}
    assert nodule.to_dict() == pytest.approx(expected)
    table = iou_table(result)
    assert "| Nodule | 4 | 0.750 (0.50) |" in table


def test_evaluate_localization_rejects_unknown_kind_and_cases() -> None:
    with pytest.raises(EvaluationError, match="overlap kind"):
        evaluate_localization([], kind="dice")
    with pytest.raises(EvaluationError, match="at least one true box"):
        LocalizationCase(image="x.png", finding="Mass", pred=np.zeros((0, 4)), gt=np.zeros((0, 4)))
    with pytest.raises(EvaluationError, match="Infiltrate"):
        LocalizationCase(image="x.png", finding="Infiltrate", pred=np.zeros((0, 4)), gt=np.ones((1, 4)))
    with pytest.raises(EvaluationError, match="positive width"):
        LocalizationCase(image="x.png", finding="Mass", pred=np.zeros((1, 4)), gt=np.ones((1, 4)))


def test_accuracy_table_sits_next_to_wang() -> None:
    table = accuracy_table(evaluate_localization(_synthetic_cases(), kind="iobb"))
    assert "| Nodule | 4 | 0.750 | 0.750 | 0.500 | 0.500 | 0.500 | 0.75 | 0.000 |" in table
    assert f"{labels.WANG_IOBB05_ACCURACY['Effusion']:.3f}" in table
    assert "no localisation cases" in accuracy_table(evaluate_localization([], kind="iobb"))
    alone = accuracy_table(evaluate_localization(_synthetic_cases(), kind="iobb"), reference=None)
    assert "Wang" not in alone and "| Nodule | 4 | 0.750 | 0.750 | 0.500 | 0.500 | 0.500 | 0.75 |\n" in alone


def _result(kind: str) -> object:
    """A LocalizationResult of the synthetic cases, on data described as ``kind``."""
    from cxrmtl.eval.datakind import make_description
    from cxrmtl.localize.run import LocalizationResult

    cases = _synthetic_cases()
    n = (25_596, 2_797) if kind == "nih" else (40, 20)
    return LocalizationResult(split="test", task="findings", cases=cases, skipped=0,
                              iobb=evaluate_localization(cases, kind="iobb"),
                              iou=evaluate_localization(cases, kind="iou"), data=make_description(kind, "test", *n))


@pytest.mark.parametrize("kind", ["phantom", "subset"])
def test_localize_outputs_off_the_official_split_carry_the_banner_and_label_wangs_column(kind: str, tmp_path) -> None:
    import json

    from cxrmtl.localize.run import localization_section, write_outputs
    from cxrmtl.report.render import load_section

    paths = write_outputs(_result(kind), tmp_path)
    text = paths["markdown"].read_text()
    banner = "PHANTOM DATA" if kind == "phantom" else "SUBSET: 40 images, 20 patients"
    labelled = "| Wang 2017 @0.5, real NIH test (not this data) |"
    assert f"> **{banner}" in text and labelled in text and "for scale only, not as a comparison" in text
    assert "| Wang 2017 @0.5 |" not in text  # the full T(IoBB) table keeps the paper out: different data
    doc = json.loads(paths["json"].read_text())
    assert doc["data"]["kind"] == kind and doc["wang2017_iobb_0.5"] is None
    assert doc["wang2017_reference"]["comparable"] is False
    assert doc["wang2017_reference"]["iobb_0.5"] == dict(labels.WANG_IOBB05_ACCURACY)
    section = load_section(paths["section"])
    assert banner in section.html and "40 images" in section.note
    assert "real NIH test (not this data)" in section.html and "for scale only" in section.html
    assert localization_section(_result(kind)).markdown == section.markdown


def test_localize_outputs_on_the_official_split_sit_next_to_wang(tmp_path) -> None:
    import json

    from cxrmtl.localize.run import write_outputs

    paths = write_outputs(_result("nih"), tmp_path)
    text = paths["markdown"].read_text()
    assert "| Wang 2017 @0.5 |" in text and "> **" not in text and "official test split" in text
    assert "not this data" not in text and "same images and scoring" in text
    doc = json.loads(paths["json"].read_text())
    assert doc["wang2017_iobb_0.5"] == dict(labels.WANG_IOBB05_ACCURACY) and doc["wang2017_reference"]["comparable"]
    # the default rule is recorded, and the note says Wang's boxes came from Wang's rule
    assert doc["box_rule"] == labels.LOC_DEFAULT_BOX_RULE and "max_boxes" in doc["box_rule_params"]
    assert f"rule `{labels.LOC_DEFAULT_BOX_RULE}` (`--box-rule`)" in text and "`--box-rule wang`" in text


def test_ground_truth_boxes_scales_from_the_image_file_size() -> None:
    sizes = {"a.png": (1024, 1024), "b.png": (2048, 1024)}
    boxes = pd.DataFrame({
        "image": ["a.png", "a.png", "b.png", "c.png"],
        "finding": ["Mass", "Mass", "Nodule", "Mass"],
        "x": [0.0, 512.0, 1024.0, 0.0],
        "y": [0.0, 512.0, 0.0, 0.0],
        "w": [128.0, 64.0, 256.0, 10.0],
        "h": [128.0, 64.0, 128.0, 10.0],
    })
    gt = ground_truth_boxes(boxes, sizes, size=32)
    assert gt[("a.png", "Mass")].tolist() == [[0, 0, 4, 4], [16, 16, 2, 2]]
    # b.png is 2048 x 1024: the cache keeps the centre square x in [512, 1536), so x 1024 -> (1024 - 512) / 32
    assert gt[("b.png", "Nodule")].tolist() == [[16, 0, 8, 4]]
    assert ("c.png", "Mass") not in gt  # no image file, no size: left out
    assert list(ground_truth_boxes(boxes, sizes, size=32, images=["b.png"])) == [("b.png", "Nodule")]
    with pytest.raises(EvaluationError, match="columns"):
        ground_truth_boxes(boxes.drop(columns="w"), sizes, size=32)


def test_image_sizes_reads_headers_not_the_metadata(tmp_path) -> None:
    import cv2

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((20, 30), dtype=np.uint8))
    table = pd.DataFrame({"image": ["a.png", "b.png"], "path": [str(tmp_path / "a.png"), ""],
                          "orig_width": [2992, 2500], "orig_height": [2991, 2048]})
    assert image_sizes(table, ["a.png", "b.png"]) == {"a.png": (30, 20)}


def test_to_cache_boxes_clips_to_the_centre_square_and_drops_outside_boxes() -> None:
    boxes = np.array([[0, 0, 100, 100], [400, 0, 200, 100], [700, 0, 100, 100], [900, 50, 100, 100]], dtype=float)
    mapped = to_cache_boxes(boxes, width=1000, height=500, size=50)  # square x in [250, 750), scale 0.1
    assert mapped.tolist() == [[15, 0, 20, 10], [45, 0, 5, 10]]  # first and last lie outside; third is clipped


def test_ground_truth_boxes_on_real_bbox_list(nih_file) -> None:
    bbox = pd.read_csv(nih_file("BBox_List_2017.csv"))
    coords = bbox.iloc[:, 2:6].to_numpy(dtype=float)
    boxes = pd.DataFrame({
        "image": bbox["Image Index"],
        "finding": bbox["Finding Label"].replace(labels.LABEL_ALIASES),
        "x": coords[:, 0],
        "y": coords[:, 1],
        "w": coords[:, 2],
        "h": coords[:, 3],
    })
    # Boxes are in the 1024 x 1024 PNGs (NIH release), whatever OriginalImage[Width,Height] says.
    gt = ground_truth_boxes(boxes, dict.fromkeys(boxes["image"], (1024, 1024)), size=224)
    assert sum(len(v) for v in gt.values()) == 984  # NIH release: 984 boxes on 880 images
    assert len({image for image, _ in gt}) == 880
    assert {finding for _, finding in gt} == set(labels.BBOX_FINDINGS)
    allboxes = np.concatenate(list(gt.values()))
    assert (allboxes[:, 0] >= 0).all() and (allboxes[:, 0] + allboxes[:, 2] <= 224 + 1e-6).all()


def test_pointing_game_on_hand_made_heatmaps() -> None:
    from cxrmtl.localize.localization import heatmap_peak, point_in_boxes, pointing_game

    heat = np.zeros((16, 16))
    heat[3, 10] = 1.0  # maximum at row 3, column 10 -> pixel centre (10.5, 3.5)
    assert heatmap_peak(heat) == (10.5, 3.5)
    assert heatmap_peak(np.ones((4, 4))) is None  # flat: no peak, a miss
    inside, outside = np.array([[8.0, 2.0, 4.0, 4.0]]), np.array([[0.0, 8.0, 4.0, 4.0]])
    assert point_in_boxes((10.5, 3.5), inside) and not point_in_boxes((10.5, 3.5), outside)
    assert point_in_boxes((12.0, 6.0), inside)  # edges count
    assert not point_in_boxes(None, inside)
    cases = [
        LocalizationCase(image="a.png", finding="Mass", pred=np.zeros((0, 4)), gt=inside, peak=heatmap_peak(heat)),
        LocalizationCase(image="b.png", finding="Mass", pred=np.zeros((0, 4)), gt=outside, peak=heatmap_peak(heat)),
        LocalizationCase(image="c.png", finding="Cardiomegaly", pred=np.zeros((0, 4)), gt=inside, peak=None),
        LocalizationCase(image="d.png", finding="Mass", pred=np.zeros((0, 4)), gt=np.vstack([outside, inside]),
                         peak=(9.0, 5.0)),
    ]
    table = pointing_game(cases)
    assert table["finding"].tolist() == ["Cardiomegaly", "Mass"]  # canonical order
    assert table["hits"].tolist() == [0, 2] and table["cases"].tolist() == [1, 3]
    assert table["hit_rate"].tolist() == pytest.approx([0.0, 2 / 3])


def test_wang_rule_in_the_registry_is_wangs_rule_unchanged() -> None:
    from cxrmtl.localize.localization import BOX_RULES, box_rule

    heat = _blob_map(32, [(4, 6, 10, 8, 0.5), (20, 20, 5, 3, 1.0)])
    heat[8:10, 6:8] = 1.0
    assert box_rule("wang").boxes(heat).tolist() == [[4, 6, 10, 8], [20, 20, 5, 3], [6, 8, 2, 2]]
    assert BOX_RULES["wang"].params == {"thresholds": [60, 180]}
    assert tuple(sorted(BOX_RULES)) == tuple(sorted(labels.LOC_BOX_RULES))
    assert labels.LOC_DEFAULT_BOX_RULE in BOX_RULES
    with pytest.raises(EvaluationError, match="unknown rule 'otsu'"):
        box_rule("otsu")


def test_peak_boxes_drops_a_weaker_secondary_blob_and_keeps_the_main_one() -> None:
    from cxrmtl.localize.localization import peak_boxes

    heat = _blob_map(64, [(8, 8, 10, 12, 1.0), (40, 40, 8, 8, 0.6)])  # the second blob peaks at 0.6 of the max
    assert peak_boxes(heat, level=0.5, keep=0.8, max_boxes=3, sigma=0.0).tolist() == [[8, 8, 10, 12]]
    # Wang's rule boxes both (60/255 = 0.24 and 180/255 = 0.71 of the max): one false box more.
    assert heatmap_to_boxes(heat).tolist() == [[8, 8, 10, 12], [40, 40, 8, 8]]
    # a looser keep share lets the secondary blob through, strongest first
    assert peak_boxes(heat, level=0.5, keep=0.5, max_boxes=3, sigma=0.0).tolist() == [[8, 8, 10, 12],
                                                                                       [40, 40, 8, 8]]


def test_peak_boxes_keeps_at_most_k_boxes_strongest_first() -> None:
    from cxrmtl.localize.localization import peak_boxes

    heat = _blob_map(64, [(2, 2, 6, 6, 0.9), (20, 20, 6, 6, 1.0), (40, 40, 6, 6, 0.95)])
    two = peak_boxes(heat, level=0.5, keep=0.8, max_boxes=2, sigma=0.0)
    assert two.tolist() == [[20, 20, 6, 6], [40, 40, 6, 6]]
    assert len(peak_boxes(heat, level=0.5, keep=0.8, max_boxes=3, sigma=0.0)) == 3
    assert peak_boxes(heat, level=0.5, keep=0.8, max_boxes=1, sigma=0.0).tolist() == [[20, 20, 6, 6]]


def test_peak_boxes_min_area_drops_a_speck_and_smoothing_prefers_the_broad_blob() -> None:
    from cxrmtl.localize.localization import peak_boxes, smooth_heatmap

    heat = _blob_map(64, [(30, 30, 12, 12, 0.9)])
    heat[5, 5] = 1.0  # a one-pixel spike, stronger than the blob
    assert peak_boxes(heat, level=0.5, keep=0.8, max_boxes=1, sigma=0.0).tolist() == [[5, 5, 1, 1]]
    assert peak_boxes(heat, level=0.5, keep=0.8, max_boxes=1, min_area=0.01, sigma=0.0).tolist() == [[30, 30, 12, 12]]
    smoothed = peak_boxes(heat, level=0.5, keep=0.8, max_boxes=1, sigma=0.03)  # blur of 2 px: the spike fades
    (x, y, w, h), = smoothed.tolist()
    assert 26 <= x <= 31 and 26 <= y <= 31 and 11 <= w <= 18 and 11 <= h <= 18
    assert np.array_equal(smooth_heatmap(heat, sigma=0.0), heat)
    assert peak_boxes(np.full((16, 16), 0.3)).shape == (0, 4)  # flat map: no evidence, no box


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"level": 0.0}, "level"),
        ({"keep": 1.5}, "keep"),
        ({"max_boxes": 0}, "max_boxes"),
        ({"min_area": 1.0}, "min_area"),
        ({"sigma": -0.1}, "sigma"),
    ],
)
def test_peak_boxes_rejects_bad_parameters(params: dict, message: str) -> None:
    from cxrmtl.localize.localization import peak_boxes

    with pytest.raises(EvaluationError, match=message):
        peak_boxes(np.eye(8), **params)


def test_finding_rows_put_wang_beside_ours_and_label_the_data() -> None:
    from cxrmtl.localize.localization import finding_rows, pointing_game

    cases = _synthetic_cases()
    result = evaluate_localization(cases, kind="iobb")
    head, rows = finding_rows(result, pointing_game(cases), comparable=False)
    assert head[-1] == "Wang 2017 @0.5, real NIH test (not this data)"
    # no peaks recorded: every pointing case misses
    assert rows[1] == ["Nodule", "4", "0.500", "0.75", "0.000", f"{labels.WANG_IOBB05_ACCURACY['Nodule']:.3f}"]
    wang_mean = (labels.WANG_IOBB05_ACCURACY["Effusion"] + labels.WANG_IOBB05_ACCURACY["Nodule"]) / 2
    assert rows[-1] == ["mean over 2 findings", "6", "0.500", "0.62", "0.000", f"{wang_mean:.3f}"]
    assert finding_rows(result, pointing_game(cases), comparable=True)[0][-1] == "Wang 2017 @0.5"
