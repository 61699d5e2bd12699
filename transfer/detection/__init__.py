"""VOC detection (Table 2, "Detection"): Fast R-CNN on the shared backbone.

data.py (one split format for VOC and COCO, training/test items) -> model.py (RoI pooling + heads) -> task.py
(loss, test-time detection, for the engine) -> stages.py (what `python -m transfer.detect` runs); targets.py (box
arithmetic, RoI sampling), proposals.py (selective search, cached), coco.py (COCO files and COCO AP).
"""
