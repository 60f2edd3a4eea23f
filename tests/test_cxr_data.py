"""Tests for mlx_research.data.cxr (synthetic chest X-ray studies) and data.knowledge."""

import json
import re
import time

import numpy as np
import pytest
from PIL import Image

from mlx_research.data import cxr, cxr_render, knowledge
from mlx_research.data.chexpert import CHEXPERT_LABELS, label_report
from mlx_research.data.cxr import FINDINGS, SyntheticCXR, render_views
from mlx_research.data.knowledge import TAGS, default_knowledge, load_knowledge, token_tags
from mlx_research.data.r2gen import clean_report
from mlx_research.data.reports import SyntheticStudies

S = 128
STATUS_WORDS = {"unchanged": r"\b(unchanged|stable)\b",
                "new": r"\b(new|interval development|interval placement)\b",
                "resolved": r"\b(resolved|resolution|removal|removed)\b"}

# ---------------------------------------------------------------- studies and reports


def test_studies_are_deterministic_and_splits_hold_different_patients():
    a, b = SyntheticCXR(6, seed=3, image_size=64), SyntheticCXR(6, seed=3, image_size=64)
    for i in range(6):
        assert a.study(i) == b.study(i)
        np.testing.assert_array_equal(a.images(i), b.images(i))
    for i in (5, 0, 5, 3, 1):  # whatever was asked before: the study's own draw
        b.study((i + 2) % 6)
        assert b.study(i) == a.study(i) and b._draw(i) == SyntheticCXR._draw.__wrapped__(a, i)
        np.testing.assert_array_equal(b.images(i), a.images(i))
    other_seed = SyntheticCXR(6, seed=4, image_size=64)
    assert any(not np.array_equal(a.images(i), other_seed.images(i)) for i in range(6))
    studies = {split: [SyntheticCXR(40, seed=3, split=split).study(i) for i in range(40)]
               for split in ("train", "val", "test")}
    patients = [{s["patient_id"] for s in v} for v in studies.values()]
    assert all(len(p) == 40 for p in patients)
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    # different streams, not relabelled copies: the reports of index i differ between splits
    same = sum(studies["train"][i]["report"] == studies["test"][i]["report"] for i in range(40))
    assert same < 15  # normal reports may coincide; abnormal ones almost never


