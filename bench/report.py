#!/usr/bin/env python3
"""Turns bench/out/runs.jsonl (one line per measured run, written by bench/run) into the table of
issue #12 (the write path) and bench/out/results.json.

    report.py RUNS.jsonl META.json RESULTS.json      the table + JSON; exit 1 when > 1% non-200
    report.py line-wrk JSON | line-loadgen JSON      one-line summary of one run (used by bench/run)
"""

import json
import statistics
import sys

MAX_ERROR_SHARE = 0.01


def line_wrk(w):
    d = w["duration_us"] / 1e6
    return (f"{w['ok'] / d:.0f} req/s (200s), requests {w['requests']}, non-200 {w['non200']} "
            f"{w['statuses']}, socket errors {w['socket_errors']}, p50 {w['p50_ms']:.2f} ms, "
            f"p99 {w['p99_ms']:.2f} ms")


def line_loadgen(j):
    line = (f"{j['achieved_rps']:.0f} req/s, ok {j['ok']}, errors {j['errors']} {j['status_counts']}, "
            f"p50 {j['p50_ms']:.2f} ms, p90 {j['p90_ms']:.2f} ms, p99 {j['p99_ms']:.2f} ms, "
            f"max {j['max_ms']:.1f} ms, max send lag {j['max_send_lag_ms']:.1f} ms")
    if j.get("calls"):
        line += "; per call p50/p99: " + ", ".join(
            f"{c['name']} {c['p50_ms']:.2f}/{c['p99_ms']:.2f} ms" for c in j["calls"])
    return line


def core_busy(stat0, stat1):
    """Busy share (0-100) of each core between two /proc/stat snapshots."""
    def parse(s):
        cores = {}
        for part in s.split(";"):
            f = part.split()
            if not f:
                continue
            v = [int(x) for x in f[1:]]
            idle = v[3] + (v[4] if len(v) > 4 else 0)
            total = sum(v[:8])
            cores[f[0]] = (idle, total)
        return cores
    a, b = parse(stat0), parse(stat1)
    out = {}
    for core in sorted(a):
        if core in b:
            di = b[core][0] - a[core][0]
            dt = b[core][1] - a[core][1]
            out[core] = round(100.0 * (1 - di / dt), 1) if dt > 0 else 0.0
    return out


def foreign_cpu(r):
    """CPU of processes outside the benchmark during a run: (% of the whole 2-core machine, top names)."""
    if not r.get("foreign1"):
        return None, []
    def parse(s):
        out = {}
        for item in s.split(","):
            if item.count(":") >= 2:
                pid, rest = item.split(":", 1)
                comm, t = rest.rsplit(":", 1)
                out[pid] = (comm, int(t))
        return out
    a, b = parse(r.get("foreign0", "")), parse(r["foreign1"])
    by_name = {}
    for pid, (comm, t) in b.items():
        d = t - a.get(pid, (comm, 0))[1]
        if d > 0:
            by_name[comm] = by_name.get(comm, 0) + d
    ncores = len([c for c in r["stat1"].split(";") if c.strip()]) or 1
    # elapsed ticks of one core between the snapshots
    t0 = sum(int(x) for x in r["stat0"].split(";")[0].split()[1:9])
    t1 = sum(int(x) for x in r["stat1"].split(";")[0].split()[1:9])
    elapsed = max(1, t1 - t0)
    total = sum(by_name.values())
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:4]
    return round(100.0 * total / (elapsed * ncores), 1), [f"{n} {100.0 * t / elapsed:.0f}%" for n, t in top]


def summary(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "rounds": values}


def fmt(s, digits=2, unit=""):
    if s is None:
        return "n/a"
    f = f"{{:.{digits}f}}"
    return (f"{f.format(s['median'])}{unit} [{f.format(s['min'])}-{f.format(s['max'])}]")


