"""The trainable module, as the driver sees it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_driver_hands_over_the_trainable_without_importing_torch() -> None:
    code = ("import sys; import study.engine.run, study.engine.trainable; "
            "from study.engine.trainable import train_trial; "
            "print(sorted({'torch'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout
