"""Inference-side variants of a cardiac model, scored from one network run per volume (issue 34).

Each volume is segmented once with every test-time pass kept (four quarter turns, and with
``flips`` each of them mirrored too); every combination of test-time augmentation, class weights
and clean-up is then recombined from those probabilities, exactly as the engine would have
produced it, and scored: Dice per structure, LV and RV volumes, ejection fractions (volumes are
voxel counts times the voxel volume, as :func:`dinseg.reports.cardiac.cardiac_function`
computes them). Nothing is fitted: the class weights compared are given.

    python -m dinseg.training.variant_study --model CARD --acdc ../shared/data/acdc \\
        --split-file configs/data/acdc/splits.json --split val -o study.json
    python -m dinseg.training.variant_study --model CARD --mnms ../shared/data/mnms_val -o mnms.json
    python -m dinseg.training.variant_study --summary study.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

#: test-time augmentation sets: indices into the passes (0-3 quarter turns, 4-7 the same mirrored)
TTA = {"r1": [0], "r2": [0, 2], "r4": [0, 1, 2, 3], "r2+flip": [0, 2, 4, 6], "r4+flip": list(range(8))}
CLEAN = {"none": (False, False), "lc": (True, False), "lc+fill": (True, True), "lc+enclosed": (True, False)}
LV, RV, MYO = 3, 1, 2


def drop_open_cavities(labels: np.ndarray, threshold: float = 0.5, band: int = 2) -> np.ndarray:
    """A candidate clean-up (issue 34), not the engine's: drop the LV cavity from every slice where the
    predicted myocardium covers less than ``threshold`` of a ``band``-pixel ring around it, a cavity
    without a wall (atrium or outflow tract above the base). 0.5 is chosen a priori (half the
    circumference, as basal slices are commonly chosen), not fitted. (z, y, x) -> a copy."""
    from scipy import ndimage

    cleaned = labels.copy()
    for z in range(labels.shape[0]):
        cavity = labels[z] == LV
        if not cavity.any():
            continue
        ring = ndimage.binary_dilation(cavity, iterations=band) & ~cavity
        if ring.any() and float((labels[z][ring] == MYO).mean()) < threshold:
            cleaned[z][cavity] = 0
    return cleaned


def acdc_cases(root, split_file, split: str = "val") -> Iterator[Tuple[str, str, str, Path, Path]]:
    """(patient, phase, group, image, labels) of the ED and ES frames of an ACDC split."""
    root = Path(root)
    for patient in json.loads(Path(split_file).read_text(encoding="utf-8"))[split]:
        folder = (root / "training" if (root / "training").is_dir() else root) / patient
        info = dict(line.split(":", 1) for line in (folder / "Info.cfg").read_text().splitlines() if ":" in line)
        for phase in ("ED", "ES"):
            image = folder / f"{patient}_frame{int(info[phase]):02d}.nii.gz"
            yield patient, phase, info["Group"].strip(), image, folder / f"{patient}_frame{int(info[phase]):02d}_gt.nii.gz"


def mnms_cases(root) -> Iterator[Tuple[str, str, str, Path, Path]]:
    """(patient, phase, vendor folder, image, labels) of ``mnms_val`` (validation only)."""
    for vendor in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        for patient in sorted(p for p in vendor.iterdir() if p.is_dir()):
            for phase in ("ED", "ES"):
                yield (patient.name, phase, vendor.name, patient / f"{phase}_{patient.name}_sa.nii.gz",
                       patient / f"{phase}_{patient.name}_sa_gt.nii.gz")


def recording_segmenter(card, flips: bool):
    """A Segmenter (no class weights, no clean-up) that keeps every test-time pass's softmax."""
    import torch

    from ..pipeline.segmenter import Segmenter

    class Recording(Segmenter):
        def _probabilities(self, slices, enhanced):
            outputs = []
            for flip in ((False, True) if flips else (False,)):
                image = slices.flip(-1) if flip else slices
                other = None if enhanced is None else (enhanced.flip(-1) if flip else enhanced)
                for turns in range(4):
                    logits = self.network(torch.rot90(image, turns, dims=(-2, -1)),
                                          None if other is None else torch.rot90(other, turns, dims=(-2, -1)))
                    probabilities = torch.rot90(logits.float().softmax(1), -turns, dims=(-2, -1))
                    outputs.append(probabilities.flip(-1) if flip else probabilities)
            self.passes.append(torch.stack(outputs))
            return (outputs[0] + outputs[2]) / 2

    segmenter = Recording(card, device="cpu", class_weights=[1.0] * card.num_classes, rotations=2,
                          largest_component=False, fill_holes=False, precision="float32")
    segmenter.passes = []
    return segmenter


