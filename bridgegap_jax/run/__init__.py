"""A run: the protocol (trainer), the jitted steps, the loss schemes, checkpoints, the workdir, logs and
evaluation."""
