"""The forgetting testbed of Wolczyk et al. 2024 ("Fine-tuning Reinforcement Learning Models is Secretly a
Forgetting Mitigation Problem", ICML 2024), at a size that fits 2 CPU cores: a MiniGrid task with a *near* part met
at the start of every episode and a *far* part reached only after it.

``plasticity/NearFar-v2`` (12 x 5, walls included)::

    W W W W W W W W W W W W
    W . L . W . k . W . . W      near room (x 1-3): the agent at x 1, a lava column (x 2) with one gap, a wall
    W a . . . . . . D . G W      (x 4) with one gap, each gap at a random row
    W . L . W . . . W . . W      far part: a key room (x 5-7) with a yellow key at random, a wall (x 8) with a
    W W W W W W W W W W W W      locked yellow door at a random row, the goal room (x 9-10) with the goal at random

The near part is LavaGap's (cross the lava at its gap; stepping into lava ends the episode with nothing more), then
a wall to leave by its gap; the far part is DoorKey's (pick up the key, open the door, reach the goal), the part that
takes learning, as the paper's NetHack agent knows the deep dungeon levels it rarely reaches early in fine-tuning.
``plasticity/NearFar-Far-v2`` is the same layout started in the far part: the agent at a random cell of x 5 facing
a random way. A policy pre-trained there knows the far part and nothing of the near room.

Reward, stage by stage: ``NEAR_REWARD`` (0.5) the first time the agent enters the far part from the near room, and
MiniGrid's ``1 - 0.9 * steps / max_steps`` on reaching the goal; a whole episode's return is at most 1.5, a
far-start episode's at most 1 (it starts past the near part, so it has no near reward; success there is a return
above 0). The paper's main domain, NetHack, pays its score along the way; a reward at the goal only (``-v1``) left
the near part unlearnable here: over 250k fine-tuning steps the whole-task return of the last tenth stayed below
0.1 in 18 of 30 runs, retention methods included, so the transfer could not be judged. Time limit:
``10 * width * height`` = 600 steps, DoorKey's rule (``10 * size**2``). Uniformly random actions reach the goal in 6%
of far starts, and from the near room reach the far part in 4% of episodes and the goal in none (400 episodes each;
DoorKey-5x5: 8%).

The paper's environments are not this; the layout is this suite's choice, after the issue's example (a first room,
then a key-door room), and the near part must keep the far part out of reach early in fine-tuning, the paper's
condition for forgetting. Measured on the way (2026-12-07): ``-v0`` had the key-door room first and a wall
crossing last, and no method learned the whole task in 250k fine-tuning steps; a near room with the wall's gap only
(commit 7d38945) let the pre-trained policy finish 31-50% of whole episodes from the start, and plain fine-tuning
then forgot nothing (lowest far success 0.99 over 3 seeds).

The observation is the minigrid suite's (:mod:`envs.minigrid`), so ``runners.minigrid`` trains on both ids and
``runners.finetune`` fine-tunes between them.
"""
from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
from minigrid.core.grid import Grid
from minigrid.core.mission import MissionSpace
from minigrid.core.world_object import Door, Goal, Key, Lava
from minigrid.minigrid_env import MiniGridEnv

WIDTH, HEIGHT = 12, 5
LAVA_X, GAP_X, DOOR_X = 2, 4, 8
KEY_X, GOAL_X = (5, 7), (9, 10)  # (first, last) column of each room
NEAR_START_X, FAR_START_X = 1, 5
NEAR_REWARD = 0.5  # on first entering the far part from the near room
#: the testbed ids: (full task, started in the far part)
FULL_ID, FAR_ID = "plasticity/NearFar-v2", "plasticity/NearFar-Far-v2"
TESTBEDS = {"NearFar": (FULL_ID, FAR_ID)}


class NearFarEnv(MiniGridEnv):
    """The near/far layout above; ``start="far"`` begins in the key room instead of the near room."""

    def __init__(self, start: str = "near", max_steps: int | None = None, **kwargs):
        if start not in ("near", "far"):
            raise ValueError(f"start is 'near' or 'far', got {start!r}")
        self.start = start
        super().__init__(mission_space=MissionSpace(mission_func=self._gen_mission), width=WIDTH, height=HEIGHT,
                         max_steps=max_steps or 10 * WIDTH * HEIGHT, **kwargs)

    @staticmethod
    def _gen_mission() -> str:
        return "cross the lava and the wall at their gaps, use the key to open the door and get to the goal"

    def _room(self, columns: tuple[int, int], obj=None) -> None:
        """Put ``obj`` (or the agent, when None) at a random free cell of the room spanning ``columns``."""
        top, size = (columns[0], 1), (columns[1] - columns[0] + 1, self.height - 2)
        if obj is None:
            self.place_agent(top=top, size=size)
        else:
            self.place_obj(obj, top=top, size=size)

    def _gen_grid(self, width: int, height: int) -> None:
        self.grid = Grid(width, height)
        self.grid.wall_rect(0, 0, width, height)
        self.grid.vert_wall(GAP_X, 0)
        self.grid.set(GAP_X, self._rand_int(1, height - 1), None)
        lava_gap = self._rand_int(1, height - 1)
        for y in range(1, height - 1):
            if y != lava_gap:
                self.put_obj(Lava(), LAVA_X, y)
        self.grid.vert_wall(DOOR_X, 0)
        self.put_obj(Door("yellow", is_locked=True), DOOR_X, self._rand_int(1, height - 1))
        self._room(GOAL_X, Goal())
        start_x = FAR_START_X if self.start == "far" else NEAR_START_X
        self._room((start_x, start_x))
        self._room(KEY_X, Key("yellow"))
        self.mission = self._gen_mission()
        self.near_left = self.start == "far"

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """MiniGrid's step, plus ``NEAR_REWARD`` on the first step into the far part."""
        obs: Any
        obs, reward, terminated, truncated, info = super().step(action)
        if not self.near_left and self.agent_pos[0] >= FAR_START_X:
            self.near_left = True
            reward = float(reward) + NEAR_REWARD
        return obs, reward, terminated, truncated, info


def register_testbeds() -> None:
    """Register the testbed ids with gymnasium (idempotent)."""
    for env_id, start in ((FULL_ID, "near"), (FAR_ID, "far")):
        if env_id not in gym.registry:
            gym.register(env_id, entry_point="envs.forgetting:NearFarEnv", kwargs={"start": start})
