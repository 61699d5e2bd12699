"""Transfer to PASCAL VOC: VOC data, backbones from a weights spec, the one fine-tuning engine, task entry points."""
