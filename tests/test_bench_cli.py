"""``python -m fusedadam bench``: the shipped benchmarks run, report, and skip absent peers."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

import fusedadam as fa
from fusedadam.benchmarks import cli, peers, report, scenarios, timing

HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
compiled = pytest.mark.skipif(not fa.backend_info()["compiled"], reason="needs the extension")
TINY = ["--sizes", "100,1000", "--threads", "1", "--sample-ms", "1", "--no-progress"]


@compiled
def test_sweep_prints_a_table_writes_json_and_a_plot(tmp_path, capsys):
    out = tmp_path / "s.json"
    argv = ["sweep", *TINY, "--algorithms", "adam,amsgrad", "--json", str(out)]
    if HAVE_MPL:
        argv += ["--plot", str(tmp_path / "s.png")]
    rows = cli.main(argv)
    text = capsys.readouterr().out
    assert "| N=1e+02 adam float32 threads=1 |" in text
    assert "vs numpy" in text and "% of roofline" in text
    assert "python -m fusedadam bench sweep --sizes 100,1000" in text
    data = json.loads(out.read_text())
    assert data["command"].startswith("python -m fusedadam bench sweep")
    impls = {r["impl"] for r in data["rows"]}
    assert impls >= {"fusedadam", "roofline", "numpy"}, data["skipped"]
    assert "fusedadam-kernel" in impls
    assert len(rows) == len(data["rows"])
    assert (
        data["environment"]["loadavg_at_start"] is None
        or len(data["environment"]["loadavg_at_start"]) == 3
    )
    for r in data["rows"]:
        assert r["median_s"] > 0 and r["gb_per_s"] > 0
        # p, g and the states in, p and the states out, and the check's read of g
        moved = (9 if r["algorithm"] == "amsgrad" else 7) + 1
        assert r["gb_per_s"] == pytest.approx(
            moved * 4 * r["n_elements"] / r["median_s"] / 1e9, rel=1e-3
        )
    if HAVE_MPL:
        assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_absent_peers_are_listed_as_skipped_never_an_error(monkeypatch):
    monkeypatch.setattr(peers, "_import_torch", lambda: None)
    monkeypatch.setattr(peers, "_import_deepspeed", lambda: None)
    notes = {}
    grads = [np.ones(10, np.float32)]
    fns = peers.build(
        ["numpy", "torch-fused", "deepspeed"],
        "adamax",
        lambda: [np.zeros(10, np.float32)],
        grads,
        1,
        notes,
    )
    assert list(fns) == ["numpy"]
    lines = peers.skipped(notes)
    assert lines == [
        "deepspeed (adamax, float32): deepspeed is not importable",
        "torch-fused (adamax, float32): torch is not importable",
    ]


def test_an_algorithm_is_one_line_of_data(monkeypatch):
    # An algorithm fusedadam does not have yet is skipped like an absent peer.
    monkeypatch.setitem(
        peers.ALGORITHMS, "future", peers.Algorithm("FutureAdam", torch_class="FutureAdam")
    )
    notes = {}
    fns = peers.build(
        ["fusedadam", "numpy", "fusedadam-kernel"],
        "future",
        lambda: [np.zeros(4)],
        [np.ones(4)],
        1,
        notes,
    )
    assert fns == {}
    assert "fusedadam has no FutureAdam" in notes[("fusedadam", "future", "float64")]
    assert "future" in cli.parse_args(["sweep", "--algorithms", "future"]).algorithms


def test_model_shapes():
    bert = scenarios.model_shapes("bert-base")
    assert sum(int(np.prod(s)) for s in bert) == 109_482_240  # BERT-base, with pooler
    gpt2 = scenarios.model_shapes("gpt2")
    assert sum(int(np.prod(s)) for s in gpt2) == 124_439_808  # GPT-2 small
    assert scenarios.model_shapes("10x3,7") == [(10, 3), (7,)]
    with pytest.raises(ValueError, match="shape list"):
        scenarios.model_shapes("resnet")


def test_model_from_npz(tmp_path):
    np.savez(tmp_path / "w.npz", a=np.zeros((5, 2)), b=np.zeros(3))
    assert sorted(scenarios.model_shapes(str(tmp_path / "w.npz"))) == [(3,), (5, 2)]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sweep", "--algorithms", "sgd"], "unknown algorithms"),
        (["sweep", "--threads", "0"], "positive"),
        (["sweep", "--repeats", "3"], "--repeats must be >= 5"),
        (["sweep", "--dtypes", "float16"], "unknown dtypes"),
    ],
)
def test_bad_command_lines(argv, message, capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(argv)
    assert message in capsys.readouterr().err


def test_timing_protocol_interleaves_and_takes_medians():
    calls = []
    result = timing.measure_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        repeats=5,
        min_sample_s=1e-4,
    )
    assert set(result) == {"a", "b"} and all(len(r["samples"]) == 5 for r in result.values())
    # After the calibrations, samples alternate between the implementations.
    tail = calls[-(result["a"]["calls_per_sample"] + result["b"]["calls_per_sample"]) :]
    assert tail[0] == "a" and tail[-1] == "b"
    with pytest.raises(ValueError, match="repeats"):
        timing.measure_interleaved({"a": lambda: None}, repeats=2)


def test_summary_table_reports_speedup_against_each_peer():
    rows = [
        {
            "label": "c",
            "impl": "fusedadam",
            "median_s": 1e-3,
            "ns_per_element": 1.0,
            "gb_per_s": 28.0,
            "pct_roofline": 80.0,
        },
        {
            "label": "c",
            "impl": "torch-fused",
            "median_s": 3e-3,
            "ns_per_element": 3.0,
            "gb_per_s": 9.3,
            "pct_roofline": 26.7,
        },
    ]
    table = report.summary_table(rows)
    assert table.splitlines()[0].endswith("vs torch-fused |")
    assert table.splitlines()[2] == "| c | 1.00 ms | 1.000 | 28.0 | 80% | 3.00x |"


@compiled
def test_module_entry_point_runs_bench_and_demo():
    bench = subprocess.run(
        [
            sys.executable,
            "-m",
            "fusedadam",
            "bench",
            "overhead",
            "--overhead-sizes",
            "10",
            "--sample-ms",
            "1",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bench.returncode == 0, bench.stderr
    assert "functional.adam" in bench.stdout
    demo = subprocess.run(
        [sys.executable, "-m", "fusedadam", "demo", "--size", "1e3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert demo.returncode == 0 and "bit-identical: True" in demo.stdout, demo.stderr


@compiled
def test_show_prints_a_saved_run_as_markdown(tmp_path, capsys):
    out = tmp_path / "run.json"
    cli.main(
        [
            "roofline",
            "--sizes",
            "1000",
            "--threads",
            "1",
            "--sample-ms",
            "1",
            "--no-progress",
            "--json",
            str(out),
        ]
    )
    capsys.readouterr()
    rows = cli.main(["show", str(out)])
    text = capsys.readouterr().out
    assert text.startswith("| case | fusedadam median |")
    assert "`python -m fusedadam bench roofline --sizes 1000" in text
    assert "load average (1, 5, 15 min)" in text
    assert {r["impl"] for r in rows} >= {"roofline", "fusedadam"}
    assert rows == json.loads(out.read_text())["rows"]


@compiled
def test_progress_is_plain_lines_when_not_a_terminal(capsys):
    cli.main(["roofline", "--sizes", "100,200", "--threads", "1", "--sample-ms", "1"])
    err = capsys.readouterr().err
    assert "[1/2] N=1e+02 adam float32 threads=1" in err and "[2/2] N=2e+02" in err


@compiled
def test_every_algorithm_of_the_table_runs(tmp_path, capsys):
    out = tmp_path / "all.json"
    names = ",".join(peers.ALGORITHMS)
    cli.main(
        [
            "sweep",
            "--sizes",
            "300",
            "--threads",
            "1",
            "--sample-ms",
            "1",
            "--no-progress",
            "--algorithms",
            names,
            "--json",
            str(out),
        ]
    )
    data = json.loads(out.read_text())
    timed = {(r["algorithm"], r["impl"]) for r in data["rows"]}
    for name in peers.ALGORITHMS:
        assert (name, "fusedadam") in timed and (name, "numpy") in timed
        assert (name, "fusedadam-kernel") in timed
        assert (name, "roofline") in timed  # every arrays_moved has its probe (probe_shape)


OFFLOAD_TINY = ["--models", "1000x64", "--threads", "1", "--repeats", "5", "--sample-ms", "1"]


@compiled
def test_offload_times_each_mode_in_both_phases(tmp_path, capsys):
    from fusedadam.benchmarks import offload

    out = tmp_path / "o.json"
    modes = "fusedadam,3pass-fusedadam,torch-bf16"  # DeepSpeed JIT-compiles: not in the suite
    rows = cli.main(["offload", *OFFLOAD_TINY, "--modes", modes, "--json", str(out)])
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert len(rows) == len(data["rows"])
    assert data["command"].startswith("python -m fusedadam bench offload --models 1000x64")
    assert offload.markdown(data) in text
    # The three passes unscale and copy with torch: timed only where torch is installed.
    three = {"3 passes, fusedadam float32"} if importlib.util.find_spec("torch") else set()
    for clip in (False, True):
        phase = {r["impl"]: r for r in rows if r["clip"] == clip}
        assert {offload.ONE_PASS, "roofline probe"} | three <= set(phase)
        assert phase[offload.ONE_PASS]["bytes_per_element"] == 30
        if three:
            assert phase["3 passes, fusedadam float32"]["bytes_per_element"] == (46 if clip else 42)
        for r in phase.values():
            assert r["n_elements"] == 64_000 and r["median_s"] > 0
            if "bytes_per_element" in r:
                assert r["gb_per_s"] == pytest.approx(
                    r["bytes_per_element"] * 64_000 / r["median_s"] / 1e9
                )
    clipped = [r["one_pass_last_grad_norm"] for r in rows if r["clip"]]
    assert clipped[0] is not None and np.isfinite(clipped[0])  # the norm was computed
    assert all(r["one_pass_last_grad_norm"] is None for r in rows if not r["clip"])


def test_offload_one_pass_does_the_three_passes_work():
    """The premise of the offload benchmark: same result, bit for bit, in one pass."""
    pytest.importorskip("ml_dtypes")
    from fusedadam.benchmarks import offload

    assert offload.check_one_pass_matches_three(threads=1)


def test_offload_leaves_out_what_does_not_fit(capsys):
    from fusedadam.benchmarks import offload

    n = 1_557_611_200  # GPT-2-XL
    assert offload.memory_needed(n, ["fusedadam"]) > 24 * 2**30  # 18 B/param alone
    args = offload.parse_args(["--models", "gpt2-xl", "--mem-gb", "16"])
    notes = {}
    assert offload.run_model("gpt2-xl", args.modes, 1, args, notes) == []
    assert any("skipped: needs" in v for v in notes.values()), notes


@pytest.mark.skipif(not fa.backend_info()["compiled"], reason="extension not built")
def test_kernel_step_times_whole_steps():
    """The engine alone (no method, no lock) runs real steps: the param moves each call."""
    from fusedadam.benchmarks import roofline

    p = np.ones(8, np.float32)
    step = roofline.kernel_step(fa.Adam(p, lr=0.1), [np.ones(8, np.float32)])
    before = p.copy()
    step()
    assert (p < before).all()


def test_reference_peer_steps_the_package_class(monkeypatch):
    """The "reference" peer builds ``module:Class`` with the algorithm's reference options
    and steps the shared arrays; an algorithm without one is a skip note."""
    torch = pytest.importorskip("torch")
    algorithm = peers.Algorithm("Adam", reference="torch.optim:Adam",
                                reference_options={"betas": (0.5, 0.5)})  # fmt: skip
    monkeypatch.setitem(peers.ALGORITHMS, "probe-ref", algorithm)
    notes = {}
    params = [np.zeros(10, np.float32)]
    fns = peers.build(["reference"], "probe-ref", lambda: params, [np.ones(10, np.float32)], 1,
                      notes)  # fmt: skip
    before = params[0].copy()  # the build stepped once (a peer that cannot step fails there)
    fns["reference"]()
    assert not notes and not np.array_equal(params[0], before)
    assert torch.get_num_threads() == 1
    fns = peers.build(["reference"], "adam", lambda: params, [np.ones(10, np.float32)], 1, notes)
    assert fns == {} and "no reference package" in peers.skipped(notes)[0]


@pytest.mark.parametrize(
    "arrays, states, scale", [(5, 1, 1.0), (7, 2, 1.0), (10, 3, 10 / 9), (11, 4, 1.0)]
)
def test_probe_shape_scales_even_counts_from_the_probe_below(arrays, states, scale):
    assert peers.probe_shape(arrays) == (states, scale)


def test_roofline_runs_the_steps_read_only_passes_then_the_write_pass():
    """The check's scan reads g (one read-only pass, 1 array); a per-tensor kind's phase 1
    another over the arrays its sum needs; the probe's read-write pass moves the rest
    (an odd 2k + 3, so no scaling); "ignore" drops the scan's pass."""
    lamb = peers.ALGORITHMS["lamb"]
    assert (lamb.arrays_moved, lamb.read_passes, lamb.write_pass_arrays) == (12, (1, 4), 7)
    assert peers.ALGORITHMS["adam"].read_passes == (1,)
    unchecked = peers.Algorithm("Adam", {"nonfinite": "ignore"})
    assert (unchecked.arrays_moved, unchecked.read_passes) == (7, ())
    for name, algorithm in peers.ALGORITHMS.items():
        assert algorithm.write_pass_arrays % 2 == 1 and algorithm.write_pass_arrays >= 5, name


@pytest.mark.skipif(not fa.backend_info()["compiled"], reason="extension not built")
def test_roofline_step_reads_without_writing_and_refuses_impossible_passes(monkeypatch):
    from fusedadam import _testing
    from fusedadam.benchmarks import roofline

    made = []
    real = _testing.Probe

    def recording(*columns, read_only=False):
        made.append((len(columns), read_only, columns[0] is columns[1]))
        return real(*columns, read_only=read_only)

    monkeypatch.setattr(_testing, "Probe", recording)
    p, g = [np.ones(100, np.float32)], [np.full(100, 0.5, np.float32)]
    step = roofline.roofline_step(p, g, 2, 1, read_passes=(1, 4))
    # the write probe, then one reader per pass: g alone (given as p and g), then 4 arrays
    assert made == [(4, False, False), (2, True, True), (4, True, False)]
    step()
    np.testing.assert_array_equal(g[0], 0.5)  # read by every pass, written by none
    np.testing.assert_array_equal(p[0], 0.5)  # the write probe: p -= g
    with pytest.raises(RuntimeError, match="reads 1 to 4 arrays, not 5"):
        roofline.roofline_step(p, g, 2, 1, read_passes=(5,))
