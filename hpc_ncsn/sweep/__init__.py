"""Sweeps: the grid of cells, its tasks, where they run (Slurm, this machine, this process), and the table.

    tasks.py      the task records a job receives (train, sample + evaluate, anchor, aggregate): data only
    plan.py       SweepSpec (config + axes) → cells → one training per distinct network, one sampling per cell
    status.py     status/<stage>/<task>.json: what each task did, reconciled with the queue
    scheduler.py  what the sweep asks Slurm itself: squeue (once per poll of the whole sweep), scancel
    aggregate.py  the ablation table (mean, spread and 95% CI over seeds), each arm against the first, what it cost
    plots.py      the table's figures (matplotlib, Agg)
    work.py       what a job runs: the body of each task type, status recorded, requeue on USR2
    local.py      the local driver (submitit's local and debug executors) and the --python check
    limits.py     Slurm's MaxArraySize / MaxJobCount / MaxSubmitJobs: stages split into arrays that fit, or refused
    slurm.py      the Slurm driver (SlurmOptions → dependent job arrays, waiting, cancelling)
    launch.py     the `sweep` command: its flags, translated once into records, and dispatch

submitit is imported only in this package.
"""
