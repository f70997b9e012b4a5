"""Plumbing the algorithms share: the initial policy and its frozen reference (``policy``), preference pairs
(``preference``: reward model, DPO) and the online-RL rollout (``rollout``: PPO, GRPO)."""
