"""What scores a completion: verifiers (``verifiers``), RL reward kinds and their weighted sum (``registry``)
and the reward-model scorer (``reward_model``), one registry shared by RL, ``jaxpt eval`` and data generation."""

from jaxpt.rewards.registry import (
    REWARD_KINDS,
    RewardFn,
    RewardInput,
    WeightedReward,
    build_rewards,
    register_reward,
)
from jaxpt.rewards.reward_model import RewardModelScorer, resolve_model_dir
from jaxpt.rewards.verifiers import VERIFIERS, register_verifier, verify

__all__ = [
    "REWARD_KINDS",
    "VERIFIERS",
    "RewardFn",
    "RewardInput",
    "RewardModelScorer",
    "WeightedReward",
    "build_rewards",
    "register_reward",
    "register_verifier",
    "resolve_model_dir",
    "verify",
]
