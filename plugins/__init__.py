"""Preprocess, postprocess and data-generator plugins (pluggy).

``hookspecs`` declares the hooks, ``manager`` holds the one plugin manager, ``steps``
describes a step and its parameters, ``chain`` compiles the chain a registry entry names.
"""
