"""``emoji3d jobs`` subcommands on a real SQLite file."""
from __future__ import annotations

import io

from storage import jobs
from shell.commands.jobs import main


def _run(url, *args):
    out = io.StringIO()
    code = main(["--db", url, *args], out=out)
    return code, out.getvalue()


def test_list_show_cancel(db_url, db):
    a = jobs.enqueue(db, "make", {"pack": 1}, "a")
    b = jobs.enqueue(db, "regenerate_pack", {"pack": 2}, "b", priority="batch")
    j = jobs.claim(db, "gpu0", 60)
    jobs.set_progress(db, j.id, j.lease_token, "invert", 0.4)
    code, text = _run(db_url, "list")
    assert code == 0 and "invert" in text and "regenerate_pack" in text and "queued 1, running 1" in text
    code, text = _run(db_url, "show", str(a))
    assert code == 0 and "gpu0" in text and "40.0%" in text and '"pack": 1' in text
    code, text = _run(db_url, "show", str(b))
    assert "queue position: 1" in text
    code, text = _run(db_url, "cancel", str(a), str(b))
    assert code == 0 and "cancel requested" in text and f"job {b}: cancelled" in text
    assert jobs.get_job(db, a).status == "cancel_requested" and jobs.get_job(db, b).status == "cancelled"
    code, text = _run(db_url, "list", "--status", "cancelled")
    assert code == 0 and "regenerate_pack" in text and "make" not in text.split("total")[0]


def test_a_speculative_job_is_marked_and_counted_after_the_orders(db_url, db):
    guess = jobs.enqueue(db, "prepare_portrait", {}, "guess", speculative=True)
    jobs.enqueue(db, "make_pack", {}, "order")
    code, text = _run(db_url, "list")
    assert code == 0 and "interactive*" in text and "*: speculative" in text
    code, text = _run(db_url, "show", str(guess))
    assert "priority: interactive, speculative" in text and "queue position: 2" in text
    assert "waits for: -" in text
    held = jobs.enqueue(db, "make_pack", {}, "order placed while its head start runs", waits_for=guess)
    assert "waits for: job %d to end" % guess in _run(db_url, "show", str(held))[1]


def test_unknown_job_exits_1(db_url, db):
    assert _run(db_url, "show", "42")[0] == 1
    assert _run(db_url, "cancel", "42")[0] == 1
