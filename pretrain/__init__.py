"""Context-encoder pretraining: AlexNet encoder, channel-wise FC, decoder, masks, loss, loop and ce.pt I/O.

Importing the package registers the encoder with timm (`timm.create_model("cebench_caffenet")`, see timm_models).
"""

from pretrain import timm_models  # noqa: F401  (registers cebench_caffenet and cebench_alexnet with timm)
