"""Telegram front end (python-telegram-bot 22).

``app`` builds and runs the ``Application`` (all wiring in one place),
``handlers`` holds the thin update handlers and the notifier's Telegram sender,
``stickers`` publishes packs as sticker sets crash-safely, and
``conversation.mmd`` draws the conversation. No torch here.
"""
