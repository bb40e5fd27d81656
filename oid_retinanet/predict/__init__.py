"""Prediction: inference, the per-image prediction cache, merging an image's and its mirror's boxes."""
