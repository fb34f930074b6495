"""Helpers of the VisionFM MONAI Label app (apps/monailabel/main.py).

`bundles` is pure Python (no monailabel import), so the main environment's tests can use it.
"""
