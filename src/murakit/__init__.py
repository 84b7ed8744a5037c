"""murakit: find abnormal musculoskeletal radiographs (MURA) with DenseNet ensembles."""

__version__ = "0.1.0"
