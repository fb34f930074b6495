"""Placeholder for `torchvision` on CPU-only installs (see apps/monailabel/README.md, "torchvision").

monailabel 0.8.5 imports `torchvision.utils` at load time (transform/post.py, deepedit/handlers.py) only for
debug image dumps, and PyPI's torchvision does not load beside the CPU torch wheel. The app puts this folder on
sys.path only when no working torchvision is installed. Nothing this app serves uses torchvision.
"""

__version__ = "0.0.0+visionfm.placeholder"
