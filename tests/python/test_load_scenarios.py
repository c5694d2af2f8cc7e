"""`mcp-client load` on any MCP server: a scenario file driving
@modelcontextprotocol/server-everything through the gateway (templates,
captures, checks on results, a ramp, sampling and elicitation answered by
the load sessions, thresholds that pass and one that is crossed), a sharded
run merged, a baseline comparison flagging a regression, churn and idle
streams, bad input, and the HTML report rendered by headless Chromium."""

import json
import shutil
import struct
import subprocess
import zlib
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser

import pytest

from conftest import BIN, ROOT, metric
from test_any_server import everything  # noqa: F401  (the gateway + server-everything fixture)

CLIENT = str(BIN / "mcp-client")
CSV = "city,state\nAustin,Texas\nBoston,Massachusetts\n"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"

# 30 calls ramping 0 → 60/s, 60 held, 15 ramping down: 105 in 2.5 s
SCENARIO = r"""
name: ramp-test
data:
  words: [alpha, bravo, charlie]
  cities: { csv: cities.csv }
steps:
  - name: echo
    tool: echo
    weight: 4
    args: { message: "n={{seq}} s={{session}} w={{pick(words)}} id={{uuid}}" }
    expect:
      /content/0/text: { matches: '^Echo: n=\d+ s=\d+ w=(alpha|bravo|charlie) id=UUID$' }
  - name: echo-again
    tool: echo
    weight: 2
    args: { message: "{{pick(words)}}/{{uuid}}/{{pick(words)}}" }
    expect:
      /content/0/text: "Echo: {{pick(words)}}/{{uuid}}/{{pick(words)}}"
  - name: sum
    tool: get-sum
    weight: 2
    args: { a: "{{random(1, 9)}}", b: "{{seq}}" }
    expect:
      /content/0/text: { matches: '^The sum of [1-9] and \d+ is \d+\.$' }
  - name: reference
    tool: get-resource-reference
    weight: 2
    args: { resourceId: "{{random(1, 50)}}" }
    capture: { doc: /content/1/resource/uri }
  - name: read
    resource: "{{doc}}"
    weight: 2
    expect:
      /contents/0/uri: "{{doc}}"
      /contents/0/text: { matches: '^Resource \d+: This is a plaintext resource' }
  - name: weather
    prompt: args-prompt
    weight: 1
    args: { city: "{{next(cities).city}}", state: "{{next(cities).state}}" }
    expect:
      /messages/0/content/text: { matches: "^What's weather in (Austin, Texas|Boston, Massachusetts)\\?$" }
  - name: sample
    tool: trigger-sampling-request
    weight: 1
    args: { prompt: "call {{seq}}", maxTokens: 5 }
    expect:
      /content/0/text: { matches: 'load-test-reply' }
  - name: elicit
    tool: trigger-elicitation-request
    weight: 1
    expect:
      /content/1/text: { matches: 'Name: Ada Lovelace' }
replies:
  sampling: { text: load-test-reply, model: test-model }
  elicitation: { action: accept, content: { name: Ada Lovelace } }
load:
  mode: rate
  sessions: 3
  stages:
    - { duration: 1s, target: 60 }
    - { duration: 1s, target: 60 }
    - { duration: 500ms, target: 0 }
thresholds:
  - "errors < 1%"
  - "read: p99 < 10s"
""".replace("UUID", UUID)
SCHEDULED = 105
TOOL_STEPS = {"echo", "echo-again", "sum", "reference", "sample", "elicit"}


