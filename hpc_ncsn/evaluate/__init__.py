"""Scoring samples: FID, KID and IS from sample shards, in float64, over any number of processes.

    scores.py      the metric maths on feature vectors (FeatureStats, FID, KID, IS), torch-fidelity's definitions
    fidelity.py    precision, recall, density, coverage and FID∞ from the same features
    extractors.py  feature extractors (torch-fidelity's Inception, a digits classifier) and the input checks
    images.py      image folders as an input (files checked against the data set's shape, read in chunks)
    inception.py   the FID Inception's weights in the formats clusters keep, converted and checked
    evaluator.py   `evaluate(source, data, evaluate-section)`: shards or images → features → statistics all-reduced
                   over ranks → the report; cached reference statistics
    compare.py     any input's μ/Σ as pytorch-fid's/EDM's .npz; any two of sample folder, image folder, .npz,
                   data:SPLIT compared

torch-fidelity is imported only in this package.
"""
