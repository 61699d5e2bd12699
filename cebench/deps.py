"""Libraries that one stage alone needs (setup.cfg's extras), imported when that stage runs.

Pretraining, classification and segmentation import none of them, so they run on a machine that has only the
required packages (a GPU image with its own torch, say). A stage that needs a missing one says so on one line,
naming the pip package and the stage, before it loads any data: `require` in the stage's config check, and
`LazyModule` where a library module would otherwise import the package at its top.
"""

import importlib
import importlib.util

from cebench.errors import CebenchError
from cebench.stages import STAGES

# import name -> (pip package, setup.cfg extra that installs it)
PACKAGES = {
    "faiss": ("faiss-cpu", "retrieval"),
    "pycocotools": ("pycocotools", "detection"),
    "cv2": ("opencv-contrib-python-headless", "detection"),
}
# The optional packages each suite stage needs in every run (selective search's OpenCV only when proposals are
# neither cached nor given: transfer.detection.proposals checks that itself).
STAGE_MODULES = {stage.name: stage.packages for stage in STAGES if stage.packages}  # the rows' `packages`


def install_hint(module):
    package, extra = PACKAGES[module.split(".")[0]]
    return f"pip install {package}, or pip install -e '.[{extra}]'"


def require(module, needed_for):
    """The imported `module`, or a CebenchError naming its pip package and what needs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = PACKAGES[module.split(".")[0]][0]
        raise CebenchError(f"{needed_for} needs the {package} package, which is not installed ({install_hint(module)})"
                           ) from None


def installed(module):
    """True when `module` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module set to None in sys.modules
        return False


def missing_for_stages(stages):
    """{stage: [pip packages it needs that are not installed]} for the stages that miss any."""
    out = {}
    for stage in stages:
        absent = [PACKAGES[m][0] for m in STAGE_MODULES.get(stage, ()) if not installed(m)]
        if absent:
            out[stage] = absent
    return out


class LazyModule:
    """A module imported at its first attribute access, through `require` (one line when it is missing)."""

    def __init__(self, module, needed_for):
        self._module_name, self._needed_for, self._module = module, needed_for, None

    def __getattr__(self, name):
        if self._module is None:
            self._module = require(self._module_name, self._needed_for)
        return getattr(self._module, name)
