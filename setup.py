"""simclr_jax: SimCLR (v1 and v2) in JAX/Flax."""

import setuptools

INSTALL_REQUIRES = [
    'jax>=0.10.0',
    'flax>=0.12.0',
    'optax>=0.2.5',
    'chex>=0.1.90',
    'ml-collections>=1.1.0',
    'orbax-checkpoint>=0.11.0',
    'absl-py>=2.1.0',
    'numpy>=1.26',
    'pillow>=10.0',
    'scikit-learn>=1.4',  # Ships the embedded digits data set; t-SNE.
    'matplotlib>=3.8',  # simclr_jax.visualize (headless, Agg).
    'tensorflow-cpu>=2.18',
    'tensorflow-datasets>=4.9.7',
    # Needed by tensorflow-datasets and the TensorBoard writer, not declared by them.
    'importlib_resources>=6.0',
    'tensorboard>=2.18',
]

TEST_REQUIRES = [
    'pytest>=8.0',
    'pytest-xdist>=3.5',
    'scikit-image>=0.22',  # Real sample photos for the augmentation tests.
    # Executes notebooks/simclr_demo.ipynb (tests/test_notebook.py).
    'nbclient>=0.10',
    'nbformat>=5.10',
    'ipykernel>=6.29',
]

# Deviceless TPU compilation for bench/scale_plan.py (libtpu compiles for a TPU
# topology on a CPU-only host); pinned to the jax it was checked with.
TPU_REQUIRES = [
    'jax[tpu]==0.10.2',
]

# NVIDIA GPUs: JAX's CUDA build (`pip install -e ".[cuda]"`; bench/gpu_check.sh
# does it) with jax's own extra 'cuda12', which runs on more installed NVIDIA
# drivers; `.[cuda13]` takes 'cuda13' (docs.jax.dev's default, a CUDA 13 driver,
# R580 or newer). jax pins its CUDA plugin to its own version. Neither changes
# the default install.
CUDA_REQUIRES = ['jax[cuda12]>=0.10.0']
CUDA13_REQUIRES = ['jax[cuda13]>=0.10.0']

setuptools.setup(
    name='simclr_jax',
    version='0.1.0',
    description='SimCLR contrastive self-supervised learning in JAX/Flax.',
    long_description=open('README.md').read() if __import__('os').path.exists('README.md') else '',
    long_description_content_type='text/markdown',
    python_requires='>=3.11',
    packages=setuptools.find_packages(include=['simclr_jax', 'simclr_jax.*']),
    install_requires=INSTALL_REQUIRES,
    extras_require={'test': TEST_REQUIRES, 'tpu': TPU_REQUIRES,
                    'cuda': CUDA_REQUIRES, 'cuda13': CUDA13_REQUIRES},
    license='Apache-2.0',
)
