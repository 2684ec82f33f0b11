"""Datasets and loaders: the shapes world (``unclip.data.shapes``), image folders, webdataset shards.

Kept import-free on purpose: each loader lives in its own module and is imported by name, so
``import unclip.data`` never pulls torch, webdataset or Pillow.
"""
