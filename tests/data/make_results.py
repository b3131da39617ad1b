"""Write tests/data/results-vN.db: the results database of a tiny study run by the release that
introduced key version N (orchestrator.grid.KEY_VERSION). tests/test_keys.py checks that every
later release computes the same keys from its rows. Run once per key version, from the
repository root:

    .venv/bin/python -m tests.data.make_results

results-v2.db was written by the release of key version 2 (with this script, then named
make_results_v2.py).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

from orchestrator.grid import KEY_VERSION
from tests.conftest import _tiny_experiments

HERE = Path(__file__).resolve().parent


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        exp = _tiny_experiments(
            Path(tmp),
            axes={
                "masking": {"path": "mask.strategy", "values": ["unstructured", "time"]},
                "probed": {"path": "probe.encoder", "values": ["context", "target"]},
            },
            seeds=[0, 1],
        )
        abl = str(Path(sys.executable).with_name("abl"))
        subprocess.run([abl, "run", "-j", "1", str(exp), "--no-report"], check=True)
        db = HERE / f"results-v{KEY_VERSION}.db"
        shutil.copy(Path(tmp) / "out" / "results.db", db)
    # No machine's paths or names in the repository: what they held is not what is keyed.
    con = sqlite3.connect(db)
    (spec_json,) = con.execute("select spec_json from studies").fetchone()
    spec = json.loads(spec_json)
    spec["baseline"]["data"]["cache"] = None
    con.execute("update studies set spec_json = ?", (json.dumps(spec, sort_keys=True),))
    con.execute("update trials set worker = 'worker'")
    con.commit()
    con.execute("vacuum")
    con.close()


if __name__ == "__main__":
    main()
