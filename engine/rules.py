"""The game's rules applied to generated frames: what the world model does not always get right.

A Crafter move onto a tile the player cannot enter (water, stone, a tree, a table, a creature...) does
not move the player: it only turns it to face that way. The model learned this from data where it is
rare (a few percent of moves) and often moves the view anyway (blocked moves stayed put in 43% of
cases for the session-3 world). The rule is cheap to read from the frame the move starts from (the
faced tile, by the nearest-texture classifier of worldsim.eval.tiles, ~0.3 ms), so the engine applies
it: when the rule says blocked and the new frame's view moved, the new frame becomes the previous
frame with the model's new player tile (the player turned, facing the move), nothing else changed.

The rule is only trusted where it is sure: an unreadable frame or a non-move leaves the model's frame
as it is, and a move the rule allows is never forced (the model follows those: 97-100% measured).
"""

from __future__ import annotations

import numpy as np

from worldsim.memory import PLAYER_COL, PLAYER_ROW, estimate_move, target_walkable


def enforce_blocked_move(prev_frame: np.ndarray, prev_latent: np.ndarray, latent: np.ndarray, frame: np.ndarray, action: int,
                         walkable: bool | None | str = "read") -> tuple[np.ndarray, bool]:
    """Crafter's blocked-move rule on one generated frame: -> (latent (C,g,g) to keep, whether it was fixed).

    prev_frame uint8 (H,W,3) / prev_latent (C,g,g): the frame the action was taken on; latent / frame: what
    the model made of it. ``walkable``: ``target_walkable(prev_frame, action, frame)`` when the caller has
    it (read here otherwise). A fixed latent is ``prev_latent`` with the new player tile's token.
    """
    if isinstance(walkable, str):
        walkable = target_walkable(prev_frame, action, frame)
    if walkable is not False:  # a non-move, an allowed move, or a frame the classifier cannot read
        return latent, False
    if estimate_move(prev_frame, frame, action) == (0, 0):  # the model kept the view still: nothing to fix
        return latent, False
    out = np.array(prev_latent, np.float32, copy=True)
    out[:, PLAYER_ROW, PLAYER_COL] = latent[:, PLAYER_ROW, PLAYER_COL]
    return out, True