def variant_labels(segmenter, record, reorientation, passes: Sequence[int], weights: Sequence[float]) -> np.ndarray:
    """The raw (z, y, x) labels on the input grid of the mean of ``passes`` times ``weights``."""
    import torch

    from ..core.preprocess import labels_at_size

    factors = torch.tensor(list(weights), dtype=torch.float32).view(1, -1, 1, 1)

    def mean(kept):  # summed in the engine's order, so ties break as they do there
        total = kept[passes[0]]
        for index in passes[1:]:
            total = total + kept[index]
        return total / len(passes)

    canonical = torch.cat([labels_at_size(mean(kept) * factors, shape)
                           for kept, (_, shape) in zip(segmenter.passes, record)]).to(torch.uint8).numpy()
    return np.ascontiguousarray(reorientation.from_canonical(canonical))


def score(prediction: np.ndarray, truth: np.ndarray) -> Dict[str, Dict[str, float]]:
    """Dice and voxel count per structure (1 RV, 2 myocardium, 3 LV)."""
    result = {"dice": {}, "count": {}}
    for value in (RV, MYO, LV):
        predicted, true = prediction == value, truth == value
        total = int(predicted.sum()) + int(true.sum())
        result["dice"][str(value)] = 2 * int((predicted & true).sum()) / total if total else math.nan
        result["count"][str(value)] = int(predicted.sum())
    return result


def study(card, cases, weights: Dict[str, Sequence[float]], flips: bool = True,
          tta: Optional[Dict[str, List[int]]] = None, clean: Optional[Dict[str, Tuple[bool, bool]]] = None,
          reverse_slices: bool = False) -> List[dict]:
    """One row per volume: its expert counts and every variant's Dice and counts. ``reverse_slices``
    gives the network each stack (and scores it against its labels) in reverse slice order, as if
    stored the other way round."""
    from ..core.io import read_volume
    from ..core.postprocess import clean_labels

    tta = tta or {k: v for k, v in TTA.items() if flips or "flip" not in k}
    clean = clean or CLEAN
    segmenter = recording_segmenter(card, flips)
    rows = []
    for patient, phase, group, image_path, label_path in cases:
        started = time.time()
        volume = read_volume(image_path)
        truth = read_volume(label_path).array.astype(np.uint8)
        if reverse_slices:
            volume = dataclasses.replace(volume, array=np.ascontiguousarray(volume.array[::-1]))
            truth = np.ascontiguousarray(truth[::-1])
        record: list = []
        segmenter.record, segmenter.passes = record, []
        segmenter.segment(volume)
        reorientation = card.preprocessing.reorientation(volume.geometry)
        row = {"patient": patient, "phase": phase, "group": group,
               "voxel_ml": volume.geometry.voxel_ml,
               "truth": {str(k): int((truth == k).sum()) for k in (RV, MYO, LV)},
               "truth_lv_slices": [int(x) for x in (truth == LV).sum((1, 2))],
               "truth_myo_slices": [int(x) for x in (truth == MYO).sum((1, 2))], "variants": {}}
        for tta_name, passes in tta.items():
            for weight_name, factors in weights.items():
                raw = variant_labels(segmenter, record, reorientation, passes, factors)
                for clean_name, (largest, fill) in clean.items():
                    labels = drop_open_cavities(raw) if clean_name == "lc+enclosed" else raw
                    labels = clean_labels(labels, largest, fill) if (largest or fill) else labels
                    entry = score(labels, truth)
                    entry["lv_slices"] = [int(x) for x in (labels == LV).sum((1, 2))]
                    # where the model's LV lies in the expert's labels (0 background, 1 RV, 2 myocardium)
                    entry["lv_from"] = {str(k): int(((labels == LV) & (truth == k)).sum()) for k in (0, RV, MYO)}
                    row["variants"][f"{tta_name}|{weight_name}|{clean_name}"] = entry
        rows.append(row)
        print(f"{patient} {phase}: {time.time() - started:.1f} s", flush=True)
    return rows


