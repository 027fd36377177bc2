"""README.md and docs/ hold together: every relative link and #anchor resolves, every config file and
`python -m bridgegap_jax.X` command named in a code block exists (tests/test_help.py: its --help
exits 0), and every
`--config.a.b=` field named anywhere exists in configs/base.py."""

import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
CODE_BLOCK = re.compile(r"^```.*?^```", re.S | re.M)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: pathlib.Path) -> set[str]:
    prose = CODE_BLOCK.sub("", page.read_text(encoding="utf-8"))
    found, seen = set(), {}
    for heading in re.findall(r"^#{1,6} (.+)$", prose, re.M):
        base = anchor(heading)
        count = seen.get(base, 0)
        found.add(base if count == 0 else f"{base}-{count}")  # GitHub numbers repeated headings
        seen[base] = count + 1
    return found


def links(page: pathlib.Path) -> list[str]:
    prose = CODE_BLOCK.sub("", page.read_text(encoding="utf-8"))
    prose = re.sub(r"`[^`\n]*`", "", prose)  # inline code is not a link
    return [a or b for a, b in LINK.findall(prose)]


def broken_links(page: pathlib.Path) -> list[str]:
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto: are not checked offline
            continue
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif fragment and (resolved.suffix != ".md" or fragment not in anchors(resolved)):
            broken.append(f"{target}: no heading #{fragment} in {resolved.name}")
    return broken


def code(page: pathlib.Path) -> str:
    return "\n".join(CODE_BLOCK.findall(page.read_text(encoding="utf-8")))


def test_the_pages_are_found():  # the tests below would pass on no pages
    assert len(PAGES) >= 12 and sum(len(links(page)) for page in PAGES) > 40


def test_a_broken_link_is_found(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# A heading\n")
    page.write_text("[ok](there.md#a-heading) [gone](missing.md) [bad](there.md#nope) `[not](a-link.md)`\n")
    assert broken_links(page) == ["missing.md: no such file", "there.md#nope: no heading #nope in there.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_link_resolves(page):
    assert broken_links(page) == []


def test_the_front_page_is_short_and_leads_everywhere():
    text = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(text) <= 200
    first_screen = "\n".join(text[:60])
    for page in ("docs/own_data.md", "docs/scale.md", "docs/troubleshooting.md"):
        assert f"]({page}" in first_screen, page


def test_every_docs_page_is_listed():
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    pages = {page.name for page in PAGES if page.parent.name == "docs"} - {"README.md"}
    assert {page for page in pages if f"]({page})" not in index} == set()


def test_every_config_file_named_in_code_exists():
    named = {name for page in PAGES for name in re.findall(r"configs/(\w+)\.py", code(page))}
    assert named and {name for name in named if not (ROOT / "configs" / f"{name}.py").exists()} == set()


def config_fields() -> set[str]:
    sys.path.insert(0, str(ROOT))
    from configs import base

    def walk(config, prefix=""):
        for key, value in config.items():
            if hasattr(value, "items"):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield prefix + key

    return set(walk(base.get_config()))


def test_every_config_field_named_exists():
    named = {
        field
        for page in PAGES
        for field in re.findall(r"--config\.([a-z_]+(?:\.[a-z_]+)+)=", page.read_text(encoding="utf-8"))
    }
    assert named and named - config_fields() == set()


def documented_commands() -> list[str]:
    """Every `python -m bridgegap_jax.X` of a code block; tests/test_help.py runs each one's --help."""
    named = {
        module for page in PAGES for module in re.findall(r"python -m (bridgegap_jax(?:\.\w+)*)", code(page))
    }
    return sorted(named)


def test_the_documented_commands_exist():
    import importlib.util

    commands = documented_commands()
    assert "bridgegap_jax.main" in commands and "bridgegap_jax.prepare" in commands
    assert [module for module in commands if importlib.util.find_spec(module) is None] == []
