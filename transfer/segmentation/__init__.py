"""VOC semantic segmentation (Table 2, "Segmentation"): FCN on the shared backbone.

data.py (masks, joint augmentation, batching) -> model.py (FCN-32s/16s/8s) -> task.py (per-pixel loss,
full-resolution evaluation, for the engine) -> stages.py (what `python -m transfer.segment` runs).
"""
