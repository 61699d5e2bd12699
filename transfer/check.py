"""What the three transfers' hooks for `bash run_all.sh PROFILE --check` share (transfer/<task>/check.py): the
engine's step on the task's data and model, and the timing of its final evaluation pass."""

from cebench.runtime import resolve_data_path
from cebench.speed import seconds_per_call
from transfer import driver
from transfer.engine import evaluate_main
from transfer.speed import engine_bench
from voc.devkit import read_image_set

NOT_PROJECTED = ["Krähenbühl rescaling and feature health of the init (a few batches, once per run)"]


def counts(cfg, splits):
    """(training, test) images of the ImageSets/Main splits named by the config keys `splits`."""
    return tuple(len(read_image_set(cfg["voc_root"], cfg["year"], cfg[k])) for k in splits)


def min_train_images(cfg):
    """Images the stand-in's training split needs: one batch (the sampler refuses fewer)."""
    return cfg["batch_size"]


def image_bytes(size):
    """Bytes of one decoded 4:3 photo of longer side `size` (the transfers' --cache auto rules count them)."""
    return size * size * 3 * 3 // 4


def engine_check(task, model, cfg, rt, *, train, test, what, workers, cached, n_train, n_test, nbytes, choose,
                 extra=()):
    """A transfer's engine step (per micro-batch) and its final evaluation pass (`what`, on `test`), as the check's
    hooks return them (evaluation.experiments.stage_checks). The step runs on the full run's data path: --data-path
    auto weighs the full split's images (`nbytes` of the check's `train`, scaled to `n_train`), and `choose(name)`
    sets it on the task (the task package's choose_data_path)."""
    chosen = choose(resolve_data_path(cfg["data_path"], rt.device, nbytes * max(1, n_train) / len(train)))
    config = driver.train_config(cfg, workers)
    bench = engine_bench(task, model, config, rt)
    micro = cfg["batch_size"] // cfg["accum_steps"]

    def evaluations():
        s = seconds_per_call(lambda: evaluate_main(task, model, rt), rt.device)
        per_image = s / len(test)
        return list(extra) + [{"what": f"{what}, {n_test} images", "seconds": per_image * n_test,
                               "how": f"measured: {per_image:.4f} s per image over the check's {len(test)} test "
                                      "images"}]

    path = f"loader (workers: {workers}), " + ("images cached in memory" if cached else "images read from disk")
    path = "device (images decoded once onto it, no workers)" if chosen == "device" else path
    return {"bench": bench, "images_per_step": micro, "steps": cfg["steps"] * cfg["accum_steps"],
            "step_unit": "micro-batch" if cfg["accum_steps"] > 1 else "step", "data_path": path,
            "evaluations": evaluations, "not_projected": list(NOT_PROJECTED)}
