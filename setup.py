from pathlib import Path

from setuptools import find_packages, setup

# The training script, conversion, cards and the study tools (hf_vit_reduction.cli.EXTRAS names their
# modules, so that a command started without them says which extra to install).
TRAIN = [
    "torchvision>=0.19",
    "datasets>=4",
    "pyarrow>=15",  # an image folder's table built in Arrow at once (datasets' own storage)
    "accelerate>=1.0",
    "evaluate>=0.4",
    "timm>=1.0.21",  # no-weight-decay names matched as patterns (position embedding, CLS token)
    "jinja2>=3",  # model cards: huggingface_hub's ModelCard.from_template
    "scikit-learn>=1.3",
    "scipy>=1.10",
    "matplotlib>=3.7",
    "tensorboard>=2.14",
    "tqdm>=4.66",
]
PEFT = ["peft>=0.17"]
# torch.onnx's exporter (dynamo) needs onnx and onnxscript; onnxruntime checks the exported logits.
ONNX = ["onnx>=1.17", "onnxscript>=0.3", "onnxruntime>=1.20"]

setup(
    name="hf-vit-reduction",
    version="0.1.0",
    description="Parameter-reduced Vision Transformers (arXiv 2512.01059) as a Hugging Face Transformers model",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["hf_vit_reduction", "hf_vit_reduction.*"]),
    package_data={"hf_vit_reduction": ["evaluation/metrics/*/*.py", "hub/templates/*.md"]},
    # The core is what loading and running a model needs (from_pretrained, pipeline); each extra adds a part.
    install_requires=[
        # .ci/constraints.txt pins every direct dependency at the versions the suite passed with (CI installs those).
        "torch>=2.4",
        "transformers>=5.0,<6",
        "huggingface_hub>=2.4",  # hub/pushing.py: its httpx2 client errors (2.4 is the version tested)
        "safetensors>=0.4",
        # Pillow 13 rejects posterize(bits=0), which timm's RandAugment asks for at full magnitude.
        "pillow>=10,<13",
    ],
    entry_points={"console_scripts": ["hf-vit-reduction=hf_vit_reduction.cli:main"]},
    extras_require={
        "train": TRAIN,
        "study": TRAIN,
        "peft": PEFT,
        "onnx": ONNX,
        "test": [*TRAIN, *PEFT, *ONNX, "pytest>=8", "pytest-xdist>=3", "ruff==0.17.6"],
    },
)
