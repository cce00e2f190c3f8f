"""A small Faster R-CNN built from roipool's layers (``roipool fast-rcnn ...``).

Modules: ``data`` (the generated ``hard`` and ``easy`` sets, NumPy),
``proposals`` (sliding windows, NumPy), ``boxes`` (IoU, box coding, NMS: the
one box module), ``rpn`` (anchors, the Region Proposal Network, its labels,
loss and proposal layer), ``model`` (backbone, RPN or windows, RoI pooling,
head), ``train`` (joint training), ``evaluate`` and ``coco`` (VOC AP, COCO AP
by pycocotools, proposal recall), ``speed`` (shared features against
per-proposal R-CNN; RPN against windows), ``figures`` (proposals beside
detections). ``data`` and ``proposals`` do not import torch, and importing
this package imports none of its modules. See ``docs/fastrcnn.md``.
"""