def ejection_fraction(ed: float, es: float) -> float:
    return 100.0 * (ed - es) / ed if ed > 0 else math.nan


def summary(rows: Sequence[dict], variant: str) -> Dict[str, object]:
    """Mean Dice per phase (mean of structures per volume, then over volumes), ES Dice per structure,
    (mean absolute error, bias, largest error) of LV EF, LV ESV, LV EDV and RV EF against the expert,
    and per phase the mean LV cavity (mL) drawn on slices where the expert has none ("beyond")."""
    patients: Dict[str, Dict[str, dict]] = {}
    for row in rows:
        patients.setdefault(row["patient"], {})[row["phase"]] = row
    dice = {"ED": [], "ES": []}
    beyond = {"ED": [], "ES": []}
    es_structures = {str(k): [] for k in (RV, MYO, LV)}
    errors = {"lv_ef": [], "lv_esv": [], "lv_edv": [], "rv_ef": []}
    for phases in patients.values():
        if set(phases) != {"ED", "ES"}:
            continue
        for phase in ("ED", "ES"):
            entry = phases[phase]["variants"][variant]
            dice[phase].append(float(np.nanmean(list(entry["dice"].values()))))
            if "lv_slices" in entry and "truth_lv_slices" in phases[phase]:
                outside = np.asarray(phases[phase]["truth_lv_slices"]) == 0
                beyond[phase].append(float(np.asarray(entry["lv_slices"])[outside].sum()) * phases[phase]["voxel_ml"])
            if phase == "ES":
                for key in es_structures:
                    es_structures[key].append(entry["dice"][key])
        ed, es = phases["ED"], phases["ES"]
        volume = ed["voxel_ml"]
        model = {k: (ed["variants"][variant]["count"][k] * volume, es["variants"][variant]["count"][k] * volume)
                 for k in ("1", "3")}
        expert = {k: (ed["truth"][k] * volume, es["truth"][k] * volume) for k in ("1", "3")}
        errors["lv_ef"].append(ejection_fraction(*model["3"]) - ejection_fraction(*expert["3"]))
        errors["rv_ef"].append(ejection_fraction(*model["1"]) - ejection_fraction(*expert["1"]))
        errors["lv_esv"].append(model["3"][1] - expert["3"][1])
        errors["lv_edv"].append(model["3"][0] - expert["3"][0])
    result: Dict[str, object] = {"ED": float(np.mean(dice["ED"])), "ES": float(np.mean(dice["ES"])),
                                 "mean": float(np.mean(dice["ED"] + dice["ES"])),
                                 "ES structures": {k: float(np.nanmean(v)) for k, v in es_structures.items()},
                                 "beyond": {k: float(np.mean(v)) if v else math.nan for k, v in beyond.items()}}
    for key, values in errors.items():
        values = np.asarray(values)
        result[key] = (float(np.abs(values).mean()), float(values.mean()), float(np.abs(values).max()))
    return result


