"""Every sentence a person reads, in one place (errors by key in ``ERRORS``, bot
copy by key in ``BOT``).

Engine and storage code raise :class:`~emoji3d.errors.UserFacingError` with a
stable ``key``; front ends (the CLI, Telegram, Discord) turn it into words
with :func:`message`. Placeholders use ``str.format`` names that the error's
``params`` provide. A key without a text falls back to a generic apology,
and the test suite checks that every key the code raises has a text here.
"""
from __future__ import annotations

from emoji3d.errors import UserFacingError

ERRORS: dict[str, str] = {
    # Image hygiene
    "not_an_image": "That file isn't an image I can read. Please send a JPEG, PNG or WebP photo.",
    "image_truncated": "That image looks cut off or damaged. Could you send it again?",
    "image_too_large": "That image is too big ({megapixels} megapixels). Please send one under {limit} megapixels.",
    "file_too_large": "That file is too big ({size_mb} MB). Please send one under {limit_mb} MB.",
    "unsupported_image": "I can't use this kind of image ({detail}). A regular photo works best.",
    "image_too_small": ("That image is only {width}×{height} pixels. "
                        "Please send a photo at least {min_side} pixels on each side."),
    "upload_rate_limited": ("You're sending images faster than I can look at them. "
                            "Please wait {seconds} seconds and send it again."),
    # Files named on the command line
    "file_missing": "There is no file at {path}.",
    "not_a_file": "{path} is {kind}, not an image file.",
    "file_unreadable": "I can't read {path} ({reason}).",
    # Face checks
    "no_face": "I couldn't find a face in that photo. A well-lit selfie looking at the camera works best.",
    "face_too_small": "The face is too small in that photo ({face_px} px across). Please move closer or crop the photo.",
    "head_turned_too_far": "Your head is turned too far ({angle:.0f}°). Please look towards the camera.",
    "eyes_closed": "Your eyes seem to be closed. Please send a photo with open eyes.",
    "face_occluded": "Part of your face seems covered. Please send a photo with your whole face visible.",
    "several_faces": "I found {count} faces and used the largest one.",
    # Styles and weights
    "style_not_found": "I don't know a style called “{name}”.",
    "style_name_taken": "There is already a style called “{name}” here.",
    "style_invalid": "That style can't be used: {detail}",
    "weights_invalid": "A model file is missing or damaged: {detail}",
    "stage_unavailable": "This part of the pipeline isn't available yet: {detail}",
    "weights_missing": "A model file isn't installed on this server yet. Please try again later.",
    "weights_checksum": "A model file on this server is damaged. Please try again later.",
    "weights_download_failed": "A model file could not be downloaded. Please try again later.",
    "weights_licence_declined": "A model file's licence has not been accepted on this server.",
    "weights_unsafe_pickle": "A model file was refused because it is not safe to load.",
    "boundaries_invalid": "The expression settings on this server are damaged: {detail}",
    "boundaries_generator_mismatch": "The expression settings don't match the installed model.",
    "boundaries_fit_failed": "The expression settings could not be prepared on this server: {detail}",
    "expression_unavailable": "The “{expression}” expression isn't available on this server.",
    "sticker_encode_failed": "I couldn't fit your sticker into the platform's size limits: {detail}",
    "sticker_input_invalid": "Something went wrong while preparing your sticker frames.",
    "style_removed": "The style of this pack was removed, so I can't remake it.",
    "avatar_expired": "This pack's 3D avatar is no longer stored, so it can't be changed. Send a selfie to make a new one.",
    # {when}: selfie_gone_* below, from the retention in hours (see message())
    "selfie_expired": "Your selfie was deleted {when}, as promised. Send it again to remake this pack.",
    # Storage
    "blob_too_large": "That file is too large to store.",
    "user_not_found": "I have no data stored for you.",
    # Bot flow (bots.core)
    "consent_required": "Before I can look at a photo I need your OK. Send /start and press “I agree”.",
    "no_selfie": "I don't have a selfie from you (or it has expired). Please send a selfie first.",
    "stickers_none_chosen": "Please keep at least one sticker in your pack.",
    "pack_not_changeable": ("I can't change that pack any more: it isn't yours, or what it was made from is gone. "
                            "Please make a new pack instead."),
    "own_style_missing": "I don't have your style image any more. Please choose “Use my own style” and send it again.",
    "style_no_face": "The style image needs a face in it (a portrait drawn in the style you want).",
    "job_active": "You already have a pack in the works. Wait for it to finish, or cancel it first.",
    "quota_exceeded": "You've made {limit} packs in the last 24 hours, which is the daily limit. Please try again later.",
    "not_admin": "Sorry, only this chat's administrators can manage its house styles.",
    "housestyle_usage": "Usage: reply to an image with /housestyle add <name>, or use /housestyle remove <name>, /housestyle list.",
    "housestyle_group_only": "House styles belong to a group: use /housestyle in the group you manage.",
    "nothing_to_cancel": "There's nothing of yours to cancel right now.",
    "strength_invalid": "That strength isn't one I know. Please pick subtle, medium or full.",
    "worker_lost": "The machine making your pack stopped responding. Please try again.",
    "storage_full": "I'm very busy right now and couldn't finish your pack. Please try again in a while.",
    "cancelled": "Your pack was cancelled.",
    # Telegram
    "telegram_not_started": "I can't create a sticker set for you until you start a private chat with me. "
                            "Open @{bot_username}, press Start, then ask for your pack again with /mypacks.",
    "telegram_set_failed": "Telegram refused to create the sticker set ({detail}). Please try again later.",
    # Discord
    "discord_bad_attachment": ("That attachment isn't a photo I can use ({content_type}). "
                               "Please attach a JPEG, PNG or WebP image."),
    "discord_cooldown": "Please wait {seconds} more seconds before making another pack.",
    "discord_no_style": ("There are no styles here yet. Attach a style image with the style_image option, "
                         "or ask a moderator to add a house style with /housestyle add."),
    "discord_need_manage_expressions": ("Only members who can manage this server's expressions "
                                        "can manage its house styles."),
    "discord_need_create_expressions": ("Only members with the Create Expressions permission can add "
                                        "stickers or emoji to this server."),
    "discord_bot_missing_permission": ("I'm missing the “{permission}” permission here. "
                                       "Please ask a moderator to grant it to me, then try again."),
    "discord_server_only": "That only works inside a server.",
    "discord_pack_gone": "I can't find that pack any more (it may have been deleted).",
    "discord_files_invalid": "Your stickers didn't pass Discord's file checks ({detail}). Please try again.",
    "discord_unreachable": "I couldn't reach you by direct message or in the channel to deliver your pack.",
    # Fallback
    "internal": "Something went wrong on my side. Please try again in a moment.",
}


