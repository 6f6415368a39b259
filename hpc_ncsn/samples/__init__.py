"""Samples on disk: HDF5 shards (the format, and checks that cannot hang) and distributed, resumable generation.

    shards.py      the shard format, its manifest and coverage checks (the only module that imports h5py)
    validation.py  shards checked in a child process with a timeout
    generate.py    a run's EMA samples into shards, split over torchrun ranks, resumable
    real.py        real images as a sample folder (the table's floor anchor)
    export.py      sample folders for other tools: PNG files, one .npz, a torch Dataset

Importing this package does not import torch (the validating child process imports it).
"""
