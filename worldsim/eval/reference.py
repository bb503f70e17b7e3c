"""Reference worlds with the engine's session API, so that every metric can be checked at its ends.

``CopyLastWorld`` is the baseline every table shows: each step returns the last context frame.
``RealGameWorld`` is an oracle: it resumes the true (deterministic) game at the state the context
frames came from and steps it with whatever actions it is given, so a perfect world scores 1.

Both implement the duck-typed World/Session API the protocols use::

    world.action_names, world.frame_shape
    session = world.new_session(context=frames, actions=acts, seed=0)
    frame = session.step("move_left"); state = session.snapshot(); session.restore(state)
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from worldsim.actions import ACTION_NAMES, action_index


def _check_context(context: Any, frame_shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """Validate context frames uint8 (T, H, W, 3) (a single (H, W, 3) frame is accepted)."""
    if not isinstance(context, np.ndarray) or context.dtype != np.uint8:
        raise TypeError(f"context must be a uint8 numpy array (T,H,W,3), got {type(context).__name__} "
                        f"{getattr(context, 'dtype', '')}")
    if context.ndim == 3:
        context = context[None]
    if context.ndim != 4 or context.shape[-1] != 3 or len(context) < 1:
        raise ValueError(f"context must have shape (T,H,W,3) with T >= 1, got {context.shape}")
    if frame_shape is not None and context.shape[1:] != tuple(frame_shape):
        raise ValueError(f"context frames are {context.shape[1:]}, this world renders {tuple(frame_shape)}")
    return context


class CopyLastSession:
    """A session whose every step returns the last context frame."""

    def __init__(self, frame: np.ndarray) -> None:
        self._frame = frame.copy()
        self.frame_index = 0

    @property
    def frame(self) -> np.ndarray:
        """The current frame uint8 (H, W, 3)."""
        return self._frame

    def step(self, action: str | int) -> np.ndarray:
        """Validate the action and return (a copy of) the last context frame."""
        action_index(int(action) if isinstance(action, np.integer) else action)
        self.frame_index += 1
        return self._frame.copy()

    def snapshot(self) -> dict[str, Any]:
        """The whole state (the frame index; the frame never changes)."""
        return {"frame_index": self.frame_index}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Return to a snapshot."""
        self.frame_index = int(state["frame_index"])


class CopyLastWorld:
    """The copy-last-frame baseline as a world."""

    name = "copy-last"

    def __init__(self, frame_shape: tuple[int, int, int] = (72, 72, 3)) -> None:
        self.frame_shape = tuple(frame_shape)

    @property
    def action_names(self) -> list[str]:
        """Action names in Crafter's order."""
        return list(ACTION_NAMES)

    def new_session(self, context: np.ndarray | None = None, actions: Sequence[str | int | None] | None = None,
                    seed: int = 0) -> CopyLastSession:
        """A session that repeats context[-1] forever (actions are validated, then ignored)."""
        if context is None:
            raise ValueError("CopyLastWorld needs context frames to copy")
        context = _check_context(context)
        for a in actions or ():
            if a is not None:
                action_index(int(a) if isinstance(a, np.integer) else a)
        return CopyLastSession(context[-1])


class ReplayEpisode(Protocol):
    """What RealGameWorld needs of a recorded episode."""

    seed: int
    frames: np.ndarray   # (N, S, S, 3) uint8
    actions: np.ndarray  # (N,) actions[t] taken on frame t


def _digest(frame: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(frame).tobytes(), digest_size=16).digest()


