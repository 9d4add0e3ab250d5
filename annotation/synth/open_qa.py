"""Open questions of 3D-RAD tasks 1-3 (image observation, anomaly detection, medical computation)
written from a scan's ground truth, with short answers (about five words, sizes in mm).

Question phrasings follow the subtasks of the real files (e.g. "What is the size of the nodule in
the right lung lower lobe?" -> "23x18 mm"); one phrasing is picked per scan by a stable hash.
"""
from __future__ import annotations

from collections.abc import Callable

from annotation.qa_templates import TASKS, QARow, stable_pick

Item = tuple[str, str, tuple[str, ...], str]  # task key, subtask file, phrasings, answer


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _axial(record: dict) -> str:
    a, b = record["size_mm"]["axial"]
    return f"{a}x{b} mm"


def _nodule(r: dict) -> list[Item]:
    lobe = r["lobe"]
    return [
        ("image_observation", "Anatomical_observation", ("Where is the nodule located?", "Where is the lung nodule located?"), _cap(lobe)),
        ("anomaly_detection", "Abnormality_position", (f"Where is the {_axial(r)} nodule located?",), _cap(lobe)),
        ("anomaly_detection", "Abnormality_type", (f"Which abnormality is present in the {lobe}?", f"What abnormality is seen in the {lobe}?"), "Nodular opacity."),
        ("medical_computation", "Size", (f"What is the size of the nodule in the {lobe}?", f"What is the size of the solitary pulmonary nodule in the {lobe}?"), _axial(r)),
        ("medical_computation", "Diameter", (f"What is the diameter of the nodule in the {lobe}?", f"What is the largest diameter of the nodule in the {lobe}?"), f"{r['size_mm']['diameter']} mm"),
    ]


def _effusion(r: dict) -> list[Item]:
    where = r["location"]
    side = {"right": "on the right", "left": "on the left", "bilateral": "on both sides"}[r["side"]]
    return [
        ("image_observation", "Pathological_observation", ("Where is the pleural effusion observed?", "Where is the pleural effusion located?"), _cap(where)),
        ("anomaly_detection", "Diagnosis", (f"What is observed in the {where}?", f"What condition is seen in the {where}?"), "Pleural effusion."),
        ("medical_computation", "Thickness", (f"What is the thickness of the pleural effusion {side}?", "What is the thickness of the pleural effusion at its thickest point?"), f"{r['size_mm']['thickness']} mm"),
    ]


def _cardiomegaly(r: dict) -> list[Item]:
    return [
        ("anomaly_detection", "Diagnosis", ("What condition is present in the heart?", "What is observed regarding the heart size?"), "Cardiomegaly."),
        ("medical_computation", "Diameter", ("What is the transverse diameter of the heart?", "What is the diameter of the enlarged heart?"), f"{r['size_mm']['transverse']} mm"),
    ]


def _pericardial(r: dict) -> list[Item]:
    return [
        ("image_observation", "Pathological_observation", ("What is observed around the heart?", "What is seen in the pericardial space?"), "Pericardial effusion."),
        ("medical_computation", "Thickness", ("What is the thickness of the pericardial effusion?", "What is the thickness of the pericardial fluid anteriorly?"), f"{r['size_mm']['thickness']} mm"),
    ]


def _consolidation(r: dict) -> list[Item]:
    lobe = r["lobe"]
    return [
        ("anomaly_detection", "Abnormality_position", ("Which segment of the lung shows consolidation?", "Where is the consolidation area located?"), _cap(lobe)),
        ("anomaly_detection", "Abnormality_feature", ("What is seen within the consolidation?", "Which feature is noted within the consolidation?"), "Air bronchograms."),
        ("medical_computation", "Size", (f"What is the size of the consolidation area in the {lobe}?",), _axial(r)),
    ]


def _opacity(r: dict) -> list[Item]:
    lobe = r["lobe"]
    return [
        ("anomaly_detection", "Abnormality_feature", (f"What density is observed in the {lobe}?", f"What type of density increase is noted in the {lobe}?"), "Ground glass density."),
        ("image_observation", "Pathological_observation", ("Where are the ground glass opacities observed?", "Where is the ground glass area located?"), _cap(lobe)),
    ]


def _atelectasis(r: dict) -> list[Item]:
    lobe = r["lobe"]
    return [
        ("anomaly_detection", "Abnormality_position", ("Where is atelectasis observed?", "Where are the atelectatic changes located?"), _cap(lobe)),
        ("anomaly_detection", "Abnormality_type", (f"What abnormality is present in the {lobe}?",), "Plate-like atelectasis."),
    ]


def _emphysema(r: dict) -> list[Item]:
    return [
        ("anomaly_detection", "Abnormality_feature", ("What pattern is observed in both lungs?", "Which feature is noted in the lung parenchyma?"), "Centrilobular emphysema."),
        ("image_observation", "Pathological_observation", ("Where are the emphysematous changes located?", "Where are the low attenuation areas observed?"), "Both lung upper lobes."),
    ]


