"""Sweeps: the grid of cells, its tasks, where they run (Slurm, this machine, this process), and the table.

    plan.py       SweepSpec (config + axes) → cells → one training per distinct network, one sampling per cell
    tasks.py      the task objects a job receives and runs (train, sample + evaluate, aggregate)
    status.py     status/<stage>/<task>.json: what each task did
    launch.py     the `sweep` command: submitit executors (slurm, local, debug), submission, waiting
    aggregate.py  the ablation table (mean, spread and 95% CI over seeds) and its plots

submitit is imported only in this package.
"""
