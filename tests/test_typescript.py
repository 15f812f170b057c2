"""The client's TypeScript declarations, checked against the module with a pinned tsc --strict."""

import json
import re
import shutil
import subprocess

import pytest

from tests.servers import ROOT

pytestmark = pytest.mark.integration

TSC = ROOT / ".tools" / "node_modules" / ".bin" / "tsc"
OPTIONS = ["--strict", "--noEmit", "--target", "es2022", "--module", "es2022", "--moduleResolution", "bundler", "--lib", "es2022,dom"]


def tsc(tmp_path, consumer: str) -> subprocess.CompletedProcess:
    """Compile ``consumer`` beside a copy of the module and its declarations, as a frontend would import them."""
    for name in ("ice-servers.js", "ice-servers.d.ts"):
        shutil.copy(ROOT / "app" / "web" / "static" / name, tmp_path / name)
    shutil.copy(ROOT / "tests" / "typescript" / consumer, tmp_path / consumer)
    return subprocess.run([str(TSC), *OPTIONS, str(tmp_path / consumer)], capture_output=True, text=True, timeout=120)


def test_a_strict_consumer_compiles(tmp_path):
    result = tsc(tmp_path, "consumer.ts")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_wrong_option_type_does_not_compile(tmp_path):
    result = tsc(tmp_path, "wrong_option.ts")
    assert result.returncode != 0
    # Line 4, column 38: the restartIce value.
    assert "wrong_option.ts(4,38): error TS2322: Type 'string' is not assignable to type 'boolean | undefined'" in result.stdout


@pytest.mark.parametrize("word", [": any", "<any>", "as any", "any[]"])
def test_the_declarations_have_no_any(word):
    assert word not in (ROOT / "app" / "web" / "static" / "ice-servers.d.ts").read_text()


def test_the_declarations_name_exactly_what_the_module_exports():
    script = (
        "const fs = require('fs');"
        "const source = fs.readFileSync('app/web/static/ice-servers.js', 'utf8');"
        "import('data:text/javascript,' + encodeURIComponent(source)).then((m) => console.log(JSON.stringify(Object.keys(m).sort())));"
    )
    exported = json.loads(subprocess.run(["node", "-e", script], cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    declared = sorted(
        re.findall(r"^export function (\w+)", (ROOT / "app" / "web" / "static" / "ice-servers.d.ts").read_text(), re.MULTILINE)
    )
    assert exported == declared == ["forgetIceServers", "getIceServers", "keepFresh"]
