"""Synthetic COCO person keypoints: people posed by the 3D motion generator, drawn with PIL and written in the COCO
2017 ``person_keypoints`` format, so the COCO loader and pycocotools are the code path of the embedded default.

``generate(out_dir, ...)`` empties ``out_dir`` and writes ``images/{train,val}2017/<12-digit image id>.jpg`` and
``annotations/person_keypoints_{train,val}2017.json``; it is a function of its arguments.  A keypoint is labelled
``v = 2`` only where the drawing shows it (its own body part, a face point turned to the camera), ``v = 1`` where it
is in the image but hidden, ``v = 0`` outside it.

Modules, in dependency order:

* ``scene``: ``Scene``, ``Person``, ``Occluder``, ``PART_NAMES`` and the camera-frame and pixel conventions;
* ``keypoints``: the 17 COCO keypoints of an H36M pose (the head model) and which parts show each;
* ``shapes``: a person as shaded 2D shapes in painter's order, and drawing them;
* ``rendering``: ``render`` (the image and the per-pixel owner and part) and ``annotate`` (COCO labels from it);
* ``sampling``: ``sample_scene`` (camera, posed people, room, clutter, occluders);
* ``files``: ``generate`` (the COCO image folders and annotation JSON).
"""

from flexheads.data.synthetic_coco.files import SPLITS, generate
from flexheads.data.synthetic_coco.keypoints import coco_keypoints_3d
from flexheads.data.synthetic_coco.rendering import BACKGROUND, OCCLUDER, PersonLabel, Rendering, annotate, render
from flexheads.data.synthetic_coco.sampling import sample_scene
from flexheads.data.synthetic_coco.scene import PART_NAMES, Occluder, Person, Scene

__all__ = [
    "BACKGROUND",
    "OCCLUDER",
    "PART_NAMES",
    "SPLITS",
    "Occluder",
    "Person",
    "PersonLabel",
    "Rendering",
    "Scene",
    "annotate",
    "coco_keypoints_3d",
    "generate",
    "render",
    "sample_scene",
]
