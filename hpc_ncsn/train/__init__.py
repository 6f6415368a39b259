"""Training: denoising score matching under Accelerate and DeepSpeed, with EMA, checkpoints and exact resume.

    batches.py     the data on the device, each step's global batch and this rank's slices
    step.py        one optimizer step (one code path; how the optimizer is told to skip differs)
    run_folder.py  a run folder's lock, config check, metrics.jsonl, sample grids; when checkpoints are saved
                   and resumed (their format: hpc_ncsn.checkpoint)
    session.py     what a training process holds: `Training.start(config)`
    launcher_settings.py  a launch's batch, accumulation and clipping that the run config overrides
    trackers.py    train.log_with's experiment trackers: checked, started, fed, closed
    heldout.py     the held-out DSM loss of the EMA weights at the end of training (and of any checkpoint)
    loop.py        `train(config)`: the loop

Accelerate and DeepSpeed are imported only in this package.
"""

from .loop import sample_grid, train
from .session import Training, TrainingDiverged, make_accelerator

__all__ = ["Training", "TrainingDiverged", "make_accelerator", "sample_grid", "train"]