def stack_direction(row: dict) -> str:
    """"base first" or "base last": where the expert's LV cavity is larger, at the stack's first or last
    labelled slice (stored order; the network sees the model grid's order, the same or reversed alike
    for every volume of one data set's orientation)."""
    areas = [area for area in row["truth_lv_slices"] if area]
    return "base first" if areas and areas[0] >= areas[-1] else "base last"


def summary_line(rows: Sequence[dict], variant: str) -> str:
    s = summary(rows, variant)
    es = s["ES structures"]
    return (f"| {variant} | {s['ED']:.3f} | {s['ES']:.3f} | {s['mean']:.3f} | {es['1']:.3f} / {es['2']:.3f} / {es['3']:.3f} | "
            f"{s['lv_ef'][0]:.2f} | {s['lv_ef'][1]:+.2f} | {s['lv_ef'][2]:.1f} | {s['lv_esv'][0]:.1f} ({s['lv_esv'][1]:+.1f}) | "
            f"{s['lv_edv'][0]:.1f} ({s['lv_edv'][1]:+.1f}) | {s['rv_ef'][0]:.1f} ({s['rv_ef'][1]:+.1f}) | "
            f"{s['beyond']['ED']:.1f} / {s['beyond']['ES']:.1f} |")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dinseg.training.variant_study", description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="model card")
    parser.add_argument("--acdc", help="ACDC folder (holds training/)")
    parser.add_argument("--split-file")
    parser.add_argument("--split", default="val")
    parser.add_argument("--mnms", help="mnms_val folder (validation only)")
    parser.add_argument("--weights", default='{"none": [1, 1, 1, 1]}',
                        help='JSON {name: class weights}; "card" adds the card\'s own')
    parser.add_argument("--no-flips", dest="flips", action="store_false", help="rotations only (half the passes)")
    parser.add_argument("--spacing", type=float, help="run the network at this in-plane spacing (mm) instead of the card's")
    parser.add_argument("-o", "--output", help="JSON of every volume's variants")
    parser.add_argument("--reverse-slices", action="store_true",
                        help="give the network each stack in reverse slice order (scored against its labels so)")
    parser.add_argument("--summary", nargs="+", metavar="JSON", help="print the table of finished studies")
    parser.add_argument("--by-direction", action="store_true",
                        help="with --summary: a table per stack direction (patients whose ED stack runs base first, base last)")
    args = parser.parse_args(argv)
    if args.summary:
        for path in args.summary:
            rows = json.loads(Path(path).read_text(encoding="utf-8"))
            groups = {"": rows}
            if args.by_direction:
                direction = {r["patient"]: stack_direction(r) for r in rows if r["phase"] == "ED"}
                groups = {f", {name}": [r for r in rows if direction.get(r["patient"]) == name]
                          for name in ("base first", "base last")}
            for name, chosen in groups.items():
                print(f"\n{path}{name}: {len({r['patient'] for r in chosen})} patients\n")
                if not chosen:
                    continue
                print("| variant | ED Dice | ES Dice | mean Dice | ES RV / myo / LV Dice | LV EF MAE | LV EF bias | "
                      "LV EF max | LV ESV MAE (bias) mL | LV EDV MAE (bias) mL | RV EF MAE (bias) | "
                      "LV beyond the expert's slices ED / ES mL |")
                print("|" + "---|" * 12)
                for variant in chosen[0]["variants"]:
                    print(summary_line(chosen, variant))
        return 0
    import torch

    from ..models.card import load_card

    torch.set_num_threads(1)
    card = load_card(args.model)
    if args.spacing:
        card.preprocessing.spacing = (args.spacing, args.spacing)
    weights = json.loads(args.weights)
    if "card" in weights or not weights:
        weights.pop("card", None)
        weights["card"] = card.postprocessing.get("class_weights", [1.0] * card.num_classes)
    cases = acdc_cases(args.acdc, args.split_file, args.split) if args.acdc else mnms_cases(args.mnms)
    rows = study(card, cases, weights, flips=args.flips, reverse_slices=args.reverse_slices)
    Path(args.output).write_text(json.dumps(rows), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
