"""Loaders for weights released by other projects, in those projects' own layouts
(docs/pretrained.md): M3D-LaMed (:mod:`zoo.pretrained.m3d_lamed`), M3D-CLIP
(:mod:`zoo.pretrained.m3d_clip`); SegVol's layout lives with its head (:mod:`heads.segvol`).

Every loader places each tensor of the file into the model under the zoo's name (shapes checked,
values cast to the model's dtype), skips only keys it has a stated reason for, and returns a
:class:`zoo.pretrained.report.LoadReport`. Files are read from local paths only.
"""