def test_examples_follow_the_contract():
    ds = SyntheticCXR(3, image_size=64, views=2)
    ex = ds[1]
    assert set(ex) == {"images", "index"}
    assert ex["images"].shape == (2, 64, 64) and ex["images"].dtype == np.uint8
    assert ex["index"].dtype == np.int64 and int(ex["index"]) == 1
    np.testing.assert_array_equal(ds[-1]["images"], ds.images(2))
    assert SyntheticCXR(2, image_size=32, views=1)[0]["images"].shape == (1, 32, 32)
    with pytest.raises(IndexError):
        ds[3]
    for kwargs in ({"split": "eval"}, {"views": 3}, {"normal_fraction": 1.5},
                   {"prior_fraction": -0.1}, {"image_size": 16}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            SyntheticCXR(2, **kwargs)


@pytest.mark.parametrize("normal_fraction", [0.5, 0.8])
def test_imbalance_and_every_finding(normal_fraction):
    ds = SyntheticCXR(500, split="val", normal_fraction=normal_fraction, prior_fraction=0.3)
    studies = [ds.study(i) for i in range(500)]
    normal = np.mean([not s["findings"] for s in studies])
    assert abs(normal - normal_fraction) < 0.07  # 3.2 binomial standard deviations
    counts = {f: sum(f in s["findings"] for s in studies) for f in FINDINGS}
    assert min(counts.values()) >= (10 if normal_fraction == 0.5 else 3), counts
    sizes = [len(s["findings"]) for s in studies if s["findings"]]
    assert set(sizes) == {1, 2, 3} and np.mean(np.array(sizes) == 1) > 0.45
    for s in studies:
        assert all(0 < v <= 1 for v in s["findings"].values())
        assert set(s["findings"]) == set(s["details"])
        assert sum(not abnormal for _, abnormal in s["sentences"]) >= 3
        findings = [n for n, v in s["chexpert"].items() if v and n not in ("No Finding",
                                                                          "Support Devices")]
        assert (s["chexpert"].get("No Finding") == 1) == (not findings)  # CheXpert's rule
    # normal sentences dominate, also in abnormal reports
    abnormal_reports = [s["sentences"] for s in studies if s["findings"]]
    assert np.mean([not a for sentences in abnormal_reports for _, a in sentences]) > 0.6


def test_reports_are_real_style_text():
    ds = SyntheticCXR(300, split="train")
    numbered = spaced = 0
    for i in range(300):
        s = ds.study(i)
        text = s["report"]
        numbered += text.startswith("1. ")
        spaced += "  " in text
        assert not text.endswith(" ") and text.endswith(".")
        plain = re.sub(r"\b[1-5]\. ", "", text).replace("  ", " ")
        assert plain == " ".join(sentence for sentence, _ in s["sentences"])
        for sentence, _ in s["sentences"]:
            assert sentence[0].isupper() and sentence.endswith(".")
            assert re.fullmatch(r"[A-Za-z ]+\.", sentence), sentence
        # R2Gen's cleaning keeps one cleaned sentence per generated sentence
        cleaned = clean_report(text, "iu_xray")
        assert cleaned.count(" .") == len(s["sentences"])
    assert numbered > 10 and spaced > 10


def test_uncertain_wording_for_mild_findings():
    ds = SyntheticCXR(400, split="test")
    seen = 0
    for i in range(400):
        s = ds.study(i)
        for name, d in s["details"].items():
            observation = cxr.CHEXPERT[name]
            shared = [n for n in s["details"] if n != name and cxr.CHEXPERT[n] == observation]
            if d["grade"] == 0 and not shared:  # a left and a right effusion share a label
                assert s["chexpert"][observation] == -1
                seen += 1
            if d["grade"] > 0:
                assert s["chexpert"][observation] == 1
    assert seen > 20


def test_priors_are_referred_to():
    ds = SyntheticCXR(500, split="train", prior_fraction=0.3)
    with_prior = 0
    for i in range(500):
        s = ds.study(i)
        words = {k: bool(re.search(p, s["report"].lower())) for k, p in STATUS_WORDS.items()}
        if not s["prior_report"]:
            assert not any(words.values()), s["report"]
            continue
        with_prior += 1
        # compare the labeler's positives of both reports (independent of the generator)
        before = {n for n, v in label_report(s["prior_report"]).items() if v == 1}
        now = {n for n, v in s["chexpert"].items() if v == 1} - {"No Finding"}
        before -= {"No Finding"}
        if before - now:
            assert words["resolved"], (s["prior_report"], s["report"])
        if now - before:
            assert words["new"], (s["prior_report"], s["report"])
        if (now & before) - {"Pleural Effusion"}:  # (the two sides share the effusion label)
            assert words["unchanged"], (s["prior_report"], s["report"])
    assert abs(with_prior / 500 - 0.3) < 0.07
    assert SyntheticCXR(50, prior_fraction=0.0).study(7)["prior_report"] == ""


# ---------------------------------------------------------------- images


def _render(details, seed, views=2):
    return render_views(details, np.random.default_rng(seed), S, views, 0).astype(np.float64)


def _ctr(frontal):
    """Cardiothoracic ratio measured on a frontal view: heart width (bright run around the
    heart's centre column) over thoracic width (extent of the dark lungs) in the heart's rows."""
    band = frontal[int(0.62 * S):int(0.68 * S)].mean(0)
    centre, lo, hi = int(0.54 * S), int(0.1 * S), int(0.9 * S)
    threshold = (np.percentile(band[lo:hi], 5) + band[centre]) / 2
    left = right = centre
    while band[left - 1] > threshold:
        left -= 1
    while band[right + 1] > threshold:
        right += 1
    dark = np.nonzero(band[lo:hi] < threshold)[0]
    return (right - left + 1) / (dark.max() - dark.min() + 1)


def test_cardiomegaly_widens_the_heart():
    normal = [_ctr(_render({}, seed)[0]) for seed in range(6)]
    enlarged = [_ctr(_render({"cardiomegaly": {"severity": 0.7, "grade": 2}}, seed)[0])
                for seed in range(6)]
    assert max(normal) < 0.5 < min(enlarged)
    assert min(e - n for e, n in zip(enlarged, normal)) > 0.1


CASES = {  # finding details -> (expected side of the change: image x half, y half, sign)
    "effusion_left": ({"side": "left"}, ("right", "lower", +1)),  # patient's left = image right
    "effusion_right": ({"side": "right"}, ("left", "lower", +1)),
    "pneumothorax": ({"side": "left"}, ("right", "upper", -1)),
    "nodule": ({"lobe": "left upper lobe"}, ("right", "upper", +1)),
    "consolidation": ({"lobe": "right lower lobe"}, ("left", "lower", +1)),
    "atelectasis": ({"lobe": "left lower lobe"}, ("right", "lower", +1)),
    "support_devices": ({"device": 2}, ("right", "upper", +1)),  # left chest wall pacemaker
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_findings_are_visible_where_reported(name):
    extra, (horizontal, vertical, sign) = CASES[name]
    for seed in range(3):
        details = {name: {"severity": 0.45, "grade": 1, **extra}}
        diff = (_render(details, seed) - _render({}, seed))[0]
        changed = np.abs(diff) > 10
        assert changed.sum() >= 25
        ys, xs = np.nonzero(changed)
        assert (xs.mean() > S / 2) == (horizontal == "right")
        assert (ys.mean() > S / 2) == (vertical == "lower")
        assert np.sign(diff[changed].mean()) == sign


def test_effusion_grows_with_severity_and_shows_on_both_views():
    areas = []
    for severity in (0.2, 0.45, 0.7, 0.95):
        details = {"effusion_right": {"severity": severity, "grade": 1, "side": "right"}}
        diff = _render(details, 1) - _render({}, 1)
        areas.append([(diff[v] > 10).sum() for v in range(2)])
    areas = np.array(areas)
    assert np.all(np.diff(areas, axis=0) > 0), areas


def test_site_marker_and_rendering_time():
    views = [render_views({}, np.random.default_rng(0), S, 1, site)[0] for site in range(3)]
    corners = [(slice(0, 16), slice(0, 16)), (slice(0, 16), slice(-16, None)),
               (slice(-16, None), slice(0, 16))]
    for site, image in enumerate(views):
        bright = [(image[c] > 200).sum() for c in corners]  # a ~8x8 pixel marker
        assert bright[site] >= 40 and sum(bright) == bright[site], bright
    ds = SyntheticCXR(40, image_size=S, views=2)
    ds.images(0)
    start = time.perf_counter()
    for i in range(40):
        ds.images(i)
    per_view = (time.perf_counter() - start) / 80
    print(f"rendering: {per_view * 1e3:.2f} ms per {S}x{S} view")
    assert per_view < 0.02  # ~1-2 ms on an idle core; loose for a shared CI machine


def test_synthetic_studies_give_each_index_its_own_parts():
    kwargs = dict(seed=3, image_size=64, views=2, normal_fraction=0.3, prior_fraction=0.5)
    studies, data = SyntheticStudies(6, split="train", **kwargs), SyntheticCXR(6, **kwargs)
    for i in (4, 1, 4, 0, 5):
        study = data.study(i)
        prior = clean_report(study["prior_report"], "iu_xray") if study["prior_report"] else ""
        assert studies.study_id(i) == study["id"] and studies.prior(i) == prior
        assert studies.cleaned(i) == clean_report(study["report"], "iu_xray")
        assert studies.reference_labels(i) == study["chexpert"]
        np.testing.assert_array_equal(np.stack(studies.images(i))[..., 0], data.images(i))


@pytest.mark.parametrize("size", [33, 96])
def test_shapes_drawn_in_their_window_equal_the_formula_on_every_pixel(size):
    """The renderer evaluates ellipses and segments only inside a window around them; pasted into
    the image they must equal the formula evaluated (in float64) at every pixel, on shifted and
    scaled grids and for shapes that leave the image."""
    rng = np.random.default_rng(size)
    x0, y0 = cxr_render._grid(size)
    for _ in range(40):
        dx, dy, scale = rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02), rng.uniform(0.95, 1.05)
        x = (0.5 + (x0 - 0.5 - dx) / scale).astype(np.float32)
        y = (0.5 + (y0 - 0.5 - dy) / scale).astype(np.float32)
        xx, yy = x.astype(np.float64), y.astype(np.float64)
        cx, cy = rng.uniform(-0.1, 1.1, 2)
        ax, ay = rng.uniform(0.02, 0.5, 2)
        soft, power = rng.uniform(0.02, 0.2), rng.choice([2.0, 2.4, 3.5])
        d = (np.abs((xx - cx) / ax) ** power + np.abs((yy - cy) / ay) ** power) ** (1 / power)
        expected = np.clip((1 - d) / soft, 0, 1)
        got = cxr_render._full(x, y, cxr_render._ellipse(x, y, cx, cy, ax, ay, soft, power))
        np.testing.assert_allclose(got, expected, atol=2e-4)
        p, q = rng.uniform(-0.1, 1.1, 2), rng.uniform(-0.1, 1.1, 2)
        width = rng.uniform(0.003, 0.03)
        v = q - p
        t = np.clip(((xx - p[0]) * v[0] + (yy - p[1]) * v[1]) / (v @ v), 0, 1)
        dist = np.hypot(xx - p[0] - t * v[0], yy - p[1] - t * v[1])
        expected = np.clip(2 - dist / width, 0, 1)
        got = cxr_render._full(x, y, cxr_render._segment(x, y, tuple(p), tuple(q), width))
        np.testing.assert_allclose(got, expected, atol=2e-4)


# ---------------------------------------------------------------- knowledge and token tags


def _sentence_abnormality(tags, tokens):
    result, current = [], []
    for token, tag in zip(tokens, tags):
        current.append(int(tag))
        if token == ".":
            result.append(any(t in (1, 3) for t in current))
            current = []
    return result


def test_token_tags_agree_with_the_generator():
    kd = cxr.knowledge_dictionary()
    for split in ("train", "test"):
        ds = SyntheticCXR(300, split=split)
        for i in range(300):
            s = ds.study(i)
            tokens = clean_report(s["report"], "iu_xray").split()
            tags = token_tags(tokens, kd)
            assert tags.dtype == np.int32 and tags.shape == (len(tokens),)
            assert _sentence_abnormality(tags, tokens) == [a for _, a in s["sentences"]]


@pytest.mark.parametrize("text, expected", [
    ("the heart is enlarged . no pneumothorax .", [1, 1, 1, 3, 1, 2, 2, 0]),
    ("possible small nodule in the right upper lobe .", [3, 3, 3, 1, 1, 3, 3, 3, 1]),
    ("previously seen consolidation has resolved .", [0, 0, 2, 0, 0, 0]),
    ("there is no pneumothorax but there is a small pleural effusion .",
     [1, 1, 1, 3, 1, 1, 1, 1, 3, 1, 3, 1]),
    ("the lungs are clear . interval removal of the endotracheal tube .",
     [0, 2, 0, 2, 0, 0, 0, 0, 0, 0, 2, 0]),
    ("heart size is normal", [2, 2, 0, 2]),  # no final "." : still a sentence
])
def test_token_tags_by_hand(text, expected):
    tags = token_tags(text.split(), default_knowledge())
    assert tags.tolist() == expected, [TAGS[t] for t in tags]


def test_knowledge_files(tmp_path):
    kd = default_knowledge()
    assert {"heart", "lung", "pleura", "mediastinum", "bone", "devices"} <= set(kd)
    assert all(set(entry) == {"aliases", "normal", "abnormal"} for entry in kd.values())
    path = tmp_path / "k.json"
    path.write_text(json.dumps(kd))
    assert load_knowledge(path) == kd
    kd["lung"]["abnormal"] = "nodule"
    path.write_text(json.dumps(kd))
    with pytest.raises(ValueError, match=r"k\.json.*'lung'.*'abnormal'"):
        load_knowledge(path)
    path.write_text('{"heart": {"aliases": [], "normal": [], "abnormal": [], "extra": []}}')
    with pytest.raises(ValueError, match=r"k\.json.*'heart'.*extra"):
        load_knowledge(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"k\.json: invalid JSON"):
        load_knowledge(path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_knowledge(tmp_path / "missing.json")
    assert knowledge.default_knowledge() is not knowledge.default_knowledge()


# ---------------------------------------------------------------- R2Gen folder


@pytest.mark.parametrize("views", [2, 1])
def test_write_r2gen(tmp_path, views):
    path = cxr.write_r2gen(tmp_path, 3, 2, 2, image_size=48, views=views, seed=1)
    annotation = json.loads(path.read_text())
    assert [len(annotation[k]) for k in ("train", "val", "test")] == [3, 2, 2]
    reference = SyntheticCXR(2, split="val", image_size=48, views=views, seed=1)
    for split, entries in annotation.items():
        for entry in entries:
            assert entry["split"] == split and len(entry["image_path"]) == views
            for image_path in entry["image_path"]:
                with Image.open(tmp_path / "images" / image_path) as image:
                    assert image.size == (48, 48) and image.mode == "L"
            assert ("study_id" in entry) == ("subject_id" in entry) == (views == 1)
    first = annotation["val"][1]
    assert first["report"] == reference.study(1)["report"]
    with Image.open(tmp_path / "images" / first["image_path"][0]) as image:
        np.testing.assert_array_equal(np.asarray(image), reference.images(1)[0])
    if views == 1:
        ids = [e["study_id"] for v in annotation.values() for e in v]
        assert len(set(ids)) == 7 and all(isinstance(i, int) for i in ids)
    assert load_knowledge(tmp_path / "knowledge.json") == cxr.knowledge_dictionary()


def test_observations_cover_the_synthetic_positives():
    ds = SyntheticCXR(300, split="train")
    positives = {n for i in range(300) for n, v in ds.study(i)["chexpert"].items() if v == 1}
    assert positives == set(cxr.OBSERVATIONS)
    assert set(cxr.OBSERVATIONS) <= set(CHEXPERT_LABELS)
