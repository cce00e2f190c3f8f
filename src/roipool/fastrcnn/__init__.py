"""A small Fast R-CNN built from roipool's layers (``roipool fast-rcnn ...``).

Modules: ``data`` (generated shapes data sets, NumPy), ``proposals`` (sliding
windows, NumPy), ``boxes`` (IoU, box coding, NMS), ``model`` (backbone, RoI
pooling, head), ``train``, ``evaluate`` (VOC AP), ``speed`` (shared features
against per-proposal R-CNN). Only ``boxes``, ``model``, ``train``,
``evaluate`` and ``speed`` import torch; importing this package does not.
See ``docs/fastrcnn.md``.
"""