def run(*args, timeout=60):
    return subprocess.run([CLIENT, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def scenario(tmp_path):
    (tmp_path / "cities.csv").write_text(CSV)
    path = tmp_path / "ramp.yaml"
    path.write_text(SCENARIO)
    return path


def load(gw, scenario, *extra):
    return run("--url", f"{gw.http}/everything/mcp", "--transport", "streamable", "-o", "json",
               "load", "--scenario", scenario, *extra)


def steps(report):
    return {s["step"]: s for s in report["steps"]}


def test_a_scenario_ramps_fills_templates_captures_and_answers_the_server(everything, scenario, tmp_path):
    gw = everything
    before = metric(gw, "mcp_gateway_tool_calls_total")
    out = load(gw, scenario, "--save", tmp_path / "run.json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert json.loads((tmp_path / "run.json").read_text()) == report
    by = steps(report)
    # the ramp sends exactly its schedule; every check (regexes on what the
    # templates produced, the captured URI read back, the sampled and
    # elicited replies) held
    assert report["config"]["scheduled_calls"] == SCHEDULED
    assert report["total"]["ok"] == SCHEDULED and report["total"]["errors"] == 0, report["errors_by_kind"]
    assert all(s["ok"] > 0 for s in by.values()), {k: s["ok"] for k, s in by.items()}
    # what the gateway served is what the report counts
    assert metric(gw, "mcp_gateway_tool_calls_total") - before == sum(by[s]["ok"] for s in TOOL_STEPS)
    # each sampling / elicitation call was one server request the sessions answered
    assert report["server_requests"] == {"sampling_answered": by["sample"]["ok"],
                                         "elicitation_answered": by["elicit"]["ok"], "refused": 0}
    # ramp up, hold, ramp down: the held second completes the most calls
    per_second = {s["second"]: s["ok"] for s in report["timeline"]}
    assert per_second[1] > per_second[0] and per_second[1] > per_second.get(2, 0), per_second
    assert report["sessions"]["opened"] == 3 and report["sessions"]["peak_open"] == 3
    assert [(t["threshold"], t["passed"]) for t in report["thresholds"]] == [
        ("errors < 1%", True), ("read: p99 < 10s", True)]
    assert report["legend"]["ok"].startswith("calls that completed with a result")


def test_a_crossed_threshold_exits_99_and_names_it(everything, scenario):
    out = load(everything, scenario, "--threshold", "echo: p50 < 1us")
    assert out.returncode == 99, (out.returncode, out.stderr)
    assert "threshold crossed: `echo: p50 < 1us`" in out.stderr, out.stderr
    assert "errors < 1%" not in out.stderr, "a passing threshold is not reported as crossed"
    verdicts = {t["threshold"]: t["passed"] for t in json.loads(out.stdout)["thresholds"]}
    assert verdicts == {"errors < 1%": True, "read: p99 < 10s": True, "echo: p50 < 1us": False}


def test_shards_merged_are_the_whole_schedule_and_a_regression_is_flagged(everything, scenario, tmp_path):
    gw = everything
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda i: load(gw, scenario, "--shard", f"{i}/2", "--save", tmp_path / f"s{i}.json"),
                             [1, 2]))
    for o in outs:
        assert o.returncode == 0, o.stderr
    shards = [json.loads((tmp_path / f"s{i}.json").read_text()) for i in (1, 2)]
    # shard i takes every second call of the schedule: 53 + 52
    assert [s["total"]["ok"] + s["total"]["errors"] for s in shards] == [53, 52]
    assert [s["sessions"]["opened"] for s in shards] == [2, 1]
    merged = run("-o", "json", "load", "merge", tmp_path / "s1.json", tmp_path / "s2.json",
                 "--save", tmp_path / "merged.json", "--threshold", "errors < 1%")
    assert merged.returncode == 0, merged.stderr
    m = json.loads(merged.stdout)
    assert m["total"]["ok"] == SCHEDULED and m["shards"] == ["1/2", "2/2"]
    assert m["sessions"]["opened"] == 3
    for name, step in steps(m).items():
        assert step["ok"] == sum(steps(s)[name]["ok"] for s in shards), name
    assert m["total"]["latency"]["max_ms"] == max(s["total"]["latency"]["max_ms"] for s in shards)

    # the same results against a baseline that served 100 times the calls
    # in the same time: throughput regressed, nothing else
    base = json.loads((tmp_path / "merged.json").read_text())
    base["measured_seconds"] /= 100
    (tmp_path / "fast.json").write_text(json.dumps(base))
    compared = run("-o", "json", "load", "merge", tmp_path / "merged.json", "--baseline", tmp_path / "fast.json")
    assert compared.returncode == 99, compared.stderr
    comparison = json.loads(compared.stdout)["comparison"]
    flagged = {(c["scope"], c["metric"]) for c in comparison["changes"] if c["regression"]}
    assert flagged == {(s, "throughput") for s in [*steps(m), "ALL"]}, flagged
    assert "regression against" in compared.stderr and "echo throughput" in compared.stderr


def test_churn_and_idle_streams_are_counted_as_the_gateway_saw_them(everything, scenario):
    gw = everything
    issued = metric(gw, "mcp_gateway_sessions_issued_total")
    out = load(gw, scenario, "--mode", "sessions", "--stage", "2s:2", "--churn", "4", "--idle-streams", "3",
               "--warmup", "0s")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["config"]["mode"] == "closed-loop"
    assert r["idle_streams"] == {"requested": 3, "opened": 3, "failed_to_open": 0, "ended_early": 0}
    s = r["sessions"]
    assert s["churned"] >= 4, s
    assert s["opened"] == s["closed"] and s["failed_to_open"] == 0, s
    # every session the report counts, and one per idle stream, was a session the gateway issued
    assert metric(gw, "mcp_gateway_sessions_issued_total") - issued == s["opened"] + 3


def test_a_failed_check_is_counted_with_what_the_result_held(everything, tmp_path):
    path = tmp_path / "wrong.yaml"
    path.write_text("steps:\n  - tool: echo\n    args: { message: hi }\n"
                    "    expect: { /content/0/text: 'Echo: nope' }\n"
                    "thresholds: ['errors < 1%']\n")
    out = load(everything, path, "--rate", "20", "--duration", "500ms", "--warmup", "0s", "--sessions", "1")
    assert out.returncode == 99, out.stderr
    echo = json.loads(out.stdout)["steps"][0]
    assert echo["ok"] == 0 and echo["errors_by_kind"] == {"check_failed": 10}, echo
    assert echo["error_examples"] == {"check_failed": '/content/0/text is "Echo: hi", expected "Echo: nope"'}
    assert "threshold crossed: `errors < 1%` (100.000% (10 of 10 calls))" in out.stderr, out.stderr


def readme_scenario():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Load testing"):]
    begin = section.index("```yaml\n") + len("```yaml\n")
    return section[begin:section.index("```\n", begin)]


@pytest.mark.parametrize("example", ["README.md", "client/scenarios/everything.yaml"])
def test_the_documented_scenarios_run_clean_against_server_everything(everything, tmp_path, example):
    if example == "README.md":
        path = tmp_path / "readme.yaml"
        path.write_text(readme_scenario())
        (tmp_path / "cities.csv").write_text(CSV)
    else:
        path = ROOT / example
    out = load(everything, path, "--stage", "1s:20", "--stage", "1s:20")
    report = json.loads(out.stdout)
    assert report["total"]["errors"] == 0 and report["total"]["ok"] == 30, report["errors_by_kind"]
    assert report["idle_streams"]["opened"] == 4 and report["sessions"]["churned"] >= 1, report
    if example == "README.md":
        assert report["setup"] == {"ok": 3, "errors": 0}
    # their thresholds were checked; only a latency one may be crossed on a busy machine
    crossed = [t["threshold"] for t in report["thresholds"] if not t["passed"]]
    assert len(report["thresholds"]) == 3 and "errors < 1%" not in crossed, report["thresholds"]
    assert out.returncode == (99 if crossed else 0), out.stderr


@pytest.mark.parametrize("text, why", [
    ("steps: []", "no steps"),
    ("steps:\n  - tool: echo\n    args: { m: '{{later}}' }", "no step can run in a new session"),
    ("steps:\n  - tool: echo\n    args: { m: '{{pick(nope)}}' }", "no data set `nope`"),
    ("steps:\n  - tool: echo\n    wieght: 2", "unknown field `wieght`"),
    ("steps:\n  - tool: echo\n    args: { m: '{{seq' }", "without a closing"),
])
def test_a_bad_scenario_is_refused_before_any_call(tmp_path, text, why):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    # nothing listens on port 9: the scenario is refused before any connection
    out = run("--url", "http://127.0.0.1:9", "load", "--scenario", path)
    assert out.returncode == 1
    assert why in out.stderr and str(path) in out.stderr, out.stderr


def test_merge_refuses_what_is_not_a_report(tmp_path):
    (tmp_path / "x.json").write_text('{"total": {"ok": 1}}')
    out = run("load", "merge", tmp_path / "x.json")
    assert out.returncode == 1 and "not a mcp-client-load/2 report" in out.stderr, out.stderr


# --- the HTML report in a real browser -----------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SERIES = {("p50", "this run"): "#1f77b4", ("p99", "this run"): "#d62728", ("p50", "baseline"): "#17becf",
          ("p99", "baseline"): "#9467bd", ("ok", "this run"): "#2ca02c", ("ok", "baseline"): "#7f7f7f"}


