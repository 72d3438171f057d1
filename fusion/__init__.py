"""Fusion room: joins pathomics and radiomics tables per patient into signatures.

Not built yet.
"""
