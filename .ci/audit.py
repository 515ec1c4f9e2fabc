"""Security check for CI: known advisories for the packages installed in this environment.

Runs pip-audit (PyPI's advisory data, per installed version). When pip-audit cannot audit
(no network, or PyPI's per-version JSON API unreachable: it then skips every package as "not
found" and still says "No known vulnerabilities found"), this says so plainly and falls back
to PyPI's per-project JSON, whose advisories are those of the newest release: that covers a
package only when the installed version is the newest.

Exit status: 1 when an advisory applies to an installed version and is not listed in
.ci/audit-ignore (one ID per line, "# why" after it); 0 otherwise, including "could not audit",
which is reported, not failed: no network is not a vulnerability.

    .venv/bin/python .ci/audit.py [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import urllib.request
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

# The packages whose advisories matter most here (web server, model loading, file parsing).
KEY_PACKAGES = ("gradio", "transformers", "torch", "pyarrow")
PROJECT = "grm-studio"
IGNORE_FILE = Path(__file__).with_name("audit-ignore")
PYPI_PROJECT_JSON = "https://pypi.org/pypi/{name}/json"


def ignored_ids() -> set[str]:
    if not IGNORE_FILE.is_file():
        return set()
    lines = IGNORE_FILE.read_text(encoding="utf-8").splitlines()
    return {line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()}


def run_pip_audit(timeout: float) -> tuple[dict | None, str]:
    """pip-audit's JSON report, or None and why it could not run."""
    command = [sys.executable, "-m", "pip_audit", "--progress-spinner", "off", "-f", "json"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"pip-audit did not run: {exc}"
    try:
        return json.loads(done.stdout), ""
    except json.JSONDecodeError:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return None, f"pip-audit failed (exit {done.returncode}): {' | '.join(tail)}"


def direct_dependencies() -> list[str]:
    """The project's own dependencies (no extras) plus the key packages, installed names."""
    names = {Requirement(r).name for r in metadata.requires(PROJECT) or [] if "extra" not in r}
    return sorted(names | set(KEY_PACKAGES))


def newest_release_advisories(name: str, timeout: float) -> tuple[str, list[dict]]:
    """The newest version on PyPI and the advisories PyPI lists for it."""
    with urllib.request.urlopen(PYPI_PROJECT_JSON.format(name=name), timeout=timeout) as reply:
        data = json.load(reply)
    return data["info"]["version"], data.get("vulnerabilities") or []


def fallback(names: list[str], timeout: float) -> list[tuple[str, str, dict]]:
    """Check installed versions that are the newest release; print what could not be checked."""
    found = []
    for name in names:
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        public = Version(installed).public  # 2.13.0+cpu is torch 2.13.0
        try:
            newest, advisories = newest_release_advisories(name, timeout)
        except Exception as exc:  # noqa: BLE001 - any network failure is reported the same way
            print(f"  {name} {installed}: not audited ({type(exc).__name__}: {exc})")
            print("  PyPI unreachable: the remaining packages are not audited either")
            break
        if Version(public) != Version(newest):
            print(f"  {name} {installed}: not audited (newest is {newest}; no per-version data)")
            continue
        advisories = [a for a in advisories if not a.get("withdrawn")]
        ids = [a["id"] for a in advisories]
        print(f"  {name} {installed}: newest release, advisories: {', '.join(ids) or 'none'}")
        found += [(name, installed, a) for a in advisories]
    return found


def report(found: list[tuple[str, str, dict]], ignore: set[str]) -> int:
    live = [(n, v, a) for n, v, a in found if a["id"] not in ignore]
    for name, version, advisory in found:
        state = "ignored (see .ci/audit-ignore)" if advisory["id"] in ignore else "OPEN"
        fixed = ", ".join(advisory.get("fix_versions") or advisory.get("fixed_in") or []) or "-"
        print(f"ADVISORY {state}: {name} {version} {advisory['id']} (fixed in: {fixed})")
    print(f"security audit: {len(live)} open advisories")
    return 1 if live else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds for pip-audit")
    args = parser.parse_args(argv)
    audit, why = run_pip_audit(args.timeout)
    deps = audit["dependencies"] if audit else []
    audited = [d for d in deps if "skip_reason" not in d]
    found = [(d["name"], d["version"], v) for d in audited for v in d.get("vulns", [])]
    print(f"pip-audit: {len(audited)} of {len(deps)} installed packages audited")
    for dep in deps:
        if dep["name"] in KEY_PACKAGES:
            state = dep.get("skip_reason") or f"{dep['version']} audited"
            print(f"  {dep['name']}: {state}")
    unaudited = {d["name"] for d in deps if "skip_reason" in d}
    if audit is None or unaudited & set(KEY_PACKAGES) or not audited:
        print(
            f"pip-audit could not audit everything{': ' + why if why else ''}; "
            "falling back to PyPI's newest-release advisories:"
        )
        names = [n for n in direct_dependencies() if audit is None or n in unaudited]
        found += fallback(names, timeout=15.0)
    return report(found, ignored_ids())


if __name__ == "__main__":
    sys.exit(main())
