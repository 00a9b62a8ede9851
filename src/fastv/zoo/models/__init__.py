"""Model weights shipped inside the package (see `fastv.zoo.default_model`)."""
