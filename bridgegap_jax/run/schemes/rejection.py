"""LL-R: the k largest unobserved losses of a batch are rejected (weight 0, kept in the mean).

k = ceil(B*C*(1 - clean_rate)), clean_rate falling by delta_rel after every epoch.
"""

import jax.numpy as jnp

from bridgegap_jax.run import losses
from bridgegap_jax.run.schemes.base import Scheme


class Rejection(Scheme):
    name = "LL-R"
    default_delta_rel = 0.005

    def num_large_losses(self, epoch, rows, num_classes):
        if epoch <= 1:
            return 0
        return losses.large_loss_count(rows * num_classes, 1.0 - losses.clean_rate(epoch, self.delta_rel))

    def loss(self, logits, observed, k):
        loss, _, unobserved = losses.assume_negative(logits, observed, self.unobserved_value)
        selected = losses.select_large_losses(loss, unobserved, k, self.group_size)
        return losses.LossOutput(jnp.mean(jnp.where(selected, 0.0, loss)), selected)
