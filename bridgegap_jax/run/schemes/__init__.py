"""Loss schemes by name (config field loss.scheme). A new scheme is one module and one line here.

    scheme = schemes.create("LL-R", delta_rel=None, unobserved_value=0)

`register` adds a scheme from elsewhere (a plug-in, a test) without editing this file.
"""

from __future__ import annotations

from bridgegap_jax.run.schemes.assume_negative import AssumeNegative
from bridgegap_jax.run.schemes.base import HostState, Scheme
from bridgegap_jax.run.schemes.permanent_correction import PermanentCorrection
from bridgegap_jax.run.schemes.rejection import Rejection
from bridgegap_jax.run.schemes.temporary_correction import TemporaryCorrection

REGISTRY: dict[str, type[Scheme]] = {}


def register(scheme: type[Scheme]) -> type[Scheme]:
    """Make `scheme` available as config value `scheme.name` (usable as a class decorator)."""
    REGISTRY[scheme.name] = scheme
    return scheme


for _scheme in (AssumeNegative, Rejection, TemporaryCorrection, PermanentCorrection):
    register(_scheme)


def create(
    name: str, delta_rel: float | None = None, unobserved_value: int = 0, group_size: int = 0
) -> Scheme:
    """The scheme registered as `name` (config.loss.scheme; configuration.check refuses any other)."""
    return REGISTRY[name](delta_rel, unobserved_value, group_size)


__all__ = ["HostState", "Scheme", "REGISTRY", "register", "create"]
