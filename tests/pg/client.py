#!/usr/bin/env python3
"""A real PostgreSQL client run against `hawking serve` by tests/e2e/pgwire.rs.

    client.py psycopg|asyncpg HOST PORT USER PASSWORD < requests.json > results.json

Requests are a JSON list of {"sql": ..., "params": [...] (optional; {"datetime": ISO} for a
datetime)}, run in order on one
connection. psycopg sends a statement without parameters over the *simple* query protocol
with text results (as Grafana's pgx does) and one with parameters over the extended
protocol; asyncpg always uses the extended protocol with binary results. Each result is

    {"ok": true, "status": "TUPLES_OK" | "COMMAND_OK" | "EMPTY_QUERY",
     "columns": [{"name", "type"}],            # PostgreSQL type names from the wire OIDs
     "rows": [[{"py": type name, "value": str}]],
     "text": [[raw text of each value as sent]]}   # psycopg only
or  {"ok": false, "sqlstate": ..., "message": ...}

A failed connection prints {"connect_error": {"sqlstate", "message"}}.

    client.py concurrent HOST PORT USER PASSWORD < {"long": sql, "heavy": sql, "delay": s}

runs `long` on one connection and, `delay` seconds later, `heavy` on another, and reports
each one's outcome with start and end times (seconds since the first started).
"""

import asyncio
import datetime
import decimal
import json
import sys
import time


def value(v):
    if v is None:
        return {"py": "NoneType", "value": None}
    if isinstance(v, (datetime.datetime, datetime.date, datetime.time)):
        return {"py": type(v).__name__, "value": v.isoformat(), "tz": str(getattr(v, "tzinfo", None))}
    if isinstance(v, decimal.Decimal):
        return {"py": "Decimal", "value": str(v)}
    if isinstance(v, (bool, int, float, str)):
        return {"py": type(v).__name__, "value": v}
    return {"py": type(v).__name__, "value": str(v)}


def param(p):
    """Parameters are JSON values; {"datetime": ISO text} stands for a datetime."""
    if isinstance(p, dict) and "datetime" in p:
        return datetime.datetime.fromisoformat(p["datetime"])
    return p


def psycopg_error(e):
    diag = getattr(e, "diag", None)
    return {
        "ok": False,
        "sqlstate": getattr(e, "sqlstate", None) or (diag.sqlstate if diag else None),
        "message": (diag.message_primary if diag and diag.message_primary else str(e)),
    }


def run_psycopg(host, port, user, password, requests):
    import psycopg

    try:
        conn = psycopg.connect(
            host=host, port=port, user=user, password=password, dbname="hawking",
            autocommit=True, connect_timeout=10, sslmode="disable",
        )
    except psycopg.Error as e:
        return {"connect_error": psycopg_error(e)}
    results = []
    with conn:
        for req in requests:
            cur = conn.cursor()
            try:
                if "params" in req:
                    cur.execute(req["sql"], [param(p) for p in req["params"]])
                else:
                    cur.execute(req["sql"])
            except psycopg.Error as e:
                results.append(psycopg_error(e))
                continue
            res = cur.pgresult
            out = {"ok": True, "status": psycopg.pq.ExecStatus(res.status).name}
            if cur.description is not None:
                types = conn.adapters.types
                out["columns"] = [
                    {"name": d.name, "type": (types.get(d.type_code).name if types.get(d.type_code) else str(d.type_code))}
                    for d in cur.description
                ]
                out["text"] = [
                    [(res.get_value(r, c).decode() if res.get_value(r, c) is not None else None) for c in range(res.nfields)]
                    for r in range(res.ntuples)
                ]
                out["rows"] = [[value(v) for v in row] for row in cur.fetchall()]
            results.append(out)
    return results


async def run_asyncpg(host, port, user, password, requests):
    import asyncpg

    try:
        conn = await asyncpg.connect(
            host=host, port=port, user=user, password=password, database="hawking",
            ssl=False, timeout=10,
        )
    except asyncpg.PostgresError as e:
        return {"connect_error": {"sqlstate": e.sqlstate, "message": str(e)}}
    except (OSError, asyncpg.InterfaceError) as e:
        return {"connect_error": {"sqlstate": None, "message": str(e)}}
    results = []
    try:
        for req in requests:
            try:
                stmt = await conn.prepare(req["sql"])
                rows = await stmt.fetch(*[param(p) for p in req.get("params", [])])
            except asyncpg.PostgresError as e:
                results.append({"ok": False, "sqlstate": e.sqlstate, "message": str(e)})
                continue
            attrs = stmt.get_attributes()
            out = {"ok": True, "status": "TUPLES_OK" if attrs else "COMMAND_OK"}
            if attrs:
                out["columns"] = [{"name": a.name, "type": a.type.name} for a in attrs]
                out["rows"] = [[value(v) for v in row] for row in rows]
            results.append(out)
    finally:
        await conn.close()
    return results


async def run_concurrent(host, port, user, password, job):
    import psycopg

    t0 = time.monotonic()

    async def run(sql, delay):
        await asyncio.sleep(delay)
        conn = await psycopg.AsyncConnection.connect(
            host=host, port=port, user=user, password=password, dbname="hawking",
            autocommit=True, sslmode="disable",
        )
        async with conn:
            start = time.monotonic() - t0
            try:
                cur = await conn.execute(sql)
                rows = await cur.fetchall()
                out = {"ok": True, "rows": [[value(v) for v in r] for r in rows]}
            except psycopg.Error as e:
                out = psycopg_error(e)
            out["start"] = start
            out["end"] = time.monotonic() - t0
            # The connection outlives its failed statement.
            cur = await conn.execute("SELECT 1")
            out["after"] = (await cur.fetchone())[0]
            return out

    long, heavy = await asyncio.gather(run(job["long"], 0.0), run(job["heavy"], job["delay"]))
    return {"long": long, "heavy": heavy}


def run_cancel(host, port, user, password, job):
    """Runs job["sql"] and sends a cancel request (what psql's Ctrl-C sends) after
    job["delay"] seconds; reports the outcome, how long it took, and that the connection
    still answers."""
    import threading

    import psycopg

    conn = psycopg.connect(
        host=host, port=port, user=user, password=password, dbname="hawking",
        autocommit=True, connect_timeout=10, sslmode="disable",
    )
    with conn:
        timer = threading.Timer(job["delay"], conn.cancel)
        start = time.monotonic()
        timer.start()
        try:
            rows = conn.execute(job["sql"]).fetchall()
            out = {"ok": True, "rows": [[value(v) for v in r] for r in rows]}
        except psycopg.Error as e:
            out = psycopg_error(e)
        out["seconds"] = time.monotonic() - start
        timer.cancel()
        out["after"] = conn.execute("SELECT 1").fetchone()[0]
    return out


def main():
    mode, host, port, user, password = sys.argv[1:6]
    job = json.load(sys.stdin)
    if mode == "psycopg":
        out = run_psycopg(host, int(port), user, password, job)
    elif mode == "asyncpg":
        out = asyncio.run(run_asyncpg(host, int(port), user, password, job))
    elif mode == "concurrent":
        out = asyncio.run(run_concurrent(host, int(port), user, password, job))
    elif mode == "cancel":
        out = run_cancel(host, int(port), user, password, job)
    else:
        sys.exit(f"unknown mode {mode}")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
