"""bots.redaction: every record any logger makes is scrubbed, for every handler."""
from __future__ import annotations

import logging
from typing import Iterator

import pytest

from bots import redaction


@pytest.fixture
def scrubbing() -> Iterator[list[logging.LogRecord]]:
    """Scrubbing installed; records of the ``redaction-test`` logger collected by a
    handler added *after* install. Restores the record factory."""
    saved = logging.getLogRecordFactory()
    redaction.install(["s3cr3t-value-xyz"])
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("redaction-test")
    handler = Keep(level=logging.DEBUG)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logging.setLogRecordFactory(saved)


def test_patterns_keep_the_public_part_and_drop_the_secret():
    r = redaction.redact
    assert r("POST http://h/bot123456789:AAH-x_y/getMe") == f"POST http://h/bot123456789:{redaction.REDACTED}/getMe"
    assert r("GET http://h/file/bot42%3AAbc-def/photos/1.jpg") == f"GET http://h/file/bot42%3A{redaction.REDACTED}/photos/1.jpg"
    assert r("PATCH /api/v10/webhooks/99/aW50ZXJhY3Rpb24.tok-en/messages/@original") == \
        f"PATCH /api/v10/webhooks/99/{redaction.REDACTED}/messages/@original"
    assert r("POST /interactions/7/itoken-1-2/callback") == f"POST /interactions/7/{redaction.REDACTED}/callback"
    assert r("token 7099999999:AAHk3l9Zq-Xw8_rT5uVbN2mLp0sQdEfGhZZ leaked") == \
        f"token 7099999999:{redaction.REDACTED} leaked"
    assert "GaBcDe" not in r("MTIzNDU2Nzg5MDEyMzQ1Njc4.GaBcDe.Zq8xW3vT1uR5yN7mK9pL2oJ4hG6fD0sA_bC-eQ")
    assert r("nothing secret at 12:30, job 5") == "nothing secret at 12:30, job 5"


def test_registered_secrets_are_removed_from_messages_args_tracebacks_and_stacks(scrubbing):
    log = logging.getLogger("redaction-test")
    log.info("token is %s", "s3cr3t-value-xyz")
    try:
        raise RuntimeError("failed with s3cr3t-value-xyz in it")
    except RuntimeError:
        log.exception("request failed")
    log.warning("where", stack_info=True, extra={"x": 1})
    log.debug("plain %d", 5)
    formatter = logging.Formatter("%(message)s")
    lines = [formatter.format(rec) + (rec.stack_info or "") for rec in scrubbing]
    assert len(lines) == 4
    assert all("s3cr3t-value-xyz" not in line for line in lines)
    assert lines[0] == f"token is {redaction.REDACTED}"
    assert redaction.REDACTED in lines[1] and "RuntimeError" in lines[1]
    assert lines[3] == "plain 5" and scrubbing[3].args == (5,)  # untouched records keep their args


def test_records_of_other_loggers_are_scrubbed_too(scrubbing):
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    lib = logging.getLogger("httpx")
    keep, old = Keep(), lib.level
    lib.addHandler(keep)
    lib.setLevel(logging.INFO)
    try:
        lib.info('HTTP Request: %s %s "%s"', "POST", "http://127.0.0.1/bot1234:s3cr3t-value-xyz/getMe", "200 OK")
    finally:
        lib.removeHandler(keep)
        lib.setLevel(old)
    assert seen[0].getMessage() == f'HTTP Request: POST http://127.0.0.1/bot1234:{redaction.REDACTED}/getMe "200 OK"'


def test_install_is_idempotent_and_quiet_libraries_sets_levels():
    saved = logging.getLogRecordFactory()
    levels = {n: logging.getLogger(n).level for n in redaction.CHATTY_LOGGERS}
    try:
        redaction.install()
        first = logging.getLogRecordFactory()
        redaction.install()
        assert logging.getLogRecordFactory() is first
        redaction.quiet_libraries(False)
        assert all(logging.getLogger(n).level == logging.WARNING for n in redaction.CHATTY_LOGGERS)
        redaction.quiet_libraries(True)
        assert all(logging.getLogger(n).level == logging.DEBUG for n in redaction.CHATTY_LOGGERS)
    finally:
        logging.setLogRecordFactory(saved)
        for n, lv in levels.items():
            logging.getLogger(n).setLevel(lv)
