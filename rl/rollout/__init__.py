"""Rollout workers and the manager between them and the learner ranks (shared by GRPO and distillation)."""