def chromium(tmp_path, *args):
    assert CHROMIUM, "tests/run.sh installs Debian's chromium"
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
                           "--hide-scrollbars", *args], capture_output=True, text=True, timeout=60)


class Polylines(HTMLParser):
    """The chart lines in a DOM: (chart id, series, run, number of points)."""

    def __init__(self):
        super().__init__()
        self.chart, self.lines = None, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "svg":
            self.chart = a.get("id")
        if tag == "polyline" and a.get("class") == "series":
            self.lines.append((self.chart, a["data-series"], a["data-run"], len(a["points"].split())))


def png_colours(path):
    """How many pixels of each colour a (8-bit RGB/RGBA, non-interlaced) PNG has."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and interlace == 0, (depth, ctype, interlace)
        elif kind == b"IDAT":
            idat += body
    bpp = 3 if ctype == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    prev, counts, i = bytearray(stride), {}, 0
    for _ in range(height):
        f, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        if f == 2:
            line = bytearray((x + y) & 255 for x, y in zip(line, prev))
        elif f in (1, 3, 4):
            for x in range(stride):
                a = line[x - bpp] if x >= bpp else 0
                b, c = prev[x], (prev[x - bpp] if x >= bpp else 0)
                if f == 1:
                    pred = a
                elif f == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[x] = (line[x] + pred) & 255
        for x in range(0, stride, bpp):
            px = bytes(line[x:x + 3])
            counts[px] = counts.get(px, 0) + 1
        prev = line
    return width, height, counts


def test_the_html_report_renders_both_runs_charts_in_chromium(everything, scenario, tmp_path):
    gw = everything
    short = ["--stage", "1s:60", "--stage", "500ms:60"]  # two seconds of points per line
    first = load(gw, scenario, *short, "--save", tmp_path / "before.json")
    assert first.returncode == 0, first.stderr
    html = tmp_path / "report.html"
    out = load(gw, scenario, *short, "--baseline", tmp_path / "before.json", "--html", html)
    # a later run may be slower than its baseline: the report is written either way
    assert out.returncode in (0, 99), out.stderr
    url = html.as_uri()
    dom = chromium(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    lines = Polylines()
    lines.feed(dom.stdout)
    drawn = {(chart, series, run_) for chart, series, run_, points in lines.lines if points >= 2}
    assert drawn == {("latency", "p50", "this run"), ("latency", "p99", "this run"),
                     ("latency", "p50", "baseline"), ("latency", "p99", "baseline"),
                     ("throughput", "ok", "this run"), ("throughput", "errors", "this run"),
                     ("throughput", "ok", "baseline")}, lines.lines
    shot = tmp_path / "report.png"
    taken = chromium(tmp_path, "--window-size=900,1100", f"--screenshot={shot}", url)
    assert taken.returncode == 0 and shot.exists(), taken.stderr
    width, height, colours = png_colours(shot)
    assert (width, height) == (900, 1100)
    # each line is drawn: hundreds of pixels in its colour, far more than its legend's swatch
    for (series, run_), colour in SERIES.items():
        rgb = bytes.fromhex(colour[1:])
        assert colours.get(rgb, 0) > 150, (series, run_, colour, colours.get(rgb, 0))
