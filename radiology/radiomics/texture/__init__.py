"""IBSI texture matrices and their features (IBSI 1 sections 3.6-3.11).

One module per matrix: :mod:`.glcm`, :mod:`.glrlm`, :mod:`.glszm`, :mod:`.gldzm`, :mod:`.ngtdm`,
:mod:`.ngldm`. Each takes discretised grey levels (``0`` outside the ROI) and returns, per IBSI
aggregation variant, the family name as IBSI tables write it and the features of that family.
"""
