"""RetinaNet on Keras 3, reproducing fizyr keras-retinanet 1.0.0 (and loading its .h5 files).

Modules: `resnet` (keras-resnet backbones), `fpn` (feature pyramid), `heads` (regression and classification
submodels), `anchors` (anchor parameters and generation), `decode` (box coding and clipping),
`filter_detections` (score threshold, NMS, top detections), `retinanet` (training and inference models),
`h5` (loading keras-retinanet .h5 files, and our .keras files), `winograd` (Winograd convolution),
`mobilenet`, `imagenet` (ImageNet weights), `download` (released weights), `torch_layout` (the torch
backend's convolutions without copies). Importing this package imports no Keras; its modules do.
"""