class RealGameSession:
    """The real game resumed at some frame; ``step`` plays it."""

    def __init__(self, env: Any, frame: np.ndarray) -> None:
        self._env = env
        self._frame = frame
        self.frame_index = 0

    @property
    def frame(self) -> np.ndarray:
        """The current frame uint8 (H, W, 3)."""
        return self._frame

    @property
    def env(self) -> Any:
        """The underlying worldsim.crafter_env.CrafterEnv (for inspection only)."""
        return self._env

    def step(self, action: str | int) -> np.ndarray:
        """Play one action in the real game; return the frame it produces."""
        idx = action_index(int(action) if isinstance(action, np.integer) else action)
        self._frame, _ = self._env.step(idx)
        self.frame_index += 1
        return self._frame

    def snapshot(self) -> dict[str, Any]:
        """A deep copy of the game (~0.1 MB)."""
        return {"env": copy.deepcopy(self._env), "frame": self._frame.copy(), "frame_index": self.frame_index}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Return to a snapshot; the same actions then give the same frames."""
        self._env = copy.deepcopy(state["env"])
        self._frame = state["frame"].copy()
        self.frame_index = int(state["frame_index"])


class RealGameWorld:
    """An oracle world: the deterministic real game, resumed where the context frames were recorded.

    ``episodes`` are recordings made by ``worldsim.data.record`` (their seed, frames and actions);
    ``start_inventory`` and ``keep_alive`` must match the recorder's config so the replay reproduces
    them bit for bit. A context is located by its frames; the game is replayed to its last frame
    (checked pixel for pixel), and from there it plays any actions, recorded or not. With ``reseed`` the
    game's random generator is reseeded there (from the episode, the frame and the session seed): the same
    world and state, other luck from then on (creatures' steps, spawns, night noise), i.e. what a perfect
    world model that samples its own future scores against the recorded one.
    """

    name = "real"

    def __init__(self, episodes: Sequence[ReplayEpisode], start_inventory: Mapping[str, int] | None = None,
                 keep_alive: bool = True, reseed: bool = False) -> None:
        from worldsim.data.record import DEFAULT_START_INVENTORY

        if not episodes:
            raise ValueError("RealGameWorld needs at least one recorded episode")
        self.episodes = list(episodes)
        self.start_inventory = dict(DEFAULT_START_INVENTORY if start_inventory is None else start_inventory)
        self.keep_alive = bool(keep_alive)
        # reseed: from the context on the game draws other luck (creatures' steps, spawns, night noise)
        self.reseed = bool(reseed)
        self.frame_shape = tuple(self.episodes[0].frames.shape[1:])
        self._index: dict[bytes, list[tuple[int, int]]] | None = None
        self._cursors: dict[int, tuple[int, Any]] = {}   # episode -> (frame index, env at that frame)
        self._starts: dict[int, Any] = {}                # episode -> env right after reset (world generation is slow)

    @property
    def action_names(self) -> list[str]:
        """Action names in Crafter's order."""
        return list(ACTION_NAMES)

    def _locate(self, context: np.ndarray) -> tuple[int, int]:
        """(episode, frame index) whose recorded frames end with ``context``."""
        if self._index is None:
            self._index = {}
            for e, ep in enumerate(self.episodes):
                for t, f in enumerate(ep.frames):
                    self._index.setdefault(_digest(f), []).append((e, t))
        best, best_n = None, -1
        for e, t in self._index.get(_digest(context[-1]), []):
            frames = self.episodes[e].frames
            k = min(len(context), t + 1)
            n = sum(np.array_equal(frames[t - i], context[-1 - i]) for i in range(k))
            if n > best_n:
                best, best_n = (e, t), n
        if best is None:
            raise ValueError("RealGameWorld: the last context frame is not a frame of any of its recorded episodes")
        return best

    def _env_at(self, e: int, t: int) -> Any:
        """A fresh copy of the game of episode ``e`` at frame ``t`` (replayed, with a per-episode cursor)."""
        from worldsim.crafter_env import CrafterEnv

        ep = self.episodes[e]
        cur = self._cursors.get(e)
        if cur is None or cur[0] > t:
            if e not in self._starts:
                env = CrafterEnv(seed=int(ep.seed), size=int(self.frame_shape[0]), start_inventory=self.start_inventory,
                                 keep_alive=self.keep_alive)
                env.reset(int(ep.seed))
                self._starts[e] = env
            cur = (0, copy.deepcopy(self._starts[e]))
        i, env = cur
        while i < t:
            env.step(int(ep.actions[i]))
            i += 1
        self._cursors[e] = (i, env)
        return copy.deepcopy(env)

    def new_session(self, context: np.ndarray | None = None, actions: Sequence[str | int | None] | None = None,
                    seed: int = 0) -> RealGameSession:
        """Resume the real game at the last context frame (the actions are implied by the recording)."""
        if context is None:
            raise ValueError("RealGameWorld needs context frames to know where to resume the game")
        context = _check_context(context, self.frame_shape)
        e, t = self._locate(context)
        env = self._env_at(e, t)
        frame = env.render()
        if not np.array_equal(frame, context[-1]):
            raise RuntimeError(f"RealGameWorld: replaying episode seed {self.episodes[e].seed} to frame {t} did not reproduce "
                               "the recorded frame (recorder config mismatch: start_inventory / keep_alive?)")
        if self.reseed:  # the same world and state, another draw of everything random from here on
            env._env._world.random = np.random.RandomState([int(self.episodes[e].seed) % 2**32, t, int(seed) % 2**32, 0x6C75636B])
        return RealGameSession(env, frame)


class AutoencodedSession(RealGameSession):
    """The real game whose every frame is shown through an autoencoder (decode(encode(frame)))."""

    def __init__(self, env: Any, frame: np.ndarray, round_trip) -> None:
        super().__init__(env, frame)
        self._round_trip = round_trip

    def step(self, action: str | int) -> np.ndarray:
        """Play one action in the real game; return its frame uint8 (H, W, 3) after the autoencoder's round trip."""
        return self._round_trip(super().step(action))


class AutoencodedGameWorld(RealGameWorld):
    """The ceiling of a world that draws through ``autoencoder``: the real game (an oracle, as
    RealGameWorld) with each frame it returns passed through the autoencoder, read with ``reader`` (the
    world's tile reader) as the world's own frames are. What is lost here (night tiles the latents do not
    keep) no dynamics model can get back."""

    name = "real-ae"

    def __init__(self, episodes: Sequence[ReplayEpisode], autoencoder: Any, reader: Any = None, **kwargs: Any) -> None:
        super().__init__(episodes, **kwargs)
        self.autoencoder = autoencoder.eval()
        self.reader = reader

    def _round_trip(self, frame: np.ndarray) -> np.ndarray:
        from worldsim.eval.reader import round_trip

        return round_trip(self.autoencoder, frame[None])[0]

    def new_session(self, context: np.ndarray | None = None, actions: Sequence[str | int | None] | None = None,
                    seed: int = 0) -> AutoencodedSession:
        """Resume the real game at the last context frame; its steps come through the autoencoder."""
        s = super().new_session(context, actions, seed)
        return AutoencodedSession(s.env, s.frame, self._round_trip)
