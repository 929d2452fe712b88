"""GRPO's reward curve: mean reward, pass rate and response length per learner step."""

from __future__ import annotations

from pathlib import Path


def plot_rewards(rows: list[dict], path: Path) -> None:
    """Mean reward, pass rate and response length per step, from the stage's metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "reward_mean" in r and "step" in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = [r["step"] for r in rows]
    ax1.plot(steps, [r["reward_mean"] for r in rows], label="mean reward")
    ax1.plot(steps, [r["pass_rate"] for r in rows], label="rollout pass rate")
    ax1.set_xlabel("step")
    ax1.legend()
    ax1.set_title("RLVR reward")
    ax2.plot(steps, [r["response_tokens_mean"] for r in rows], color="tab:green")
    ax2.set_xlabel("step")
    ax2.set_title("response length (tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
