"""DIPSY Studio: training-free synthetic training images for few-shot classification
(dual IP-Adapter guidance, arXiv 2509.22635).

The package is layered: settings (:mod:`.config`, :mod:`.presets`), loading (:mod:`.models`),
data and files, the diffusion engine (:mod:`.diffusion`), similarity and the batch job
(:mod:`.similarity`, :mod:`.generate`), the classifier (:mod:`.classifier`), the digit world
(:mod:`.world`), the app's facade (:mod:`.studio`) and its Gradio tabs (:mod:`.ui`).
"""

import importlib.abc
import sys

__version__ = "0.1.0"

# Modules of the flat layout before 0.2 and where they live now: importing an old name fails
# with a message that names the new module instead of a bare "No module named".
MOVED = {
    "pipeline": "diffusion.pipeline",
    "ip_attention": "diffusion.ip_attention",
    "preview": "diffusion.preview",
    "augment": "diffusion.augment",
    "reference": "diffusion.reference",
    "train": "classifier.train",
    "evaluate": "classifier.evaluate",
    "studio_session": "studio.session",
    "studio_data": "studio.data",
    "studio_guidance": "studio.guidance",
    "studio_generate": "studio.runs",
    "studio_train": "studio.training",
    "bench_train": "bench.training",
    "world_report": "world.report",
}


class _MovedModules(importlib.abc.MetaPathFinder):
    """Consulted only after the normal finders found nothing (it is appended to the path)."""

    def find_spec(self, fullname, path, target=None):
        package, _, name = fullname.rpartition(".")
        if package == __name__ and name in MOVED:
            raise ModuleNotFoundError(
                f"{fullname} has moved to {__name__}.{MOVED[name]}: change the import "
                f"(the README's module map lists every module)",
                name=fullname,
            )
        return None


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())
