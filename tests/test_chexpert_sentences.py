"""The CheXpert labeler (mlx_research.data.chexpert) on sentences written in the style of real IU
X-Ray and MIMIC-CXR reports.

Every label was decided by reading the sentence under CheXpert's conventions, not by running the
labeler: 1 positive, 0 negative, -1 uncertain; an observation the sentence does not mention is
absent; "No Finding" is 1 exactly when nothing but Support Devices is positive or uncertain
(CheXpert's other findings, e.g. emphysema, granuloma, degenerative change, hyperinflation, block
it too). CheXpert conventions used below: "no new X" is uncertain; "stable" / "unchanged" heart
or mediastinal contours are uncertain; "upper limits of normal" is normal; vascular congestion is
an uncertain sign of edema; a positive or uncertain "heart failure" / "CHF" adds an uncertain
Cardiomegaly; per observation positive beats uncertain beats negative.
"""

import pytest

from mlx_research.data.chexpert import CHEXPERT_LABELS, label_report
from mlx_research.data.r2gen import clean_report

NF, EC, CM, LO, LL, ED, CO, PN, AT, PX, EF, PO, FR, SD = CHEXPERT_LABELS

SENTENCES = [  # (sentence, {observation: label})
    # ---- normal studies and negation: "no", "without", "free of", "negative for", "resolved"
    ("The cardiomediastinal silhouette and pulmonary vasculature are within normal limits in "
     "size.", {EC: 0, NF: 1}),
    ("The lungs are clear of focal airspace disease, pneumothorax, or pleural effusion.",
     {LO: 0, PX: 0, EF: 0, NF: 1}),
    ("Heart size within normal limits. No focal airspace consolidation. No pleural effusion or "
     "pneumothorax.", {CM: 0, CO: 0, EF: 0, PX: 0, NF: 1}),
    ("Chest radiograph is negative for pneumonia.", {PN: 0, NF: 1}),
    ("Lungs are free of focal infiltrates.", {LO: 0, NF: 1}),
    ("No evidence of pneumothorax, pleural effusion, or focal consolidation.",
     {PX: 0, EF: 0, CO: 0, NF: 1}),
    ("No large pleural effusion.", {EF: 0, NF: 1}),
    ("The lungs are clear without evidence of edema or pneumonia.", {ED: 0, PN: 0, NF: 1}),
    ("The previously noted left lower lobe pneumonia has resolved.", {PN: 0, NF: 1}),
    ("Interval resolution of the right pleural effusion.", {EF: 0, NF: 1}),
    ("Resolved left lower lobe pneumonia.", {PN: 0, NF: 1}),
    ("Interval resolution of pulmonary edema.", {ED: 0, NF: 1}),
    ("Left basilar atelectasis has resolved.", {AT: 0, NF: 1}),
    ("No displaced rib fractures.", {FR: 0, NF: 1}),
    ("No pleural effusion or pleural thickening.", {EF: 0, PO: 0, NF: 1}),
    ("No evidence of CHF.", {ED: 0, NF: 1}),
    ("No pneumothorax following removal of the right chest tube.", {PX: 0, SD: 0, NF: 1}),
    ("The right-sided chest tube has been removed, with no residual pneumothorax.",
     {SD: 0, PX: 0, NF: 1}),
    # ---- positive findings
    ("Moderate cardiomegaly with small bilateral pleural effusions.", {CM: 1, EF: 1}),
    ("Large right pleural effusion with adjacent compressive atelectasis.", {EF: 1, AT: 1}),
    ("Patchy bibasilar airspace opacities.", {LO: 1}),
    ("Right upper lobe consolidation consistent with pneumonia.", {CO: 1, PN: 1}),
    ("Complete collapse of the left lower lobe.", {AT: 1}),
    ("Small left apical pneumothorax.", {PX: 1}),
    ("Tiny right apical pneumothorax is unchanged.", {PX: 1}),
    ("Moderate pulmonary edema.", {ED: 1}),
    ("Mild pulmonary edema has improved.", {ED: 1}),
    ("Acute displaced fracture of the right seventh rib.", {FR: 1}),
    ("Healed right rib fractures.", {FR: 1}),
    ("Linear atelectasis at the left base.", {AT: 1}),
    ("Minimal bibasilar atelectasis.", {AT: 1}),
    ("Stable mediastinal widening.", {EC: 1}),
    ("3 cm mass in the right upper lobe, concerning for malignancy.", {LL: 1}),
    ("Multiple bilateral pulmonary nodules, consistent with metastatic disease.", {LL: 1}),
    ("Biapical pleural thickening.", {PO: 1}),
    ("Right apical pleural scarring.", {PO: 1}),
    ("Left lower lobe pneumonia with small parapneumonic effusion.", {PN: 1, EF: 1}),
    ("Findings consistent with mild congestive heart failure.", {ED: 1, CM: -1}),
    # ---- heart and mediastinum described by a qualifier
    ("Heart size is at the upper limits of normal.", {CM: 0, NF: 1}),
    ("Normal heart size and mediastinal contours.", {CM: 0, EC: 0, NF: 1}),
    ("Stable cardiomediastinal silhouette.", {EC: -1}),
    ("Heart size is unchanged.", {CM: -1}),
    ("The heart size is normal, the mediastinal contours are stable.", {CM: 0, EC: -1}),
    ("The cardiac silhouette is enlarged.", {CM: 1}),
    ("The mediastinum is widened.", {EC: 1}),
    ("Enlarged cardiac silhouette with pulmonary edema.", {CM: 1, ED: 1}),
    ("Cardiomegaly is unchanged.", {CM: 1}),
    # ---- uncertainty: "may represent", "cannot be excluded", "possible", "versus", "likely"
    ("Findings may represent early pneumonia.", {PN: -1}),
    ("A small pneumothorax cannot be entirely excluded.", {PX: -1}),
    ("Infection is not excluded.", {PN: -1}),
    ("Possible trace right pleural effusion.", {EF: -1}),
    ("Right basilar opacity may reflect atelectasis.", {LO: 1, AT: -1}),
    ("Left basilar opacity most likely represents atelectasis.", {LO: 1, AT: -1}),
    ("Questionable small nodule projecting over the right upper lung.", {LL: -1}),
    ("Questionable retrocardiac opacity.", {LO: -1}),
    ("Findings are suspicious for pneumonia.", {PN: -1}),
    ("Concern for developing pneumonia in the left lower lobe.", {PN: -1}),
    ("Probable small right effusion.", {EF: -1}),
    ("Likely small bilateral pleural effusions.", {EF: -1}),
    ("Mild interstitial edema is suspected.", {ED: -1}),
    ("A small pneumothorax may be present at the right apex.", {PX: -1}),
    ("Subtle right lower lobe opacity could represent aspiration or pneumonia.",
     {LO: 1, PN: -1}),
    ("Differential diagnosis includes pneumonia and atelectasis.", {PN: -1, AT: -1}),
    ("Atelectasis and/or consolidation at the left base.", {AT: -1, CO: -1}),
    ("Possible nondisplaced fracture of the left sixth rib.", {FR: -1}),
    ("Linear structure over the left upper quadrant may represent a surgical drain.",
     {SD: -1, NF: 1}),
    ("Blunting of the left costophrenic angle may reflect pleural thickening or small effusion.",
     {PO: -1, EF: -1}),
    ("Mild pulmonary vascular congestion.", {ED: -1}),
    ("Mild vascular congestion without frank edema.", {ED: -1}),
    ("No new pleural effusion or pneumothorax.", {EF: -1, PX: -1}),
    ("Suspected pneumonia has resolved.", {PN: 0, NF: 1}),
    # ---- a negation scopes over the uncertainty word after it
    ("No suspicious pulmonary opacity.", {LO: 0, NF: 1}),
    ("No definite focal consolidation.", {CO: 0, NF: 1}),
    ("No suspicious pulmonary nodules or masses.", {LL: 0, NF: 1}),
    ("No worrisome lung nodule.", {LL: 0, NF: 1}),
    ("Negative for suspicious nodules.", {LL: 0, NF: 1}),
    ("No findings suspicious for pneumonia.", {PN: 0, NF: 1}),
    ("No focal opacity concerning for pneumonia.", {LO: 0, PN: 0, NF: 1}),
    ("No airspace opacity to suggest pneumonia.", {LO: 0, PN: 0, NF: 1}),
    ("Without definite evidence of pneumothorax.", {PX: 0, NF: 1}),
    # ---- an uncertainty word stays inside its phrase
    ("Small left pleural effusion with adjacent atelectasis versus pneumonia.",
     {EF: 1, AT: -1, PN: -1}),
    ("Left lower lobe opacity, atelectasis versus consolidation.", {LO: 1, AT: -1, CO: -1}),
    ("Bibasilar atelectasis versus consolidation, with small bilateral effusions.",
     {AT: -1, CO: -1, EF: 1}),
    ("Right basilar opacities, likely atelectasis, with a small right pleural effusion.",
     {LO: 1, AT: -1, EF: 1}),
    ("Left lower lobe opacity is likely atelectasis.", {LO: 1, AT: -1}),
    ("Right middle lobe opacity may be atelectasis or pneumonia.", {LO: 1, AT: -1, PN: -1}),
    ("Cardiomegaly with pulmonary edema, possibly with superimposed pneumonia.",
     {CM: 1, ED: 1, PN: -1}),
    ("Mild pulmonary edema and small bilateral effusions, with possible superimposed pneumonia.",
     {ED: 1, EF: 1, PN: -1}),
    ("Possible small left effusion, no pneumothorax.", {EF: -1, PX: 0}),
    ("No pneumothorax, possible small left effusion.", {PX: 0, EF: -1}),
    # ---- a "non-" prefix is part of a description, not a negation
    ("Stable non-suspicious nodule in the left upper lobe.", {LL: 1}),
    ("A non-enhancing nodule is again seen in the right lower lobe.", {LL: 1}),
    ("A non-calcified nodule in the right upper lobe.", {LL: 1}),
    ("Nonspecific right basilar opacity.", {LO: 1}),
    ("Non-displaced fracture of the left clavicle.", {FR: 1}),
    ("Non-acute appearing rib fractures.", {FR: 1}),
    ("Non-loculated right pleural effusion.", {EF: 1}),
    # ---- compound sentences
    ("There is no pneumothorax; however, a small right effusion is present.", {PX: 0, EF: 1}),
    ("Heart size is normal and the lungs are clear.", {CM: 0, NF: 1}),
    ("The lungs are hyperinflated but clear, and there is no focal consolidation.", {CO: 0}),
    ("Increased left basilar opacity, which may reflect atelectasis or pneumonia.",
     {LO: 1, AT: -1, PN: -1}),
    ("Although the heart size is normal, there is mild interstitial edema.", {CM: 0, ED: 1}),
    ("Low lung volumes with bibasilar atelectasis; no pneumothorax.", {AT: 1, PX: 0}),
    ("Right pleural effusion has decreased, and the left effusion is unchanged.", {EF: 1}),
    ("Patchy opacity in the right lower lobe, which could be due to aspiration or pneumonia in "
     "the appropriate clinical setting.", {LO: 1, PN: -1}),
    ("Opacity in the left upper lobe is concerning for pneumonia.", {LO: 1, PN: -1}),
    ("No acute cardiopulmonary process. Degenerative changes of the thoracic spine.", {}),
    ("Emphysema without acute superimposed process.", {}),
    # ---- lists
    ("No effusion, pneumothorax, or consolidation.", {EF: 0, PX: 0, CO: 0, NF: 1}),
    ("No focal consolidation, pleural effusion, pneumothorax, or pulmonary edema.",
     {CO: 0, EF: 0, PX: 0, ED: 0, NF: 1}),
    ("There is no focal airspace opacity, pleural effusion, or pneumothorax.",
     {LO: 0, EF: 0, PX: 0, NF: 1}),
    ("Without pneumothorax or large pleural effusion.", {PX: 0, EF: 0, NF: 1}),
    ("Bilateral pleural effusions, pulmonary edema, and cardiomegaly.", {EF: 1, ED: 1, CM: 1}),
    ("Cardiomegaly, pulmonary vascular congestion, and small bilateral effusions, consistent "
     "with congestive heart failure.", {CM: 1, ED: 1, EF: 1}),
    # ---- support devices
    ("Left chest wall pacemaker with leads terminating in the right atrium and right ventricle.",
     {SD: 1, NF: 1}),
    ("Right internal jugular central venous catheter terminates in the mid SVC.",
     {SD: 1, NF: 1}),
    ("Enteric tube tip in the stomach.", {SD: 1, NF: 1}),
    ("Endotracheal and nasogastric tubes are in standard position, and there is no "
     "pneumothorax.", {SD: 1, PX: 0, NF: 1}),
    ("Right IJ catheter tip at the cavoatrial junction. Lungs are clear. Heart size is normal.",
     {SD: 1, CM: 0, NF: 1}),
    ("Dual-lead pacemaker in place. No acute cardiopulmonary abnormality.", {SD: 1, NF: 1}),
    # ---- whole impressions in the style of the CheXpert labeler's sample reports
    ("Heart size normal and lungs clear. No edema or effusion. No pneumonia",
     {CM: 0, ED: 0, EF: 0, PN: 0, NF: 1}),
    ("1. Small right pleural effusion with adjacent atelectasis. Left effusion is also present."
     "\n\n2. Cardiomegaly without overt pulmonary edema.", {EF: 1, AT: 1, CM: 1, ED: 0}),
    ("Minimal patchy opacity at the right base, may reflect atelectasis or pneumonia.",
     {LO: 1, AT: -1, PN: -1}),
    ("1. Stable moderate cardiomegaly. 2. Hyperinflated but otherwise clear lungs.", {CM: 1}),
]


@pytest.mark.parametrize("sentence, expected", SENTENCES)
def test_sentence_labels(sentence, expected):
    assert label_report(sentence) == expected
    assert label_report(clean_report(sentence, "mimic_cxr")) == expected  # generated text


def test_sentences_cover_every_observation_and_label():
    assert len(SENTENCES) >= 80
    seen = {(name, label) for _, labels in SENTENCES for name, label in labels.items()}
    for name in CHEXPERT_LABELS[1:]:
        assert {(name, 1), (name, 0), (name, -1)} <= seen, name
