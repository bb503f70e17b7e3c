"""The runtime: World/Session API, KV cache, backends, the real-time loop.

    from engine import World
    world = World.load()                    # the shipped default world on the best backend
    session = world.new_session(seed=0)
    frame = session.step("move_left")       # uint8 (H, W, 3)
"""

from engine.backends import BackendUnavailable
from engine.world import RUNTIME_PRESETS, RuntimePreset, Session, SessionState, World

__all__ = ["World", "Session", "SessionState", "RuntimePreset", "RUNTIME_PRESETS", "BackendUnavailable"]
