"""Tests for R2Gen-format data: clean_report, R2GenAnnotations, Vocabulary, ReportImageTransform.

Expected cleaned reports are written by hand from R2Gen's rules (modules/tokenizers.py).
"""

import json

import numpy as np
import pytest
from PIL import Image

from mlx_research.data.r2gen import DEFAULTS, R2GenAnnotations, clean_report
from mlx_research.data.report_transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ReportImageTransform,
    shorter_side_size,
)
from mlx_research.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Vocabulary
from mlx_research.errors import ConfigError

# ---------------------------------------------------------------- clean_report

_MIMIC_STYLE = (
    "FINDINGS:\n\n1. Heart size is normal.\n2. No focal consolidation, effusion, or "
    "pneumothorax.\n\nIMPRESSION:  No acute process.___"
)


@pytest.mark.parametrize("dataset, text, expected", [
    # numbering "1. 2. 3.", a doubled dot, "  3. " leaving an empty sentence, "!" and case
    ("iu_xray", "1. The heart is normal. 2. No pleural effusion..  3. Lungs are CLEAR!",
     "the heart is normal . no pleural effusion .  . lungs are clear ."),
    # "xxxx" and hyphens kept; ";():," quotes and "/" removed; "1. " dropped inside "T11. "
    ("iu_xray", 'XXXX-year-old with chest pain; heart size is within normal limits (normal).  '
     'Mediastinum: stable,T11. vertebra "normal"/ok',
     "xxxx-year-old with chest pain heart size is within normal limits normal . "
     "mediastinum stablet1vertebra normalok ."),
    # trailing dots and spaces
    ("iu_xray", "Normal chest...   ", "normal chest ."),
    # IU X-Ray keeps repeated spaces inside a sentence, MIMIC-CXR shortens them
    ("iu_xray", "Heart  is   normal. ", "heart  is   normal ."),
    ("mimic_cxr", "Heart  is   normal. ", "heart is normal ."),
    # the class ":"-"[" removes <=>@ and brackets; digits stay; removal after the strip
    ("iu_xray", "Stable T-spine <5 mm> @ C7=normal. [Unchanged] {1/2} 50% & 3+ *",
     "stable t-spine 5 mm  c7normal . unchanged 12 50  3  ."),
    # MIMIC-CXR: line breaks become spaces, "___" shortens to "_" (then removed)
    ("mimic_cxr", _MIMIC_STYLE,
     "findings heart size is normal . no focal consolidation effusion or pneumothorax . "
     "impression no acute process ."),
    # IU X-Ray keeps the line breaks, so "\n2. " is no numbering there
    ("iu_xray", _MIMIC_STYLE,
     "findings\n\nheart size is normal\n2 . no focal consolidation effusion or pneumothorax"
     "\n\nimpression  no acute process ."),
    ("iu_xray", "", " ."),
    ("mimic_cxr", "1. ...", " ."),
])
def test_clean_report(dataset, text, expected):
    assert clean_report(text, dataset) == expected


def test_clean_report_unknown_dataset():
    with pytest.raises(ConfigError, match="'chexpert' must be one of iu_xray, mimic_cxr"):
        clean_report("a.", "chexpert")


# ---------------------------------------------------------------- Vocabulary


def test_vocabulary_threshold_boundary_and_order():
    reports = ["b c . 2", "c 10 .", "a-b 10 . 2", "c b . 10 a-b 2", "zz ."]
    # counts: b 2, c 3, . 5, 2 3, 10 3, a-b 2, zz 1
    vocab = Vocabulary.build(reports, threshold=2)
    assert vocab.words == (".", "10", "2", "a-b", "b", "c")  # count == threshold kept
    assert len(vocab) == 10
    assert Vocabulary.build(reports, threshold=3).words == (".", "10", "2", "c")
    assert vocab.token_id(".") == 4 and vocab.token_id("c") == 9
    assert vocab.token_id("zz") == UNK_ID


