"""The file datasets: the paper's seven in their official layouts, and two embedded image-text sets.

Importing this package registers every module in it in mpsl.data.DATASETS: a new dataset is a new file.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "common":
        importlib.import_module(f"{__name__}.{_module.name}")
