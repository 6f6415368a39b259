from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="hpc_ncsn",
    version="0.1.0",
    description="Score-based generative modeling (NCSN, NCSNv2) experiments on HPC clusters",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["hpc_ncsn", "hpc_ncsn.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.11,<3",
        "torchvision>=0.26",
        "accelerate>=1.0",
        "deepspeed>=0.16",
        # accelerate's DeepSpeed integration reads transformers' version and imports its HfDeepSpeedConfig.
        "transformers>=4.46",
        "submitit>=1.5",
        "h5py>=3.10",
        "torch-fidelity>=0.3",
        "PyYAML>=6.0",
        "numpy>=1.24",
        "scikit-learn>=1.3",
        "matplotlib>=3.7",
    ],
    extras_require={"dev": ["pytest>=8"]},
    entry_points={"console_scripts": ["hpc-ncsn=hpc_ncsn.cli:main"]},
)
