"""Discord front end (discord.py 2.7): slash commands, server house styles, and
stickers added to the server. ``app`` wires everything (``EmojiBot``, ``run``),
``cogs`` holds the thin command handlers, ``delivery`` the progress/result
sender and the "Add to server" buttons. No torch: only ``bots.core`` and
``engine.stickers`` (verification) / ``engine.face.analyze`` (via core) are used.
"""
