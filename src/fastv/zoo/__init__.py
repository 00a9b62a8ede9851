"""fastv's own default model, the data set it was trained on, and its tokenizer."""
