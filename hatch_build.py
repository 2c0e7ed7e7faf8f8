"""Put models.lock and models/ inside the wheel, but not inside an editable install's wheel.

An editable install reads them from the checkout (assistant.store.lockfile finds the checkout's lock
first), so copying ~80 MB of pinned models into the editable wheel, twice over while pip prepares
its metadata, only costs disk: a nearly full CI disk failed `pip install -e .` on it.
"""

from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name == "wheel" and version == "standard":
            build_data["force_include"]["models.lock"] = "assistant/_data/models.lock"
            build_data["force_include"]["models"] = "assistant/_data/models"
