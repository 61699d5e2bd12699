"""VOC classification (Table 2, "Classification"): Krahenbuhl's voc-classification protocol.

data.py (random views, the dataset, the rescaling's views) -> model.py (backbone + fc8) -> task.py (loss, multi-crop
test, for the engine) -> hooks.py (ClassificationHooks: what the transfer driver calls for `python -m
transfer.classify`); probe.py: the frozen-feature linear probe; device_views.py: the device data path.
"""
