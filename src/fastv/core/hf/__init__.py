"""What fastv knows about transformers: compatibility, attention taps, model families, chat."""
