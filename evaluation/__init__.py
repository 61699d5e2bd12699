"""Evaluation in three layers (imports run only downwards):

- `evaluation.metrics`: pure maths (VOC metrics, bootstrap intervals, retrieval and inpainting scores, kNN search);
  it imports nothing of ours, and every layer, `transfer` included, may use it;
- `evaluation.experiments`: what the experiment entry points share (frozen features, fills, image sets, the
  per-layer probe's record); it builds on `pretrain` and `transfer`;
- `evaluation.reporting`: what reads only result records (cells, the paper's tables, figures, the HTML page).

The entry points sit beside them, one file each: experiments (`retrieval`, `inpainting`, `probe`, `curve`,
`speed`) and reporting (`tables`, `report`), all run as `python -m evaluation.<name>`.
"""
