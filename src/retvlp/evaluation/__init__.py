"""Evaluation of pretrained dual encoders (zero-shot, linear probe; more protocols build on these)."""
