"""Write (or grow) the synthetic credit-card transactions table of the fraud example.

A deterministic stand-in for Kaggle's "Credit Card Fraud Detection" table: columns ``Time``,
``V1``..``V28``, ``Amount``, ``Class`` (about 0.17 % frauds), plus ``id`` and a timestamp
``ts`` so that rows arrive day by day. Day ``d`` is always generated from the same seed, so
the table is the same on every machine and growing it appends exactly the next days.

Usage:
    python generate.py                      # data/fraud.db with 10 days from 2019-02-01
    python generate.py --append 1           # one more day: the database grows
    python generate.py --url postgresql+psycopg://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

START = datetime(2019, 2, 1)
COLUMNS = ["id", "ts", "Time", *[f"V{i}" for i in range(1, 29)], "Amount", "Class"]
FRAUD_RATE = 0.0017
# features that move for frauds (as V14, V17, V12, V10, V4 do in the real table)
SHIFT = {"V14": -2.0, "V17": -1.75, "V12": -1.5, "V10": -1.25, "V4": 1.25, "V11": 1.0}


def day_frame(day: int, rows: int, seed: int = 7) -> pd.DataFrame:
    """The transactions of day ``day`` (0 = 2019-02-01), always the same for the same args.

    Example:
        >>> day_frame(0, 100).shape
        (100, 33)
    """
    rng = np.random.default_rng([seed, day])
    seconds = np.sort(rng.uniform(0, 86400, rows))
    frame = pd.DataFrame(rng.normal(size=(rows, 28)), columns=[f"V{i}" for i in range(1, 29)])
    fraud = rng.random(rows) < FRAUD_RATE
    for col, shift in SHIFT.items():
        frame.loc[fraud, col] += shift + rng.normal(0, 1.0, fraud.sum())
    frame.insert(0, "Time", day * 86400 + seconds)
    frame.insert(0, "ts", [START + timedelta(days=day, seconds=float(s)) for s in seconds])
    frame.insert(0, "id", day * 1_000_000 + np.arange(rows))
    amount = rng.lognormal(3.0, 1.2, rows)
    amount[fraud] = rng.lognormal(4.0, 1.5, fraud.sum())
    frame["Amount"] = np.round(amount, 2)
    frame["Class"] = fraud.astype("int64")
    frame["ts"] = frame["ts"].dt.floor("us")
    return frame[COLUMNS]


def generate(url: str, *, days: int = 10, append: int = 0, rows_per_day: int = 4000) -> int:
    """Create the ``transactions`` table with ``days`` days, then append ``append`` more.

    Returns the number of days in the table afterwards. Days already present are kept.

    Example:
        >>> generate("sqlite:////tmp/fraud-doc.db", days=2, rows_per_day=50)  # doctest: +SKIP
        2
    """
    engine = sa.create_engine(url)
    try:
        with engine.begin() as con:
            have = 0
            if sa.inspect(con).has_table("transactions"):
                latest = con.execute(sa.text("SELECT MAX(id) FROM transactions")).scalar()
                have = 0 if latest is None else int(latest) // 1_000_000 + 1
            want = max(days, have) + append
            for day in range(have, want):
                day_frame(day, rows_per_day).to_sql(
                    "transactions", con, if_exists="append", index=False, chunksize=5000
                )
        return want
    finally:
        engine.dispose()


def main() -> None:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=f"sqlite:///{here / 'data' / 'fraud.db'}")
    parser.add_argument("--days", type=int, default=10, help="days in a new table")
    parser.add_argument("--append", type=int, default=0, help="days to add to the table")
    parser.add_argument("--rows-per-day", type=int, default=4000)
    args = parser.parse_args()
    if args.url.startswith("sqlite:///"):
        Path(args.url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    total = generate(args.url, days=args.days, append=args.append, rows_per_day=args.rows_per_day)
    print(f"transactions: {total} days, {total * args.rows_per_day:,} rows in {args.url}")


if __name__ == "__main__":
    main()
