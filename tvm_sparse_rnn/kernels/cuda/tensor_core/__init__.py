"""Float16 ``sparse_dense`` on tensor cores: ``packing`` (the segmented-pairs weight layout) and
``kernel`` (the wmma kernel over it)."""
