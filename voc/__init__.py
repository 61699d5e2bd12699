"""Labelled PASCAL VOC data, below every stage that needs labels (transfer, evaluation).

- `voc.devkit`: read a standard VOCdevkit (image sets, XML annotations, image labels, segmentation masks and the
  devkit's palette), every file checked when a split is loaded; tell the synthetic devkit from a real one by its
  stamp (`dataset_name`);
- `voc.synthetic` (`python -m voc.synthetic`): draw the smoke profile's synthetic devkit (`voc.shapes`: the
  per-class drawings). Only run_all launches it; nothing imports it.

Imports only `cebench` (plumbing): no model code, no transfer code.
"""
