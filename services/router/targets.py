"""Which relative quality target a request is routed with: its own quality_target, else a strong share (its
own, its tenant's, the router's default) turned into a target by the classifier's calibration, else the
router's default target. A strong share needs the calibration of the classifier that scored the prompt."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from llmrouter.registry import ModelSpec, Registry
from llmrouter.v1 import router_pb2
from services.router.calibration import Calibration
from services.router.settings import RouterSettings

log = logging.getLogger("llmrouter.router.targets")


@dataclass(frozen=True)
class Target:
    quality: float
    note: str  # how a strong share became the target, for the decision's reason; '' otherwise


class Targets:
    def __init__(self, settings: RouterSettings, calibration: Calibration | None) -> None:
        self.settings = settings
        self.calibration = calibration
        self._warned: set[str] = set()  # classifier versions already reported as uncalibrated

    def strong_share(self, request: router_pb2.CompleteRequest, tenant: str) -> float | None:
        if request.HasField("quality_target"):
            return None
        if request.HasField("strong_share"):
            return request.strong_share
        return self.settings.tenant_strong_share.get(tenant, self.settings.default_strong_share)

    def choose(
        self,
        request: router_pb2.CompleteRequest,
        tenant: str,
        models: list[ModelSpec],
        registry: Registry,
        classifier_version: str,
    ) -> Target:
        if request.HasField("quality_target"):
            return Target(request.quality_target, "")
        share = self.strong_share(request, tenant)
        default = self.settings.default_quality_target
        if share is None:
            return Target(default, "")
        calibration = self.calibration
        if calibration is None or calibration.classifier_version != classifier_version:
            if classifier_version not in self._warned:
                self._warned.add(classifier_version)
                have = "none" if calibration is None else f"for classifier {calibration.classifier_version}"
                log.warning(
                    "no calibration for this classifier (make calibrate); strong shares use the default target",
                    extra={"classifier_version": classifier_version, "calibration": have},
                )
            return Target(default, f"strong share {share:.2f} not calibrated for this classifier; default target")
        quality = calibration.quality_target(share, models, registry)
        return Target(quality, f"strong share {share:.2f} on the reference mix")
