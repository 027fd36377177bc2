"""AN: every unobserved label is a negative; nothing is rejected or corrected."""

import jax.numpy as jnp

from bridgegap_jax.run import losses
from bridgegap_jax.run.schemes.base import Scheme


class AssumeNegative(Scheme):
    name = "AN"

    def loss(self, logits, observed, k):
        loss, _, unobserved = losses.assume_negative(logits, observed, self.unobserved_value)
        return losses.LossOutput(jnp.mean(loss), jnp.zeros_like(unobserved))

    def describe(self) -> str:
        return self.name
