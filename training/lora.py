"""LoRA (Hu et al. 2021, arXiv:2106.09685) for any training stage, through `peft`.

The trained low-rank factors never leave the learner: every export and every weight push to
rollout workers is the merged model in the plain Hugging Face layout (`merge_lora`), so the
engine, Serve and the next stage load an ordinary checkpoint and know nothing of adapters.
"""

from __future__ import annotations

import re

import torch

from training.config import LoraConfig

# peft's names: base_model.model.<hf name of the module>.{base_layer,lora_A.<adapter>,lora_B.<adapter>}.weight
_PEFT_ROOT = "base_model.model."
_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.(?P<adapter>[^.]+)\.weight$")


def apply_lora(model, cfg: LoraConfig):
    """`model` wrapped with LoRA adapters on `cfg.target_modules`; only the adapters train."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in cfg.target_modules if m not in present]
    if missing:
        raise ValueError(
            f"lora.target_modules {missing} name no module of this {model.config.model_type} model; "
            f"its linear layers include {sorted(n for n in present if n.endswith('proj'))}"
        )
    peft_cfg = PeftLoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules)
    )
    return get_peft_model(model, peft_cfg)


def lora_scaling(module) -> float:
    """alpha / r of the module's LoRA adapter; 0.0 for a module without one."""
    peft_config = getattr(module, "peft_config", None)
    if not peft_config:
        return 0.0
    cfg = peft_config["default"]
    return cfg.lora_alpha / (cfg.r**0.5 if cfg.use_rslora else cfg.r)


def merge_lora(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A peft LoRA state dict as the plain model's: W + scaling * B @ A per adapted layer, the
    `base_layer.` level and the root prefix dropped. A state dict without adapters comes back as is."""
    if not any(_LORA.match(k) for k in state):
        return state
    out: dict[str, torch.Tensor] = {}
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if match := _LORA.match(key):
            factors.setdefault(match["module"], {})[match["which"]] = value
        else:
            out[key.removeprefix(_PEFT_ROOT).replace(".base_layer.", ".")] = value
    for module, ab in factors.items():
        name = module.removeprefix(_PEFT_ROOT) + ".weight"
        out[name] = out[name] + scaling * (ab["B"].float() @ ab["A"].float()).to(out[name].dtype)
    return out
