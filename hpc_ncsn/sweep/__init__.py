"""Sweeps: the grid of cells, its tasks, where they run (Slurm, this machine, this process), and the table.

    tasks.py      the task records a job receives (train, sample + evaluate, anchor, aggregate): data only
    plan.py       SweepSpec (config + axes) → cells → one training per distinct network, one sampling per cell
    grow.py       a rerun on a sweep folder: the same sweep, grown by axis values, extended (train.steps), or refused
    status.py     status/<stage>/<task>.json: what each task did, reconciled with the queue
    scheduler.py  what the sweep asks Slurm itself: squeue (once per poll of the whole sweep), scancel
    aggregate.py  the ablation table (mean, spread and 95% CI over seeds), each arm against the first, what it cost
    plots.py      the table's figures (matplotlib, Agg)
    report.py     table.md's blocks as Markdown and as report.html, one self-contained page of the sweep
    combine.py    several sweep folders whose cells differ only in the grid, as one table
    work.py       what a job runs: the body of each task type, status recorded, requeue on USR2
    local.py      the local driver (submitit's local and debug executors) and the --python check
    limits.py     Slurm's MaxArraySize / MaxJobCount / MaxSubmitJobs: stages split into arrays that fit, or refused
    slurm.py      the Slurm driver (SlurmOptions → dependent job arrays, waiting, cancelling)
    profile.py    --profile FILE: the Slurm options in YAML, under the command line's flags; kept in sweep.json
    launch.py     the `sweep` command: its flags, translated once into records, and dispatch

submitit is imported only in this package.
"""
