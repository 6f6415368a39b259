#!/usr/bin/env python
"""Run a sweep: `python launch/sweep.py --cluster slurm --arms geometric,linear,snr` (--schedules: the same).

`python launch/sweep.py --help` lists the options; the code is hpc_ncsn.sweep.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from hpc_ncsn.cli import sweep_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(sweep_main())
