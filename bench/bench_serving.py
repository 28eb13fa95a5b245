"""Serving benchmarks: HTTP /score against a do-nothing BentoML service, and the batch on 1,000,000 customers.

    python bench/bench_serving.py --model-uri models:/kairos/1 --features demo/features.parquet [--rows 1000000]

HTTP: `wrk` (one thread, 8 connections) for the request rate of `python -m serving serve` and of the floor service
(../shared/checks/floor_service.py) measured in the same run, one sequential client for latency percentiles, and
in-process timings of the pieces (policy, contact log, raw LightGBM) to show where the time goes.
Batch: the snapshot's feature rows resampled to `--rows` customers, scored by `score_features` (three models +
policy, no drivers) against the raw `Booster.predict` row rate of the next-purchase booster, with peak memory.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
FLOOR = ROOT.parent / "shared" / "checks"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 120) -> float:
    import httpx

    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return time.time() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready in {timeout} s")


def wrk(url: str, body: dict, seconds: int, conns: int = 8) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(body))}\n'
                  'wrk.headers["Content-Type"] = "application/json"\n')
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "-s", lua.name, url + "/score"],
                         capture_output=True, text=True, check=False).stdout
    errs = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(errs.group(1)) if errs else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "errors": errors}


def latency(url: str, body: dict, n: int = 500) -> dict:
    import httpx

    lat = []
    with httpx.Client(base_url=url, timeout=10) as c:
        for _ in range(20):
            c.post("/score", json=body)
        for _ in range(n):
            t = time.perf_counter()
            r = c.post("/score", json=body)
            lat.append((time.perf_counter() - t) * 1000)
            if r.status_code != 200 or "error" in r.json()["results"][0]:  # never time errors (a 401, an unknown id)
                raise RuntimeError(f"{url}/score answered {r.status_code}: {r.text[:200]}")
    lat.sort()
    return {"p50_ms": round(lat[n // 2], 2), "p99_ms": round(lat[int(n * 0.99)], 2)}


def per_call_ms(fn, n: int = 300) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return round((time.perf_counter() - t) / n * 1000, 3)


def bench_http(args, model, version, feats: pd.DataFrame) -> dict:
    from serving.api import CustomerIn, Scorer
    from serving.contact_log import ContactLog
    from serving.policy import decide_arrays, load_policy, required_columns, resolve_timing
    from serving.snapshot import Snapshot

    cid = str(feats.loc[feats["n_orders"] > 0, "customer_id"].iloc[0])
    body = {"customers": [{"customer_id": cid}]}
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "KAIROS_CONTACT_DB": f"sqlite:///{args.work}/contacts.db"}
    env.pop("KAIROS_API_KEY", None)  # the bench times answers, not 401s
    kp, fp = free_port(), free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "serving", "serve", "--port", str(kp), "--model-uri", args.model_uri,
                               "--features", args.features], cwd=ROOT, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "floor_service:Floor", "--working-dir",
                               str(FLOOR), "--port", str(fp)], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        k, f = f"http://127.0.0.1:{kp}", f"http://127.0.0.1:{fp}"
        ready = wait_ready(k)
        wait_ready(f)
        out = {"ready_s": round(ready, 1)}
        if shutil.which("wrk"):
            out["kairos"] = {**wrk(k, body, args.seconds), **latency(k, body)}
            out["floor"] = {**wrk(f, body, args.seconds), **latency(f, body)}
            out["rate_ratio"] = round(out["kairos"]["rps"] / out["floor"]["rps"], 2)
        else:
            print("warning: wrk is not installed (apt-get install -y wrk): no request rates, latencies only",
                  file=sys.stderr)
            out["kairos"], out["floor"] = latency(k, body), latency(f, body)
        out["p99_ratio"] = round(out["kairos"]["p99_ms"] / out["floor"]["p99_ms"], 2)
        rss = subprocess.run(["ps", "-o", "rss=", "--ppid", str(procs[0].pid)], capture_output=True, text=True,
                             check=False).stdout.split()
        out["kairos_worker_rss_mb"] = [round(int(x) / 1024) for x in rss]
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)
    # where the time goes, in-process
    config = load_policy()
    snap = Snapshot(feats, model, required_columns(config))
    config = resolve_timing(config, snap.features)
    scorer = Scorer(model, version, config, snap, ContactLog(f"sqlite:///{args.work}/contacts.db"))
    items = [CustomerIn(customer_id=cid)]
    cols = snap.take(snap.positions([cid]))
    now = pd.Timestamp.now()
    row = feats.loc[feats["customer_id"] == cid]
    X = model.matrix(row)
    out["in_process_ms"] = {
        "scorer.score (look-up + policy + contact log, drivers cached)": per_call_ms(lambda: scorer.score(items)),
        "policy decide_arrays, 1 row": per_call_ms(lambda: decide_arrays(cols, config, None, now.value)),
        "contact log query, 1 id": per_call_ms(lambda: scorer.contact_log.recent([cid], now - pd.Timedelta(days=91))),
        "raw Booster.predict, 1 row": per_call_ms(lambda: model.booster().predict(X, num_threads=1)),
        "KairosModel.predict, 1 row (3 models + BG/NBD)": per_call_ms(lambda: model.predict(row), 50),
        "drivers (TreeSHAP), 1 row": per_call_ms(lambda: model.reasons(row), 20),
    }
    return out


def bench_batch(args, model, version, feats: pd.DataFrame) -> dict:
    from serving.policy import load_policy, resolve_timing
    from serving.scoring import score_features

    rng = np.random.default_rng(0)
    big = feats.iloc[rng.integers(0, len(feats), args.rows)].reset_index(drop=True)
    big["customer_id"] = pd.array([f"B{i:08d}" for i in range(len(big))], dtype="str")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    config = resolve_timing(load_policy(), feats)
    t = time.perf_counter()
    X = model.matrix(big)
    matrix_s = time.perf_counter() - t
    t = time.perf_counter()
    model.booster().predict(X)
    raw_s = time.perf_counter() - t
    # the same raw call for every booster the model runs (second-purchase model on one-order rows only)
    one = big["n_orders"].to_numpy() == 1
    parts = [(model.booster(), None), (getattr(model.second_, "estimator", None), one),
             *[(getattr(model.value_.get(k), "estimator", model.value_.get(k)), None) for k in ("clf", "reg")]]
    t = time.perf_counter()
    for est, rows in parts:
        if est is None:
            continue
        booster = getattr(getattr(est, "estimator", est), "booster_", None) or est
        booster.predict(X if rows is None else X[rows])
    raw_all_s = time.perf_counter() - t
    del X
    t = time.perf_counter()
    scores = score_features(model, big, config, None, with_reasons=False, model_version=version)
    score_s = time.perf_counter() - t
    path = Path(args.work) / "scores_1m.parquet"
    t = time.perf_counter()
    scores.to_parquet(path, index=False)
    write_s = time.perf_counter() - t
    return {"rows": args.rows, "raw_booster_rows_per_s": round(args.rows / raw_s),
            "model_matrix_s": round(matrix_s, 2), "raw_booster_predict_s": round(raw_s, 2),
            "score_features_s (3 models + policy)": round(score_s, 2),
            "score_rows_per_s": round(args.rows / score_s), "ratio_to_raw": round(raw_s / score_s, 2),
            "raw_all_boosters_s": round(raw_all_s, 2), "ratio_to_raw_all_boosters": round(raw_all_s / score_s, 2),
            "nudges": int((scores["action"] == "nudge").sum()), "parquet_write_s": round(write_s, 2),
            "parquet_mb": round(path.stat().st_size / 2**20, 1), "rss_before_mb": round(rss0),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-uri", default="models:/kairos@champion")
    p.add_argument("--features", required=True, help="feature snapshot (features build output)")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--skip-http", action="store_true")
    p.add_argument("--skip-batch", action="store_true")
    args = p.parse_args()
    args.features = str(Path(args.features).resolve())
    args.work = tempfile.mkdtemp(prefix="kairos-bench-")
    sys.path.insert(0, str(ROOT))
    from serving.scoring import load_model

    model, version = load_model(args.model_uri)
    feats = pd.read_parquet(args.features)
    result = {"model_version": version, "snapshot_customers": len(feats), "cpus": os.cpu_count()}
    if not args.skip_http:
        result["http"] = bench_http(args, model, version, feats)
    if not args.skip_batch:
        result["batch"] = bench_batch(args, model, version, feats)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
