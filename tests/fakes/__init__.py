"""Fakes of external services for tests (e.g. the Telegram Bot API server)."""
