"""How a CLI failure must look to a user: one line on stderr, no traceback."""

from moeperf.cli import main


def one_line_error(capsys, argv, *expected, code=2) -> str:
    """Run `moeperf argv`: exit `code`, one line on stderr holding every `expected` part
    (after the sweep's own start line, where it got that far)."""
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Warning:" not in err, err
    lines = err.strip().splitlines()
    if lines and lines[0].startswith("moeperf sweep '"):
        lines = lines[1:]
    assert len(lines) == 1, err
    for part in expected:
        assert part in lines[0], lines[0]
    return lines[0]