def test_encode_decode_round_trip_and_truncation():
    vocab = Vocabulary(["heart", "normal", ".", "is"])  # ids 4, 5, 6, 7
    ids = vocab.encode("heart  is normal .", 7)
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, [4, 7, 5, 6, EOS_ID, PAD_ID, PAD_ID])
    assert vocab.decode(ids) == "heart is normal ."
    np.testing.assert_array_equal(vocab.encode("heart is normal .", 5), [4, 7, 5, 6, EOS_ID])
    np.testing.assert_array_equal(vocab.encode("heart is normal .", 3), [4, 7, EOS_ID])
    np.testing.assert_array_equal(vocab.encode("heart is normal .", 1), [EOS_ID])
    np.testing.assert_array_equal(vocab.encode("lungs is", 3), [UNK_ID, 7, EOS_ID])
    assert vocab.decode([BOS_ID, 4, UNK_ID, 99, -1, 6, PAD_ID, 5]) == "heart <unk> <unk> <unk> ."
    assert vocab.decode(np.array([5, EOS_ID, 4])) == "normal"
    with pytest.raises(ValueError, match="max_len=0"):
        vocab.encode("heart", 0)


def test_vocabulary_save_load(tmp_path):
    vocab = Vocabulary(["b", "a"])
    path = tmp_path / "vocab.json"
    vocab.save(path)
    assert Vocabulary.load(path).words == ("b", "a")
    with pytest.raises(FileNotFoundError, match="missing.json: vocabulary file not found"):
        Vocabulary.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ConfigError, match="bad.json: invalid vocabulary JSON"):
        Vocabulary.load(bad)
    bad.write_text(json.dumps({"special_tokens": ["<pad>"], "words": []}))
    with pytest.raises(ConfigError, match="bad.json: special tokens"):
        Vocabulary.load(bad)
    bad.write_text(json.dumps({"special_tokens": ["<pad>", "<bos>", "<eos>", "<unk>"],
                               "words": ["a", "a"]}))
    with pytest.raises(ConfigError, match="bad.json: word 1 \\('a'\\) is a duplicate"):
        Vocabulary.load(bad)


# ---------------------------------------------------------------- R2GenAnnotations


def _image(seed, height, width):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _iu_folder(tmp_path, entries=None, write_images=True):
    """An IU X-Ray-style folder: two PNG views per study; returns {relative path: array}."""
    entries = entries if entries is not None else [
        {"id": "CXR1_1_IM-0001", "report": "The heart is normal. No effusion.",
         "image_path": ["CXR1_1_IM-0001/0.png", "CXR1_1_IM-0001/1.png"]},
        {"id": "CXR2_1_IM-0002", "report": "1. Lungs are clear. 2. XXXX opacity.",
         "image_path": ["CXR2_1_IM-0002/0.png", "CXR2_1_IM-0002/1.png"]},
    ]
    arrays = {}
    if write_images:
        for i, entry in enumerate(entries):
            for v, name in enumerate(entry.get("image_path", [])):
                arrays[name] = _image(10 * i + v, 12 + v, 10 + 2 * i)
                (tmp_path / "images" / name).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arrays[name]).save(tmp_path / "images" / name)
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "annotation.json").write_text(
        json.dumps({"train": entries, "val": [], "test": entries[:1]}))
    return arrays


def test_iu_folder_loads(tmp_path):
    arrays = _iu_folder(tmp_path)
    data = R2GenAnnotations(tmp_path, "train", "iu_xray")
    assert len(data) == 2 and data.views == 2
    assert data.reports == (
        "the heart is normal . no effusion .", "lungs are clear . xxxx opacity .")
    entry = data.entry(-1)
    assert entry["id"] == "CXR2_1_IM-0002" and entry["cleaned"] == data.reports[1]
    assert entry["report"] == "1. Lungs are clear. 2. XXXX opacity."
    views = data.load_images(1)
    assert len(views) == 2
    np.testing.assert_array_equal(views[0], arrays["CXR2_1_IM-0002/0.png"])
    np.testing.assert_array_equal(views[1], arrays["CXR2_1_IM-0002/1.png"])
    gray = data.load_images(0, mode="L")[0]
    expected = np.asarray(Image.fromarray(arrays["CXR1_1_IM-0001/0.png"]).convert("L"))
    assert gray.shape == (12, 10)
    np.testing.assert_array_equal(gray, expected)
    assert len(R2GenAnnotations(tmp_path, "test", "iu_xray")) == 1
    with pytest.raises(IndexError):
        data.entry(2)


