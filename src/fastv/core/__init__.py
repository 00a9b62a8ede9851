"""fastv's engine and what it needs: imports torch, transformers and itself only."""
