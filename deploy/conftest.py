"""Print the chart checks' one-line results (lint / validation per values set
and Kubernetes version) as a compact block at the end of the pytest run."""


def pytest_terminal_summary(terminalreporter):
    lines = [
        value
        for rep in terminalreporter.stats.get("passed", [])
        if rep.when == "call"
        for key, value in rep.user_properties
        if key == "summary"
    ]
    if lines:
        terminalreporter.section("chart checks")
        for line in sorted(lines):
            terminalreporter.write_line(line)
