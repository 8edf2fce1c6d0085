from setuptools import find_packages, setup

setup(
    name="kerntk",
    version="0.1.0",
    description="Kernel-regime tools (NTK, critical learning rate, AGOP) for Keras 3 / TensorFlow",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["kerntk", "kerntk.*"]),
    package_data={"kerntk.datasets": ["data/*.npz"]},
    python_requires=">=3.10",
    install_requires=[
        "keras>=3",
        "tensorflow>=2.16",
        "numpy",
        "scipy",
        "threadpoolctl",
        "absl-py",
        "tensorflow-datasets",
        "importlib_resources",
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "matplotlib", "tensorboard", "jax"],
        "plot": ["matplotlib"],
        "tensorboard": ["tensorboard", "matplotlib"],
        "examples": ["matplotlib"],
    },
)
