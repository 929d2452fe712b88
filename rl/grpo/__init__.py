"""GRPO: its pure loss maths, the group sampler, the learner recipe and the reward curve."""
