"""Transfer to PASCAL VOC: the three entry points beside the shared engine, backbone and rescaling.

    transfer/classify.py detect.py segment.py   python -m transfer.<task>: one shape (parse -> start -> data ->
                                                backbone from --weights + head -> rescale -> fit -> record)
    transfer/flags.py                           the flag groups every entry point's parser is built from
    transfer/stages.py                          the stages the three entry points share (outputs, rescaling once,
                                                TrainConfig from flags, the record and its protocol)
    transfer/backbone.py                        --weights (via pretrain.weights) -> Backbone; its input normalisation
    transfer/rescale.py                         Krahenbuhl et al.'s data-dependent init and rescaling
    transfer/engine.py, sampling.py             the one fine-tuning loop and its seeded data order
    transfer/classification/ detection/ segmentation/
                                                one package per task, the same files in each: data.py, model.py,
                                                task.py (what the engine calls), stages.py (what the entry point
                                                calls); detection adds targets.py, proposals.py, coco.py;
                                                classification adds probe.py

Imports only go down: entry points -> task packages -> shared modules -> pretrain, voc, cebench,
evaluation.metrics. Labelled VOC data lives in `voc/`.
"""
