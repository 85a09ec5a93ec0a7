import re
import secrets
import subprocess
from pathlib import Path

from tests.servers import ROOT, cloud_process


def walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(
        r"<!-- walkthrough:start -->\n```sh\n(.*?)```\n<!-- walkthrough:end -->", text, re.S
    )
    assert block, "the README walk-through block is missing"
    return block.group(1)


def test_the_readme_walkthrough_works_as_pasted(mongodb_url: str, tmp_path: Path) -> None:
    env = {
        "MONGODB_URL": mongodb_url,
        "MONGODB_DATABASE": "readme_" + secrets.token_hex(4),
        "DATA_DIR": str(tmp_path / "data"),
    }
    with cloud_process(env, tmp_path / "cloud.log") as url:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", walkthrough()],
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin", "BASE": url, "HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert '"email":"ana.' in lines[0]
    assert '"device_name":"Porch"' in result.stdout
    assert '"signaling_url":"ws://127.0.0.1:' in result.stdout
    assert '"role":"owner"' in lines[-1]
    assert (tmp_path / "qr.png").stat().st_size > 100
    assert "wifi-pass-123" not in (tmp_path / "cloud.log").read_text()
