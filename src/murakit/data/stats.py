"""Per-body-part dataset counts: the table of the reference report, for train and valid."""

from __future__ import annotations

from collections.abc import Iterable

from murakit.data.index import ImageRecord

COUNT_KEYS = ("normal_images", "abnormal_images", "normal_studies", "abnormal_studies", "patients")


def dataset_stats(images: Iterable[ImageRecord]) -> dict[str, dict[str, dict[str, int]]]:
    """{split: {part or "TOTAL": {normal_images, abnormal_images, normal_studies,
    abnormal_studies, patients}}}, parts sorted, TOTAL last."""
    by_split: dict[str, dict[str, dict[str, set]]] = {}
    for rec in images:
        for part in (rec.part, "TOTAL"):
            sets = by_split.setdefault(rec.split, {}).setdefault(
                part, {"images": [0, 0], "studies": (set(), set()), "patients": set()}
            )
            sets["images"][rec.label] += 1
            sets["studies"][rec.label].add(rec.study)
            sets["patients"].add(rec.patient)
    table: dict[str, dict[str, dict[str, int]]] = {}
    for split, parts in by_split.items():
        ordered = sorted(p for p in parts if p != "TOTAL") + ["TOTAL"]
        table[split] = {
            part: {
                "normal_images": parts[part]["images"][0],
                "abnormal_images": parts[part]["images"][1],
                "normal_studies": len(parts[part]["studies"][0]),
                "abnormal_studies": len(parts[part]["studies"][1]),
                "patients": len(parts[part]["patients"]),
            }
            for part in ordered
        }
    return table


def percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"
