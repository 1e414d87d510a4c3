"""Training: losses, schedules, the two training loops, checkpoints (import the submodules directly)."""
