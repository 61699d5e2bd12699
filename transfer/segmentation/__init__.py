"""VOC semantic segmentation (Table 2, "Segmentation"): FCN on the shared backbone.

data.py (masks, joint augmentation, batching) -> model.py (FCN-32s/16s/8s) -> task.py (per-pixel loss,
full-resolution evaluation, for the engine) -> hooks.py (SegmentationHooks: what the transfer driver calls for
`python -m transfer.segment`); choices.py (the flags' choices, without torch), outputs.py (the examples PNG).
"""