def _arterial(r: dict) -> list[Item]:
    return [
        ("image_observation", "Pathological_observation", ("Where are the calcific atheroma plaques observed?", "Where are the atherosclerotic calcifications seen?"), "Thoracic aorta."),
        ("anomaly_detection", "Abnormality_type", ("What type of change is seen in the aortic wall?",), "Atherosclerotic calcification."),
    ]


def _coronary(r: dict) -> list[Item]:
    return [
        ("anomaly_detection", "Diagnosis", ("What is observed in the coronary arteries?", "What change is seen in the coronary artery walls?"), "Wall calcifications."),
        ("image_observation", "Pathological_observation", ("Where are the calcified plaques of the heart observed?",), "Coronary arteries."),
    ]


def _nodes(r: dict) -> list[Item]:
    area = r["location"]
    short = r["size_mm"]["short_axis"]
    return [
        ("image_observation", "Pathological_observation", ("Which area shows pathological lymph nodes?", "Where are the enlarged lymph nodes observed?"), _cap(f"{area} area")),
        ("medical_computation", "Diameter", ("What is the short-axis diameter of the largest lymph node?", "What is the short diameter of the largest mediastinal lymph node?"), f"{short} mm"),
        ("medical_computation", "Size", ("What is the size of the largest lymph node?", f"What is the size of the largest lymph node in the {area.split(' and ')[0]} area?"), _axial(r)),
    ]


def _device(r: dict) -> list[Item]:
    name = "Pacemaker." if "pacemaker" in r["location"] else "Port catheter."
    return [
        ("image_observation", "Anatomical_observation", ("What device is observed on the chest wall?", "What medical device is present in the chest wall?"), name),
        ("image_observation", "Anatomical_observation", ("On which side is the device located?",), _cap(f"{r['side']} anterior chest wall")),
    ]


def _hernia(r: dict) -> list[Item]:
    return [
        ("anomaly_detection", "Diagnosis", ("What is observed at the esophageal hiatus?", "What condition is seen behind the heart?"), "Hiatal hernia."),
        ("medical_computation", "Size", ("What is the size of the hiatal hernia?",), _axial(r)),
    ]


def _bronchiectasis(r: dict) -> list[Item]:
    return [
        ("anomaly_detection", "Abnormality_type", ("What type of bronchial abnormality is observed?",), "Bronchiectasis."),
        ("anomaly_detection", "Abnormality_position", ("Where are the dilated bronchi located?", "Where is bronchiectasis observed?"), _cap(r["lobe"])),
    ]


def _fibrotic(r: dict) -> list[Item]:
    return [
        ("anomaly_detection", "Diagnosis", (f"What is observed in the {r['location']}?",), "Fibrotic bands."),
        ("image_observation", "Pathological_observation", ("Where are the fibrotic densities observed?", "Where is the fibrotic band observed?"), _cap(r["location"])),
    ]


_BY_KIND: dict[str, Callable[[dict], list[Item]]] = {
    "nodule": _nodule, "pleural_effusion": _effusion, "cardiomegaly": _cardiomegaly,
    "pericardial_effusion": _pericardial, "consolidation": _consolidation, "lung_opacity": _opacity,
    "atelectasis": _atelectasis, "emphysema": _emphysema, "arterial_calcification": _arterial,
    "coronary_calcification": _coronary, "lymphadenopathy": _nodes, "medical_material": _device,
    "hiatal_hernia": _hernia, "bronchiectasis": _bronchiectasis, "fibrotic_sequela": _fibrotic,
}


def _normal(anatomy: dict, findings: list[dict]) -> list[Item]:
    items: list[Item] = [
        ("image_observation", "Anatomical_observation", ("What is the position of the trachea?", "What is the position of the trachea and bronchi?"), "Midline."),
        ("medical_computation", "Diameter", ("What is the diameter of the ascending aorta?",), f"{anatomy['ascending_aorta_diameter_mm']} mm"),
    ]
    if not any(f["type"] in ("consolidation", "lung_opacity", "nodule", "atelectasis") for f in findings):
        items.append(("anomaly_detection", "Diagnosis", ("What is observed in the lung parenchyma?", "What is the condition of the lung parenchyma?"), "No active infiltration."))
    if not findings:
        items.append(("image_observation", "Pathological_observation", ("Which structures show no occlusive pathology?",), "Trachea and bronchi."))
    return items


def open_qa_for_scan(volume_name: str, findings: list[dict], anatomy: dict) -> list[QARow]:
    """Tasks 1-3 rows for one scan from its ground-truth findings and normal measurements."""
    items = [item for record in findings for item in _BY_KIND[record["type"]](record)]
    items += _normal(anatomy, findings)
    rows = []
    for key, subtask_file, phrasings, answer in items:
        task = TASKS[key]
        question = stable_pick(phrasings, volume_name, answer, subtask_file)
        rows.append(QARow(task.number, task.subtask_files.index(subtask_file) + 1, volume_name,
                          question, answer, "Open", "-"))
    return rows
