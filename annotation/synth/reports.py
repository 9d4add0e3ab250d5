"""CT-RATE style radiology reports written from a scan's ground truth: every finding with its
location and measurement, normal statements for what is absent, comparisons on follow-ups, and
several phrasings per statement (picked by a stable hash) so reports do not all read alike."""
from __future__ import annotations

from annotation.qa_templates import stable_pick

NOT_GIVEN = "Not given."

_FINDING: dict[str, tuple[str, ...]] = {
    "nodule": ("A {axial} solid nodule is seen in the {lobe}.",
               "In the {lobe}, a nodule measuring {axial} was observed.",
               "There is a {diameter} nodule in the {lobe}."),
    "pleural_effusion": ("Pleural effusion reaching {thickness} in thickness is seen in the {location}.",
                         "Effusion measuring {thickness} at its thickest point was observed in the {location}."),
    "cardiomegaly": ("The heart is enlarged (cardiomegaly), with a transverse diameter of {transverse}.",
                     "Cardiomegaly is present; the transverse cardiac diameter is {transverse}."),
    "pericardial_effusion": ("Pericardial effusion measuring {thickness} in thickness is present.",
                             "Fluid reaching {thickness} is seen in the pericardial space."),
    "consolidation": ("A consolidation area of {axial} containing air bronchograms is seen in the {lobe}.",
                      "Consolidation with air bronchograms, about {axial}, was observed in the {lobe}."),
    "lung_opacity": ("A ground glass density area of {axial} is seen in the {lobe}.",
                     "Ground glass opacity is observed in the {lobe}, measuring {axial}."),
    "atelectasis": ("Plate-like atelectasis is seen in the {lobe}.",
                    "Subsegmental atelectatic changes were observed in the {lobe}."),
    "emphysema": ("Centrilobular emphysematous changes are seen in both lung upper lobes.",
                  "Emphysema is present, predominantly in the upper lobes of both lungs."),
    "arterial_calcification": ("Atherosclerotic calcific plaques are observed in the thoracic aorta.",
                               "Calcified atheroma plaques are seen in the wall of the thoracic aorta."),
    "coronary_calcification": ("Calcifications are observed in the coronary artery walls.",
                               "Coronary artery wall calcifications are present."),
    "lymphadenopathy": ("Pathologically enlarged lymph nodes are seen in the {location} area, the largest measuring {axial} (short axis {short_axis}).",
                        "Lymphadenopathy is present in the {location} region; the largest node measures {axial}."),
    "medical_material": ("A {device} is seen in the {side} anterior chest wall, with its catheter extending into the superior vena cava.",
                         "There is a {device} on the {side} anterior chest wall."),
    "hiatal_hernia": ("A hiatal hernia measuring {axial} is seen above the esophageal hiatus.",
                      "Hiatal hernia is observed, measuring {axial}."),
    "bronchiectasis": ("Cylindrical bronchiectasis with wall thickening is seen in the {lobe}.",
                       "Dilated bronchi consistent with bronchiectasis are observed in the {lobe}."),
    "fibrotic_sequela": ("Fibrotic bands (sequelae) are seen in the {location}.",
                         "Linear fibrotic sequelae were observed in the {location}."),
}
_NORMAL: dict[str, tuple[str, ...]] = {
    "airway": ("Trachea and both main bronchi are in the midline and open.", "Trachea and main bronchi are patent."),
    "heart": ("Heart size is normal.", "Heart contour and size are within normal limits."),
    "pericardium": ("No pericardial effusion was detected.", "No pericardial effusion or thickening is seen."),
    "nodes": ("No lymph node of pathological size was detected in the mediastinum or hila.",
              "Mediastinal and hilar lymph nodes are not enlarged."),
    "pleura": ("No pleural effusion is seen.", "There is no pleural effusion or thickening."),
    "lungs": ("No mass or infiltrative lesion was detected in either lung.", "Lung parenchyma is clear; no nodule or consolidation."),
    "bones": ("No lytic or destructive lesion was detected in the bones within the field of view.",
              "Bony structures are unremarkable."),
}
_COMPARISON = {
    "new": ("This finding is new compared with the previous examination.", "This was not present on the prior study."),
    "larger": ("It has increased in size compared with the previous examination.", "It is larger than on the prior study."),
    "smaller": ("It has decreased in size compared with the previous examination.", "It is smaller than on the prior study."),
    "stable": ("It is stable compared with the previous examination.", "No significant change from the prior study."),
}
_IMPRESSION = {
    "nodule": "{lobe} nodule ({axial})", "pleural_effusion": "Pleural effusion in the {location} ({thickness})",
    "cardiomegaly": "Cardiomegaly", "pericardial_effusion": "Pericardial effusion ({thickness})",
    "consolidation": "Consolidation in the {lobe}", "lung_opacity": "Ground glass opacity in the {lobe}",
    "atelectasis": "Atelectasis in the {lobe}", "emphysema": "Emphysema",
    "arterial_calcification": "Aortic atherosclerosis", "coronary_calcification": "Coronary artery calcification",
    "lymphadenopathy": "Lymphadenopathy ({location})", "medical_material": "{device_cap} in place",
    "hiatal_hernia": "Hiatal hernia", "bronchiectasis": "Bronchiectasis in the {lobe}",
    "fibrotic_sequela": "Fibrotic sequelae in the {location}",
}


