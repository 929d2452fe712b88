"""Distillation: KD losses, the student's recipe, the step sampler and the draft evaluation."""