def test_mimic_folder_one_view_keeps_ids(tmp_path):
    entry = {"id": "d1", "study_id": 50414267, "subject_id": 10000032, "report": "No effusion.",
             "image_path": ["p10/p10000032/s50414267/d1.jpg"]}
    folder = tmp_path / "images" / "p10" / "p10000032" / "s50414267"
    folder.mkdir(parents=True)
    Image.fromarray(_image(0, 9, 8)).save(folder / "d1.jpg")
    (tmp_path / "annotation.json").write_text(json.dumps({"train": [entry]}))
    data = R2GenAnnotations(tmp_path, "train", "mimic_cxr")
    assert data.views == 1 and DEFAULTS["mimic_cxr"]["max_len"] == 100
    assert data.entry(0)["study_id"] == 50414267 and data.entry(0)["subject_id"] == 10000032
    (image,) = data.load_images(0)
    assert image.shape == (9, 8, 3) and image.dtype == np.uint8


def _one_line_error(error, tmp_path, split="train", dataset="iu_xray"):
    with pytest.raises(error) as info:
        R2GenAnnotations(tmp_path, split, dataset)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_image_file_names_file_and_entry(tmp_path):
    _iu_folder(tmp_path)
    (tmp_path / "images" / "CXR2_1_IM-0002" / "1.png").unlink()
    message = _one_line_error(FileNotFoundError, tmp_path)
    assert message == (
        f"{tmp_path}/images/CXR2_1_IM-0002/1.png: missing image file "
        "(train entry 1, id 'CXR2_1_IM-0002')."
    )


@pytest.mark.parametrize("change, expected", [
    (lambda e: e.pop("report"), "train entry 1 (id 'CXR2_1_IM-0002'): no 'report'."),
    (lambda e: e.update(report="1. ..  "), "train entry 1 (id 'CXR2_1_IM-0002'): empty report."),
    (lambda e: e.update(report=7),
     "train entry 1 (id 'CXR2_1_IM-0002'): 'report' is not a string."),
    (lambda e: e.pop("id"), "train entry 1: 'id' is missing or not a string."),
    (lambda e: e.update(image_path=["CXR2_1_IM-0002/0.png"]),
     "train entry 1 (id 'CXR2_1_IM-0002'): 'image_path' must list at least 2 image file name(s)"),
], ids=["no-report", "empty-report", "report-not-str", "no-id", "one-view"])
def test_malformed_entry_names_file_and_entry(tmp_path, change, expected):
    entries = [
        {"id": f"CXR{i}_1_IM-000{i}", "report": "Normal.",
         "image_path": [f"CXR{i}_1_IM-000{i}/0.png", f"CXR{i}_1_IM-000{i}/1.png"]}
        for i in (1, 2)
    ]
    change(entries[1])
    _iu_folder(tmp_path, entries, write_images=False)
    message = _one_line_error(ConfigError, tmp_path)
    assert message.startswith(f"{tmp_path}/annotation.json: {expected}")


def test_missing_split_and_files(tmp_path):
    _iu_folder(tmp_path)
    message = _one_line_error(ConfigError, tmp_path, split="validation")
    assert message == (f"{tmp_path}/annotation.json: no list for split 'validation' "
                       "(splits found: 'train', 'val', 'test').")
    message = _one_line_error(FileNotFoundError, tmp_path / "nowhere")
    assert message == f"{tmp_path}/nowhere/annotation.json: annotation file not found."
    (tmp_path / "annotation.json").write_text('{"train": [}')
    assert _one_line_error(ConfigError, tmp_path).startswith(
        f"{tmp_path}/annotation.json: invalid JSON at line 1")


