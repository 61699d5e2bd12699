"""cebench plumbing shared by pretrain, transfer and evaluation: config, runtime, files, records, logging."""

from cebench.errors import CebenchError

__version__ = "0.1.0"  # setup.cfg reads it (version = attr: cebench.__version__): one place to bump

__all__ = ["CebenchError", "__version__"]
