"""The file datasets: the paper's seven in their official layouts, and two embedded image-text sets.

Importing this package registers them all in mpsl.data.DATASETS.
"""

from mpsl.data.datasets import t4sa  # noqa: F401
