"""cebench plumbing shared by pretrain, transfer and evaluation: config, runtime, files, records, logging."""

from cebench.errors import CebenchError

__all__ = ["CebenchError"]
