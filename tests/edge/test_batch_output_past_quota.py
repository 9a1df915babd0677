"""A batch finishing for a tenant at its file quota (in process, on a real Redis and on a Redis Cluster): its output
is stored and counted all the same (its lines were served and charged), and the tenant is told, in the output file's
status_details, and operators by llmrouter_edge_batch_outputs_past_quota_total. Before, nothing told either: the
tenant's next upload was refused with no word of why its room went."""

from __future__ import annotations

import json

import pytest
from prometheus_client import REGISTRY

from services.batches import wire
from services.batches.api import FILE_LISTED
from services.batches.output_files import part_field
from services.batches.quota import MIN_COUNTED_BYTES
from services.batches.store import Store, batch_key, file_key, results_key
from tests.edge.conftest import opened_runner

QUOTA = 4 * MIN_COUNTED_BYTES


def _past_quota() -> float:
    return REGISTRY.get_sample_value("llmrouter_edge_batch_outputs_past_quota_total") or 0.0


async def _finish(store: Store, batch_id: str, rerun: bool = False) -> dict[str, bytes]:
    """The batch, one line answered, finished by a runner under QUOTA (once more, as it ended, when `rerun`): its
    output file's listed fields."""
    if not rerun:
        line = json.dumps({"custom_id": "a", "response": {"status_code": 200}})
        batch: dict[str, str | bytes] = {"status": "in_progress", "tenant": "t1", "total": "1"}
        await store.put(batch_key(batch_id), batch | {"input_file_id": "file-in"})
        await store.put(results_key(batch_id), {"0": json.dumps({"line": line, "ok": True})})
    async with opened_runner(store, retention_s=3600, tenant_file_bytes=QUOTA) as runner:  # no line left to send
        await runner._finish(batch_id, await store.get(batch_key(batch_id)), "completed")
    output_id = (await store.get(batch_key(batch_id)))["output_file_id"].decode()
    assert output_id in await store.counted_files("t1")  # counted as long as it is kept, whatever the quota
    assert (await store.content(file_key(output_id), part_field(0))) is not None
    return (await store.fields([file_key(output_id)], FILE_LISTED))[0]


@pytest.mark.parametrize("stored_before", [0, QUOTA - MIN_COUNTED_BYTES // 2], ids=["room-left", "at-the-quota"])
async def test_a_batch_output_past_the_quota_is_stored_and_told(store: Store, stored_before: int) -> None:
    if stored_before:
        assert await store.count_file("t1", "file-upload", stored_before, QUOTA) is None
        assert await store.keep_counted("t1", "file-upload", 3600)
    before = _past_quota()
    output = wire.file_body("file-b-output", await _finish(store, "b-quota"))
    if stored_before:
        assert output["status_details"] is not None and "storage limit" in output["status_details"]
        assert _past_quota() == before + 1
    else:
        assert output["status_details"] is None
        assert _past_quota() == before


async def test_a_finish_run_again_counts_its_output_past_the_quota_once(store: Store) -> None:
    """A batch's finish run again (another edge's adoption read it active just before its run ended it, or the
    finish was interrupted past its status) stores the same output again: told again on the file, but counted once by
    llmrouter_edge_batch_outputs_past_quota_total, an output past the quota, not a finish."""
    assert await store.count_file("t1", "file-upload", QUOTA - MIN_COUNTED_BYTES // 2, QUOTA) is None
    assert await store.keep_counted("t1", "file-upload", 3600)
    before = _past_quota()
    await _finish(store, "b-again")
    output = await _finish(store, "b-again", rerun=True)
    assert wire.file_body("file-b-again-output", output)["status_details"] is not None
    assert _past_quota() == before + 1
