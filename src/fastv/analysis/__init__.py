"""Where attention goes inside a model, layer by layer, and pictures of it."""
