"""Tests for mlx_research.data.chexpert: the rule-based labeler against the synthetic data's
labels and hand-labelled real-style reports, and CheXpert label CSVs."""

import pytest

from mlx_research.data.chexpert import CHEXPERT_LABELS, label_report, read_chexpert_csv
from mlx_research.data.cxr import OBSERVATIONS, SyntheticCXR
from mlx_research.data.r2gen import clean_report
from mlx_research.evaluation.clinical import clinical_scores

NF = {"No Finding": 1}


def test_label_names():
    assert CHEXPERT_LABELS == (
        "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
        "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
        "Pleural Other", "Fracture", "Support Devices")


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_labeler_recovers_the_synthetic_labels(split):
    ds = SyntheticCXR(300, split=split, seed=11)
    studies = [ds.study(i) for i in range(300)]
    reference = [s["chexpert"] for s in studies]
    raw = [label_report(s["report"]) for s in studies]
    cleaned = [label_report(clean_report(s["report"], "iu_xray")) for s in studies]
    for s, r, c in zip(studies, raw, cleaned):
        assert r == s["chexpert"], s["report"]
        assert c == s["chexpert"], s["report"]
    scores = clinical_scores(reference, cleaned)
    assert scores["f1_micro"] == 1.0
    assert clinical_scores(reference, cleaned, OBSERVATIONS)["f1_macro"] == 1.0


REAL_STYLE = [  # (report, labels written by hand)
    ("No focal consolidation, pleural effusion, or pneumothorax.",
     {"Consolidation": 0, "Pleural Effusion": 0, "Pneumothorax": 0, **NF}),
    ("Heart size is mildly enlarged.", {"Cardiomegaly": 1}),
    ("Possible left lower lobe atelectasis.", {"Atelectasis": -1}),
    ("Cannot exclude small right effusion.", {"Pleural Effusion": -1}),
    ("Interval removal of the right IJ catheter.", {"Support Devices": 0, **NF}),
    ("The heart is normal in size. The mediastinum is unremarkable. The lungs are clear.",
     {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0, **NF}),
    ("Heart size and mediastinal contours are within normal limits.",
     {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0, **NF}),
    ("Stable cardiomegaly. Small bilateral pleural effusions.",
     {"Cardiomegaly": 1, "Pleural Effusion": 1}),
    ("The heart may be mildly enlarged.", {"Cardiomegaly": -1}),
    ("Heart size is borderline.", {"Cardiomegaly": -1}),
    ("The heart is not enlarged.", {"Cardiomegaly": 0, **NF}),
    ("No new consolidation.", {"Consolidation": -1}),  # CheXpert: "no new" is uncertain
    ("No focal consolidation to suggest pneumonia.", {"Consolidation": 0, "Pneumonia": 0, **NF}),
    ("Right lower lobe opacity, likely atelectasis.", {"Lung Opacity": 1, "Atelectasis": -1}),
    ("Opacity at the left base may represent atelectasis or pneumonia.",
     {"Lung Opacity": 1, "Atelectasis": -1, "Pneumonia": -1}),
    ("Mild pulmonary edema, likely due to CHF.", {"Edema": 1, "Cardiomegaly": -1}),
    ("No pneumothorax, but there is a small right pleural effusion.",
     {"Pneumothorax": 0, "Pleural Effusion": 1}),
    ("Previously seen consolidation has resolved.", {"Consolidation": 0, **NF}),
    ("No change in the small left pleural effusion.", {"Pleural Effusion": 1}),
    ("Pneumothorax is no longer seen.", {"Pneumothorax": 0, **NF}),
    ("Endotracheal tube terminates 4.5 cm above the carina. Lungs are clear.",
     {"Support Devices": 1, **NF}),
    ("Calcified granuloma in the right upper lobe. No acute disease.", {}),  # other finding
    ("Small pericardial effusion.", NF),  # not a pleural effusion
    ("Old healed left rib fractures. No pneumothorax.", {"Fracture": 1, "Pneumothorax": 0}),
    ("1. Right upper lobe mass, suspicious for malignancy. 2. No pleural effusion.",
     {"Lung Lesion": 1, "Pleural Effusion": 0}),
    ("Nodular opacity in the right mid lung.", {"Lung Lesion": 1, "Lung Opacity": 1}),
    ("Normal cardiomediastinal silhouette. Clear lungs. No acute cardiopulmonary process.",
     {"Enlarged Cardiomediastinum": 0, **NF}),
    ("Widened mediastinum.", {"Enlarged Cardiomediastinum": 1}),
    ("Left PICC line tip in the superior vena cava. No pneumothorax.",
     {"Support Devices": 1, "Pneumothorax": 0, **NF}),
    ("Findings suggestive of pneumonia in the right lower lobe.", {"Pneumonia": -1}),
    ("Pleural thickening at the right apex.", {"Pleural Other": 1}),
    ("There is no evidence of pulmonary edema or pneumothorax.",
     {"Edema": 0, "Pneumothorax": 0, **NF}),
    ("", NF),
]


@pytest.mark.parametrize("report, expected", REAL_STYLE)
def test_labeler_on_real_style_reports(report, expected):
    assert label_report(report) == expected
    assert label_report(clean_report(report, "iu_xray")) == expected  # generated text is cleaned


def test_read_chexpert_csv(tmp_path):
    header = ("subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,"
              "Enlarged Cardiomediastinum,Fracture,Lung Lesion,Lung Opacity,No Finding,"
              "Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices")
    rows = ["10000032,50414267,,,,,,,,,1.0,,,,0.0,",
            "10000032,53189527,-1.0,1.0,,0.0,,,,,,1.0,,,,1.0"]
    path = tmp_path / "mimic-cxr-2.0.0-chexpert.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    labels = read_chexpert_csv(str(path))
    assert labels == {
        "50414267": {"No Finding": 1, "Pneumothorax": 0},
        "53189527": {"Atelectasis": -1, "Cardiomegaly": 1, "Edema": 0, "Pleural Effusion": 1,
                     "Support Devices": 1}}
    with pytest.raises(ValueError, match="subject_id 10000032 appears twice"):
        read_chexpert_csv(str(path), key="subject_id")


def test_read_chexpert_csv_errors(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("subject_id,study_id,Cardiomegaly\n1,2,1.0\n")
    with pytest.raises(ValueError, match=r"labels\.csv: missing column.*'No Finding'"):
        read_chexpert_csv(str(path))
    columns = ",".join(CHEXPERT_LABELS)
    path.write_text(f"study_id,{columns}\n7,{'yes,' + ',' * 12}\n")
    with pytest.raises(ValueError, match=r"labels\.csv:2: No Finding='yes'"):
        read_chexpert_csv(str(path))
    path.write_text(f"study_id,{columns}\n7,{',' * 13}\n7,{',' * 13}\n")
    with pytest.raises(ValueError, match=r"labels\.csv:3: study_id 7 appears twice"):
        read_chexpert_csv(str(path))
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_chexpert_csv(str(tmp_path / "nope.csv"))
