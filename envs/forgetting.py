"""The forgetting testbed of Wolczyk et al. 2024 ("Fine-tuning Reinforcement Learning Models is Secretly a
Forgetting Mitigation Problem", ICML 2024), at a size that fits 2 CPU cores: a MiniGrid task with a *near* part met
at the start of every episode and a *far* part reached only after it.

``plasticity/NearFar-v0`` (13 x 7, walls included)::

    W W W W W W W W W W W W W
    W . . . . W . . W . . . W      near room (x 1-4): the agent and a yellow key, at random
    W . a . . W . . W . . . W      wall (x 5) with a locked yellow door at a random row
    W . . k . D . . . . . G W      far room (x 6-11): a wall column (x 8) with one gap at a random row,
    W . . . . W . . W . . . W      the goal at a random cell of x 10-11
    W . . . . W . . W . . . W
    W W W W W W W W W W W W W

The near part is DoorKey's (pick up the key, open the door); the far part is SimpleCrossing's (find the gap in
the wall, reach the goal). A wall, not lava as in LavaGap: with lava, 90% of random episodes started in the far
part die in it and 4% reach the goal (300 episodes, moves only), too rare a signal for PPO to pre-train on
at this suite's budgets. ``plasticity/NearFar-Far-v0`` is the same
layout started in the far part: the door open, the agent at a random cell of x 6-7 facing a random way. A policy
pre-trained there knows the far part and nothing of the near one, the paper's setting (its NetHack agent knows
the deep dungeon levels it rarely reaches early in fine-tuning). Reward, as every MiniGrid task: ``1 - 0.9 *
steps / max_steps`` on reaching the goal, else 0. Time limit: ``4 * width * height`` = 364 steps (the paper's
environments are not this; the layout is this suite's choice, documented here).

The observation is the minigrid suite's (:mod:`envs.minigrid`), so ``runners.minigrid`` trains on both ids and
``runners.finetune`` fine-tunes between them.
"""
from __future__ import annotations

import gymnasium as gym
from minigrid.core.grid import Grid
from minigrid.core.mission import MissionSpace
from minigrid.core.world_object import Door, Goal, Key, Wall
from minigrid.minigrid_env import MiniGridEnv

WIDTH, HEIGHT = 13, 7
SPLIT_X, WALL_X = 5, 8
FAR_START_X = (6, 7)
GOAL_X = (10, 11)
#: the testbed ids: (full task, started in the far part)
FULL_ID, FAR_ID = "plasticity/NearFar-v0", "plasticity/NearFar-Far-v0"
TESTBEDS = {"NearFar": (FULL_ID, FAR_ID)}


class NearFarEnv(MiniGridEnv):
    """The near/far layout above; ``start="far"`` begins past the door (opened) instead of in the near room."""

    def __init__(self, start: str = "near", max_steps: int | None = None, **kwargs):
        if start not in ("near", "far"):
            raise ValueError(f"start is 'near' or 'far', got {start!r}")
        self.start = start
        super().__init__(mission_space=MissionSpace(mission_func=self._gen_mission), width=WIDTH, height=HEIGHT,
                         max_steps=max_steps or 4 * WIDTH * HEIGHT, **kwargs)

    @staticmethod
    def _gen_mission() -> str:
        return "use the key to open the door, find the gap in the wall and get to the goal"

    def _gen_grid(self, width: int, height: int) -> None:
        self.grid = Grid(width, height)
        self.grid.wall_rect(0, 0, width, height)
        self.grid.vert_wall(SPLIT_X, 0)
        door = Door("yellow", is_locked=self.start == "near", is_open=self.start == "far")
        self.put_obj(door, SPLIT_X, self._rand_int(1, height - 1))
        gap = self._rand_int(1, height - 1)
        for y in range(1, height - 1):
            if y != gap:
                self.put_obj(Wall(), WALL_X, y)
        self.place_obj(Goal(), top=(GOAL_X[0], 1), size=(len(GOAL_X), height - 2))
        if self.start == "near":
            self.place_obj(Key("yellow"), top=(1, 1), size=(SPLIT_X - 1, height - 2))
            self.place_agent(top=(1, 1), size=(SPLIT_X - 1, height - 2))
        else:
            self.place_agent(top=(FAR_START_X[0], 1), size=(len(FAR_START_X), height - 2))
        self.mission = self._gen_mission()


def register_testbeds() -> None:
    """Register the testbed ids with gymnasium (idempotent)."""
    for env_id, start in ((FULL_ID, "near"), (FAR_ID, "far")):
        if env_id not in gym.registry:
            gym.register(env_id, entry_point="envs.forgetting:NearFarEnv", kwargs={"start": start})
