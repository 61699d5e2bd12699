"""VOC detection (Table 2, "Detection"): Fast R-CNN on the shared backbone.

data.py (one split format for VOC and COCO, training/test items) -> model.py (RoI pooling + heads) -> task.py
(loss, test-time detection, for the engine) -> hooks.py (DetectionHooks: what the transfer driver calls for
`python -m transfer.detect`); targets.py (box arithmetic, RoI sampling), proposals.py (selective search, cached),
coco.py (COCO files and COCO AP), outputs.py (the devkit's results files, drawn examples).
"""