def run_facts(r):
    """Requests, 200s, non-200s, rate and latency of one run, whatever the tool."""
    if r["tool"] == "wrk":
        w = r["wrk"]
        secs = w["duration_us"] / 1e6
        completed = w["requests"]
        ok = w["ok"]
        errors = w["non200"] + w["socket_errors"] + w["timeouts"]
        completed = max(completed, ok + w["non200"])
        return {"requests": completed, "ok": ok, "errors": errors, "rps": ok / secs,
                "p50_ms": w["p50_ms"], "p99_ms": w["p99_ms"], "statuses": w["statuses"]}
    j = r["loadgen"]
    return {"requests": j["sent"], "ok": j["ok"], "errors": j["errors"], "rps": j["achieved_rps"],
            "p50_ms": j["p50_ms"], "p99_ms": j["p99_ms"], "statuses": j["status_counts"]}


def report(runs_path, meta_path, results_path):
    runs = [json.loads(line) for line in open(runs_path) if line.strip()]
    meta = json.load(open(meta_path))
    for r in runs:
        r["facts"] = run_facts(r)
        r["cores_busy_pct"] = core_busy(r["stat0"], r["stat1"]) if r.get("stat0") else {}
        ok = r["facts"]["ok"]
        r["foreign_cpu_pct"], r["foreign_top"] = foreign_cpu(r)
        r["cpu_us_per_request"] = (r["cpu_ticks"] / r["tick_hz"] * 1e6 / ok) if ok and r["cpu_ticks"] else None

    def pick(phase, target):
        return sorted((r for r in runs if r["phase"] == phase and r["target"] == target),
                      key=lambda r: r["round"])

    gw, ng = pick("throughput", "gateway"), pick("throughput", "nginx")
    # Two baselines for the added latency: "direct" is one wallet call per request (the single-call
    # figure), "fanout" the three calls the gateway makes, issued at once (the slowest counts).
    lat_gw, lat_direct = pick("latency", "gateway"), pick("latency", "direct")
    lat_fanout = pick("latency", "fanout")
    cap5 = pick("capacity5", "gateway")
    pairs = list(zip(gw, ng))
    lat_pairs = list(zip(lat_gw, lat_direct))
    lat_fanout_pairs = list(zip(lat_gw, lat_fanout))
    low_gw, low_direct = pick("latency_low", "gateway"), pick("latency_low", "direct")
    low_fanout = pick("latency_low", "fanout")
    low_pairs = list(zip(low_gw, low_direct))
    low_fanout_pairs = list(zip(low_gw, low_fanout))

    def added(pairs, q):
        """Gateway minus baseline at percentile q, per round (a gateway round and the baseline round
        of the same round)."""
        return summary([g["facts"][q] - b["facts"][q] for g, b in pairs])

    fig = {}
    fig["throughput_ratio"] = summary([g["facts"]["rps"] / n["facts"]["rps"] for g, n in pairs
                                       if n["facts"]["rps"] > 0])
    fig["cpu_per_request_ratio"] = summary([g["cpu_us_per_request"] / n["cpu_us_per_request"]
                                            for g, n in pairs
                                            if g["cpu_us_per_request"] and n["cpu_us_per_request"]])
    fig["added_latency_p50_ms_over_fanout"] = added(lat_fanout_pairs, "p50_ms")
    fig["added_latency_p99_ms_over_fanout"] = added(lat_fanout_pairs, "p99_ms")
    # Over one wallet call: kept beside it, comparable with the figures before the fan-out existed.
    fig["added_latency_p50_ms"] = added(lat_pairs, "p50_ms")
    fig["added_latency_p99_ms"] = added(lat_pairs, "p99_ms")
    # At the low rate (50 req/s), where PostgreSQL is far from saturated: the first latency row.
    fig["added_latency_p50_ms_low_rate_over_fanout"] = added(low_fanout_pairs, "p50_ms")
    fig["added_latency_p99_ms_low_rate_over_fanout"] = added(low_fanout_pairs, "p99_ms")
    fig["postgres_cpu_us_per_change"] = summary(
        [g["postgres_cpu_ticks"] / g["tick_hz"] * 1e6 / g["db"]["changes"]
         for g in gw if g.get("db") and g["db"].get("changes") and g.get("postgres_cpu_ticks") is not None])
    fig["postgres_cpu_us_per_change_latency"] = summary(
        [g["postgres_cpu_ticks"] / g["tick_hz"] * 1e6 / g["db"]["changes"]
         for g in lat_gw if g.get("db") and g["db"].get("changes") and g.get("postgres_cpu_ticks") is not None])
    fig["db_statements_per_change"] = summary([g["db"]["statements"] / g["db"]["changes"] for g in gw
                                               if g.get("db") and g["db"]["changes"]])
    fig["db_transactions_per_change"] = summary([g["db"]["transactions"] / g["db"]["changes"] for g in gw
                                                 if g.get("db") and g["db"]["changes"]])

    absolute = {
        "gateway_rps_0ms": summary([g["facts"]["rps"] for g in gw]),
        "nginx_rps_0ms": summary([n["facts"]["rps"] for n in ng]),
        "gateway_cpu_us_per_request": summary([g["cpu_us_per_request"] for g in gw]),
        "nginx_cpu_us_per_request": summary([n["cpu_us_per_request"] for n in ng]),
        "gateway_capacity_rps_5ms": summary([c["facts"]["rps"] for c in cap5]),
        "latency_rate_rps": meta.get("settings", {}).get("latency_rate_rps"),
        "gateway_p50_ms_5ms": summary([g["facts"]["p50_ms"] for g in lat_gw]),
        "gateway_p99_ms_5ms": summary([g["facts"]["p99_ms"] for g in lat_gw]),
        "direct_p50_ms_5ms": summary([d["facts"]["p50_ms"] for d in lat_direct]),
        "direct_p99_ms_5ms": summary([d["facts"]["p99_ms"] for d in lat_direct]),
        "fanout_p50_ms_5ms": summary([f["facts"]["p50_ms"] for f in lat_fanout]),
        "fanout_p99_ms_5ms": summary([f["facts"]["p99_ms"] for f in lat_fanout]),
        "gateway_wrk_p50_ms_0ms": summary([g["facts"]["p50_ms"] for g in gw]),
        "low_rate_rps": meta.get("settings", {}).get("low_rate_rps"),
        "added_latency_p50_ms_low_rate": added(low_pairs, "p50_ms"),
        "added_latency_p99_ms_low_rate": added(low_pairs, "p99_ms"),
        "added_latency_p50_ms_low_rate_over_fanout": added(low_fanout_pairs, "p50_ms"),
        "added_latency_p99_ms_low_rate_over_fanout": added(low_fanout_pairs, "p99_ms"),
        "gateway_p50_ms_low_rate": summary([g["facts"]["p50_ms"] for g in low_gw]),
        "gateway_p99_ms_low_rate": summary([g["facts"]["p99_ms"] for g in low_gw]),
        "direct_p50_ms_low_rate": summary([d["facts"]["p50_ms"] for d in low_direct]),
        "direct_p99_ms_low_rate": summary([d["facts"]["p99_ms"] for d in low_direct]),
        "fanout_p50_ms_low_rate": summary([f["facts"]["p50_ms"] for f in low_fanout]),
        "fanout_p99_ms_low_rate": summary([f["facts"]["p99_ms"] for f in low_fanout]),
        "postgres_cpu_us_per_change": summary([g["postgres_cpu_ticks"] / g["tick_hz"] * 1e6 / g["db"]["changes"]
                                               for g in gw if g.get("db") and g["db"]["changes"]
                                               and g.get("postgres_cpu_ticks") is not None]),
    }

    def cores(rs):
        out = {}
        for core in ("cpu0", "cpu1"):
            vals = [r["cores_busy_pct"].get(core) for r in rs if r["cores_busy_pct"]]
            s = summary(vals)
            out[core] = s["median"] if s else None
        busy = [c for c, v in out.items() if v is not None and v >= 90.0]
        out["saturated"] = ", ".join(busy) if busy else "none"
        return out

    saturation = {
        "throughput_gateway": cores(gw),
        "throughput_nginx": cores(ng),
        "capacity5_gateway": cores(cap5),
        "latency_gateway": cores(lat_gw),
        "latency_direct": cores(lat_direct),
        "latency_fanout": cores(lat_fanout),
        "latency_low_gateway": cores(low_gw),
        "latency_low_fanout": cores(low_fanout),
    }

    # Issue 12's targets. The figures over one wallet call have none: they are kept beside the
    # ones over the direct fan-out, comparable with runs from before the fan-out existed.
    targets = {
        "postgres_cpu_us_per_change": ("<= 300 us", lambda m: m <= 300.0),
        "postgres_cpu_us_per_change_latency": ("<= 400 us", lambda m: m <= 400.0),
        "throughput_ratio": (">= 0.08", lambda m: m >= 0.08),
        "cpu_per_request_ratio": ("<= 7x", lambda m: m <= 7.0),
        "added_latency_p50_ms_low_rate_over_fanout": ("<= +2 ms", lambda m: m <= 2.0),
        "added_latency_p99_ms_low_rate_over_fanout": ("<= +4 ms", lambda m: m <= 4.0),
        "added_latency_p50_ms_over_fanout": ("<= +4 ms", lambda m: m <= 4.0),
        "added_latency_p99_ms_over_fanout": ("<= +10 ms", lambda m: m <= 10.0),
        "added_latency_p50_ms": ("(beside)", None),
        "added_latency_p99_ms": ("(beside)", None),
        "db_statements_per_change": ("<= 2 (amortized)", lambda m: m <= 2.0),
    }
    rows = [
        ("PostgreSQL CPU per change, closed loop (0 ms upstream)", "postgres_cpu_us_per_change", 0, " us"),
        ("PostgreSQL CPU per change, latency rounds (5 ms, 50% cap)", "postgres_cpu_us_per_change_latency", 0, " us"),
        ("gateway req/s / nginx proxy req/s (0 ms upstream)", "throughput_ratio", 3, ""),
        ("gateway CPU per request / nginx CPU per request", "cpu_per_request_ratio", 1, "x"),
        ("added latency p50 over the direct fan-out (5 ms, low rate)", "added_latency_p50_ms_low_rate_over_fanout", 2, " ms"),
        ("added latency p99 over the direct fan-out (5 ms, low rate)", "added_latency_p99_ms_low_rate_over_fanout", 2, " ms"),
        ("added latency p50 over the direct fan-out (5 ms, 50% cap)", "added_latency_p50_ms_over_fanout", 2, " ms"),
        ("added latency p99 over the direct fan-out (5 ms, 50% cap)", "added_latency_p99_ms_over_fanout", 2, " ms"),
        ("added latency p50 over one direct wallet call (5 ms, 50% cap)", "added_latency_p50_ms", 2, " ms"),
        ("added latency p99 over one direct wallet call (5 ms, 50% cap)", "added_latency_p99_ms", 2, " ms"),
        ("database round trips (statements) per change", "db_statements_per_change", 2, ""),
    ]

    # Errors: a benchmark of errors is worthless.
    error_runs = []
    for r in runs:
        if r["phase"] in ("warmup", "warmup5"):
            continue
        f = r["facts"]
        share = f["errors"] / f["requests"] if f["requests"] else 1.0
        r["error_share"] = share
        if share > MAX_ERROR_SHARE or f["requests"] == 0:
            error_runs.append(f"{r['phase']}/{r['target']}/round {r['round']}: {f['errors']} of "
                              f"{f['requests']} not 200 ({100 * share:.2f}%): {f['statuses']}")

    noisy = [r for r in runs if r["phase"] not in ("warmup", "warmup5")
             and (r.get("foreign_cpu_pct") or 0) >= 5.0]
    results = {
        "meta": meta,
        "noisy_runs": [f"{r['phase']}/{r['target']}/{r['round']}: {r['foreign_cpu_pct']}% "
                       f"({', '.join(r['foreign_top'])})" for r in noisy],
        "figures": {k: dict(v, target=targets[k][0],
                            met=targets[k][1](v["median"]) if targets[k][1] else None)
                    if v and k in targets else v for k, v in fig.items()},
        "absolute": absolute,
        "cores_busy_pct": saturation,
        "errors": error_runs,
        "runs": [{k: v for k, v in r.items() if k not in ("stat0", "stat1", "foreign0", "foreign1")}
                 for r in runs],
    }
    with open(results_path, "w") as fh:
        json.dump(results, fh, indent=2)

    p = print
    p()
    p(f"profile-gateway benchmark  {meta['date']}  commit {meta['git_commit'][:12]}"
      f"{' (dirty)' if meta.get('git_dirty') else ''}")
    p(f"machine: {meta['nproc']} cores, {meta['cpu_model']}; {meta['postgres']}; {meta['nginx']}")
    s = meta["settings"]
    p(f"SUT on core {s['sut_cpu']}; wrk/loadgen, upstreams, PostgreSQL on core {s['aux_cpu']}; "
      f"{s['rounds']} alternating rounds; wrk -t1 -c{s['wrk_connections']} -d{s['wrk_duration_s']}s; "
      f"open loop {s['latency_rate_rps']} req/s x {s['latency_duration_s']} s; {s['users']} users")
    p()
    if s.get("what_if_sql"):
        p(f"WHAT-IF RUN (diagnosis, not the service as shipped): {s['what_if_sql']}")
    w1 = max(len(r[0]) for r in rows) + 2
    p(f"{'figure (same run, ratios)':<{w1}}{'measured median [min-max]':<32}{'target':<18}met")
    p("-" * (w1 + 32 + 18 + 3))
    for label, key, digits, unit in rows:
        v = fig.get(key)
        t, ok = targets[key]
        met = "" if ok is None else "n/a" if v is None else ("yes" if ok(v["median"]) else "NO")
        p(f"{label:<{w1}}{fmt(v, digits, unit):<32}{t:<18}{met}")
    p()
    p("absolute figures (median [min-max]):")
    p(f"  gateway {fmt(absolute['gateway_rps_0ms'], 0)} req/s vs nginx proxy {fmt(absolute['nginx_rps_0ms'], 0)} req/s (0 ms upstream)")
    p(f"  CPU per request: gateway {fmt(absolute['gateway_cpu_us_per_request'], 0)} us, nginx {fmt(absolute['nginx_cpu_us_per_request'], 0)} us")
    p(f"  gateway capacity with the 5 ms upstream: {fmt(absolute['gateway_capacity_rps_5ms'], 0)} req/s -> open loop at {absolute['latency_rate_rps']} req/s")
    p(f"  p50: gateway {fmt(absolute['gateway_p50_ms_5ms'])} ms, direct fan-out {fmt(absolute['fanout_p50_ms_5ms'])} ms, "
      f"one direct wallet call {fmt(absolute['direct_p50_ms_5ms'])} ms")
    p(f"  p99: gateway {fmt(absolute['gateway_p99_ms_5ms'])} ms, direct fan-out {fmt(absolute['fanout_p99_ms_5ms'])} ms, "
      f"one direct wallet call {fmt(absolute['direct_p99_ms_5ms'])} ms")
    if absolute.get("added_latency_p50_ms_low_rate"):
        p(f"  at a low rate ({absolute['low_rate_rps']} req/s, core 1 far from saturated; not a figure of the issue):")
        p(f"    p50: gateway {fmt(absolute['gateway_p50_ms_low_rate'])} ms, direct fan-out "
          f"{fmt(absolute['fanout_p50_ms_low_rate'])} ms, one direct wallet call {fmt(absolute['direct_p50_ms_low_rate'])} ms")
        p(f"    p99: gateway {fmt(absolute['gateway_p99_ms_low_rate'])} ms, direct fan-out "
          f"{fmt(absolute['fanout_p99_ms_low_rate'])} ms, one direct wallet call {fmt(absolute['direct_p99_ms_low_rate'])} ms")
        p(f"    added over the direct fan-out (3 calls): p50 {fmt(absolute['added_latency_p50_ms_low_rate_over_fanout'])} ms, "
          f"p99 {fmt(absolute['added_latency_p99_ms_low_rate_over_fanout'])} ms")
        p(f"    added over one direct wallet call: p50 {fmt(absolute['added_latency_p50_ms_low_rate'])} ms, "
          f"p99 {fmt(absolute['added_latency_p99_ms_low_rate'])} ms")
    if s.get("fanout_check") and s["fanout_check"] != "same":
        p(f"  WARNING: the direct fan-out is not what the gateway sent: {s['fanout_check']}")
    p(f"  database transactions per change: {fmt(fig['db_transactions_per_change'])}; "
      f"PostgreSQL CPU per change: {fmt(absolute['postgres_cpu_us_per_change'], 0)} us (on core 1)")
    p()
    p("core busy % (median over rounds; saturated = >= 90%):")
    for name, c in saturation.items():
        p(f"  {name:<22} cpu0 {c['cpu0']}%  cpu1 {c['cpu1']}%  saturated: {c['saturated']}")
    p()
    def top_statements(run, title):
        db = run.get("db") if run else None
        if not db or not db.get("changes"):
            return
        p(f"{title}: {db['changes']} changes, {db['statements'] / db['changes']:.2f} statements and "
          f"{db['transactions'] / db['changes']:.2f} transactions per change; top statements by total time")
        p("  (calls/change, ms/change; deferred FK checks at COMMIT run on the server, no round trip):")
        try:
            path = db["top_statements_file"].replace("bench/out/", results_path.rsplit("/", 1)[0] + "/")
            for line in list(open(path))[:10]:
                calls, ms, query = line.rstrip("\n").split("\t", 2)
                p(f"  {int(calls) / db['changes']:5.2f} {float(ms) / db['changes']:7.3f}  {query[:90]}")
        except (OSError, ValueError):
            pass
        p()

    top_statements(gw[0] if gw else None, "PostgreSQL, throughput round 1 (0 ms upstream)")
    top_statements(lat_gw[-1] if lat_gw else None,
                   f"PostgreSQL, latency round {lat_gw[-1]['round'] if lat_gw else ''} (5 ms upstream)")
    absolute["postgres_cpu_us_per_change_latency"] = summary(
        [g["postgres_cpu_ticks"] / g["tick_hz"] * 1e6 / g["db"]["changes"]
         for g in lat_gw if g.get("db") and g["db"].get("changes") and g.get("postgres_cpu_ticks") is not None])
    p(f"PostgreSQL CPU per change: {fmt(absolute['postgres_cpu_us_per_change'], 0)} us in the throughput rounds, "
      f"{fmt(absolute['postgres_cpu_us_per_change_latency'], 0)} us in the latency rounds")
    p()
    if noisy:
        p("WARNING: other processes on the machine used CPU during these measured runs (at least this")
        p("% of the 2-core machine; per name, % of one core); their figures are noisy:")
        for line in results["noisy_runs"]:
            p(f"  {line}")
        p()
    else:
        p("no other process used more than 5% of the machine during any measured run")
        p()
    p("core 1 CPU by process, % of one core (median over rounds; the rest of core 1 is the load generator):")
    for name, rs in (("throughput_gateway", gw), ("throughput_nginx", ng), ("capacity5_gateway", cap5),
                     ("latency_gateway", lat_gw), ("latency_direct", lat_direct),
                     ("latency_fanout", lat_fanout)):
        def pct(key):
            vals = []
            for r in rs:
                if r.get(key) is None or not r.get("stat0"):
                    continue
                t0 = sum(int(x) for x in r["stat0"].split(";")[0].split()[1:9])
                t1 = sum(int(x) for x in r["stat1"].split(";")[0].split()[1:9])
                vals.append(100.0 * r[key] / max(1, t1 - t0))
            s = summary(vals)
            return f"{s['median']:.0f}%" if s else "n/a"
        p(f"  {name:<22} postgres {pct('postgres_cpu_ticks'):>5}  upstream {pct('upstream_cpu_ticks'):>5}")
    p()
    with open(results_path, "w") as fh:
        json.dump(results, fh, indent=2)
    p(f"written: {results_path}")
    if error_runs:
        p()
        p("FAILED: more than 1% of the responses were not 200 in:")
        for e in error_runs:
            p(f"  {e}")
        return 1
    return 0


def main(argv):
    if len(argv) == 3 and argv[1] == "line-wrk":
        print(line_wrk(json.loads(argv[2])))
        return 0
    if len(argv) == 3 and argv[1] == "line-loadgen":
        print(line_loadgen(json.loads(argv[2])))
        return 0
    if len(argv) == 4:
        return report(*argv[1:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
