"""Procedural chest radiographs with known lesion masks, written in the on-disk layouts of NIH ChestX-ray14 and of the
covid-chestxray-dataset, so the real-data readers of ``flexheads.data.cxr`` are the embedded default's code path.

``generate(out_dir, ...)`` empties ``out_dir`` and writes ``chestxray14/`` and ``covid-chestxray-dataset/`` (images,
the sources' CSV and list files, and ``masks/<stem>.npz``); it is a function of its arguments.  A mask file holds one
boolean ``(S, S)`` array per finding on the image, keyed by its label; it is synthetic-only ground truth (the real
sources have none), empty for "No Finding".

Modules, in dependency order:

* ``cohort``: ``Study`` and ``sample_cohort`` (patients, views, findings with NIH-like prevalences);
* ``anatomy``: a patient's chest dimensions and vessel tree;
* ``chest``: the normal chest's attenuation fields on an image's pixel grid;
* ``findings``: the fourteen NIH findings and COVID-19, each editing those fields and returning its mask;
* ``rendering``: ``render`` (fields → exposed 8-bit image, masks);
* ``files``: ``generate`` (the layouts, the test split, the CSV rows).
"""

from flexheads.data.synthetic_cxr.cohort import Study, sample_cohort
from flexheads.data.synthetic_cxr.files import FIELD_OF_VIEW_MM, TEST_IMAGE_FRACTION, generate
from flexheads.data.synthetic_cxr.rendering import Rendering, render

__all__ = ["FIELD_OF_VIEW_MM", "TEST_IMAGE_FRACTION", "Rendering", "Study", "generate", "render", "sample_cohort"]
