"""VOC classification (Table 2, "Classification"): Krahenbuhl's voc-classification protocol.

data.py (random views, the dataset) -> model.py (backbone + fc8) -> task.py (loss, multi-crop test, for the
engine) -> stages.py (what `python -m transfer.classify` runs); probe.py: the frozen-feature linear probe.
"""
