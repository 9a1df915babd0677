"""Which relative quality target a request is routed with: its own quality_target, else a calibrated aim (a
strong share or a quality kept: its own, its tenant's, the router's default) turned into a target by the
classifier's calibration, else the router's default target. An aim needs the calibration of the classifier that
scored the prompt."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from llmrouter.registry import ModelSpec, Registry
from llmrouter.v1 import router_pb2
from services.router.calibration import Calibration
from services.router.settings import RouterSettings

log = logging.getLogger("llmrouter.router.targets")


@dataclass(frozen=True)
class Target:
    quality: float
    note: str  # how an aim became the target, for the decision's reason; '' otherwise


@dataclass(frozen=True)
class Aim:
    """What the caller asks of the reference mix: a share of calls to the strongest tier, or a share of the best
    predicted quality kept."""

    kind: Literal["strong share", "quality kept"]
    value: float


class Targets:
    def __init__(self, settings: RouterSettings, calibration: Calibration | None) -> None:
        self.settings = settings
        self.calibration = calibration
        self._warned: set[str] = set()  # classifier versions already reported as uncalibrated

    def aim(self, request: router_pb2.CompleteRequest, tenant: str) -> Aim | None:
        if request.HasField("quality_target"):
            return None
        if request.HasField("strong_share"):
            return Aim("strong share", request.strong_share)
        if request.HasField("quality_kept"):
            return Aim("quality kept", request.quality_kept)
        settings = self.settings
        if tenant in settings.tenant_strong_share:
            return Aim("strong share", settings.tenant_strong_share[tenant])
        if tenant in settings.tenant_quality_kept:
            return Aim("quality kept", settings.tenant_quality_kept[tenant])
        if settings.default_strong_share is not None:
            return Aim("strong share", settings.default_strong_share)
        if settings.default_quality_kept is not None:
            return Aim("quality kept", settings.default_quality_kept)
        return None

    async def choose(
        self,
        request: router_pb2.CompleteRequest,
        tenant: str,
        models: list[ModelSpec],
        registry: Registry,
        classifier_version: str,
    ) -> Target:
        if request.HasField("quality_target"):
            return Target(request.quality_target, "")
        aim = self.aim(request, tenant)
        default = self.settings.default_quality_target
        if aim is None:
            return Target(default, "")
        calibration = self.calibration
        if calibration is None or calibration.classifier_version != classifier_version:
            if classifier_version not in self._warned:
                self._warned.add(classifier_version)
                have = "none" if calibration is None else f"for classifier {calibration.classifier_version}"
                log.warning(
                    "no calibration for this classifier (make calibrate); strong shares and qualities kept use the "
                    "default target",
                    extra={"classifier_version": classifier_version, "calibration": have},
                )
            return Target(default, f"{aim.kind} {aim.value:.2f} not calibrated for this classifier; default target")
        if aim.kind == "strong share":
            quality: float | None = await calibration.quality_target(aim.value, models, registry)
        else:
            output = self.settings.expected_output_tokens
            quality = await calibration.quality_target_keeping(aim.value, models, registry, output)
        if quality is None:  # a calibration file written before it held the prompts' sizes
            newer = "needs a calibration with the prompts' sizes (make calibrate); default target"
            return Target(default, f"{aim.kind} {aim.value:.2f} {newer}")
        return Target(quality, f"{aim.kind} {aim.value:.2f} on the reference mix")

    async def reference(
        self, request: router_pb2.CompleteRequest, tenant: str, models: list[ModelSpec], registry: Registry
    ) -> Target:
        """The target `choose` gives a request no classifier scored (so none says which version it is): the
        calibration is taken as the deployed classifier's."""
        version = self.calibration.classifier_version if self.calibration is not None else ""
        return await self.choose(request, tenant, models, registry, version)
