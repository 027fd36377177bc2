"""LL-Ct: the k largest unobserved losses are trained towards positive for this step only.

Same k schedule as LL-R; the selected entries take the flipped target's loss.
"""

import jax.numpy as jnp

from bridgegap_jax.run import losses
from bridgegap_jax.run.schemes.rejection import Rejection


class TemporaryCorrection(Rejection):
    name = "LL-Ct"
    default_delta_rel = 0.002

    def loss(self, logits, observed, k):
        loss, flipped, unobserved = losses.assume_negative(logits, observed, self.unobserved_value)
        selected = losses.select_large_losses(loss, unobserved, k, self.group_size)
        return losses.LossOutput(jnp.mean(jnp.where(selected, flipped, loss)), selected)
