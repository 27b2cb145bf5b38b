"""Atari 2600 through envpool (default, C++ threads) or ale-py (in-process, exact resume).

Both back ends apply the same preprocessing, in envpool's order and with envpool's
conventions, so that a run can switch back end without changing what the agent sees:

* ``frame_skip`` emulator frames per agent step with the action repeated (sticky actions
  inside ALE with ``sticky_action_prob``), rewards summed over the skipped frames;
* the maximum over the last two frames' grayscale screens (envpool always does this);
* resize to ``image_size`` x ``image_size`` with area interpolation, stack of ``stack``
  frames (filled with the first frame after a reset);
* reset: ALE ``reset_game`` then U{1..noop_max} single no-op frames (envpool's rule:
  ``noop_max=1`` means exactly one frame), then FIRE if ``fire_reset``;
* ``episodic_life``: losing a life terminates the agent's episode but the game goes on
  (the next "reset" runs only the no-op frames);
* truncation after ``max_episode_frames // frame_skip`` agent steps;
* ``reward_clip``: the learning reward is sign(reward); episode returns stay unclipped.

The ale-py back end snapshots every emulator with ``cloneState(include_rng=True)`` plus
its own buffers and RNG, so a resumed run continues exactly. envpool exposes no emulator
state: after a resume its environments start fresh episodes.
"""
from __future__ import annotations

import functools
import os
import pickle
from typing import Any

import gymnasium as gym
import numpy as np

from configs import ConfigError
from envs.base import EnvpoolVecEnv, EpisodeTracker, VecEnv, VecStep

RAW_SHAPE = (210, 160)


@functools.cache
def _roms() -> dict[str, str]:
    """Game name -> ROM id for every ROM ale-py ships ('SpaceInvaders' -> 'space_invaders')."""
    from ale_py import roms
    return {"".join(part.capitalize() for part in rom.split("_")): rom for rom in roms.get_all_rom_ids()}


def atari_games() -> list[str]:
    return sorted(_roms())


def rom_id(game: str) -> str:
    return _roms()[game]


def _sign(x: np.ndarray) -> np.ndarray:
    return np.sign(x).astype(np.float32)


class EnvpoolAtari(EnvpoolVecEnv):
    """envpool's C++ Atari pool (synchronous mode, all envs stepped together)."""

    def __init__(self, cfg, seed: int):
        try:
            import envpool
        except ImportError:
            raise ConfigError("env.backend=envpool needs the 'envpool' package (pip install envpool); "
                              "or run with --set env.backend=ale") from None
        if not cfg.max_pool:
            raise ConfigError("envpool always max-pools the last two frames; for env.max_pool=false "
                              "use --set env.backend=ale")
        self.cfg = cfg
        task = f"{cfg.id}-v5"
        if task not in envpool.list_all_envs():
            raise ConfigError(f"envpool has no Atari game '{cfg.id}'; use --set env.backend=ale "
                              "(ale-py ships more ROMs)")
        self.frame_skip = cfg.frame_skip
        max_steps = cfg.max_episode_frames // cfg.frame_skip if cfg.max_episode_frames else 10**9
        pool = envpool.make(
            task, env_type="gymnasium", num_envs=cfg.num_envs, batch_size=cfg.num_envs, seed=seed,
            num_threads=cfg.threads or min(cfg.num_envs, os.cpu_count() or 1),
            stack_num=cfg.stack, frame_skip=cfg.frame_skip, noop_max=cfg.noop_max,
            repeat_action_probability=cfg.sticky_action_prob, episodic_life=cfg.episodic_life,
            reward_clip=cfg.reward_clip, use_fire_reset=cfg.fire_reset, img_height=cfg.image_size,
            img_width=cfg.image_size, max_episode_steps=max_steps, full_action_space=cfg.full_action_space,
            gray_scale=True, use_inter_area_resize=True,
        )
        super().__init__(pool, cfg.num_envs)
        self.single_observation_space = gym.spaces.Box(0, 255, (cfg.stack, cfg.image_size, cfg.image_size), np.uint8)
        self.single_action_space = gym.spaces.Discrete(self._env.action_space.n)

    def _read(self, reward, terminated, truncated, info):
        """Learn from envpool's (clipped) reward; score whole games: the raw reward, ended at a real game over
        (``info["terminated"]``: life-loss termination ends no game)."""
        return reward, info["reward"], info["terminated"].astype(bool) | truncated


