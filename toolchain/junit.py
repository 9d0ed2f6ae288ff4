"""JUnit XML for CI systems: one test case per artifact x target budget check.

The layout follows what Jenkins, GitLab and GitHub test reporters read: one
<testsuite> per target, <testcase classname="budgets.<target>" name="<artifact>">,
a <failure> whose message names every failing metric, and <properties> with the
measured values. A run that failed before budgets were checked gives one
<testcase name="run"> with an <error>.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from .fileio import atomic_write_bytes


def _case(parent: ET.Element, classname: str, name: str) -> ET.Element:
    return ET.SubElement(parent, "testcase", classname=classname, name=name, time="0")


def _budget_case(suite: ET.Element, target: str, result: dict[str, Any], release_candidate: str | None) -> None:
    case = _case(suite, f"budgets.{target}", result["artifact"])
    props = ET.SubElement(case, "properties")
    for metric, value in result["values"].items():
        ET.SubElement(props, "property", name=metric, value="" if value is None else str(value))
    if result["artifact"] == release_candidate:
        ET.SubElement(props, "property", name="release_candidate", value="true")
    if result["passed"]:
        ET.SubElement(case, "system-out").text = "\n".join(c["reason"] for c in result["checks"]) or "no budgets set"
        return
    failed = [c for c in result["checks"] if not c["passed"]]
    ET.SubElement(
        case, "failure", type="BudgetExceeded",
        message=", ".join(sorted({c["metric"] for c in failed})) + " over budget",
    ).text = "\n".join(c["reason"] for c in failed)


def _error_suite(root: ET.Element, error: str) -> None:
    suite = ET.SubElement(root, "testsuite", name="edge-toolchain run", tests="1", failures="0",
                          errors="1", skipped="0")
    ET.SubElement(_case(suite, "edge-toolchain", "run"), "error", type="RunFailed",
                  message=error.splitlines()[0] if error else "run failed").text = error


def junit_xml(evaluation: dict[str, Any] | None, error: str | None = None) -> bytes:
    """The XML document for a budget evaluation, or for a run that ended with `error`."""
    root = ET.Element("testsuites", name="edge-toolchain budgets")
    totals = {"tests": 0, "failures": 0, "errors": 0}
    by_target: dict[str, list[dict[str, Any]]] = {}
    for result in (evaluation or {}).get("results", []):
        by_target.setdefault(result["target"], []).append(result)
    release_candidate = (evaluation or {}).get("release_candidate")
    for target, results in by_target.items():
        failures = sum(not r["passed"] for r in results)
        suite = ET.SubElement(root, "testsuite", name=f"budgets.{target}", tests=str(len(results)),
                              failures=str(failures), errors="0", skipped="0")
        for result in results:
            _budget_case(suite, target, result, release_candidate)
        totals["tests"] += len(results)
        totals["failures"] += failures
    if error is not None:
        _error_suite(root, error)
        totals["tests"] += 1
        totals["errors"] += 1
    for key, value in totals.items():
        root.set(key, str(value))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def write_junit(path: Path, evaluation: dict[str, Any] | None, error: str | None = None) -> Path:
    atomic_write_bytes(path, junit_xml(evaluation, error))
    return path
