"""The docs a newcomer reads say what the code does: one source for settings, links that resolve, a short README.

The configuration reference and .env.example are generated from app/config/reference.py, whose table
must name exactly the variables app/config reads; user docs carry no commit hashes or issue numbers.
"""

import re
import shlex
from pathlib import Path

import pytest
import yaml
from dotenv import dotenv_values

from app.config import SECRET_VARS, load_settings, reference
from tests.redis_topologies import ACL_PASSWORD, ACL_RULES

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
USER_DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "SECURITY.md", *sorted((ROOT / "docs").glob("*.md"))]
VARIABLE = re.compile(r"\"((?:ICE|CLOUDFLARE|TURN|REDIS|STUN|CORS|TWILIO|METERED)_[A-Z0-9_]+)\"")


def test_the_configuration_reference_and_env_example_are_generated_from_the_table():
    assert (ROOT / "docs" / "configuration.md").read_text() == reference.markdown(), "run: python -m app.config.reference markdown"
    assert (ROOT / ".env.example").read_text() == reference.env_example(), "run: python -m app.config.reference env"


def test_the_table_names_exactly_the_variables_the_settings_read():
    read = set()
    for path in (ROOT / "app" / "config").glob("*.py"):
        if path.name != "reference.py":
            read |= set(VARIABLE.findall(path.read_text()))
    read -= {f"{name}_FILE" for name in SECRET_VARS}  # every secret's file form, documented once for all
    table = {variable.name for _, variables in reference.SECTIONS for variable in variables}
    assert read == table | set(reference.REMOVED)


def test_env_example_is_a_valid_configuration():
    values = {name: value for name, value in dotenv_values(ROOT / ".env.example").items() if value is not None}
    assert values["CLOUDFLARE_API_TOKEN"] and "REDIS_URL" in values
    settings = load_settings({**values, "ICE_ENV_FILE": ""})
    assert settings.redis_url == values["REDIS_URL"]


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert "make run" in text and "make test" in text
    for page in ("one-box", "fleet-and-redis", "access", "spend-ceiling", "browser-client", "operations", "configuration"):
        assert f"docs/{page}.md" in text


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda path: path.name)
def test_user_docs_cite_no_commit_hashes_or_issue_numbers(path):
    text = path.read_text()
    hashes = [word for word in re.findall(r"\b[0-9a-f]{7,40}\b", text) if re.search(r"\d", word) and re.search(r"[a-f]", word)]
    assert not hashes
    assert not re.findall(r"(?i)(?:\bissue\s*#?\d+|(?<![\w&/])#\d+\b|\bcommit\s+[0-9a-f]{6,})", text)


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#{1,6} (.+)$", re.sub(r"```.*?```", "", markdown, flags=re.S), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda path: path.name)
def test_every_link_between_the_docs_resolves(path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # another site
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        assert linked.exists(), f"{path.name}: {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked.read_text()), f"{path.name}: {target}"


def test_the_documented_acl_user_is_the_one_the_tests_run_with():
    text = (ROOT / "docs" / "fleet-and-redis.md").read_text()
    documented = re.search(r"ACL SETUSER ice-servers (.+)", text).group(1)
    assert documented == ACL_RULES.replace(ACL_PASSWORD, "LONG-RANDOM-PASSWORD")


def test_compose_runs_redis_with_that_acl_user_and_without_persistence():
    script = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["redis"]["entrypoint"][2]
    words = shlex.split(script[script.index("exec redis-server") :].replace("\\\n", " "))
    user = words.index("ice-servers")
    assert words[user - 1] == "--user" and words[user + 1 :] == ACL_RULES.replace(ACL_PASSWORD, "$$password").split()
    assert words[words.index("--save") + 1] == "" and words[words.index("--appendonly") + 1] == "no"
    assert words[words.index("--maxmemory-policy") + 1] == "noeviction"
    assert words[words.index("default") - 1 : words.index("default") + 2] == ["--user", "default", "off"]