# ---------------------------------------------------------------- ReportImageTransform


def test_shorter_side_size_truncates_like_torchvision():
    assert shorter_side_size(30, 20, 16) == (24, 16)
    assert shorter_side_size(23, 20, 16) == (18, 16)  # 16 * 23 / 20 = 18.4
    assert shorter_side_size(27, 20, 16) == (21, 16)  # 21.6
    assert shorter_side_size(20, 27, 16) == (16, 21)
    assert shorter_side_size(20, 23, 16) == (16, 18)
    assert shorter_side_size(20, 20, 16) == (16, 16)


def _normalized(pixels, mean, std):
    return (np.asarray(pixels, np.float64) / 255.0 - np.asarray(mean)) / np.asarray(std)


def test_train_transform_crops_and_flips_each_view_independently():
    views = np.stack([_image(1, 23, 20), _image(2, 23, 20), _image(3, 23, 20)])
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    transform = ReportImageTransform(resize=16, crop=12, train=True, mean=mean, std=std)
    out = transform(views, np.random.default_rng(5))
    assert out.shape == (3, 12, 12, 3) and out.dtype == np.float32

    rng = np.random.default_rng(5)
    offsets, flips = [], []
    for v, view in enumerate(views):
        resized = np.asarray(Image.fromarray(view).resize((16, 18), Image.BILINEAR))
        top, left = rng.integers(0, 18 - 12 + 1), rng.integers(0, 16 - 12 + 1)
        patch = resized[top:top + 12, left:left + 12]
        flip = rng.random() < 0.5
        offsets.append((top, left))
        flips.append(flip)
        expected = _normalized(patch[:, ::-1] if flip else patch, mean, std)
        np.testing.assert_allclose(out[v], expected, atol=1e-6)
    assert len(set(offsets)) == 3 and len(set(flips)) == 2  # the views were drawn independently


def test_train_transform_without_hflip_only_crops():
    views = np.stack([_image(v, 23, 20) for v in range(1, 7)])
    transform = ReportImageTransform(resize=16, crop=12, train=True, hflip=False)
    out = transform(views, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    for v, view in enumerate(views):  # no flip drawn: the next view's offsets follow directly
        resized = np.asarray(Image.fromarray(view).resize((16, 18), Image.BILINEAR))
        top, left = rng.integers(0, 18 - 12 + 1), rng.integers(0, 16 - 12 + 1)
        expected = _normalized(resized[top:top + 12, left:left + 12], IMAGENET_MEAN, IMAGENET_STD)
        np.testing.assert_allclose(out[v], expected, atol=1e-6)


def test_eval_transform_grayscale_and_lists():
    views = [_image(4, 30, 20)[..., 0], _image(5, 17, 25)[..., 0]]  # two sizes, grayscale
    transform = ReportImageTransform(resize=16, crop=12, train=False, mean=(0.5,), std=(0.25,))
    out = transform(views)
    assert out.shape == (2, 12, 12, 1)
    for v, view in enumerate(views):
        resized = np.asarray(Image.fromarray(view).resize((12, 12), Image.BILINEAR))
        np.testing.assert_allclose(out[v, ..., 0], _normalized(resized, 0.5, 0.25), atol=1e-6)
    constant = np.full((2, 14, 14), 51, np.uint8)  # 51 / 255 = 0.2
    np.testing.assert_allclose(transform(constant), np.full((2, 12, 12, 1), -1.2), atol=1e-6)


def test_transform_errors():
    with pytest.raises(ConfigError, match="crop=20 and resize=16"):
        ReportImageTransform(resize=16, crop=20, train=True)
    transform = ReportImageTransform(resize=16, crop=12, train=True)
    with pytest.raises(ValueError, match="needs an rng"):
        transform(np.zeros((1, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="1 channel\\(s\\); mean/std have 3"):
        transform(np.zeros((1, 16, 16), np.uint8), np.random.default_rng(0))
