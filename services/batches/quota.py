"""A tenant's stored files are bounded by a quota of bytes (EDGE_FILES_TENANT_BYTES): the batch Redis is shared by
every tenant and never evicts, so one tenant's uploads, kept 30 days for free, would fill it for all. Counted in the
store beside the files (Store.count_file), in one step per upload: of two uploads at the quota's edge one passes."""

from __future__ import annotations

import time

from prometheus_client import Counter

from services.batches.store import Store, file_key

# A file counts at least this much: its keys and index entries take room of their own, so that a tenant's quota
# bounds its count of files too (a million at most per GiB).
MIN_COUNTED_BYTES = 1024
# How often a tenant's counts are checked against its files here, at most: a check reads every counted file's hash.
MEND_EVERY_S = 60.0
HASHES_READ = 1000
# Each is a count left for a file an edge removed without giving its bytes back (killed between the two, or a bug
# leaving counts behind): the tenant was refused uploads it had room for until then.
MENDED = Counter(
    "llmrouter_edge_file_counts_mended_total",
    "Counts of tenants' files gone from the batch store that a quota check gave back",
)
# Each is an output that took its tenant past its quota: told on the file too (status_details).
PAST_QUOTA = Counter(
    "llmrouter_edge_batch_outputs_past_quota_total",
    "Batch output and error files stored past their tenant's file quota (never refused: their lines were charged)",
)
PAST_QUOTA_DETAILS = (
    "Stored past your file storage limit: your batch's lines were served and charged, so their results are kept "
    "whatever room is left. Your uploads are refused until you delete files (DELETE /v1/files/{file_id}) or they "
    "expire."
)


async def count_output(store: Store, tenant: str, file_id: str, size: int, most: int | None) -> bool:
    """Count a batch's output (or error) file of `size` bytes, never refused; True when it takes its tenant past
    `most` (None: no quota), told to operators (PAST_QUOTA) and to the tenant (the file's status_details)."""
    if most is None or await store.count_file(tenant, file_id, counted_bytes(size), most) is None:
        return False
    await store.count_file(tenant, file_id, counted_bytes(size), None)
    # Once per output: a finish run again (its batch read active by another edge just as it ended) stores it again.
    if "status_details" not in (await store.fields([file_key(file_id)], ["status_details"]))[0]:
        PAST_QUOTA.inc()
    return True


def counted_bytes(size: int) -> int:
    """What a file of `size` bytes counts against its tenant's quota."""
    return max(size, MIN_COUNTED_BYTES)


class FileQuota:
    def __init__(self, store: Store, most: int) -> None:
        self.store, self.most = store, most
        self._mended: dict[str, float] = {}  # tenant -> when its counts were last checked (monotonic)

    async def take(self, tenant: str, file_id: str, size: int) -> int | None:
        """Count an upload of `size` bytes before it is stored: None when counted, else the bytes its tenant has
        counted, over which it does not fit (refused even once counts left by an edge that died are given back)."""
        counted = await self.store.count_file(tenant, file_id, counted_bytes(size), self.most)
        if counted is None or not await self._mend(tenant):
            return counted
        return await self.store.count_file(tenant, file_id, counted_bytes(size), self.most)

    async def _mend(self, tenant: str) -> bool:
        """The counts of files gone from the store (an edge died between removing one and giving its bytes back)
        given back; at most once a MEND_EVERY_S per tenant. True when any was."""
        clock = time.monotonic()
        if clock < self._mended.get(tenant, -MEND_EVERY_S) + MEND_EVERY_S:
            return False
        self._mended[tenant] = clock
        ids = await self.store.counted_files(tenant)
        freed = False
        for start in range(0, len(ids), HASHES_READ):
            chunk = ids[start : start + HASHES_READ]
            found = await self.store.fields([file_key(i) for i in chunk], ["tenant"])
            for file_id, fields in zip(chunk, found, strict=True):
                if fields.get("tenant", b"").decode() != tenant and await self.store.uncount_file(tenant, file_id):
                    MENDED.inc()  # once per count, however many edges mend at once: uncount_file tells the one
                    freed = True
        return freed
