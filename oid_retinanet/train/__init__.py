"""Training: losses, callbacks and the entry point shared by the train_oid_level_1_resnet*.py scripts."""
