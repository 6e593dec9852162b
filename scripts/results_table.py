"""Print a markdown table of `clarion evaluate --json` results: one row per file.

    python scripts/results_table.py demo/runs/infonce/test.json demo/runs/siglip/test.json

The row name is the run folder's name (the file's parent folder).
"""

import json
import sys
from pathlib import Path

COLUMNS = [("t2a", "R@1"), ("t2a", "R@5"), ("t2a", "R@10"), ("t2a", "mAP@10"), ("t2a", "medR"),
           ("a2t", "R@1"), ("a2t", "R@5"), ("a2t", "R@10"), ("a2t", "mAP@10"), ("a2t", "medR")]


def cell(value: float, key: str) -> str:
    return f"{value:.1f}" if key.endswith("R") else f"{100 * value:.1f}"


def main(paths: list[str]) -> None:
    print("| objective | " + " | ".join(f"{side.upper()} {key}" for side, key in COLUMNS) + " |")
    print("|---|" + "---:|" * len(COLUMNS))
    for path in paths:
        metrics = json.loads(Path(path).read_text())
        row = [cell(metrics[side][key], key) for side, key in COLUMNS]
        print(f"| {Path(path).parent.name} | " + " | ".join(row) + " |")
    print("\nR@k and mAP@10 in %, medR in ranks.")


if __name__ == "__main__":
    main(sys.argv[1:])