# Everything else the bots say, by key. ``{placeholders}`` as in ERRORS.
BOT: dict[str, str] = {
    "welcome": ("Hi {name}! I turn one selfie into a personal pack of animated 3D cartoon stickers, "
                "in a style you choose.\n\n"
                "To do that I store your selfie {selfie_kept}, the 3D avatar made from it "
                "{avatar_kept}, and the stickers until you delete them. /privacy has the details; "
                "/delete erases everything.\n\nDo you agree that I process your selfie this way?"),
    "consent_button": "I agree",
    "consent_thanks": "Thank you! Now send me a selfie: a photo, or an image file to keep full resolution.",
    "consent_already": "You're all set. Send me a selfie to begin.",
    "privacy": ("What I store and for how long:\n"
                "• Your selfie: {selfie_deleted}.\n"
                "• Your 3D avatar (latent codes and tuned model weights): {avatar_deleted}.{head_start}\n"
                "• Your sticker packs and the time you gave consent: until you delete them.\n"
                "• Style images you upload: used for your pack only.\n"
                "Nothing is shared with anyone. /delete erases all of it, including the sticker sets and custom emoji "
                "sets I made for you."),
    "help": ("Send a selfie to start. Commands: /start, /privacy, /mypacks, /delete, /cancel. "
             "Group admins: /housestyle add|remove|list."),
    "selfie_ok": "Great photo! Now pick a style:",
    "selfie_warning": "Note: {detail}",
    "style_own_button": "🎨 Use my own style",
    "style_own_prompt": "Send me the style image (a portrait drawn in the style you like) as a reply to this message.",
    "style_own_ok": "Got your style image. How strong should the style be?",
    "no_styles": "There are no styles yet. Choose “Use my own style” and send an image.",
    "choose_strength": "Style “{style}”: how strong should it be?",
    "strength_subtle": "Subtle",
    "strength_medium": "Medium",
    "strength_full": "Full",
    "style_house_prefix": "🏠 ",
    "queued": "Your pack is in the queue: position {position}.",
    "queued_soon": "Your pack is about to start.",
    "progress": "Making your pack: {stage} ({percent}%).",
    "finishing": "Almost done: creating your sticker set…",
    "cancel_button": "Cancel",
    "cancel_requested": "Cancelling…",
    "cancelled_ok": "Cancelled. Send a selfie whenever you want to try again.",
    "failed": "Sorry, your pack could not be made: {reason}",
    "done": "Your sticker pack is ready: {link}",
    "done_updated": "Your sticker pack was updated: {link}",
    "slim_warning": ("Heads-up: this server runs test weights, so these stickers are not a real avatar of you "
                     "(random weights)."),
    "pack_incomplete": ("Your avatar is ready, but this build cannot make sticker files yet ({missing}). "
                        "Here are still renders instead."),
    "pack_partial": "Some stickers could not be made: {missing}",
    "resumed": "I restarted; your pack is still being made.",
    "mypacks_none": "You have no packs yet. Send a selfie to make one.",
    "mypacks_header": "Your packs:",
    "mypacks_line": "• {style} ({strength}) — {state}{link}",
    "pack_state_pending": "waiting",
    "pack_state_rendering": "being made",
    "pack_state_ready": "ready",
    "pack_state_uploading": "uploading",
    "pack_state_published": "published",
    "pack_state_failed": "failed",
    "pack_state_superseded": "replaced",
    "own_style_name": "your own style",
    "delete_confirm": ("This deletes your selfies, avatars, tuned weights, packs and the sticker and custom emoji "
                       "sets I created for you. It cannot be undone. Delete everything?"),
    "delete_yes": "Yes, delete everything",
    "delete_no": "No, keep it",
    "delete_done": "Done. I deleted {packs} pack(s), {selfies} selfie(s) and {sets} sticker set(s).",
    "delete_nothing": "I have no data stored for you.",
    # Telegram custom emoji sets (issue 19)
    "custom_emoji_ready": ("Your custom emoji set is ready too: {link}\nAnyone can add it, but only Telegram "
                           "Premium users can use custom emoji in messages."),
    "custom_emoji_updated": "Your custom emoji set was updated too: {link}",
    "custom_emoji_failed": "I couldn't make your custom emoji set this time ({detail}). Your sticker pack is fine.",
    "custom_emoji_deleted": "I also deleted {sets} custom emoji set(s).",
    "delete_kept": "Nothing was deleted.",
    "housestyle_added": "House style “{name}” added. I'm preparing it in the background.",
    "housestyle_removed": "House style “{name}” removed.",
    # Telegram's privacy text, when [engine] head_start inverts a selfie before its order (bots.head_starts)
    "head_start_note": (" I start on it as soon as you send a selfie, so your pack is ready sooner; if you order "
                        "nothing with that selfie, what I made from it is deleted together with the selfie."),
    # How long personal data is kept ([privacy] in config.toml; 0 = nothing kept for later), for the texts above
    "selfie_kept_hours": "for up to {hours} hours",
    "selfie_kept_briefly": "only until the pack you order with it is made",
    "avatar_kept_days": "for up to {days} days",
    "avatar_kept_briefly": "only until your pack is made",
    "selfie_deleted_hours": "deleted {hours} hours after upload",
    "selfie_deleted_briefly": "deleted within the hour after the pack you order with it is made",
    "avatar_deleted_days": "deleted {days} days after its last use",
    "avatar_deleted_briefly": "deleted within the hour after your pack is made (redoing it then needs a new selfie)",
    "selfie_gone_hours": "{hours} hours after upload",
    "selfie_gone_hour": "an hour after upload",
    "selfie_gone_briefly": "once the pack you ordered with it was made",
    "housestyle_list": "House styles here: {names}",
    "housestyle_none": "This chat has no house styles yet.",
    # Discord
    "discord_consent": ("I turn one selfie into animated 3D cartoon stickers in a style you choose.\n"
                        "To do that I store your selfie {selfie_kept}, the 3D avatar made from it "
                        "{avatar_kept}, and your packs until you delete them. "
                        "/emoji privacy has the details; /emoji delete-my-data erases everything.\n"
                        "Press “I agree”, then run /emoji create again."),
    "discord_consent_thanks": "Thank you! Now run /emoji create with your selfie.",
    "discord_privacy": ("What I store and for how long:\n"
                        "• Your selfie: {selfie_deleted}.\n"
                        "• Your 3D avatar (latent codes and tuned model weights): {avatar_deleted}.\n"
                        "• Your packs (with the display name you had when ordering, to name their stickers) "
                        "and the time you gave consent: until you delete them.\n"
                        "• Style images you upload: used for your pack only.\n"
                        "Stickers and emoji added to a server belong to that server. Nothing is shared with anyone "
                        "else. /emoji delete-my-data erases everything I store about you."),
    "discord_selfie_notes": "Notes about your photo: {notes}",
    "discord_done": "Your 3D emoji are ready! Here are the animated stickers and a preview.",
    "discord_done_later": ("Your 3D emoji are ready! The original message expired, so here they are. "
                           "“Add to server” works in the server you made them in."),
    "discord_updated": ("Your 3D emoji were updated: here are the new animated stickers and a preview. "
                        "Stickers and emoji you added to a server were updated there too."),
    "discord_done_channel": "{mention} your 3D emoji are ready (I couldn't send you a direct message).",
    "discord_delivered_below": "Done: your stickers are in the message below.",
    "discord_delivered_elsewhere": "Done: I sent your stickers by direct message.",
    "discord_add_button": "Add to server",
    "discord_emoji_button": "Add as custom emoji instead",
    "discord_added": "Added {added} sticker(s) to this server ({existing} were already here).",
    "discord_slots_full": ("This server's sticker slots are full ({limit} used), so I added {added} of {total} "
                           "sticker(s). You can add them as custom emoji (128×128) instead."),
    "discord_emoji_added": "Added {added} custom emoji to this server ({existing} were already here).",
    "discord_emoji_slots_full": "This server's emoji slots are full too, so I added {added} of {total} emoji.",
    "discord_add_failed": "Discord refused {failed} file(s); the others were added.",
    "discord_sticker_description": "3D emoji of {name} ({expression}) by emoji3d",
    "discord_delete_confirm": ("This deletes your selfies, avatars, tuned weights and packs. Stickers already added "
                               "to servers belong to those servers and stay. It cannot be undone. Delete everything?"),
    "discord_delete_done": "Done. I deleted {packs} pack(s) and {selfies} selfie(s).",
    "discord_housestyle_list": "House styles here: {names}",
    "discord_housestyle_none": "This server has no house styles yet. Add one with /housestyle add.",
    "discord_style_state_pending": "being prepared",
    "discord_style_state_tuning": "being prepared",
    "discord_style_state_ready": "ready",
    "discord_style_state_failed": "failed",
    "discord_style_state_disabled": "disabled",
    # Stage names shown in progress (engine.tasks.STAGE_WEIGHTS keys)
    "stage_face": "checking the photo",
    "stage_style_finetune": "learning the style",
    "stage_invert_3d": "building your 3D head",
    "stage_pivotal_tuning": "refining the likeness",
    "stage_dual_branch": "cartoonifying in 3D",
    "stage_render": "rendering the stickers",
    "stage_encode": "packing the sticker files",
    "stage_unknown": "working",
    "rerender_button": "Redo at {strength}",
    "rerender_started": "Redoing your pack at {strength} from your stored avatar; it will be here shortly.",
    "rerender_failed": "Sorry, I could not redo your pack: {reason} Your pack is unchanged.",
    "remake_failed": "Sorry, I could not make your pack again: {reason} Your published pack is unchanged.",
    "remake_outdated": "Your pack was made again meanwhile, so this version was not published: "
                       "your pack keeps the newer one.",
    # Changing a finished pack (bots.pack_changes): another seed, another sticker selection
    "retry_button": "Try again with another seed",
    "retry_started": "Making your pack again with another seed; this takes as long as the first time.",
    "stickers_button": "Choose stickers",
    "stickers_choose": "Tap the stickers to keep in your pack, then “{apply}”.",
    "sticker_chosen": "✅ {name}",
    "sticker_not_chosen": "▫️ {name}",
    "stickers_apply": "Redo the pack",
    "stickers_started": "Redoing your pack with {count} sticker(s) from your stored avatar; it will be here shortly.",
    "stickers_placeholder": "Stickers in this pack",
    # First-look stills, sent while the pack is being made
    "first_look_photo_real": "A first look at your 3D head (the stickers are still being made).",
    "first_look_stylized": "Your stylized 3D avatar; the animated stickers come next.",
    # The pack's quality report (PackResult.quality), one line in the chat, /mypacks and preview.html
    "quality_line": "Quality: {measures}.",
    "quality_identity_pti": "likeness {value} (photo-real)",
    "quality_identity_stylized": "likeness {value} (stylized)",
    "quality_multiview": "3D consistency {value}",
    "quality_style_lpips": "style distance {value} (lower is closer)",
    "quality_weak": "Weak on: {weak}. A try with another seed may come out better.",
    "quality_slim": "Test weights: these numbers mean nothing.",
}


