"""Training templates: labelled folders or generators -> Keras model -> verified TFLite entry.

Only ``capserve.training.cli`` is imported by the ``capserve`` command; TensorFlow is imported inside
the command functions, so serving never loads it.
"""