class ALEAtari(VecEnv):
    """``num_envs`` ALE emulators stepped in this process, mirroring envpool's Atari wrapper."""

    def __init__(self, cfg, seed: int):
        import ale_py
        from ale_py import roms
        try:
            import cv2
        except ImportError:
            raise ConfigError("env.backend=ale needs OpenCV for resizing: pip install opencv-python-headless") from None
        self._cv2 = cv2
        self.cfg = cfg
        self.num_envs = cfg.num_envs
        self.frame_skip = cfg.frame_skip
        self._max_steps = cfg.max_episode_frames // cfg.frame_skip if cfg.max_episode_frames else 10**9
        rom = roms.get_rom_path(rom_id(cfg.id))
        assert rom is not None  # rom_id names a ROM that ale-py bundles
        self._ales = []
        for i in range(self.num_envs):
            ale = ale_py.ALEInterface()
            ale.setLoggerMode(ale_py.LoggerMode.Error)
            ale.setInt("random_seed", seed + i)  # envpool seeds env i with seed + i
            ale.setFloat("repeat_action_probability", cfg.sticky_action_prob)
            ale.loadROM(rom)
            self._ales.append(ale)
        ale = self._ales[0]
        self._actions = list(ale.getLegalActionSet() if cfg.full_action_space else ale.getMinimalActionSet())
        self._fire_reset = cfg.fire_reset and any(a.value == 1 for a in self._actions)
        self.single_observation_space = gym.spaces.Box(0, 255, (cfg.stack, cfg.image_size, cfg.image_size), np.uint8)
        self.single_action_space = gym.spaces.Discrete(len(self._actions))
        n, s = self.num_envs, cfg.image_size
        self._pool = np.zeros((n, 2, *RAW_SHAPE), np.uint8)  # last two raw grayscale frames
        self._stack = np.zeros((n, cfg.stack, s, s), np.uint8)
        self._elapsed = np.zeros(n, np.int64)
        self._lives = np.zeros(n, np.int64)
        self._was_done = np.ones(n, bool)
        self._rng = np.random.default_rng(seed)  # no-op counts
        self._tracker = EpisodeTracker(n)

    @property
    def render_fps(self) -> float:  # type: ignore[override]  # the emulator's 60 frames per second, skipped
        return 60.0 / self.frame_skip

    def enable_rendering(self) -> None:
        """Nothing to prepare: every emulator keeps its colour screen."""

    def render(self) -> list[np.ndarray]:
        """The last emulated frame of each game, in colour (210 x 160 x 3)."""
        return [ale.getScreenRGB() for ale in self._ales]

    # -- envpool's Reset/Step, one emulator at a time ----------------------------------------
    def _push(self, i: int, push_all: bool, maxpool: bool) -> None:
        frame = self._pool[i, 0]
        if maxpool:
            np.maximum(frame, self._pool[i, 1], out=frame)
        small = self._cv2.resize(frame, (self.cfg.image_size,) * 2, interpolation=self._cv2.INTER_AREA)
        if push_all:
            self._stack[i] = small
        else:
            self._stack[i, :-1] = self._stack[i, 1:]
            self._stack[i, -1] = small

    def _reset_one(self, i: int, full: bool) -> None:
        ale = self._ales[i]
        noops = int(self._rng.integers(1, self.cfg.noop_max + 1)) - int(self._fire_reset)
        push_all = False
        if full or not self.cfg.episodic_life or ale.game_over() or self._elapsed[i] >= self._max_steps:
            ale.reset_game()
            self._elapsed[i] = 0
            push_all = True
        for _ in range(noops):
            ale.act(0)  # NOOP
            if ale.game_over():
                ale.reset_game()
                push_all = True
        if self._fire_reset:
            ale.act(1)  # FIRE
        ale.getScreenGrayscale(self._pool[i, 0])
        self._push(i, push_all, maxpool=False)
        self._lives[i] = ale.lives()

    def _step_one(self, i: int, action: int) -> tuple[float, bool, bool, bool]:
        """Returns (raw reward, terminated, truncated, game over)."""
        ale, a = self._ales[i], self._actions[action]
        reward, done, skip = 0.0, False, self.frame_skip
        while skip > 0 and not done:
            reward += ale.act(a)
            done = ale.game_over()
            if skip <= 2 and (self.cfg.max_pool or skip == 1):
                ale.getScreenGrayscale(self._pool[i, 2 - skip if self.cfg.max_pool else 0])
            skip -= 1
        self._push(i, push_all=False, maxpool=self.cfg.max_pool and skip == 0)
        self._elapsed[i] += 1
        game_over = done
        truncated = self._elapsed[i] >= self._max_steps
        done = done or truncated
        lives = ale.lives()
        if self.cfg.episodic_life and 0 < lives < self._lives[i]:
            done = True
        self._lives[i] = lives
        return reward, done and not truncated, done and truncated, game_over

    # -- VecEnv ------------------------------------------------------------------------------
    def reset(self) -> np.ndarray:
        for i in range(self.num_envs):
            self._reset_one(i, full=True)
        self._was_done[:] = False
        self._tracker = EpisodeTracker(self.num_envs)
        return self._stack.copy()

    def step(self, actions: np.ndarray) -> VecStep:
        n = self.num_envs
        raw = np.zeros(n, np.float64)
        term, trunc, ended = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
        for i in range(n):
            if self._was_done[i]:
                self._reset_one(i, full=False)
            else:
                raw[i], term[i], trunc[i], game_over = self._step_one(i, int(actions[i]))
                ended[i] = game_over or trunc[i]
        episodes = self._tracker.update(raw, ~self._was_done, ended)
        self._was_done = term | trunc
        reward = _sign(raw) if self.cfg.reward_clip else raw.astype(np.float32)
        return VecStep(self._stack.copy(), reward, term, trunc, episodes)

    def get_state(self) -> dict[str, Any]:
        return {
            "backend": "ale",
            "emulators": [pickle.dumps(ale.cloneState(include_rng=True)) for ale in self._ales],
            "pool": self._pool.copy(), "stack": self._stack.copy(), "elapsed": self._elapsed.copy(),
            "lives": self._lives.copy(), "was_done": self._was_done.copy(),
            "rng": self._rng.bit_generator.state, "tracker": self._tracker.state_dict(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        for ale, blob in zip(self._ales, state["emulators"], strict=True):
            ale.restoreState(pickle.loads(blob))
        self._pool[:] = state["pool"]
        self._stack[:] = state["stack"]
        self._elapsed[:] = state["elapsed"]
        self._lives[:] = state["lives"]
        self._was_done[:] = state["was_done"]
        self._rng.bit_generator.state = state["rng"]
        self._tracker.load_state_dict(state["tracker"])
