"""The stage table as a Mermaid flowchart: the README's architecture picture is generated from
`STAGES` (`python -m orchestration.stages.diagram`), and a test keeps the two equal."""

from __future__ import annotations

from orchestration.stages.context import StageSpec


def mermaid(stages: dict[str, StageSpec]) -> str:
    """One node per stage (with the config it reads), one edge per input it may take; dotted when
    the input is optional or a fallback after the first source. A config field an input falls
    back to (the user's `model.pretrained`) is a node of its own."""
    lines = ["flowchart LR"]
    for name, spec in stages.items():
        reads = ", ".join(spec.reads) or ("every manifest" if spec.reads_all_manifests else "-")
        lines.append(f'  {name}["{name}<br/><small>reads: {reads}</small>"]')
    fields = dict.fromkeys(w.config for spec in stages.values() for w in spec.inputs.values() if w.config)
    lines.extend(f'  {field.replace(".", "_")}[("{field}")]' for field in fields)
    for name, spec in stages.items():
        edges: dict[tuple[str, str], list[str]] = {}  # (upstream stage, arrow) -> labels
        for input_name, want in spec.inputs.items():
            for i, source in enumerate(want.sources):
                stage, output = source.split(".")
                arrow = "-->" if want.required and i == 0 else "-.->"
                edges.setdefault((stage, arrow), []).append(
                    output if output == input_name else f"{output} as {input_name}"
                )
            if want.config:
                edges.setdefault((want.config.replace(".", "_"), "-.->"), []).append(input_name)
        lines.extend(
            f"  {stage} {arrow}|{', '.join(labels)}| {name}" for (stage, arrow), labels in edges.items()
        )
        if spec.reads_all_manifests:
            lines.extend(f"  {other} -.-> {name}" for other in stages if other != name)
    return "\n".join(lines)


if __name__ == "__main__":
    from orchestration.stages import STAGES

    print(mermaid(STAGES))
