"""Telegram front end (python-telegram-bot 22).

``app`` builds and runs the ``Application`` (all wiring in one place; polling
or webhook, Telegram's Bot API server or a self-hosted one), ``handlers`` holds
the thin update handlers and the notifier's Telegram sender, ``stickers``
publishes packs as sticker sets crash-safely, ``webhook`` serves updates in
webhook mode, and ``conversation.mmd`` draws the conversation. No torch here.
"""
