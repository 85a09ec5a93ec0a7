"""The relay image for the ONNX Runtime detector (deploy/Dockerfile.relay, target relay-onnx):
no PyTorch. No container engine runs here: the test follows the stages that target is built
from (its base stages and those it copies from) and reads what they install."""

import re
from pathlib import Path

from tests.servers import ROOT

DOCKERFILE = ROOT / "deploy" / "Dockerfile.relay"
TORCH = {"torch", "torchvision", "ultralytics", "triton"}


def stages(path: Path) -> dict[str, tuple[str, list[str]]]:
    """Each named stage: its base (an image or a stage) and its instructions, one per entry
    (continuation lines joined, comments left out)."""
    found: dict[str, tuple[str, list[str]]] = {}
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    current: list[str] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if match := re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?\s*$", line, re.I):
            current = []
            name = match.group(2) or f"stage-{len(found)}"
            found[name] = (match.group(1), current)
        else:
            current.append(line.strip())
    return found


def built_from(target: str, all_stages: dict[str, tuple[str, list[str]]]) -> list[str]:
    """The instructions of ``target`` and of every stage it depends on."""
    seen: set[str] = set()
    todo, instructions = [target], []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        base, lines = all_stages[name]
        instructions += lines
        if base in all_stages:
            todo.append(base)
        for line in lines:
            if copied := re.match(r"COPY\s+--from=(\S+)", line):
                todo.append(copied.group(1))
    return instructions


def installs(instructions: list[str]) -> list[str]:
    """The arguments of every ``pip install`` the instructions run."""
    return [
        " ".join(m.group(1).split())
        for line in instructions
        for m in re.finditer(r"pip install ([^&;]*)", line)
    ]


def locked(lock: str) -> set[str]:
    text = (ROOT / lock).read_text()
    return {m.lower().replace("_", "-") for m in re.findall(r"^([A-Za-z0-9_.-]+)==", text, re.M)}


def test_the_onnx_relay_image_installs_onnxruntime_and_no_pytorch() -> None:
    all_stages = stages(DOCKERFILE)
    assert "relay-onnx" in all_stages
    onnx = built_from("relay-onnx", all_stages)
    text = "\n".join(onnx)
    assert "install-yolo" not in text
    assert not re.search(r"torch|ultralytics", text, re.I), text
    # Exactly the lock, hashed, and the project without resolving anything else.
    assert sorted(installs(onnx)) == sorted(
        [
            "--no-cache-dir --require-hashes --no-deps -r requirements/relay-onnx.txt",
            "--no-cache-dir --no-deps .",
        ]
    ), installs(onnx)
    packages = locked("requirements/relay-onnx.txt")
    assert "onnxruntime" in packages
    assert not packages & TORCH, packages & TORCH
    assert not {p for p in packages if p.startswith("nvidia-")}
    # It runs the relay as the default image does: non-root, the health check, the command.
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    assert any(line.startswith("HEALTHCHECK") for line in onnx)
    assert 'CMD ["python", "-m", "relay"]' in onnx
    assert any(base.startswith("python:3.11-slim") for base, _ in all_stages.values())


def test_the_default_relay_image_is_still_the_pytorch_one() -> None:
    """The last stage is what `docker build` (and compose) builds without --target."""
    all_stages = stages(DOCKERFILE)
    default = list(all_stages)[-1]
    assert default == "relay"
    text = "\n".join(built_from(default, all_stages))
    assert "scripts/install-yolo /opt/venv" in text  # ultralytics with PyTorch
    assert "requirements/relay-onnx.txt" not in text


def test_the_stage_walk_sees_pytorch_where_it_is(tmp_path: Path) -> None:
    sneaky = tmp_path / "Dockerfile"
    sneaky.write_text(
        "FROM python:3.11-slim AS deps\nRUN pip install \\\n    torch==2.9.1\n"
        "FROM python:3.11-slim AS relay-onnx\nCOPY --from=deps /opt/venv /opt/venv\n"
    )
    onnx = built_from("relay-onnx", stages(sneaky))
    assert installs(onnx) == ["torch==2.9.1"]
