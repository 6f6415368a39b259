"""Train a noise-conditional score network: `python train.py --config configs/debug.yaml`.

The same command under `accelerate launch` or torchrun trains on several processes and
machines; `python train.py --help` lists the options. The code is hpc_ncsn.train.
"""

import sys

from hpc_ncsn.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
