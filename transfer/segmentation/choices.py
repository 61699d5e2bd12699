"""The choices of segmentation's flags, in a module without torch so that `python -m transfer.segment --help`
answers before any heavy import; model.py and task.py check their arguments against the same tuples."""

VARIANTS = ("32s", "16s", "8s")  # FCN-32s (the paper's), and the 16s/8s skip architectures (Long et al.)
LOSS_NORMALIZATIONS = ("valid", "batch")  # mean per valid pixel, or Caffe's normalize: false (pixel sum per image)
