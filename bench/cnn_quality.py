"""The quality line: the best test accuracy and AUROC of a CNN study and an MLP study of the
same trial budget on real chest X-rays (`../shared/data/pneumoniamnist_balanced.npz`, 28x28).

Each study is `study run` as a user types it (Optuna TPE + ASHA, selection by validation AUROC,
`--repeats 3`: every configuration trains seeds 0-2 stacked); the CNN searches
`search_spaces/cnn.yaml`, the MLP `search_spaces/medmnist.yaml` with `model: mlp` fixed. The
table gives each study's best configuration's test metrics, mean ± 95 % CI (t) over its 3 seeds,
from `summary/best_config.json`; validation chose them, the test split chose nothing.

    python bench/cnn_quality.py --samples 8 --epochs 10 --json quality.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "pneumoniamnist_balanced.npz"


def _space(out: Path, family: str) -> Path:
    """The shipped space of `family` (the MLP: medmnist.yaml with the model fixed)."""
    if family == "cnn":
        return ROOT / "search_spaces" / "cnn.yaml"
    raw = yaml.safe_load((ROOT / "search_spaces" / "medmnist.yaml").read_text())
    raw["params"].pop("model")
    raw["fixed"]["model"] = "mlp"
    path = out / "mlp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def study(out: Path, family: str, samples: int, epochs: int) -> dict[str, object]:
    """Run one study; return its best configuration, test metrics (mean, CI) and wall time."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "study", "run", "--space", str(_space(out, family)),
                    "--data", str(DATA), "--num-samples", str(samples), "--max-epochs",
                    str(epochs), "--repeats", "3", "--storage-path", str(out), "--name",
                    family, "--quiet"], check=True, cwd=ROOT)
    best = json.loads((out / family / "summary" / "best_config.json").read_text())
    metrics, ci = best["metrics"], best.get("ci95", {})
    return {"config": best["config"], "wall_s": time.perf_counter() - start,
            **{f"{k}": metrics.get(k) for k in ("val_auroc", "test_accuracy", "test_auroc")},
            **{f"{k}_ci95": ci.get(k) for k in ("test_accuracy", "test_auroc")}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--samples", type=int, default=8, help="trials per study")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per trial")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    if not DATA.exists():
        print(f"{DATA}: not present; nothing to measure", file=sys.stderr)
        return 2
    rows = {}
    with tempfile.TemporaryDirectory(prefix="cnn-quality-") as tmp:
        for family in ("mlp", "cnn"):
            rows[family] = study(Path(tmp), family, args.samples, args.epochs)
    print(f"{args.samples} trials x {args.epochs} epochs x 3 seeds per study, "
          f"{DATA.name} (test: 234 + 234 images)")
    print("| study | test accuracy % | test AUROC | val AUROC | wall s | best configuration |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for family, r in rows.items():
        c = r["config"]
        shown = {k: c[k] for k in ("depth", "width", "kernel_size", "dropout", "lr",
                                   "batch_size", "augment", "class_weight") if k in c}
        if family == "mlp":
            shown.pop("kernel_size", None)
        print(f"| {family} | {r['test_accuracy']:.1f} ± {r['test_accuracy_ci95']:.1f} | "
              f"{r['test_auroc']:.3f} ± {r['test_auroc_ci95']:.3f} | {r['val_auroc']:.3f} | "
              f"{r['wall_s']:.0f} | {shown} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"samples": args.samples, "epochs": args.epochs,
                                               "data": str(DATA), **rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
