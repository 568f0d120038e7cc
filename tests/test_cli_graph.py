from __future__ import annotations

import subprocess
import sys

from PIL import Image

from structsearch.cli import main


def test_graph_command_prints_canonical_form_and_writes_picture(tmp_path, capsys) -> None:
    out = tmp_path / "g.png"
    assert (
        main(
            [
                "graph",
                "q2->q3, c1->q1, q1->q3",
                "--codes",
                "mnist3",
                "--out",
                str(out),
                "--json",
                str(tmp_path / "g.json"),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "graph:   c1->q1, q1->q3, q2->q3" in text
    assert "q3 <- q1, q2" in text and "q2 <- (none)" in text
    assert Image.open(out).size[0] > 100
    assert main(["graph", str(tmp_path / "g.json"), "--codes", "mnist3"]) == 0


def test_bad_graph_exits_2_with_one_line_and_no_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "structsearch", "graph", "q1->q3, q3->q1", "--codes", "mnist3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == "structsearch graph: error: cycle q1 -> q3 -> q1; the graph must be acyclic (drop or reverse one of its edges)"
    )
    assert "Traceback" not in proc.stderr


def test_bad_codes_exit_2(capsys) -> None:
    assert main(["graph", "independent", "--codes", "mnsit"]) == 2
    assert "unknown latent spec 'mnsit'" in capsys.readouterr().err