def quality_summary(quality: dict, preset: str) -> str:
    """The quality report of a pack in one line ("" when it was not measured)."""
    shown = [BOT[f"quality_{k}"].format(value=f"{v:.2f}") for k, v in quality.items()
             if f"quality_{k}" in BOT and k not in ("weak", "slim", "line") and isinstance(v, (int, float))]
    if not shown:
        return ""
    line = text("quality_line", measures=", ".join(shown))
    weak = [BOT[f"quality_{k}"].split(" {")[0] + BOT[f"quality_{k}"].split("}")[-1] for k in quality.get("weak", [])
            if f"quality_{k}" in BOT]
    if weak:
        line += " " + text("quality_weak", weak=", ".join(weak))
    if preset == "slim":
        line += " " + text("quality_slim")
    return line


def text(key: str, **params: object) -> str:
    """A bot sentence by key; a missing key is a programming error (KeyError)."""
    template = BOT[key]
    try:
        return template.format(**params)
    except (KeyError, IndexError, ValueError):
        return template.split("{")[0].rstrip(" (:")


def selfie_gone_when(hours: object) -> str:
    """When a selfie kept ``hours`` (``[privacy] selfie_retention_hours``) was deleted, in words: 0 keeps
    nothing for later (deleted by the maintenance pass after the pack it was sent for was made)."""
    n = int(hours)  # type: ignore[call-overload]
    if n <= 0:
        return text("selfie_gone_briefly")
    return text("selfie_gone_hour") if n == 1 else text("selfie_gone_hours", hours=n)


def _in_words(key: str, params: dict[str, object]) -> dict[str, object]:
    """Placeholders an error text states in words, derived from the error's own params
    (``selfie_expired``: ``hours`` → ``when``)."""
    if key == "selfie_expired" and params.get("hours") is not None and "when" not in params:
        try:
            return {**params, "when": selfie_gone_when(params["hours"])}
        except (TypeError, ValueError):
            return params
    return params


def message(key: str, **params: object) -> str:
    """The text for ``key`` with ``params`` filled in; never raises."""
    template = ERRORS.get(key) or ERRORS["internal"]
    params = _in_words(key, params)
    try:
        return template.format(**params)
    except (KeyError, IndexError, ValueError):
        return template.split("{")[0].rstrip(" (:") + ("." if "{" in template else "")


def explain(err: UserFacingError) -> str:
    """The sentence for ``err``; a text's ``{detail}`` is the error's own detail unless a param says otherwise."""
    return message(err.key, **{"detail": err.detail, **err.params})
