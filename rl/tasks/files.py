"""Problem files on the local disk, read the one way every file-backed task reads them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# File suffix -> the `datasets` builder that reads it.
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def read_table(path: str | Path, key: str, split: str = "train") -> list[dict[str, Any]]:
    """The rows of a .jsonl/.json/.parquet file or a `datasets.save_to_disk` directory (`split` of
    a saved DatasetDict); errors name the file and the config `key` that listed it."""
    # `datasets` takes seconds to import; only the file-backed tasks need it, so Ray workers making
    # other tasks never pay for it.
    from datasets import DatasetDict, load_dataset, load_from_disk

    path = Path(path)
    if path.is_dir():
        data = load_from_disk(str(path))
        if isinstance(data, DatasetDict):
            if split not in data:
                raise ValueError(
                    f"{path}: a saved DatasetDict without the split {split!r} asked for; it has {sorted(data)}"
                )
            data = data[split]
        return data.to_list()
    if path.suffix not in BUILDERS:
        raise ValueError(
            f"{path}: unsupported file type {path.suffix!r}; {key} takes {sorted(BUILDERS)} files or "
            "directories written by `datasets.save_to_disk`"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: listed in {key} but not found")
    return load_dataset(BUILDERS[path.suffix], data_files=str(path), split="train").to_list()
