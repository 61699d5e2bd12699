"""Transfer to PASCAL VOC: the three entry points, the one driver they share, and the shared engine and backbone.

    transfer/classify.py detect.py segment.py   python -m transfer.<task>: one shape, get_args_parser and main;
                                                main parses first (--help, --print-config exit there, no torch
                                                imported), then start_run, then driver.run with the task's hooks
    transfer/flags.py                           the flag groups every entry point's parser is built from
    transfer/driver.py                          the one sequence of steps (refuse an existing record -> data ->
                                                model -> output paths -> run_outputs -> rescaling once -> feature
                                                health -> fit or probe -> record -> summary) and TransferHooks, what
                                                a task supplies for each step
    transfer/backbone.py                        --weights (via pretrain.weights) -> Backbone; its input normalisation
    transfer/rescale.py                         Krahenbuhl et al.'s data-dependent init and rescaling
    transfer/engine.py, sampling.py             the one fine-tuning loop and its seeded data order
    transfer/speed.py                           python -m transfer.speed: the engine's throughput per precision
    transfer/classification/ detection/ segmentation/
                                                one package per task, the same files in each: data.py, model.py,
                                                task.py (what the engine calls), hooks.py (one TransferHooks
                                                subclass: what the driver calls); detection adds targets.py,
                                                proposals.py, coco.py, outputs.py; segmentation adds choices.py
                                                (its flags' choices, torch-free) and outputs.py; classification
                                                adds probe.py and device_views.py

Words: a *stage* is a row of the suite's table (cebench.stages); a *step* is one line of the driver's sequence; a
*hook* is a task's method for a step. The entry points, the driver and the hooks read the resolved configuration
(defaults < profile < command line); everything below them takes explicit values.

Imports only go down: entry points -> hooks -> driver and task modules -> shared modules -> pretrain, voc, cebench,
evaluation.metrics. Labelled VOC data lives in `voc/`.
"""
