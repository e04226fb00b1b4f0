"""The dataset adapters by name (one module per dataset)."""

from conclugen.data import caer, meld, mosei, voxceleb2
from conclugen.data.manifest import Adapter

ADAPTERS: dict[str, Adapter] = {m.ADAPTER.name: m.ADAPTER for m in (voxceleb2, caer, meld, mosei)}
