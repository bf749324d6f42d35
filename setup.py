"""Packaging for megatiny: pretraining of small Llama-family models."""
from setuptools import find_packages, setup

setup(
    name="megatiny",
    version="0.1.0",
    description="Pretraining stack for small Llama-family language models (TinyLlama recipe)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["megatiny", "megatiny.*"]),
    include_package_data=True,
    package_data={"megatiny": ["eval/tasks/*.yaml", "eval/tasks/*.json", "eval/tasks/*.jsonl"]},
    install_requires=[
        "torch>=2.4",
        "deepspeed>=0.16,<0.20",
        "numpy",
        "sentencepiece",
        "tensorboard",
        "transformers>=4.45",
        "safetensors",
        "tqdm",
        "pyyaml",
        "zstandard",
        "pyarrow>=16",     # parquet and Arrow (datasets save_to_disk) inputs of preprocessing
        "tokenizers",
        "psutil",
    ],
    extras_require={
        "eval": ["lm-eval>=0.4.5", "accelerate", "matplotlib"],
        "mpi": ["mpi4py"],
        "gpu": ["flash-attn"],
        # datasets: writes the save_to_disk fixtures of tests/data/test_sources.py;
        # pytest-xdist: scripts/test.sh runs the suite on 2 workers
        "dev": ["pytest", "pytest-timeout", "pytest-xdist", "ruff", "datasets"],
    },
    entry_points={
        # `megatiny COMMAND ...` (megatiny/cli), and lm-eval's CLI with megatiny's model registered:
        # `megatiny-lm-eval --model megatiny ...`
        "console_scripts": ["megatiny=megatiny.cli:run", "megatiny-lm-eval=megatiny.eval.__main__:main"],
    },
)
