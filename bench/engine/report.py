"""Summaries of the raw per-round numbers: medians, spread, paired ratios, token agreement."""

import statistics

REFERENCE = "ours-compiled"
RATIOS = [  # (numerator, denominator, issue target or None)
    ("ours-compiled", "intree-compiled", 1.2),
    ("ours-eager", "intree-eager", 1.2),
    ("ours-compiled", "intree-eager", None),
    ("ours-compiled", "hf-batch1", 8.0),
    ("ours-compiled", "hf-batch32", 2.0),
    ("ours-compiled", "hf-batch32-1thread", None),  # both on one core
    ("ours-compiled-2cores", "hf-batch1", 8.0),  # both on both cores
    ("ours-compiled-2cores", "hf-batch32", 2.0),
]


def spread(values: list[float]) -> str:
    """median [min-max] (±half-range as % of the median)."""
    med = statistics.median(values)
    half = 100 * (max(values) - min(values)) / 2 / med if med else 0.0
    return f"{med:7.2f} [{min(values):.2f}-{max(values):.2f}] ±{half:.0f}%"


def samples_table(result: dict) -> list[str]:
    rounds = result["rounds"]
    lines = [f"  {'system':18} {'samples/s median [min-max] ±half-range':42} {'same tokens as ours-compiled'}"]
    for name in rounds[0]:
        values = [row[name]["samples_per_s"] for row in rounds]
        agree = ""
        if REFERENCE in rounds[0] and name != REFERENCE:
            same = sum(
                a == b for row in rounds for a, b in zip(row[name]["tokens"], row[REFERENCE]["tokens"], strict=True)
            )
            total = sum(len(row[name]["tokens"]) for row in rounds)
            agree = f"{same}/{total} sequences"
        lines.append(f"  {name:18} {spread(values):42} {agree}")
    return lines


def ratio_table(result: dict) -> list[str]:
    """Ratios paired by round (both systems saw the same clips, minutes apart at most)."""
    rounds, lines = result["rounds"], []
    for top, bottom, target in RATIOS:
        if top not in rounds[0] or bottom not in rounds[0]:
            continue
        values = [row[top]["samples_per_s"] / row[bottom]["samples_per_s"] for row in rounds]
        verdict = ""
        if target is not None:
            verdict = f"target >= {target}x: " + ("MET" if statistics.median(values) >= target else "MISSED")
        lines.append(f"  {top} / {bottom}: {spread(values)}x  {verdict}")
    return lines


def summary(result: dict) -> dict:
    """Medians only, for the JSON file."""
    rounds = result["rounds"]
    return {name: statistics.median(row[name]["samples_per_s"] for row in rounds) for name in rounds[0]}
