"""Open Images object detection with RetinaNet on Keras 3.

Subpackages: `oid` (Open Images formats, hierarchy, levels), `data` (image parameters, generators),
`model`, `train`, `predict`, `boxes`, `evaluate`, `serve`. Importing this package imports no Keras.
"""

__version__ = "0.1.0"