def _slots(record: dict, device: str | None) -> dict[str, str]:
    size = record["size_mm"]
    slots = {"lobe": record.get("lobe") or "", "location": record["location"], "side": record["side"],
             "axial": "{}x{} mm".format(*size["axial"]), "device": device or "device",
             "device_cap": (device or "device").capitalize()}
    for key in ("thickness", "transverse", "short_axis", "diameter"):
        if key in size:
            slots[key] = f"{size[key]} mm"
    return slots


def write_report(volume_name: str, findings: list[dict], previous: list[dict] | None,
                 devices: dict[str, str]) -> dict[str, str]:
    """The four CT-RATE report sections of one scan. `previous` holds the prior scan's findings
    (None for a first scan); `devices` maps a device location to its name."""
    sentences, impressions = [], []
    prior = {(r["type"], r["location"]): r for r in previous or []}
    for record in findings:
        slots = _slots(record, devices.get(record["location"]))
        key = (volume_name, record["type"], record["location"])
        sentences.append(stable_pick(_FINDING[record["type"]], *key).format(**slots))
        if previous is not None:
            sentences.append(stable_pick(_COMPARISON[_change(record, prior.get((record["type"], record["location"])))], *key))
        impressions.append(_IMPRESSION[record["type"]].format(**slots))
    kinds = {r["type"] for r in findings}
    absent = {
        "airway": True, "heart": "cardiomegaly" not in kinds, "pericardium": "pericardial_effusion" not in kinds,
        "nodes": "lymphadenopathy" not in kinds, "pleura": "pleural_effusion" not in kinds,
        "lungs": not kinds & {"nodule", "consolidation", "lung_opacity", "atelectasis"}, "bones": True,
    }
    normal = [stable_pick(_NORMAL[part], volume_name, part) for part, ok in absent.items() if ok]
    impression = ". ".join(i[:1].upper() + i[1:] for i in impressions) + "." if impressions else \
        stable_pick(("No significant pathology.", "Normal chest CT.", "No acute cardiopulmonary finding."), volume_name)
    return {
        "ClinicalInformation_EN": "Follow-up." if previous is not None and findings else stable_pick(
            (NOT_GIVEN, NOT_GIVEN, "Cough.", "Shortness of breath.", "Chest pain."), volume_name, "clinical"),
        "Technique_EN": stable_pick(("Non-contrast chest CT was acquired in the axial plane.",
                                     "Axial non-contrast thoracic CT sections were obtained.", NOT_GIVEN), volume_name, "tech"),
        "Findings_EN": " ".join(normal[:1] + sentences + normal[1:]),
        "Impressions_EN": impression,
    }


def _change(record: dict, before: dict | None) -> str:
    if before is None:
        return "new"
    now, then = max(record["size_mm"]["axial"]), max(before["size_mm"]["axial"])
    if now > then * 1.1:
        return "larger"
    if now < then * 0.9:
        return "smaller"
    return "stable"
