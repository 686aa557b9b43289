"""Unstructured ``sparse_dense`` for a few rows of ``X``: ``packing`` (CSR in 16-byte groups of
values and 16-bit columns) and ``kernel`` (a warp per row of ``W``, ``X`` in shared memory)."""
