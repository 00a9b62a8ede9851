"""Model weights shipped inside the package (see `fastv.default_model`)."""
