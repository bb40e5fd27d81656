"""The command lines that a 2018 script and its 2019 counterpart share: each module's `build_parser` and `run`.

Stage 2 (image parameters), the conversion, stage 4 (predictions), stage 5 (parent classes) and stage 6
(ensembling) exist as a 2018 script at the repository root (or in retinanet_training_level_1/) and as a 2019
script in labelProcess/, retinanet_training_oid_2019/ or retinanet_inference_submission/; both are thin wrappers
over one module here, passing their own defaults and their `a00_utils_and_constants` (`constants`), so no script
imports another and the package never imports a00. The stages that need no model import no Keras.
"""
