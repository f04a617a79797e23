"""The recognition core: errors, image decoding and its limits, steps and chains, the LiteRT
runtime, decoders, the entry format and ``Model.recognize``. It imports nothing of capserve
above it; plugins, the registry, the transports and training are built on it.
"""
