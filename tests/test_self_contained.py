"""The repository stands on its own: no tracked file sends the reader outside it."""

import re
import subprocess
from pathlib import Path

from tests.servers import ROOT

# Documents that lived beside the repository once and that a clone does not have.
OUTSIDE = re.compile(r"\.\./shared|(?<![\w/])(?:PROTOCOL|DESIGN|STYLE|DEVELOPERS)\.md")
LINK = re.compile(r"\]\(([^)\s]+)\)")  # Markdown links
CITED = re.compile(r"(?<![\w/.])((?:docs|deploy|scripts|requirements)/[\w./-]+\.(?:md|txt|yaml))")


def tracked() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    return [ROOT / name for name in listed.split("\0") if name]


def text_files() -> dict[Path, str]:
    texts = {}
    for path in tracked():
        if not path.is_file():
            continue  # deleted in the working tree
        try:
            texts[path] = path.read_text()
        except UnicodeDecodeError:
            continue  # images
    return texts


def test_no_tracked_file_refers_to_documents_outside_the_repository() -> None:
    this = Path(__file__)
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path, text in text_files().items()
        if path != this
        for n, line in enumerate(text.splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not found, "\n".join(found)


def test_the_pattern_catches_what_it_is_for() -> None:
    outside = "/".join(("..", "shared", "PROTOCOL.md"))  # spelt in parts: not a citation
    for line in (f"see {outside}", "(DESIGN" + ".md, 'Hermetic')", "STYLE" + ".md says"):
        assert OUTSIDE.search(line), line
    for line in ("docs/protocol.md", "docs/design.md", "a PROTOCOL_VERSION"):
        assert not OUTSIDE.search(line), line


def test_markdown_links_and_cited_files_exist_inside_the_repository() -> None:
    missing = []
    for path, text in text_files().items():
        if path.suffix == ".md":
            for target in LINK.findall(text):
                if re.match(r"[a-z]+:|#", target):
                    continue  # a URL or an anchor
                resolved = (path.parent / target.split("#")[0]).resolve()
                if not resolved.is_relative_to(ROOT) or not resolved.exists():
                    missing.append(f"{path.relative_to(ROOT)}: link {target}")
        if path.suffix in {".md", ".py", ""} or path.name in {"Makefile"}:
            for cited in CITED.findall(text):
                if not (ROOT / cited).exists():
                    missing.append(f"{path.relative_to(ROOT)}: cites {cited}")
    assert not missing, "\n".join(missing)


def test_the_contract_and_the_architecture_are_in_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    for document in ("docs/protocol.md", "docs/architecture.md", "docs/design.md"):
        assert (ROOT / document).is_file()
        assert f"]({document})" in readme, document
    protocol = (ROOT / "docs" / "protocol.md").read_text()
    for section in ("## HTTP API", "## QR payload", "## Camera identity", "## WebSocket",
                    "## Events", "Close codes", "Error codes", "Limits"):  # fmt: skip
        assert section in protocol, section
