"""One maintenance pass: privacy retention and blob garbage collection.

Conventions
-----------
* A pass deletes expired selfies, per-user artifacts unused for the
  retention period, pack avatars older than it, then unreferenced blobs past
  the store's grace period (:meth:`storage.blobs.BlobStore.gc`).
* Passes are safe to run at once (two ``serve`` processes that both believe
  they lead for a moment, an operator's manual run next to the scheduled
  one): every deletion is a conditional statement in its own transaction, so
  of two passes that see the same expired thing one deletes it and the other
  finds nothing; the counts reported are what *this* pass deleted, so the
  reports of concurrent passes add up to what was deleted.
* ``retention_seconds`` is the artifact and avatar retention; selfies carry
  their own ``expires_at``.
"""
from __future__ import annotations

from storage import artifacts, packs, selfies
from storage.blobs import BlobStore
from storage.db import Database


def run_maintenance(db: Database, blobs: BlobStore, retention_seconds: float) -> dict:
    """One pass; returns what it deleted (rows; the GC's :class:`storage.blobs.GcReport`)."""
    purged = selfies.purge_expired(db, blobs)
    evicted = artifacts.evict_unused(db, blobs, retention_seconds)
    avatars = packs.expire_avatars(db, blobs, retention_seconds)
    gc = blobs.gc()
    return {"selfies_purged": purged, "artifacts_evicted": evicted, "avatars_expired": avatars, "gc": gc}
