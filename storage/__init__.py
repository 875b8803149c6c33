"""Persistent state of emoji3d: database, blob store and the durable job queue.

- ``db``: ``open_database(url)`` (SQLite WAL by default, PostgreSQL by URL), numbered SQL migrations.
- ``blobs``: content-addressed files with reference counts in the database, GC.
- ``jobs``: enqueue / claim with lease / heartbeat / progress / complete / fail / cancel.
- ``users``, ``communities``, ``styles``, ``packs``, ``custom_emoji``, ``selfies``, ``artifacts``: the rows bots and
  engine share.
- ``cli``: ``emoji3d jobs list|show|cancel``.

Bots use this package and never import torch or ``engine``.
"""
